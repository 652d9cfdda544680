//! The public API of the edge, as plain functions: routes, request parsing, response bodies
//! and errors. The Worker glue (`lib.rs`, `replica.rs`) only moves bytes through these.
//!
//! - `PUT /{id}/counter` counts a hit (body empty for +1, or `{"delta": n}`, 1 ≤ n ≤ 1,000,000);
//!   `GET /{id}/counter` reads. Increment-only (a G-Counter).
//! - `PUT /{id}/gauge` adds `{"delta": n}` (n ≠ 0, |n| ≤ 1,000,000; empty body +1); `GET` reads.
//!   Goes up and down (a PN-Counter); the count may be negative.
//! - Both answer `{"count": 715, "updated_at": "2030-10-10T12:11:42Z"}`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_crdt::{Count, CounterKind, SlotTotals, check_counter_id};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest `PUT` body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024;
/// Largest magnitude of one `PUT`'s delta.
pub const MAX_DELTA: u64 = 1_000_000;

/// The counter a request is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// `g` for `/counter`, `pn` for `/gauge`.
    pub kind: CounterKind,
    /// The counter id.
    pub id: String,
}

/// Every error the edge answers, as `{"error":{"code","message"}}` with its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No such route.
    #[error("no such resource: use /{{id}}/counter or /{{id}}/gauge")]
    NotFound,
    /// A method other than GET, PUT or OPTIONS.
    #[error("method not allowed: use GET or PUT")]
    MethodNotAllowed,
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
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// A body declared as something other than JSON.
    #[error("unsupported content type: send Content-Type: application/json")]
    UnsupportedMediaType,
    /// The hit would take this replica's slot past `u64::MAX`; nothing was counted.
    #[error("{0}")]
    Overflow(tally_crdt::Error),
    /// This replica holds no global value for the counter and the merger cannot be reached.
    #[error("the global count is unavailable (merger unreachable and nothing cached); retry later")]
    Unavailable,
    /// Something failed inside the edge (logged).
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::InvalidId(_) | ApiError::InvalidRegion(_) | ApiError::InvalidBody(_) => 400,
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
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::InvalidId(e) => e.code(),
            ApiError::InvalidRegion(_) => "invalid_region",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidDelta(_) => "invalid_delta",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Overflow(_) => "slot_overflow",
            ApiError::Unavailable => "merger_unreachable",
            ApiError::Internal => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        json!({"error": {"code": self.code(), "message": self.to_string()}}).to_string()
    }
}

/// Parses `/{id}/counter` or `/{id}/gauge`. Ids need no percent-decoding: the id charset
/// has no character that is escaped in a URL, so any `%` is an invalid id.
pub fn parse_path(path: &str) -> Result<Target, ApiError> {
    let mut parts = path.strip_prefix('/').ok_or(ApiError::NotFound)?.split('/');
    let (Some(id), Some(namespace), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ApiError::NotFound);
    };
    let kind = match namespace {
        "counter" => CounterKind::G,
        "gauge" => CounterKind::Pn,
        _ => return Err(ApiError::NotFound),
    };
    check_counter_id(id).map_err(ApiError::InvalidId)?;
    Ok(Target {
        kind,
        id: id.to_owned(),
    })
}

/// The `PUT` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HitBody {
    delta: i64,
}

/// What one `PUT` adds to this replica's slot: `p` for increments, `n` for decrements.
///
/// An empty body is +1. `content_type` is the request's `Content-Type`, if any; a body
/// must be declared as JSON (or not declared at all).
pub fn parse_hit(
    kind: CounterKind,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<SlotTotals, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SlotTotals { p: 1, n: 0 });
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
    let HitBody { delta } =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let magnitude = delta.unsigned_abs();
    match kind {
        CounterKind::G if delta < 1 => Err(ApiError::InvalidDelta(
            "a counter only goes up: delta must be 1 to 1000000 (use /{id}/gauge to go down)",
        )),
        CounterKind::Pn if delta == 0 => Err(ApiError::InvalidDelta("delta must not be 0")),
        _ if magnitude > MAX_DELTA => Err(ApiError::InvalidDelta(
            "delta must be at most 1000000 in magnitude",
        )),
        _ if delta > 0 => Ok(SlotTotals { p: magnitude, n: 0 }),
        _ => Ok(SlotTotals { p: 0, n: magnitude }),
    }
}

/// The answer to a read or a hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountBody {
    /// The value: a JSON number below 2^53, a decimal string beyond.
    pub count: Count,
    /// RFC 3339 UTC time of the newest change this replica knows of.
    pub updated_at: String,
}

impl CountBody {
    /// The body for `count` at `updated_at_ms` (Unix ms).
    pub fn new(count: i128, updated_at_ms: i64) -> CountBody {
        CountBody {
            count: Count(count),
            updated_at: rfc3339(updated_at_ms),
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC, seconds precision: `2030-10-10T12:11:42Z`.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_counter_or_a_gauge() {
        assert_eq!(
            parse_path("/home/counter"),
            Ok(Target {
                kind: CounterKind::G,
                id: "home".into()
            })
        );
        assert_eq!(
            parse_path("/viewers:page-1/gauge"),
            Ok(Target {
                kind: CounterKind::Pn,
                id: "viewers:page-1".into()
            })
        );
        for bad in [
            "",
            "/",
            "/home",
            "/home/counter/x",
            "/home/widget",
            "//counter",
            "home/counter",
        ] {
            let err = parse_path(bad).unwrap_err();
            assert!(
                matches!(err, ApiError::NotFound | ApiError::InvalidId(_)),
                "{bad:?}: {err:?}"
            );
        }
        assert!(matches!(
            parse_path("/a%20b/counter"),
            Err(ApiError::InvalidId(_))
        ));
        assert!(matches!(
            parse_path("/../counter"),
            Err(ApiError::InvalidId(_))
        ));
        assert!(matches!(
            parse_path(&format!("/{}/counter", "a".repeat(129))),
            Err(ApiError::InvalidId(tally_crdt::Error::IdTooLong { .. }))
        ));
    }

    #[test]
    fn an_empty_body_is_one_hit() {
        assert_eq!(
            parse_hit(CounterKind::G, None, b""),
            Ok(SlotTotals { p: 1, n: 0 })
        );
        assert_eq!(
            parse_hit(CounterKind::Pn, Some("text/plain"), b"  \n"),
            Ok(SlotTotals { p: 1, n: 0 })
        );
    }

    #[test]
    fn deltas_within_bounds() {
        let json = Some("application/json; charset=utf-8");
        assert_eq!(
            parse_hit(CounterKind::G, json, br#"{"delta": 5}"#),
            Ok(SlotTotals { p: 5, n: 0 })
        );
        assert_eq!(
            parse_hit(CounterKind::G, None, br#"{"delta": 1000000}"#),
            Ok(SlotTotals { p: 1_000_000, n: 0 })
        );
        assert_eq!(
            parse_hit(CounterKind::Pn, json, br#"{"delta": -3}"#),
            Ok(SlotTotals { p: 0, n: 3 })
        );
        assert_eq!(
            parse_hit(CounterKind::Pn, json, br#"{"delta": -1000000}"#),
            Ok(SlotTotals { p: 0, n: 1_000_000 })
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
        let body = serde_json::to_string(&CountBody::new(715, 1_917_864_702_000)).unwrap();
        assert_eq!(body, r#"{"count":715,"updated_at":"2030-10-10T12:11:42Z"}"#);
        let big = serde_json::to_string(&CountBody::new(1 << 60, 0)).unwrap();
        assert_eq!(
            big,
            r#"{"count":"1152921504606846976","updated_at":"1970-01-01T00:00:00Z"}"#
        );
        let err: serde_json::Value = serde_json::from_str(&ApiError::NotFound.body()).unwrap();
        assert_eq!(err["error"]["code"], "not_found");
    }
}
