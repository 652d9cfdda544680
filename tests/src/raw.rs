//! A raw HTTP/1.1 client over TCP, for hostile input: paths, headers and bodies reach the
//! server byte for byte as written (`Connection: close`, one request per connection), since
//! no client library would send `/../` unnormalized, a missing content type or a wrong
//! length. A [`Case`] is a request and the documented error it must get; [`run_table`] sends a
//! table of them and [`check`] judges each answer: status, JSON content type, exactly
//! `{"error":{"code","message"}}`, the code, a message and any required headers.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a request carries its body.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body.
    None,
    /// With `Content-Length`.
    Fixed(Vec<u8>),
    /// `Transfer-Encoding: chunked` (512-byte chunks), no `Content-Length`.
    Chunked(Vec<u8>),
}

/// One request, written byte for byte, and the answer it must get.
#[derive(Debug, Clone)]
pub struct Case {
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

/// A case named `name`: `method` on `target` (path and query, sent as written), no headers,
/// no body, no expectation yet ([`Case::expect`]).
pub fn case(name: impl Into<String>, method: &'static str, target: impl Into<String>) -> Case {
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
    /// Adds a request header, as written.
    pub fn header(mut self, name: &str, value: &str) -> Case {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A body with `Content-Length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = Body::Fixed(body.into());
        self
    }

    /// A chunked body (512-byte chunks).
    pub fn chunked(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = Body::Chunked(body.into());
        self
    }

    /// A body declared as `application/json`.
    pub fn json(self, body: impl Into<Vec<u8>>) -> Case {
        self.header("Content-Type", "application/json").body(body)
    }

    /// The answer it must get: `status` and a JSON error with `code`.
    pub fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    /// A header the answer must carry (name in lower case).
    pub fn answer_header(mut self, name: &'static str, value: &'static str) -> Case {
        self.answer_headers.push((name, value));
        self
    }

    /// The request's bytes.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
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

impl Case {
    /// How many of [`Case::to_bytes`]'s bytes are the head (request line, headers and the
    /// blank line): the rest is the body. Slow clients send part of either.
    pub fn head_len(&self, host: &str) -> usize {
        let bytes = self.to_bytes(host);
        find(&bytes, b"\r\n\r\n").map_or(bytes.len(), |at| at + 4)
    }
}

/// A new connection to `host` (`127.0.0.1:PORT`), within 10 s.
pub async fn connect(host: &str) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(host))
        .await
        .unwrap_or_else(|_| panic!("{host} accepts a connection within 10 s"))
        .unwrap_or_else(|e| panic!("{host} accepts a connection: {e}"))
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `host:port` of an `http://host:port` base URL.
pub fn host_of(base: &str) -> &str {
    base.strip_prefix("http://")
        .expect("the harness serves plain http")
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete response from `raw`; `Ok(None)` while it is incomplete. A response
/// without `Content-Length` or chunking runs to the end of `raw` (`eof`).
pub fn parse_answer(raw: &[u8], eof: bool) -> Result<Option<Answer>, String> {
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
pub async fn read_answer(stream: &mut TcpStream, limit: Duration) -> Result<Answer, String> {
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
pub async fn send(base: &str, case: &Case) -> Result<Answer, String> {
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
pub fn check(case: &Case, answer: &Answer) -> Result<(), String> {
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
pub async fn run_table(side: &str, base: &str, cases: &[Case]) -> Vec<String> {
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

/// True once the peer has closed the connection (EOF or reset) without sending anything.
pub async fn closed_silently(stream: &mut TcpStream, limit: Duration) -> Result<(), String> {
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
