//! The merger's table: tokens, bodies, protocol rules, paths, queries and methods a client
//! can get wrong, each answered with its documented error, and no count changed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_e2e::raw::{Case, case, find, run_table};
use tally_e2e::*;

use super::{MAX_BODY_BYTES, MERGER_FLAGS, SEED_REPLICA, seed, snapshot, sync_body};

/// A sync that would raise `seed-m` to 10^6 if it were applied in part, then `bad`.
fn after_a_valid_one(bad: Value) -> String {
    sync_body(json!([{"id": "seed-m", "kind": "g", "p": 1_000_000}, bad]))
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn sync(name: &str, body: impl Into<Vec<u8>>) -> Case {
    case(name, "POST", "/v1/sync")
        .header("Authorization", &bearer())
        .json(body)
}

/// A batch read (`POST /v1/read`) with the token.
fn read(name: &str, body: impl Into<Vec<u8>>) -> Case {
    case(name, "POST", "/v1/read")
        .header("Authorization", &bearer())
        .json(body)
}

fn merger_cases() -> Vec<Case> {
    let long = "a".repeat(129);
    let good = sync_body(json!([{"id": "seed-m", "kind": "g", "p": 1_000_000}]));
    let replica =
        |r: &str| json!({"version": 1, "replica": r, "region": "seed", "counters": []}).to_string();
    let region = |r: &str| {
        json!({"version": 1, "replica": SEED_REPLICA, "region": r, "counters": []}).to_string()
    };
    let id = |id: &str| after_a_valid_one(json!({"id": id, "kind": "pn", "p": 5}));
    let total = |p: &str| {
        format!(
            r#"{{"version":1,"replica":"{SEED_REPLICA}","region":"seed","counters":[{{"id":"seed-m","kind":"g","p":{p}}}]}}"#
        )
    };
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("c{i}"), "kind": "g", "p": 1}))
        .collect();
    let deep = |depth: usize| {
        format!(
            r#"{{"version":1,"replica":"{SEED_REPLICA}","region":"seed","counters":{}"#,
            "[".repeat(depth)
        )
    };
    // Version 2 refuses a sync whole only for a rule of the whole request (a counter's own
    // rule gets a per-counter rejection in a 200, with the rest committed).
    let v2 = |body: String| body.replacen(r#""version":1"#, r#""version":2"#, 1);
    let good_read =
        json!({"version": 2, "replica": SEED_REPLICA, "counters": [{"id": "seed-m", "kind": "g"}]})
            .to_string();
    let read_of = |counters: Value| json!({"version": 2, "counters": counters}).to_string();
    let many_keys: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("c{i}"), "kind": "g"}))
        .collect();
    vec![
        // The token, checked before anything else of a sync.
        case("sync without a token", "POST", "/v1/sync")
            .json(good.clone())
            .expect(401, "missing_token")
            .answer_header("www-authenticate", "Bearer"),
        case("sync with a Basic token", "POST", "/v1/sync")
            .header("Authorization", "Basic dXNlcjpwYXNzd29yZA==")
            .json(good.clone())
            .expect(401, "missing_token")
            .answer_header("www-authenticate", "Bearer"),
        case("sync with a wrong token", "POST", "/v1/sync")
            .header("Authorization", "Bearer wrong-token-0123456789")
            .json(good.clone())
            .expect(401, "invalid_token")
            .answer_header("www-authenticate", "Bearer"),
        case("sync with Bearer and no token", "POST", "/v1/sync")
            .header("Authorization", "Bearer ")
            .json(good.clone())
            .expect(401, "missing_token"),
        case("sync with the token and one more byte", "POST", "/v1/sync")
            .header("Authorization", &format!("{}x", bearer()))
            .json(good.clone())
            .expect(401, "invalid_token"),
        case("sync with the token less its last byte", "POST", "/v1/sync")
            .header("Authorization", &bearer()[..bearer().len() - 1])
            .json(good.clone())
            .expect(401, "invalid_token"),
        case("sync with two spaces before the token", "POST", "/v1/sync")
            .header("Authorization", &format!("Bearer  {TOKEN}"))
            .json(good.clone())
            .expect(401, "invalid_token"),
        case("sync with a wrong token and text/plain", "POST", "/v1/sync")
            .header("Authorization", "Bearer wrong-token-0123456789")
            .header("Content-Type", "text/plain")
            .body(good.clone())
            .expect(401, "invalid_token"),
        // Content type.
        case("sync as text/plain", "POST", "/v1/sync")
            .header("Authorization", &bearer())
            .header("Content-Type", "text/plain")
            .body(good.clone())
            .expect(415, "unsupported_media_type"),
        case("sync without a content type", "POST", "/v1/sync")
            .header("Authorization", &bearer())
            .body(good.clone())
            .expect(415, "unsupported_media_type"),
        case("sync as a form", "POST", "/v1/sync")
            .header("Authorization", &bearer())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(good.clone())
            .expect(415, "unsupported_media_type"),
        // Malformed bodies.
        sync("sync body empty", "").expect(400, "malformed_body"),
        sync("sync body not JSON", "version=1").expect(400, "malformed_body"),
        sync("sync body truncated", &good[..good.len() - 1]).expect(400, "malformed_body"),
        sync("sync body an empty object", "{}").expect(400, "malformed_body"),
        sync("sync body an array", "[]").expect(400, "malformed_body"),
        sync("sync body null", "null").expect(400, "malformed_body"),
        sync("sync body invalid UTF-8", {
            let mut b = good.clone().into_bytes();
            let at = find(&b, b"seed-m").expect("the body names seed-m");
            b[at] = 0xff;
            b
        })
        .expect(400, "malformed_body"),
        sync("version as a string", r#"{"version":"1"}"#).expect(400, "malformed_body"),
        sync(
            "version negative",
            good.replacen(r#""version":1"#, r#""version":-1"#, 1),
        )
        .expect(400, "malformed_body"),
        // serde's derived structs also take a JSON array for an object; the protocol does not.
        sync(
            "sync body an array of the fields",
            format!(r#"[1,"{SEED_REPLICA}","seed",[]]"#),
        )
        .expect(400, "malformed_body"),
        sync(
            "counter an array of the fields",
            after_a_valid_one(json!(["x", "g", 1])),
        )
        .expect(400, "malformed_body"),
        sync(
            "version twice",
            good.replacen(r#""version":1"#, r#""version":1,"version":1"#, 1),
        )
        .expect(400, "malformed_body"),
        sync("total twice in a counter", total(r#"1,"p":1000000"#)).expect(400, "malformed_body"),
        sync(
            "unknown top-level field",
            good.replacen('{', r#"{"extra":true,"#, 1),
        )
        .expect(400, "malformed_body"),
        sync(
            "unknown counter field",
            after_a_valid_one(json!({"id": "x", "kind": "g", "p": 1, "q": 1})),
        )
        .expect(400, "malformed_body"),
        sync(
            "counter without kind",
            after_a_valid_one(json!({"id": "x", "p": 1})),
        )
        .expect(400, "malformed_body"),
        sync(
            "unknown kind",
            after_a_valid_one(json!({"id": "x", "kind": "gauge", "p": 1})),
        )
        .expect(400, "malformed_body"),
        sync(
            "counters not an array",
            json!({"version": 1, "replica": SEED_REPLICA, "region": "seed", "counters": {}})
                .to_string(),
        )
        .expect(400, "malformed_body"),
        sync(
            "replica of 31 hex digits",
            replica("000000000000000000000000000beef"),
        )
        .expect(400, "malformed_body"),
        sync(
            "replica not hex",
            replica("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
        )
        .expect(400, "malformed_body"),
        sync("total 2^64", total("18446744073709551616")).expect(400, "malformed_body"),
        sync(
            "total of 30 digits",
            total("123456789012345678901234567890"),
        )
        .expect(400, "malformed_body"),
        sync("total 1e400", total("1e400")).expect(400, "malformed_body"),
        sync("total negative", total("-1")).expect(400, "malformed_body"),
        sync("total a float", total("1.5")).expect(400, "malformed_body"),
        sync("total a string", total(r#""5""#)).expect(400, "malformed_body"),
        sync("total null", total("null")).expect(400, "malformed_body"),
        sync(
            "negative decrement total",
            after_a_valid_one(json!({"id": "seed-m", "kind": "pn", "p": 1, "n": -5})),
        )
        .expect(400, "malformed_body"),
        sync("nesting 10000 deep", "[".repeat(10_000)).expect(400, "malformed_body"),
        sync("counters nested 10000 deep", deep(10_000)).expect(400, "malformed_body"),
        // Protocol rules.
        sync(
            "version 7",
            good.replacen(r#""version":1"#, r#""version":7"#, 1),
        )
        .expect(422, "unsupported_version"),
        sync(
            "version 7 of another shape",
            r#"{"version":7,"shape":"new"}"#,
        )
        .expect(422, "unsupported_version"),
        // Versions 2 to 4 are spoken: a body of another shape is malformed, not another
        // version.
        sync(
            "version 2 of another shape",
            r#"{"version":2,"shape":"new"}"#,
        )
        .expect(400, "malformed_body"),
        sync(
            "visits in a version-2 sync",
            r#"{"version":2,"replica":"0000000000000000000000000000beef","region":"eu","counters":[{"id":"v","kind":"g","p":3,"visits":[{"end":3,"delta":1,"visitor":"u"}]}]}"#,
        )
        .expect(400, "malformed_body"),
        sync(
            "version 0",
            good.replacen(r#""version":1"#, r#""version":0"#, 1),
        )
        .expect(422, "unsupported_version"),
        sync(
            "version 2^32 + 1",
            good.replacen(r#""version":1"#, r#""version":4294967297"#, 1),
        )
        .expect(422, "unsupported_version"),
        sync("1001 counters", sync_body(Value::Array(many.clone())))
            .expect(422, "too_many_counters"),
        sync("nil replica", replica("00000000000000000000000000000000")).expect(422, "nil_replica"),
        sync("empty region", region("")).expect(422, "invalid_region"),
        sync("region with a space", region("eu west")).expect(422, "invalid_region"),
        sync("region of 65 bytes", region(&"r".repeat(65))).expect(422, "invalid_region"),
        sync("region with unicode", region("café")).expect(422, "invalid_region"),
        sync("empty counter id", id("")).expect(422, "empty_id"),
        sync("counter id of 129 bytes", id(&long)).expect(422, "id_too_long"),
        sync("counter id with a space", id("a b")).expect(422, "id_bad_char"),
        sync("counter id with a slash", id("a/b")).expect(422, "id_bad_char"),
        sync("counter id ..", id("..")).expect(422, "id_bad_char"),
        sync("counter id with NUL", id("a\0")).expect(422, "id_bad_char"),
        sync("counter id with unicode", id("café")).expect(422, "id_bad_char"),
        sync("counter id an emoji", id("\u{1F600}")).expect(422, "id_bad_char"),
        sync(
            "decrement on a counter",
            after_a_valid_one(json!({"id": "x", "kind": "g", "p": 1, "n": 1})),
        )
        .expect(422, "decrement_on_counter"),
        sync(
            "the same counter twice",
            after_a_valid_one(json!({"id": "seed-m", "kind": "g", "p": 2})),
        )
        .expect(422, "duplicate_counter"),
        sync(
            "v2: the same counter twice",
            v2(after_a_valid_one(
                json!({"id": "seed-m", "kind": "g", "p": 2}),
            )),
        )
        .expect(422, "duplicate_counter"),
        sync("v2: counter id with a space", v2(id("a b"))).expect(422, "id_bad_char"),
        sync("v2: counter id of 129 bytes", v2(id(&long))).expect(422, "id_too_long"),
        sync("v2: 1001 counters", v2(sync_body(Value::Array(many))))
            .expect(422, "too_many_counters"),
        sync(
            "v2: nil replica",
            v2(replica("00000000000000000000000000000000")),
        )
        .expect(422, "nil_replica"),
        sync("v2: region with a space", v2(region("eu west"))).expect(422, "invalid_region"),
        sync(
            "v2: unknown counter field",
            v2(after_a_valid_one(
                json!({"id": "x", "kind": "g", "p": 1, "q": 1}),
            )),
        )
        .expect(400, "malformed_body"),
        sync("v2: total 2^64", v2(total("18446744073709551616"))).expect(400, "malformed_body"),
        // The batch read: the sync token, JSON, and its own rules; it writes nothing anyway.
        case("read without a token", "POST", "/v1/read")
            .json(good_read.clone())
            .expect(401, "missing_token")
            .answer_header("www-authenticate", "Bearer"),
        case("read with a wrong token", "POST", "/v1/read")
            .header("Authorization", "Bearer wrong-token-0123456789")
            .json(good_read.clone())
            .expect(401, "invalid_token")
            .answer_header("www-authenticate", "Bearer"),
        case("read as text/plain", "POST", "/v1/read")
            .header("Authorization", &bearer())
            .header("Content-Type", "text/plain")
            .body(good_read.clone())
            .expect(415, "unsupported_media_type"),
        case("read without a content type", "POST", "/v1/read")
            .header("Authorization", &bearer())
            .body(good_read.clone())
            .expect(415, "unsupported_media_type"),
        read("read body empty", "").expect(400, "malformed_body"),
        read("read body not JSON", "version=2").expect(400, "malformed_body"),
        read("read body an array", "[]").expect(400, "malformed_body"),
        read(
            "read body an array of the fields",
            format!(r#"[2,"{SEED_REPLICA}",[]]"#),
        )
        .expect(400, "malformed_body"),
        read(
            "read with an unknown field",
            good_read.replacen('{', r#"{"extra":true,"#, 1),
        )
        .expect(400, "malformed_body"),
        read(
            "read of a counter without kind",
            read_of(json!([{"id": "seed-m"}])),
        )
        .expect(400, "malformed_body"),
        read(
            "read of an unknown kind",
            read_of(json!([{"id": "seed-m", "kind": "counter"}])),
        )
        .expect(400, "malformed_body"),
        read(
            "read of a replica not hex",
            good_read.replacen(SEED_REPLICA, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", 1),
        )
        .expect(400, "malformed_body"),
        read("read nesting 10000 deep", "[".repeat(10_000)).expect(400, "malformed_body"),
        read(
            "read of version 1",
            good_read.replacen(r#""version":2"#, r#""version":1"#, 1),
        )
        .expect(422, "unsupported_version"),
        read(
            "read of version 7",
            good_read.replacen(r#""version":2"#, r#""version":7"#, 1),
        )
        .expect(422, "unsupported_version"),
        read(
            "read of version 7 of another shape",
            r#"{"version":7,"shape":"new"}"#,
        )
        .expect(422, "unsupported_version"),
        read("read of 1001 counters", read_of(Value::Array(many_keys)))
            .expect(422, "too_many_counters"),
        read(
            "read of the same counter twice",
            read_of(json!([{"id": "seed-m", "kind": "g"}, {"kind": "g", "id": "seed-m"}])),
        )
        .expect(422, "duplicate_counter"),
        read(
            "read for the nil replica",
            good_read.replacen(SEED_REPLICA, "00000000000000000000000000000000", 1),
        )
        .expect(422, "nil_replica"),
        read(
            "read body over --max-body-bytes",
            format!("{good_read}{}", " ".repeat(MAX_BODY_BYTES)),
        )
        .expect(413, "body_too_large"),
        case("read with a trailing slash", "POST", "/v1/read/")
            .header("Authorization", &bearer())
            .json(good_read.clone())
            .expect(404, "not_found"),
        case("GET the read route", "GET", "/v1/read").expect(405, "method_not_allowed"),
        case("PUT a read", "PUT", "/v1/read")
            .header("Authorization", &bearer())
            .json(good_read.clone())
            .expect(405, "method_not_allowed"),
        // Size.
        sync(
            "sync body over --max-body-bytes",
            format!("{good}{}", " ".repeat(MAX_BODY_BYTES)),
        )
        .expect(413, "body_too_large"),
        case(
            "chunked sync body over --max-body-bytes",
            "POST",
            "/v1/sync",
        )
        .header("Authorization", &bearer())
        .header("Content-Type", "application/json")
        .chunked(format!("{good}{}", " ".repeat(MAX_BODY_BYTES)))
        .expect(413, "body_too_large"),
        // Ids in the read API.
        case(
            "read id of 129 bytes",
            "GET",
            format!("/v1/counters/{long}"),
        )
        .expect(400, "id_too_long"),
        case("read id with a space", "GET", "/v1/counters/a%20b").expect(400, "id_bad_char"),
        case("read id that is %2F", "GET", "/v1/gauges/%2F").expect(400, "id_bad_char"),
        case("read id ..", "GET", "/v1/counters/..").expect(400, "id_bad_char"),
        case("read id with %00", "GET", "/v1/counters/a%00").expect(400, "id_bad_char"),
        case("read id with unicode", "GET", "/v1/counters/caf%C3%A9").expect(400, "id_bad_char"),
        case("read id an emoji", "GET", "/v1/gauges/%F0%9F%98%80").expect(400, "id_bad_char"),
        case("read id of invalid UTF-8", "GET", "/v1/counters/%FF").expect(400, "invalid_path"),
        case(
            "read id with invalid UTF-8 inside",
            "GET",
            "/v1/gauges/a%FFb",
        )
        .expect(400, "invalid_path"),
        case("history of id ..", "GET", "/v1/counters/../history").expect(400, "id_bad_char"),
        case("history of an empty id", "GET", "/v1/gauges//history").expect(400, "empty_id"),
        // (A counter never counted is no error: it reads as count 0, `updated_at` null.)
        // Routes.
        case("unknown namespace", "GET", "/v1/widgets/x").expect(404, "not_found"),
        case("unknown namespace list", "GET", "/v1/widgets").expect(404, "not_found"),
        case("extra segment", "GET", "/v1/counters/seed-a/extra").expect(404, "not_found"),
        case("unknown version", "GET", "/v2/counters/seed-a").expect(404, "not_found"),
        case("list with a trailing slash", "GET", "/v1/counters/").expect(404, "not_found"),
        case("dot-dot route", "GET", "/v1/../v1/counters/seed-a").expect(404, "not_found"),
        case("sync with a trailing slash", "POST", "/v1/sync/")
            .header("Authorization", &bearer())
            .json(good.clone())
            .expect(404, "not_found"),
        // Queries.
        case("limit 0", "GET", "/v1/counters?limit=0").expect(400, "invalid_query"),
        case("limit 1001", "GET", "/v1/counters?limit=1001").expect(400, "invalid_query"),
        case("limit not a number", "GET", "/v1/gauges?limit=ten").expect(400, "invalid_query"),
        case("limit negative", "GET", "/v1/counters?limit=-1").expect(400, "invalid_query"),
        case("unknown query parameter", "GET", "/v1/counters?sort=desc")
            .expect(400, "invalid_query"),
        case("prefix with a slash", "GET", "/v1/counters?prefix=a%2Fb").expect(400, "id_bad_char"),
        case(
            "cursor of 129 bytes",
            "GET",
            format!("/v1/gauges?cursor={long}"),
        )
        .expect(400, "id_too_long"),
        case(
            "history from not RFC 3339",
            "GET",
            "/v1/counters/seed-a/history?from=yesterday",
        )
        .expect(400, "invalid_query"),
        case(
            "history from after to",
            "GET",
            "/v1/counters/seed-a/history?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
        )
        .expect(400, "invalid_query"),
        case(
            "history limit 10001",
            "GET",
            "/v1/counters/seed-a/history?limit=10001",
        )
        .expect(400, "invalid_query"),
        case(
            "history limit past u32",
            "GET",
            "/v1/gauges/seed-g/history?limit=99999999999",
        )
        .expect(400, "invalid_query"),
        // Methods.
        case("GET the sync route", "GET", "/v1/sync").expect(405, "method_not_allowed"),
        case("PUT a sync", "PUT", "/v1/sync")
            .header("Authorization", &bearer())
            .json(good.clone())
            .expect(405, "method_not_allowed"),
        case("DELETE the sync route", "DELETE", "/v1/sync").expect(405, "method_not_allowed"),
        // Reset, delete and import are the admin API's: off without --admin-token.
        case(
            "DELETE a counter, no admin API",
            "DELETE",
            "/v1/counters/seed-a",
        )
        .expect(403, "admin_disabled"),
        case(
            "reset a counter, no admin API",
            "POST",
            "/v1/counters/seed-a/reset",
        )
        .header("Authorization", &bearer())
        .expect(403, "admin_disabled"),
        case("import, no admin API", "POST", "/v1/gauges/seed-g/import")
            .json(r#"{"import":"x","count":1000000}"#)
            .expect(403, "admin_disabled"),
        case("DELETE a list", "DELETE", "/v1/counters").expect(405, "method_not_allowed"),
        case("POST to a counter", "POST", "/v1/counters/seed-a")
            .json(r#"{"delta":1}"#)
            .expect(405, "method_not_allowed"),
        case("PUT a gauge", "PUT", "/v1/gauges/seed-m")
            .json(r#"{"delta":1}"#)
            .expect(405, "method_not_allowed"),
        case("POST a list", "POST", "/v1/counters").expect(405, "method_not_allowed"),
        case("POST healthz", "POST", "/healthz").expect(405, "method_not_allowed"),
        case("PATCH metrics", "PATCH", "/metrics").expect(405, "method_not_allowed"),
    ]
}

#[tokio::test]
async fn hostile_requests_at_the_merger_get_their_documented_error_and_change_no_count() {
    let db = temp_dir();
    let merger = MergerProcess::start(db.path(), &MERGER_FLAGS).await;
    let client = http_client();

    seed(&client, &merger.url, None).await;
    let before = snapshot(&client, &merger.url, None).await;

    let started = Instant::now();
    let cases = merger_cases();
    let failures = run_table("merger", &merger.url, &cases).await;
    println!(
        "hostile input at the merger: {} cases ran in {:?}",
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = snapshot(&client, &merger.url, None).await;
    assert_eq!(after, before, "hostile requests changed the state");
    let (status, body) = get(&client, &format!("{}/healthz", merger.url)).await;
    assert_eq!((status, &body), (200, &json!({"status": "ok"})));
    merger.terminate().await;
}
