//! The public API of the edge, as plain functions: routes, request parsing, response bodies
//! and errors. The Worker glue (`lib.rs`, `counter/object.rs`) only moves bytes through these.
//!
//! - `PUT /{id}/counter` counts a hit (body empty for +1, or `{"delta": n}`, 1 ≤ n ≤ 1,000,000);
//!   `GET /{id}/counter` reads. Increment-only (a G-Counter).
//! - `PUT /{id}/gauge` adds `{"delta": n}` (n ≠ 0, |n| ≤ 1,000,000; empty body +1); `GET` reads.
//!   Goes up and down (a PN-Counter); the count may be negative.
//! - Both answer `{"count": 715, "updated_at": "2030-10-10T12:11:42.000Z"}`
//!   (`updated_at` is `null` for a counter nobody has hit).
//! - `GET /counter?ids=a,b,c` (and `/gauge?ids=`) reads up to [`MAX_BATCH_IDS`] at once.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_crdt::{Count, CounterKey, CounterKind, SlotTotals, Timestamp};

/// Largest `PUT` body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024;
/// Largest magnitude of one `PUT`'s delta (with the write key).
pub const MAX_DELTA: u64 = 1_000_000;
/// Most ids one batch read may name.
pub const MAX_BATCH_IDS: usize = 100;

/// What a public request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/{id}/counter` or `/{id}/gauge`.
    One(CounterKey),
    /// `/counter?ids=…` or `/gauge?ids=…`: a batch read.
    Batch(CounterKind),
    /// `/{id}/presence`: viewers now.
    Presence(String),
    /// `/{id}/unique`: unique visitors.
    Unique(String),
}

/// Every error the edge answers, as `{"error":{"code","message"}}` with its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No such route.
    #[error(
        "no such resource: use /{{id}}/counter, /{{id}}/gauge, /{{id}}/presence, /{{id}}/unique, or /counter?ids=a,b for several"
    )]
    NotFound,
    /// A method the route does not have; the methods it has, for the `Allow` header.
    #[error("method not allowed: use {0}")]
    MethodNotAllowed(&'static str),
    /// The id breaks the id rules.
    #[error("invalid counter id: {0}")]
    InvalidId(tally_crdt::Error),
    /// A region override that breaks the region rules.
    #[error("invalid X-Tally-Region: {0}")]
    InvalidRegion(tally_crdt::Error),
    /// A body that is not `{"delta": <integer>}`.
    #[error("invalid body: {0}; send no body for +1, or {{\"delta\": n}}")]
    InvalidBody(String),
    /// A delta outside what the counter accepts.
    #[error("{0}")]
    InvalidDelta(&'static str),
    /// A body over [`MAX_BODY_BYTES`].
    #[error("request body is too large: at most {MAX_BODY_BYTES} bytes (8 KiB for /{{id}}/unique)")]
    BodyTooLarge,
    /// A body declared as something other than JSON.
    #[error("unsupported content type: send Content-Type: application/json")]
    UnsupportedMediaType,
    /// A batch read's query that is not `ids=<id>,<id>,…` within the bounds.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A write that needs the application's write key, sent without it.
    #[error("{0}")]
    WriteKeyRequired(String),
    /// A write key that is not the application's.
    #[error("invalid write key")]
    InvalidWriteKey,
    /// The client used up its budget of new counter ids; existing ones still count.
    #[error("too many new counter ids from this client; retry in a minute or count an existing id")]
    TooManyNewIds,
    /// The client used up its budget of public hits (the `HITS` rate limit); with the write
    /// key, hits still count.
    #[error("too many hits from this client; retry in a minute")]
    TooManyHits,
    /// A page of an origin `ALLOWED_ORIGINS` does not list.
    #[error("this origin may not call the edge (it is not in ALLOWED_ORIGINS)")]
    OriginNotAllowed,
    /// The hit would take this replica's slot past `u64::MAX`; nothing was counted.
    #[error("{0}")]
    Overflow(tally_crdt::Error),
    /// This replica holds no global value for the counter and the merger cannot be reached.
    #[error("the global count is unavailable (merger unreachable and nothing cached); retry later")]
    Unavailable,
    /// A presence session id outside the rules.
    #[error("invalid session: 1 to 64 ASCII letters, digits, `-` or `_`")]
    InvalidSessionId,
    /// The presence object holds as many sessions as it may; existing ones still renew.
    #[error("too many viewers on this object; retry in a minute")]
    TooManySessions,
    /// A presence call that needs a session, sent without one.
    #[error("{0}")]
    SessionRequired(&'static str),
    /// A visitor key outside the rules (named: a unique hit's, or a counter hit's).
    #[error("invalid visitor key: {0}")]
    InvalidVisitor(&'static str),
    /// A unique hit without a visitor key where none can be derived (no `UNIQUE_SALT`).
    #[error("a visitor key is required: send {{\"visitor\": \"…\"}}")]
    VisitorRequired,
    /// A unique read's day that is not `YYYY-MM-DD` or `today`.
    #[error("invalid day: expected YYYY-MM-DD or today")]
    InvalidDay,
    /// Something failed inside the edge (logged).
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::InvalidId(_)
            | ApiError::InvalidRegion(_)
            | ApiError::InvalidBody(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidSessionId
            | ApiError::SessionRequired(_)
            | ApiError::InvalidVisitor(_)
            | ApiError::InvalidDay => 400,
            ApiError::WriteKeyRequired(_) | ApiError::InvalidWriteKey => 401,
            ApiError::TooManyNewIds | ApiError::TooManyHits | ApiError::TooManySessions => 429,
            ApiError::OriginNotAllowed => 403,
            ApiError::VisitorRequired => 422,
            ApiError::InvalidDelta(_) | ApiError::Overflow(_) => 422,
            ApiError::BodyTooLarge => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::Unavailable => 503,
            ApiError::Internal => 500,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::InvalidId(e) => e.code(),
            ApiError::InvalidRegion(_) => "invalid_region",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::WriteKeyRequired(_) => "write_key_required",
            ApiError::InvalidWriteKey => "invalid_write_key",
            ApiError::TooManyNewIds => "too_many_new_ids",
            ApiError::TooManyHits => "too_many_hits",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::InvalidDelta(_) => "invalid_delta",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Overflow(_) => "slot_overflow",
            ApiError::Unavailable => "merger_unreachable",
            ApiError::InvalidSessionId => "invalid_session_id",
            ApiError::TooManySessions => "too_many_sessions",
            ApiError::SessionRequired(_) => "session_required",
            ApiError::InvalidVisitor(_) => "invalid_visitor",
            ApiError::VisitorRequired => "visitor_required",
            ApiError::InvalidDay => "invalid_day",
            ApiError::Internal => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        json!({"error": {"code": self.code(), "message": self.to_string()}}).to_string()
    }
}

impl Route {
    /// The methods the route has (its `Allow` header).
    pub fn allow(&self) -> &'static str {
        match self {
            Route::One(_) => "GET, HEAD, PUT, OPTIONS",
            Route::Batch(_) => "GET, HEAD, OPTIONS",
            Route::Presence(_) => "GET, HEAD, PUT, DELETE, OPTIONS",
            Route::Unique(_) => "GET, HEAD, PUT, OPTIONS",
        }
    }
}

/// Parses a public path: `/{id}/counter`, `/{id}/gauge`, `/{id}/presence`, `/{id}/unique`, or
/// `/counter` and `/gauge` for a batch read. The id is percent-decoded first, as the merger's
/// paths are (`/post%3Alikes/counter`, as `encodeURIComponent` writes `post:likes`, names the
/// counter `post:likes`); what decodes to a character the id rules refuse (`%2F`, `%20`, bytes
/// that are not UTF-8) is refused as that character.
pub fn parse_path(path: &str) -> Result<Route, ApiError> {
    if let Some(kind) = path.strip_prefix('/').and_then(CounterKind::from_resource) {
        return Ok(Route::Batch(kind));
    }
    let Some((raw, resource)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Err(ApiError::NotFound);
    };
    let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let checked = || {
        tally_crdt::check_counter_id(&id)
            .map(|()| id.clone().into_owned())
            .map_err(ApiError::InvalidId)
    };
    match resource {
        "presence" => checked().map(Route::Presence),
        "unique" => checked().map(Route::Unique),
        _ => match CounterKind::from_resource(resource) {
            Some(kind) => CounterKey::new(kind, id.into_owned())
                .map(Route::One)
                .map_err(ApiError::InvalidId),
            None => Err(ApiError::NotFound),
        },
    }
}

/// Parses a batch read's query `ids=a,b,c`: 1 to [`MAX_BATCH_IDS`] valid ids, each once.
/// The query is form-urlencoded, so `ids=a%2Cb` (as `URLSearchParams` writes a comma) is
/// `a` and `b`.
pub fn parse_ids(kind: CounterKind, query: Option<&str>) -> Result<Vec<CounterKey>, ApiError> {
    let usage = || ApiError::InvalidQuery("expected ids=<id>,<id>,…".into());
    let mut ids = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "ids" if ids.is_none() => ids = Some(value),
            _ => return Err(usage()),
        }
    }
    let list = ids.filter(|l| !l.is_empty()).ok_or_else(usage)?;
    let mut keys = Vec::new();
    for id in list.split(',') {
        if keys.len() == MAX_BATCH_IDS {
            return Err(ApiError::InvalidQuery(format!(
                "at most {MAX_BATCH_IDS} ids per read"
            )));
        }
        let key = CounterKey::new(kind, id).map_err(ApiError::InvalidId)?;
        if keys.contains(&key) {
            return Err(ApiError::InvalidQuery(format!("{id:?} is named twice")));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The `PUT` body. Both fields may be left out, neither may be `null`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HitBody {
    #[serde(default, deserialize_with = "present")]
    delta: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    visitor: Option<String>,
}

/// A field that, when given, holds a value (`null` is refused, not read as absent).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A parsed `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitRequest {
    /// What it adds to this replica's slot: `p` for increments, `n` for decrements.
    pub add: SlotTotals,
    /// The client's opaque visitor key (counters only), kept with the hit if it wins a
    /// milestone while its counter is near one (docs/milestones.md).
    pub visitor: Option<String>,
}

/// Parses a `PUT` body: empty for +1, or `{"delta": n, "visitor": "…"}` (both optional;
/// `visitor` on counters only, 1 to 64 printable ASCII characters).
///
/// `content_type` is the request's `Content-Type`, if any; a body must be declared as JSON
/// (or not declared at all).
pub fn parse_hit(
    kind: CounterKind,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HitRequest, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(HitRequest {
            add: SlotTotals { p: 1, n: 0 },
            visitor: None,
        });
    }
    if let Some(ct) = content_type {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    // serde's derive also reads the struct from a JSON array (`[5]`), a form the API does not
    // have. (Not through a `Value`: that keeps the last of duplicate keys.)
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidBody("expected a JSON object".into()));
    }
    let HitBody { delta, visitor } =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let delta = match (delta, &visitor) {
        (Some(delta), _) => delta,
        (None, Some(_)) => 1,
        (None, None) => return Err(ApiError::InvalidBody("missing field `delta`".into())),
    };
    if let Some(v) = &visitor {
        if kind != CounterKind::G {
            return Err(ApiError::InvalidBody(
                "a visitor key goes with counter hits (/{id}/counter), not gauges".into(),
            ));
        }
        if tally_crdt::check_visitor(v).is_err() {
            return Err(ApiError::InvalidVisitor(
                "1 to 64 printable ASCII characters",
            ));
        }
    }
    let magnitude = delta.unsigned_abs();
    let add = match kind {
        CounterKind::G if delta < 1 => Err(ApiError::InvalidDelta(
            "a counter only goes up: delta must be 1 to 1000000 (use /{id}/gauge to go down)",
        )),
        CounterKind::Pn if delta == 0 => Err(ApiError::InvalidDelta("delta must not be 0")),
        _ if magnitude > MAX_DELTA => Err(ApiError::InvalidDelta(
            "delta must be at most 1000000 in magnitude",
        )),
        _ if delta > 0 => Ok(SlotTotals { p: magnitude, n: 0 }),
        _ => Ok(SlotTotals { p: 0, n: magnitude }),
    }?;
    Ok(HitRequest { add, visitor })
}

/// The answer to a read or a hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountBody {
    /// The value: a JSON number below 2^53, a decimal string beyond.
    pub count: Count,
    /// The newest change known; `null` for a counter nobody has hit.
    pub updated_at: Option<Timestamp>,
    /// A hit on the exact path that won a milestone: which (left out otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestone: Option<Won>,
}

/// The milestone a hit won, in its `PUT` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Won {
    /// The milestone: this hit was the N-th.
    pub n: Count,
    /// Its label; `null` without one.
    pub label: Option<String>,
}

/// One counter of a batch read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BatchItem {
    /// Its count.
    Count {
        /// The id.
        id: String,
        /// As for a single read.
        #[serde(flatten)]
        body: CountBody,
    },
    /// Why it could not be read.
    Error {
        /// The id.
        id: String,
        /// As the API's errors.
        error: serde_json::Value,
    },
}

impl BatchItem {
    /// The item for an error.
    pub fn error(id: &str, e: &ApiError) -> BatchItem {
        BatchItem::Error {
            id: id.to_owned(),
            error: json!({"code": e.code(), "message": e.to_string()}),
        }
    }
}

/// The answer to a batch read, in the order of the ids asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchBody {
    /// One per id.
    pub items: Vec<BatchItem>,
}

/// The query of a serialized URL: after the first `?`, before any `#`; `None` without a `?`
/// (as `url::Url::query` reads it).
pub fn url_query(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once('?')?;
    Some(rest.split_once('#').map_or(rest, |(query, _)| query))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_read_from_the_serialized_url() {
        assert_eq!(url_query("https://e.test/a/counter"), None);
        assert_eq!(url_query("https://e.test/a/counter?"), Some(""));
        assert_eq!(
            url_query("https://e.test/counters?ids=a%2Cb&x=1"),
            Some("ids=a%2Cb&x=1")
        );
        assert_eq!(
            url_query("https://e.test/p?session=s#frag"),
            Some("session=s")
        );
        assert_eq!(url_query("https://e.test/p?a=%3F?b"), Some("a=%3F?b"));
    }

    #[test]
    fn paths_name_a_counter_a_gauge_or_a_batch() {
        assert_eq!(
            parse_path("/home/counter"),
            Ok(Route::One(CounterKey::new(CounterKind::G, "home").unwrap()))
        );
        assert_eq!(
            parse_path("/viewers:page-1/gauge"),
            Ok(Route::One(
                CounterKey::new(CounterKind::Pn, "viewers:page-1").unwrap()
            ))
        );
        assert_eq!(parse_path("/gauge"), Ok(Route::Batch(CounterKind::Pn)));
        assert_eq!(
            parse_path("/page:1/presence"),
            Ok(Route::Presence("page:1".into()))
        );
        assert_eq!(
            parse_path("/page:1/unique"),
            Ok(Route::Unique("page:1".into()))
        );
        assert!(matches!(
            parse_path("/a%20b/presence"),
            Err(ApiError::InvalidId(_))
        ));
        assert!(matches!(
            parse_path("//unique"),
            Err(ApiError::InvalidId(_))
        ));
        for bad in [
            "",
            "/",
            "/home",
            "/home/counter/x",
            "/home/widget",
            "home/counter",
            "/counters",
        ] {
            assert_eq!(parse_path(bad), Err(ApiError::NotFound), "{bad:?}");
        }
        // Percent-encoded as encodeURIComponent writes ids; decoded before the id rules.
        assert_eq!(
            parse_path("/post%3Alikes/counter"),
            Ok(Route::One(
                CounterKey::new(CounterKind::G, "post:likes").unwrap()
            ))
        );
        assert_eq!(
            parse_path("/page%3a1/presence"),
            Ok(Route::Presence("page:1".into()))
        );
        for bad in [
            "//counter",
            "/a%20b/counter",
            "/../counter",
            "/a%2Fb/counter",
            "/%2e%2e/counter",
            "/a%00/gauge",
            "/caf%C3%A9/counter",
            "/%FF/counter",
            "/a%2Fb/unique",
        ] {
            assert!(
                matches!(parse_path(bad), Err(ApiError::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn batch_reads_name_each_id_once_within_the_bound() {
        let ids = parse_ids(CounterKind::G, Some("ids=a,b:c,d")).unwrap();
        assert_eq!(
            ids.iter().map(CounterKey::id).collect::<Vec<_>>(),
            ["a", "b:c", "d"]
        );
        let code = |q: Option<&str>| parse_ids(CounterKind::G, q).unwrap_err().code();
        assert_eq!(code(None), "invalid_query");
        assert_eq!(code(Some("ids=")), "invalid_query");
        assert_eq!(code(Some("ids=a&ids=b")), "invalid_query");
        assert_eq!(code(Some("x=1")), "invalid_query");
        assert_eq!(code(Some("ids=a,a")), "invalid_query");
        assert_eq!(code(Some("ids=a,,b")), "empty_id");
        assert_eq!(code(Some("ids=a%20b")), "id_bad_char");
        assert_eq!(code(Some("ids=a+b")), "id_bad_char");
        assert_eq!(code(Some("ids")), "invalid_query");
        // Percent-encoded, as URLSearchParams and most HTTP clients write a query.
        let ids = parse_ids(CounterKind::G, Some("ids=a%2Cb%3Ac&")).unwrap();
        assert_eq!(
            ids.iter().map(CounterKey::id).collect::<Vec<_>>(),
            ["a", "b:c"]
        );
        assert_eq!(code(Some("ids=a%2Ca")), "invalid_query");
        let many: Vec<String> = (0..=MAX_BATCH_IDS).map(|i| format!("c{i}")).collect();
        assert_eq!(
            code(Some(&format!("ids={}", many.join(",")))),
            "invalid_query"
        );
    }

    #[test]
    fn an_empty_body_is_one_hit() {
        assert_eq!(
            parse_hit(CounterKind::G, None, b"").map(|h| h.add),
            Ok(SlotTotals { p: 1, n: 0 })
        );
        assert_eq!(
            parse_hit(CounterKind::Pn, Some("text/plain"), b"  \n").map(|h| h.add),
            Ok(SlotTotals { p: 1, n: 0 })
        );
    }

    #[test]
    fn deltas_within_bounds() {
        let json = Some("application/json; charset=utf-8");
        assert_eq!(
            parse_hit(CounterKind::G, json, br#"{"delta": 5}"#).map(|h| h.add),
            Ok(SlotTotals { p: 5, n: 0 })
        );
        assert_eq!(
            parse_hit(CounterKind::G, None, br#"{"delta": 1000000}"#).map(|h| h.add),
            Ok(SlotTotals { p: 1_000_000, n: 0 })
        );
        assert_eq!(
            parse_hit(CounterKind::Pn, json, br#"{"delta": -3}"#).map(|h| h.add),
            Ok(SlotTotals { p: 0, n: 3 })
        );
        assert_eq!(
            parse_hit(CounterKind::Pn, json, br#"{"delta": -1000000}"#).map(|h| h.add),
            Ok(SlotTotals { p: 0, n: 1_000_000 })
        );
    }

    #[test]
    fn a_counter_hit_may_carry_a_visitor_key() {
        let hit = parse_hit(CounterKind::G, None, br#"{"visitor": "user-42"}"#).unwrap();
        assert_eq!(hit.add, SlotTotals { p: 1, n: 0 });
        assert_eq!(hit.visitor.as_deref(), Some("user-42"));
        let hit = parse_hit(CounterKind::G, None, br#"{"delta": 3, "visitor": "a b"}"#).unwrap();
        assert_eq!((hit.add.p, hit.visitor.as_deref()), (3, Some("a b")));
        let code = |kind, body: &[u8]| parse_hit(kind, None, body).unwrap_err().code();
        let long = format!(r#"{{"visitor": "{}"}}"#, "v".repeat(65));
        assert_eq!(code(CounterKind::G, long.as_bytes()), "invalid_visitor");
        assert_eq!(
            code(CounterKind::G, br#"{"visitor": ""}"#),
            "invalid_visitor"
        );
        assert_eq!(
            code(CounterKind::G, br#"{"visitor": "tab\there"}"#),
            "invalid_visitor"
        );
        assert_eq!(
            code(CounterKind::G, "{\"visitor\": \"caf\u{e9}\"}".as_bytes()),
            "invalid_visitor"
        );
        assert_eq!(
            code(CounterKind::Pn, br#"{"delta": 1, "visitor": "x"}"#),
            "invalid_body"
        );
        assert_eq!(code(CounterKind::G, br#"{"visitor": 5}"#), "invalid_body");
        assert_eq!(
            code(CounterKind::G, br#"{"visitor": null}"#),
            "invalid_body"
        );
        assert_eq!(
            code(CounterKind::G, br#"{"delta": null, "visitor": "x"}"#),
            "invalid_body"
        );
    }

    #[test]
    fn bad_deltas_are_refused_with_their_code() {
        let code = |kind, body: &[u8]| parse_hit(kind, None, body).unwrap_err().code();
        assert_eq!(code(CounterKind::G, br#"{"delta": -1}"#), "invalid_delta");
        assert_eq!(code(CounterKind::G, br#"{"delta": 0}"#), "invalid_delta");
        assert_eq!(
            code(CounterKind::G, br#"{"delta": 1000001}"#),
            "invalid_delta"
        );
        assert_eq!(code(CounterKind::Pn, br#"{"delta": 0}"#), "invalid_delta");
        assert_eq!(
            code(CounterKind::Pn, br#"{"delta": -1000001}"#),
            "invalid_delta"
        );
        assert_eq!(
            code(CounterKind::Pn, br#"{"delta": -9223372036854775808}"#),
            "invalid_delta"
        );
        for bad in [
            &b"{"[..],
            b"[]",
            b"{\"delta\": 1.5}",
            b"{\"delta\": \"1\"}",
            b"{\"delta\": 99999999999999999999}",
            b"{\"delta\": 1, \"x\": 2}",
            b"{}",
            b"null",
            b"[5]",
            br#"{"delta": 1, "delta": 2}"#,
            b"[-3]",
        ] {
            assert_eq!(
                code(CounterKind::G, bad),
                "invalid_body",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_hit(CounterKind::G, Some("text/plain"), br#"{"delta": 1}"#),
            Err(ApiError::UnsupportedMediaType)
        );
        assert_eq!(
            parse_hit(CounterKind::G, None, &[b' '; MAX_BODY_BYTES + 1]),
            Err(ApiError::BodyTooLarge)
        );
    }

    #[test]
    fn bodies_have_the_documented_shape() {
        let body = |count, at: Option<i64>| {
            serde_json::to_string(&CountBody {
                count: Count(count),
                updated_at: at.map(Timestamp::from_unix_ms),
                milestone: None,
            })
            .unwrap()
        };
        assert_eq!(
            body(715, Some(1_917_864_702_000)),
            r#"{"count":715,"updated_at":"2030-10-10T12:11:42.000Z"}"#
        );
        assert_eq!(
            body(1 << 60, Some(0)),
            r#"{"count":"1152921504606846976","updated_at":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(body(0, None), r#"{"count":0,"updated_at":null}"#);
        let batch = BatchBody {
            items: vec![
                BatchItem::Count {
                    id: "a".into(),
                    body: CountBody {
                        count: Count(1),
                        updated_at: None,
                        milestone: None,
                    },
                },
                BatchItem::error("b", &ApiError::Unavailable),
            ],
        };
        let json: serde_json::Value = serde_json::to_value(&batch).unwrap();
        assert_eq!(json["items"][0]["count"], 1);
        assert_eq!(json["items"][1]["error"]["code"], "merger_unreachable");
        let err: serde_json::Value = serde_json::from_str(&ApiError::NotFound.body()).unwrap();
        assert_eq!(err["error"]["code"], "not_found");
    }
}
