//! The edge's table: ids, routes, methods, bodies, deltas, write keys and sessions a client
//! can get wrong, each answered with its documented error, and no count changed at the edge
//! or the merger.

use std::time::{Duration, Instant};

use serde_json::json;
use tally_e2e::raw::{Case, case, run_table};
use tally_e2e::*;

use super::{EDGE_COUNTS, EDGE_MAX_BODY, MERGER_FLAGS, seed, snapshot};

/// An edge request from region `hostile` (`X-Tally-Region` is honoured under `wrangler dev`).
fn at_edge(name: &str, method: &'static str, target: impl Into<String>) -> Case {
    case(name, method, target).header("X-Tally-Region", "hostile")
}

fn put_json(name: &str, target: &str, body: impl Into<Vec<u8>>) -> Case {
    at_edge(name, "PUT", target).json(body)
}

fn edge_cases() -> Vec<Case> {
    let long = "a".repeat(129);
    let hit = r#"{"delta":1}"#;
    let counter = "/hostile/counter";
    let gauge = "/hostile/gauge";
    let (presence, unique) = ("/hostile/presence", "/hostile/unique");
    let nest = |prefix: &str, depth: usize| format!("{prefix}{}", "[".repeat(depth));
    vec![
        // Ids.
        at_edge("empty id", "GET", "//counter").expect(400, "empty_id"),
        at_edge("empty id, gauge", "PUT", "//gauge").expect(400, "empty_id"),
        at_edge("id of 129 bytes", "GET", format!("/{long}/counter")).expect(400, "id_too_long"),
        put_json("id of 129 bytes, put", &format!("/{long}/gauge"), hit).expect(400, "id_too_long"),
        at_edge("id with a space", "GET", "/a%20b/counter").expect(400, "id_bad_char"),
        at_edge("id with %2F", "GET", "/a%2Fb/counter").expect(400, "id_bad_char"),
        at_edge("id that is %2F", "PUT", "/%2F/counter").expect(400, "id_bad_char"),
        at_edge("id with %00", "GET", "/a%00/counter").expect(400, "id_bad_char"),
        at_edge("id with unicode", "GET", "/caf%C3%A9/counter").expect(400, "id_bad_char"),
        put_json("id with unicode, put", "/caf%C3%A9/gauge", hit).expect(400, "id_bad_char"),
        at_edge("id that is an emoji", "GET", "/%F0%9F%98%80/counter").expect(400, "id_bad_char"),
        at_edge("id of invalid UTF-8", "GET", "/%FF/counter").expect(400, "id_bad_char"),
        at_edge("id starting with -", "GET", "/-a/counter").expect(400, "id_bad_char"),
        at_edge("id starting with .", "GET", "/.a/counter").expect(400, "id_bad_char"),
        at_edge("id with a quote", "GET", "/a%22b/counter").expect(400, "id_bad_char"),
        // Path tricks.
        // `/../counter` and `/%2e%2e/counter` normalize to `/counter`: the batch read, which
        // wants `?ids=`.
        at_edge("dot-dot id", "GET", "/../counter").expect(400, "invalid_query"),
        at_edge("dot-dot before a counter", "PUT", "/../x/widget").expect(404, "not_found"),
        at_edge("encoded dot-dot id", "GET", "/%2e%2e/counter").expect(400, "invalid_query"),
        at_edge("extra segment", "GET", "/x/counter/extra").expect(404, "not_found"),
        at_edge("trailing slash", "PUT", "/x/counter/").expect(404, "not_found"),
        at_edge("empty middle segment", "GET", "/x//counter").expect(404, "not_found"),
        at_edge("unknown namespace", "GET", "/x/widget").expect(404, "not_found"),
        at_edge("namespace in capitals", "PUT", "/x/COUNTER").expect(404, "not_found"),
        at_edge("no namespace", "GET", "/x").expect(404, "not_found"),
        at_edge("root", "GET", "/").expect(404, "not_found"),
        // Bodies.
        put_json("truncated JSON", counter, "{").expect(400, "invalid_body"),
        put_json("not JSON", counter, "delta=1").expect(400, "invalid_body"),
        put_json("trailing garbage", counter, r#"{"delta":1}x"#).expect(400, "invalid_body"),
        put_json("delta as a string", counter, r#"{"delta":"1"}"#).expect(400, "invalid_body"),
        put_json("delta as a float", counter, r#"{"delta":1.5}"#).expect(400, "invalid_body"),
        // Visitor keys on counter hits (kept near a milestone).
        put_json(
            "counter visitor that is empty",
            counter,
            r#"{"visitor":""}"#,
        )
        .expect(400, "invalid_visitor"),
        put_json(
            "counter visitor of 65 characters",
            counter,
            format!(r#"{{"visitor":"{}"}}"#, "v".repeat(65)),
        )
        .expect(400, "invalid_visitor"),
        put_json(
            "counter visitor with a bell",
            counter,
            r#"{"visitor":"a\u0007b"}"#,
        )
        .expect(400, "invalid_visitor"),
        put_json(
            "counter visitor not ASCII",
            counter,
            r#"{"visitor":"caf\u00e9"}"#,
        )
        .expect(400, "invalid_visitor"),
        put_json("counter visitor as a number", counter, r#"{"visitor":5}"#)
            .expect(400, "invalid_body"),
        put_json(
            "counter visitor twice",
            counter,
            r#"{"visitor":"a","visitor":"b"}"#,
        )
        .expect(400, "invalid_body"),
        put_json(
            "visitor on a gauge",
            "/hostile/gauge",
            r#"{"delta":1,"visitor":"a"}"#,
        )
        .expect(400, "invalid_body"),
        put_json("empty object", counter, "{}").expect(400, "invalid_body"),
        put_json("delta in exponent form", counter, r#"{"delta":1e3}"#).expect(400, "invalid_body"),
        put_json("delta null", counter, r#"{"delta":null}"#).expect(400, "invalid_body"),
        put_json("delta an array", gauge, r#"{"delta":[1]}"#).expect(400, "invalid_body"),
        // serde's derived structs also take `[1]` for `{"delta":1}`; the API does not.
        put_json("body an array", counter, "[1]").expect(400, "invalid_body"),
        put_json("body an array, gauge", gauge, "[-3]").expect(400, "invalid_body"),
        put_json("body null", counter, "null").expect(400, "invalid_body"),
        put_json("body an empty object", gauge, "{}").expect(400, "invalid_body"),
        put_json("delta 1e400", counter, r#"{"delta":1e400}"#).expect(400, "invalid_body"),
        put_json(
            "delta of 30 digits",
            counter,
            r#"{"delta":123456789012345678901234567890}"#,
        )
        .expect(400, "invalid_body"),
        put_json(
            "delta of -30 digits",
            gauge,
            r#"{"delta":-123456789012345678901234567890}"#,
        )
        .expect(400, "invalid_body"),
        put_json("unknown field", counter, r#"{"delta":1,"x":2}"#).expect(400, "invalid_body"),
        put_json("field in capitals", gauge, r#"{"Delta":1}"#).expect(400, "invalid_body"),
        put_json("delta twice", counter, r#"{"delta":1,"delta":2}"#).expect(400, "invalid_body"),
        put_json("invalid UTF-8", counter, b"{\"delta\":\xff}".to_vec())
            .expect(400, "invalid_body"),
        put_json("nesting 1000 deep", counter, nest("", 1000)).expect(400, "invalid_body"),
        put_json("delta nested 1000 deep", gauge, nest(r#"{"delta":"#, 1000))
            .expect(400, "invalid_body"),
        put_json("negative delta on a counter", counter, r#"{"delta":-1}"#)
            .expect(422, "invalid_delta"),
        put_json("zero delta on a counter", counter, r#"{"delta":0}"#).expect(422, "invalid_delta"),
        put_json("zero delta on a gauge", gauge, r#"{"delta":0}"#).expect(422, "invalid_delta"),
        put_json("delta 1000001", counter, r#"{"delta":1000001}"#).expect(422, "invalid_delta"),
        put_json("delta -1000001 on a gauge", gauge, r#"{"delta":-1000001}"#)
            .expect(422, "invalid_delta"),
        put_json(
            "delta i64::MAX",
            counter,
            r#"{"delta":9223372036854775807}"#,
        )
        .expect(422, "invalid_delta"),
        put_json("delta i64::MIN", gauge, r#"{"delta":-9223372036854775808}"#)
            .expect(422, "invalid_delta"),
        put_json("nesting 10000 deep", counter, nest("", 10_000)).expect(413, "body_too_large"),
        put_json(
            "body of 1025 bytes",
            counter,
            format!("{hit}{}", " ".repeat(EDGE_MAX_BODY + 1 - hit.len())),
        )
        .expect(413, "body_too_large"),
        put_json("body of 64 KiB", gauge, vec![b' '; 64 * 1024]).expect(413, "body_too_large"),
        at_edge("chunked body of 2000 bytes", "PUT", counter)
            .header("Content-Type", "application/json")
            .chunked(format!("{hit}{}", " ".repeat(2000 - hit.len())))
            .expect(413, "body_too_large"),
        // Headers.
        at_edge("text/plain body", "PUT", counter)
            .header("Content-Type", "text/plain")
            .body(hit)
            .expect(415, "unsupported_media_type"),
        at_edge("form body", "PUT", gauge)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("delta=1")
            .expect(415, "unsupported_media_type"),
        at_edge("json look-alike content type", "PUT", counter)
            .header("Content-Type", "application/jsonx")
            .body(hit)
            .expect(415, "unsupported_media_type"),
        case("region with a space", "GET", counter)
            .header("X-Tally-Region", "eu west")
            .expect(400, "invalid_region"),
        case("region with a slash", "PUT", counter)
            .header("X-Tally-Region", "eu/1")
            .json(hit)
            .expect(400, "invalid_region"),
        case("region of 65 bytes", "GET", gauge)
            .header("X-Tally-Region", &"r".repeat(65))
            .expect(400, "invalid_region"),
        // Batch reads.
        at_edge("batch without ids", "GET", "/counter").expect(400, "invalid_query"),
        at_edge("batch with empty ids", "GET", "/gauge?ids=").expect(400, "invalid_query"),
        at_edge("batch naming an id twice", "GET", "/counter?ids=a,b,a")
            .expect(400, "invalid_query"),
        at_edge(
            "batch with an unknown parameter",
            "GET",
            "/counter?ids=a&x=1",
        )
        .expect(400, "invalid_query"),
        at_edge("batch with a bad id", "GET", "/counter?ids=a,b%20c").expect(400, "id_bad_char"),
        at_edge("batch with an empty id", "GET", "/counter?ids=a,,b").expect(400, "empty_id"),
        at_edge(
            "batch of 101 ids",
            "GET",
            format!(
                "/counter?ids={}",
                (0..101)
                    .map(|i| format!("c{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )
        .expect(400, "invalid_query"),
        at_edge("PUT on a batch", "PUT", "/counter?ids=a").expect(405, "method_not_allowed"),
        // The write policy: public hits add 1; more, and gauge writes, need the write key.
        put_json("public delta of 2", counter, r#"{"delta":2}"#).expect(401, "write_key_required"),
        put_json("public gauge write", gauge, hit).expect(401, "write_key_required"),
        at_edge("public gauge write without body", "PUT", gauge).expect(401, "write_key_required"),
        put_json("wrong write key", counter, hit)
            .header("Authorization", "Bearer e2e-write-key-0123456780")
            .expect(401, "invalid_write_key"),
        put_json("write key without scheme", gauge, hit)
            .header("Authorization", "e2e-write-key-0123456789")
            .expect(401, "invalid_write_key"),
        put_json("write key as basic auth", counter, hit)
            .header("Authorization", "Basic ZTJlOmtleQ==")
            .expect(401, "invalid_write_key"),
        // Methods.
        at_edge("DELETE a counter", "DELETE", counter).expect(405, "method_not_allowed"),
        at_edge("POST a hit", "POST", counter)
            .header("Content-Type", "application/json")
            .body(hit)
            .expect(405, "method_not_allowed"),
        at_edge("PATCH a gauge", "PATCH", gauge)
            .header("Content-Type", "application/json")
            .body(hit)
            .expect(405, "method_not_allowed"),
        at_edge("POST a gauge without body", "POST", gauge).expect(405, "method_not_allowed"),
        // Methods workers-rs has no name for (it reads them as GET).
        at_edge("QUERY a counter", "QUERY", counter).expect(405, "method_not_allowed"),
        at_edge("PROPFIND a batch", "PROPFIND", "/gauge?ids=a").expect(405, "method_not_allowed"),
        at_edge("DELETE an unknown route", "DELETE", "/x/widget").expect(404, "not_found"),
        // Viewers now.
        put_json(
            "join with a session of 65 bytes",
            presence,
            format!(r#"{{"session":"{}"}}"#, "s".repeat(65)),
        )
        .expect(400, "invalid_session_id"),
        put_json(
            "join with a session with a space",
            presence,
            r#"{"session":"a b"}"#,
        )
        .expect(400, "invalid_session_id"),
        put_json("join with an empty session", presence, r#"{"session":""}"#)
            .expect(400, "invalid_session_id"),
        put_json(
            "join with a number for a session",
            presence,
            r#"{"session":7}"#,
        )
        .expect(400, "invalid_body"),
        put_json(
            "join with an unknown field",
            presence,
            r#"{"session":"a","x":1}"#,
        )
        .expect(400, "invalid_body"),
        put_json("join that is a JSON array", presence, r#"["a"]"#).expect(400, "invalid_body"),
        at_edge("join as text", "PUT", presence)
            .header("Content-Type", "text/plain")
            .body(r#"{"session":"a"}"#)
            .expect(415, "unsupported_media_type"),
        put_json(
            "join over the body limit",
            presence,
            vec![b' '; EDGE_MAX_BODY + 1],
        )
        .expect(413, "body_too_large"),
        put_json(
            "join with a wrong write key",
            presence,
            r#"{"session":"a"}"#,
        )
        .header("Authorization", "Bearer not-the-key-0123456789")
        .expect(401, "invalid_write_key"),
        at_edge("leave without a session", "DELETE", presence).expect(400, "session_required"),
        at_edge(
            "leave with a bad session",
            "DELETE",
            "/hostile/presence?session=a%20b",
        )
        .expect(400, "invalid_session_id"),
        at_edge(
            "read with two sessions",
            "GET",
            "/hostile/presence?session=a&session=b",
        )
        .expect(400, "invalid_query"),
        at_edge(
            "read with another parameter",
            "GET",
            "/hostile/presence?who=a",
        )
        .expect(400, "invalid_query"),
        at_edge("POST on presence", "POST", presence).expect(405, "method_not_allowed"),
        at_edge("presence of a bad id", "PUT", "/a%20b/presence").expect(400, "id_bad_char"),
        // Unique visitors.
        put_json("visitor that is empty", unique, r#"{"visitor":""}"#)
            .expect(400, "invalid_visitor"),
        put_json(
            "visitor of 257 bytes",
            unique,
            format!(r#"{{"visitor":"{}"}}"#, "v".repeat(257)),
        )
        .expect(400, "invalid_visitor"),
        put_json("no visitors", unique, r#"{"visitors":[]}"#).expect(400, "invalid_body"),
        put_json(
            "101 visitors",
            unique,
            json!({ "visitors": (0..101).map(|i| format!("v{i}")).collect::<Vec<_>>() })
                .to_string(),
        )
        .expect(400, "invalid_body"),
        put_json(
            "visitor and visitors",
            unique,
            r#"{"visitor":"a","visitors":["b"]}"#,
        )
        .expect(400, "invalid_body"),
        put_json("visitor that is a number", unique, r#"{"visitor":5}"#)
            .expect(400, "invalid_body"),
        put_json(
            "visitors over the body limit",
            unique,
            format!(r#"{{"visitors":["{}"]}}"#, "v".repeat(8192)),
        )
        .expect(413, "body_too_large"),
        at_edge("visitor as text", "PUT", unique)
            .header("Content-Type", "text/plain")
            .body(r#"{"visitor":"a"}"#)
            .expect(415, "unsupported_media_type"),
        put_json(
            "visitor with a wrong write key",
            unique,
            r#"{"visitor":"a"}"#,
        )
        .header("Authorization", "Basic YTpi")
        .expect(401, "invalid_write_key"),
        at_edge(
            "a day that is no date",
            "GET",
            "/hostile/unique?day=yesterday",
        )
        .expect(400, "invalid_day"),
        at_edge("a 13th month", "GET", "/hostile/unique?day=2026-13-01").expect(400, "invalid_day"),
        at_edge(
            "a 30th of February",
            "GET",
            "/hostile/unique?day=2026-02-30",
        )
        .expect(400, "invalid_day"),
        at_edge("two days", "GET", "/hostile/unique?day=today&day=today")
            .expect(400, "invalid_query"),
        at_edge("DELETE on unique", "DELETE", unique).expect(405, "method_not_allowed"),
    ]
}

#[tokio::test]
async fn hostile_requests_at_the_edge_get_their_documented_error_and_change_no_count() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &MERGER_FLAGS).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let client = http_client();

    seed(&client, &merger.url, Some(&edge.url)).await;
    let before = snapshot(&client, &merger.url, Some(&edge.url)).await;
    for (path, count) in EDGE_COUNTS {
        assert!(
            before.edge.contains(&(path.to_owned(), Some(count))),
            "{before:?}"
        );
    }

    let started = Instant::now();
    let cases = edge_cases();
    let failures = run_table("edge", &edge.url, &cases).await;
    println!(
        "hostile input at the edge: {} cases ran in {:?}",
        cases.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests got another answer than documented:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Several sync intervals: anything a bad request had slipped into a replica would be
    // synced by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = snapshot(&client, &merger.url, Some(&edge.url)).await;
    assert_eq!(after, before, "hostile requests changed the state");
    // No refused join or visit counted anywhere.
    for path in ["/hostile/presence", "/hostile/unique"] {
        let (status, body) = get(&client, &format!("{}{path}", edge.url)).await;
        assert_eq!(
            (status, count_of(&body["count"])),
            (200, Some(0)),
            "{path}: {body}"
        );
    }
    for path in ["/v1/presence/hostile", "/v1/unique/hostile"] {
        let (status, body) = get(&client, &format!("{}{path}", merger.url)).await;
        assert_eq!(
            (status, count_of(&body["count"])),
            (200, Some(0)),
            "{path}: {body}"
        );
    }
    let (status, body) = get(&client, &format!("{}/healthz", merger.url)).await;
    assert_eq!((status, &body), (200, &json!({"status": "ok"})));

    edge.stop().await;
    merger.terminate().await;
}
