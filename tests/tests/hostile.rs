//! Hostile input, over the wire: a table of bad requests against the real edge worker (under
//! `wrangler dev`) and the real merger binary. Each must get its documented status and a JSON
//! error `{"error":{"code","message"}}` with the documented code, and none may change a
//! count: the counts seeded before the table are read again after it, at both sides.
//!
//! Requests go out over raw TCP (`Connection: close`, one request per connection), so paths,
//! headers and bodies reach the server byte for byte as written here: no client normalizes
//! `/../`, adds a content type or fixes a length.
//!
//! A second test holds slow clients against the merger: half a request line, half a head, an
//! idle connection, a head dribbled a byte at a time, and a body that stops halfway. The header
//! read timeout (1 s) closes the first four without an answer; the request timeout (2 s)
//! answers the last with `408 request_timeout` and closes it; a wrong token is refused before
//! its body arrives; and meanwhile `/healthz` answers at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The merger's limits for these tests: short timeouts so slow clients are cut off within the
/// test's time, and a 64 KiB body limit so an oversized body is cheap to send.
const MERGER_FLAGS: [&str; 6] = [
    "--header-read-timeout",
    "1s",
    "--request-timeout",
    "2s",
    "--max-body-bytes",
    "65536",
];
const MAX_BODY_BYTES: usize = 65_536;
/// The edge's `PUT` body limit (`edge/src/api.rs`, `MAX_BODY_BYTES`).
const EDGE_MAX_BODY: usize = 1024;

/// The replica the seeding sync comes from. The hostile syncs use it too, with larger totals
/// next to their violation, so a sync that was applied in part would show in the counts.
const SEED_REPLICA: &str = "0000000000000000000000000000beef";

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP.

/// How a request carries its body.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// With `Content-Length`.
    Fixed(Vec<u8>),
    /// `Transfer-Encoding: chunked` (512-byte chunks), no `Content-Length`.
    Chunked(Vec<u8>),
}

/// One bad request and the answer it must get.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    method: &'static str,
    /// Path and query, sent as written.
    target: String,
    headers: Vec<(String, String)>,
    body: Body,
    status: u16,
    code: &'static str,
    /// Headers the answer must carry, beyond the JSON content type.
    answer_headers: Vec<(&'static str, &'static str)>,
}

fn case(name: impl Into<String>, method: &'static str, target: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        method,
        target: target.into(),
        headers: Vec::new(),
        body: Body::None,
        status: 0,
        code: "",
        answer_headers: Vec::new(),
    }
}

impl Case {
    fn header(mut self, name: &str, value: &str) -> Case {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = Body::Fixed(body.into());
        self
    }

    fn chunked(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = Body::Chunked(body.into());
        self
    }

    /// A body declared as `application/json`.
    fn json(self, body: impl Into<Vec<u8>>) -> Case {
        self.header("Content-Type", "application/json").body(body)
    }

    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn answer_header(mut self, name: &'static str, value: &'static str) -> Case {
        self.answer_headers.push((name, value));
        self
    }

    /// The request's bytes.
    fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match &self.body {
            Body::None => {}
            Body::Fixed(body) => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        match &self.body {
            Body::None => {}
            Body::Fixed(body) => bytes.extend_from_slice(body),
            Body::Chunked(body) => {
                for chunk in body.chunks(512) {
                    bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    bytes.extend_from_slice(chunk);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            }
        }
        bytes
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn host_of(base: &str) -> &str {
    base.strip_prefix("http://")
        .expect("the harness serves plain http")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete response from `raw`; `Ok(None)` while it is incomplete. A response
/// without `Content-Length` or chunking runs to the end of `raw` (`eof`).
fn parse_answer(raw: &[u8], eof: bool) -> Result<Option<Answer>, String> {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return if eof {
            Err(format!(
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(raw)
            ))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| format!("response head: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match dechunk(rest) {
            Some(body) => body,
            None if eof => return Err("connection closed inside a chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| format!("content-length {len:?}"))?;
        match rest.get(..len) {
            Some(body) => body.to_vec(),
            None if eof => return Err("connection closed inside the body".into()),
            None => return Ok(None),
        }
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Answer {
        status,
        headers,
        body,
    }))
}

/// A complete chunked body, or `None` if it is not complete yet.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Reads from `stream` until one response is complete (or the connection ends), within
/// `limit`.
async fn read_answer(stream: &mut TcpStream, limit: Duration) -> Result<Answer, String> {
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 16 * 1024];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| format!("no complete response within {limit:?}"))?;
        // A reset after the response (the server closed with request bytes unread) still
        // leaves the response readable; a reset before it is a failure.
        let n = read.unwrap_or(0);
        raw.extend_from_slice(&buf[..n]);
        if let Some(answer) = parse_answer(&raw, n == 0)? {
            return Ok(answer);
        }
    }
}

/// Sends `case` on a fresh connection and reads the answer.
async fn send(base: &str, case: &Case) -> Result<Answer, String> {
    let host = host_of(base);
    let mut stream = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A server may refuse (413) and close before it has read the whole body: a failed write
    // is no failure, the answer is what counts.
    let _ = stream.write_all(&case.to_bytes(host)).await;
    read_answer(&mut stream, Duration::from_secs(20)).await
}

/// Checks one answer against its case: status, JSON content type, the exact error shape, the
/// code, a message, and any required headers.
fn check(case: &Case, answer: &Answer) -> Result<(), String> {
    let text = String::from_utf8_lossy(&answer.body);
    let shown: String = text.chars().take(300).collect();
    if answer.status != case.status {
        return Err(format!(
            "status {} (expected {} {}), body {shown}",
            answer.status, case.status, case.code
        ));
    }
    let content_type = answer.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!("content type {content_type:?}, body {shown}"));
    }
    let v: Value =
        serde_json::from_slice(&answer.body).map_err(|e| format!("not JSON ({e}): {shown}"))?;
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    if keys(&v) != ["error"] || keys(&v["error"]) != ["code", "message"] {
        return Err(format!(
            "not {{\"error\":{{\"code\",\"message\"}}}}: {shown}"
        ));
    }
    if v["error"]["code"] != case.code {
        return Err(format!(
            "code {} (expected {})",
            v["error"]["code"], case.code
        ));
    }
    if v["error"]["message"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no message: {shown}"));
    }
    for (name, value) in &case.answer_headers {
        if answer.header(name) != Some(value) {
            return Err(format!(
                "header {name}: {:?} (expected {value:?})",
                answer.header(name)
            ));
        }
    }
    Ok(())
}

/// Sends every case, one at a time; returns the failures, each naming its case.
async fn run_table(side: &str, base: &str, cases: &[Case]) -> Vec<String> {
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for case in cases {
        assert!(
            names.insert(&case.name),
            "duplicate case name {:?}",
            case.name
        );
        assert!(case.status != 0, "{}: no expectation", case.name);
        let result = match send(base, case).await {
            Ok(answer) => check(case, &answer),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let target: String = case.target.chars().take(80).collect();
            failures.push(format!(
                "{side} / {}: {} {target} -> {e}",
                case.name, case.method
            ));
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------
// The tables.

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
        // Session tokens.
        at_edge("session token that is no token", "GET", counter)
            .header("Tally-Session", "hello")
            .expect(400, "invalid_session"),
        at_edge("session token with a bad count", "GET", counter)
            .header("Tally-Session", "g:hostile=-5")
            .expect(400, "invalid_session"),
        at_edge("session token naming a counter twice", "PUT", counter)
            .header("Tally-Session", "g:a=1,g:a=2")
            .json(hit)
            .expect(400, "invalid_session"),
        at_edge("session token of 33 counters", "GET", counter)
            .header(
                "Tally-Session",
                &(0..33)
                    .map(|i| format!("g:c{i}=1"))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .expect(400, "invalid_session"),
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
        at_edge("DELETE an unknown route", "DELETE", "/x/widget").expect(404, "not_found"),
    ]
}

/// A sync body from the seeding replica (whose totals the hostile syncs try to raise).
fn sync_body(counters: Value) -> String {
    json!({"version": 1, "replica": SEED_REPLICA, "region": "seed", "counters": counters})
        .to_string()
}

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
            "version 3",
            good.replacen(r#""version":1"#, r#""version":3"#, 1),
        )
        .expect(422, "unsupported_version"),
        sync(
            "version 3 of another shape",
            r#"{"version":3,"shape":"new"}"#,
        )
        .expect(422, "unsupported_version"),
        // Version 2 is spoken: a body of another shape is malformed, not another version.
        sync(
            "version 2 of another shape",
            r#"{"version":2,"shape":"new"}"#,
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
            "read of version 3",
            good_read.replacen(r#""version":2"#, r#""version":3"#, 1),
        )
        .expect(422, "unsupported_version"),
        read(
            "read of version 3 of another shape",
            r#"{"version":3,"shape":"new"}"#,
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
        case("DELETE a counter", "DELETE", "/v1/counters/seed-a").expect(405, "method_not_allowed"),
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

// ---------------------------------------------------------------------------------------------
// Seeding and the state snapshot.

/// What must not change: the merger's views of every seeded counter and its full lists, and
/// the edge's reads of them.
#[derive(Debug, PartialEq)]
struct Snapshot {
    merger: Vec<(String, u16, Value)>,
    edge: Vec<(String, Option<i128>)>,
}

const MERGER_VIEWS: [&str; 8] = [
    "/v1/counters/seed-a",
    "/v1/counters/seed-m",
    "/v1/gauges/seed-m",
    "/v1/gauges/seed-g",
    // Never counted: reads as zero before and after, whatever the table tried.
    "/v1/counters/never-counted",
    "/v1/gauges/seed-a",
    "/v1/counters?limit=1000",
    "/v1/gauges?limit=1000",
];
/// Edge path, and its count once seeded.
const EDGE_COUNTS: [(&str, i128); 4] = [
    ("/seed-a/counter", 106),
    ("/seed-m/counter", 42),
    ("/seed-m/gauge", 7),
    ("/seed-g/gauge", 3),
];

async fn snapshot(client: &reqwest::Client, merger: &str, edge: &str) -> Snapshot {
    let mut snap = Snapshot {
        merger: Vec::new(),
        edge: Vec::new(),
    };
    for view in MERGER_VIEWS {
        let (status, body) = get(client, &format!("{merger}{view}")).await;
        snap.merger.push((view.to_owned(), status, body));
    }
    for (path, _) in EDGE_COUNTS {
        let (_, body) = get(client, &format!("{edge}{path}")).await;
        snap.edge.push((path.to_owned(), count_of(&body["count"])));
    }
    snap
}

/// Counts at the edge (hits from two regions) and at the merger (one sync from
/// [`SEED_REPLICA`]), then waits until the merger holds them all and every edge read agrees.
async fn seed(client: &reqwest::Client, merger: &str, edge: &str) {
    for (path, region, delta) in [
        ("/seed-a/counter", "eu", 1),
        ("/seed-a/counter", "eu", 2),
        ("/seed-a/counter", "us", 3),
        ("/seed-g/gauge", "us", 5),
        ("/seed-g/gauge", "eu", -2),
    ] {
        let (status, body) = hit(client, edge, path, region, delta).await;
        assert_eq!(status, 200, "seeding {path}: {body}");
    }
    let seeded = client
        .post(format!("{merger}/v1/sync"))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(sync_body(json!([
            {"id": "seed-m", "kind": "g", "p": 42},
            {"id": "seed-m", "kind": "pn", "p": 10, "n": 3},
            {"id": "seed-a", "kind": "g", "p": 100},
        ])))
        .send()
        .await
        .expect("the merger answers the seeding sync");
    assert_eq!(seeded.status(), 200, "{:?}", seeded.text().await);

    wait_until(
        Duration::from_secs(30),
        "the merger holds the seeds",
        || {
            let client = client.clone();
            async move {
                let mut all = true;
                for (path, count) in EDGE_COUNTS {
                    let (id, kind) = path[1..].split_once('/').expect("/{id}/{kind}");
                    let ns = if kind == "counter" {
                        "counters"
                    } else {
                        "gauges"
                    };
                    let (_, view) = get(&client, &format!("{merger}/v1/{ns}/{id}")).await;
                    all &= count_of(&view["count"]) == Some(count);
                }
                all
            }
        },
    )
    .await;
    // Each read goes to a random shard; eight agreeing reads in a row per counter means the
    // shards' caches caught up.
    wait_until(
        Duration::from_secs(30),
        "edge reads agree with the merger",
        || {
            let client = client.clone();
            async move {
                for (path, count) in EDGE_COUNTS {
                    for _ in 0..8 {
                        let (_, body) = get(&client, &format!("{edge}{path}")).await;
                        if count_of(&body["count"]) != Some(count) {
                            return false;
                        }
                    }
                }
                true
            }
        },
    )
    .await;
}

#[tokio::test]
async fn hostile_requests_get_their_documented_error_and_change_no_count() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &MERGER_FLAGS).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let client = reqwest::Client::new();

    seed(&client, &merger.url, &edge.url).await;
    let before = snapshot(&client, &merger.url, &edge.url).await;
    for (path, count) in EDGE_COUNTS {
        assert!(
            before.edge.contains(&(path.to_owned(), Some(count))),
            "{before:?}"
        );
    }

    let started = Instant::now();
    let (edge_cases, merger_cases) = (edge_cases(), merger_cases());
    let mut failures = run_table("edge", &edge.url, &edge_cases).await;
    failures.extend(run_table("merger", &merger.url, &merger_cases).await);
    println!(
        "hostile input: {} cases ran ({} at the edge, {} at the merger) in {:?}",
        edge_cases.len() + merger_cases.len(),
        edge_cases.len(),
        merger_cases.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests got another answer than documented:\n{}",
        failures.len(),
        edge_cases.len() + merger_cases.len(),
        failures.join("\n")
    );

    // Several sync intervals: anything a bad request had slipped into a replica would be
    // synced by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = snapshot(&client, &merger.url, &edge.url).await;
    assert_eq!(after, before, "hostile requests changed the state");
    let (status, body) = get(&client, &format!("{}/healthz", merger.url)).await;
    assert_eq!((status, &body), (200, &json!({"status": "ok"})));

    edge.stop().await;
    merger.terminate().await;
}

// ---------------------------------------------------------------------------------------------
// Slow clients.

/// True once the peer has closed the connection (EOF or reset) without sending anything.
async fn closed_silently(stream: &mut TcpStream, limit: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => Err(format!("still open after {limit:?}")),
        Ok(Ok(0) | Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!(
            "answered instead of closing: {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
    }
}

/// `GET /healthz` answers at once.
async fn assert_healthy(client: &reqwest::Client, merger: &str, while_: &str) {
    let start = Instant::now();
    let (status, body) = get(client, &format!("{merger}/healthz")).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"status": "ok"})),
        "healthz {while_}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "healthz took {:?} {while_}",
        start.elapsed()
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_others_are_served_meanwhile() {
    // No edge here, but the timings below are tighter with the CPU to ourselves.
    let _serial = serial().await;
    let db = temp_dir();
    let merger = MergerProcess::start(db.path(), &MERGER_FLAGS).await;
    let host = host_of(&merger.url).to_owned();
    let client = reqwest::Client::new();
    let connect = || async { TcpStream::connect(&host).await.expect("the merger accepts") };
    let start = Instant::now();

    // Half a request line, then nothing.
    let mut half_line = connect().await;
    half_line.write_all(b"GET /healthz HT").await.unwrap();
    // Half the headers, then nothing.
    let mut half_head = connect().await;
    half_head
        .write_all(format!("POST /v1/sync HTTP/1.1\r\nHost: {host}\r\nAuthoriz").as_bytes())
        .await
        .unwrap();
    // Connected, and never a byte.
    let mut idle = connect().await;
    // A full head (Content-Length: 100) and 10 bytes of body, then nothing.
    let mut half_body = connect().await;
    half_body
        .write_all(
            format!(
                "POST /v1/sync HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"version\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A head dribbled a byte every 100 ms: 6 s for the whole head, far past the 1 s allowed.
    let dribbled = format!(
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: {}\r\n\r\n",
        "z".repeat(20)
    );
    let (mut dribble_read, mut dribble_write) = connect().await.into_split();
    let dribbler = tokio::spawn(async move {
        for byte in dribbled.bytes() {
            if dribble_write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // A wrong token with a body still to come: refused at once, the token is checked before
    // the body is read.
    let mut no_body_yet = connect().await;
    no_body_yet
        .write_all(
            format!(
                "POST /v1/sync HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer not-the-token-000000\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let refused = read_answer(&mut no_body_yet, Duration::from_millis(900))
        .await
        .expect("a wrong token is refused before the body arrives");
    let refused_case = case("", "POST", "/v1/sync").expect(401, "invalid_token");
    check(&refused_case, &refused).expect("the early refusal is the documented error");

    // While all of them hang, others are served.
    for _ in 0..4 {
        assert_healthy(&client, &merger.url, "while slow clients hang").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // The header read timeout (1 s) closes the unfinished heads, silently.
    for (what, stream) in [
        ("half a request line", &mut half_line),
        ("half a head", &mut half_head),
        ("an idle connection", &mut idle),
    ] {
        closed_silently(stream, Duration::from_secs(4))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let at = start.elapsed();
        assert!(
            at >= Duration::from_millis(900),
            "{what} closed after {at:?}, before the 1 s header timeout"
        );
    }
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(4), dribble_read.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "a dribbled head was answered: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("a head dribbled for {:?} is still open", start.elapsed()),
    }
    // The whole head takes the dribbler over 6 s: a close before that cut it off unfinished.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "the dribbled head was closed only after {:?}",
        start.elapsed()
    );
    dribbler.abort();

    // The request timeout (2 s) answers the stalled body with the JSON 408, then closes.
    let answer = read_answer(&mut half_body, Duration::from_secs(5))
        .await
        .expect("a stalled body gets an answer");
    let at = start.elapsed();
    let timeout_case = case("", "POST", "/v1/sync").expect(408, "request_timeout");
    check(&timeout_case, &answer).expect("a stalled body gets the documented 408");
    assert!(
        at >= Duration::from_millis(1800),
        "408 after {at:?}, before the 2 s request timeout"
    );
    closed_silently(&mut half_body, Duration::from_secs(3))
        .await
        .expect("the connection of a timed-out request is closed");

    // Afterwards: still serving, and none of it reached the state.
    assert_healthy(&client, &merger.url, "after the slow clients").await;
    let (status, body) = get(&client, &format!("{}/v1/counters", merger.url)).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"items": [], "next_cursor": null}))
    );
    println!("slow clients: 6 held, cut off by {:?}", start.elapsed());
    merger.terminate().await;
}
