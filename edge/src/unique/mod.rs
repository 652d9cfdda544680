//! Unique visitors: a HyperLogLog sketch per id (and per id and UTC day) in the edge objects,
//! synced to the merger as grown registers.
//!
//! - `PUT /{id}/unique` counts a visitor: `{"visitor": "…"}` (the application's own key, up
//!   to [`MAX_VISITOR_LEN`] bytes) goes into the id's all-time sketch and today's; without one
//!   the Worker derives a key from the client address and user agent, hashed with a salt made
//!   from `UNIQUE_SALT` for the current UTC day ([`derived_hash`]), and counts it in today's
//!   sketch only: derived uniques are per day, as privacy-respecting analytics count them,
//!   and the address itself is never stored or sent.
//! - `GET /{id}/unique[?day=YYYY-MM-DD|today]` answers
//!   `{"count": estimate, "error": relative standard error, "updated_at"}` of the all-time
//!   sketch or of one day's.
//! - A visitor lands in one of the id's `SPREAD` [`object::Unique`] objects of its region;
//!   each keeps its own sketch and syncs the registers that grew ([`tally_crdt::SketchSync`]);
//!   an object answers the union of its sketch and the merger's merged one (register-wise
//!   max), so its own visitors count at once.
//!
//! This file holds the pure parts (parsing, the derived key, the messages); [`store`] the
//! object's SQL; [`object`] the Durable Object glue.

#[allow(
    missing_docs,
    reason = "#[durable_object] generates undocumented wasm-bindgen exports"
)]
pub mod object;
pub mod store;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tally_crdt::{Day, HyperLogLog, SketchKey, Timestamp};
use worker::worker_sys::web_sys;
use worker::{Method, Request};

use crate::api::{ApiError, Route};
use crate::routing::{self, Region};
use crate::runtime::{
    Failure, RequestContext, UNIQUE_BINDING, internal, json_response_with, post_to_object,
};

/// Longest visitor key, in bytes.
pub const MAX_VISITOR_LEN: usize = 256;
/// Largest unique `PUT` body, in bytes (room for [`MAX_VISITORS_PER_PUT`] short keys).
pub const MAX_VISITS_BODY_BYTES: usize = 8 * 1024;
/// The internal route of a unique call (Worker to object).
pub const CALL_PATH: &str = "/unique";

/// Most visitor keys one `PUT` may carry (`{"visitors": […]}`).
pub const MAX_VISITORS_PER_PUT: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisitBody {
    visitor: Option<String>,
    visitors: Option<Vec<String>>,
}

/// The visitor keys of a `PUT` body: none for an empty body (derive one), else
/// `{"visitor": "…"}` or, for an application that forwards visits in bulk,
/// `{"visitors": ["…", …]}` (1 to [`MAX_VISITORS_PER_PUT`]).
///
/// # Errors
///
/// [`ApiError::BodyTooLarge`], [`ApiError::UnsupportedMediaType`], [`ApiError::InvalidBody`] or
/// [`ApiError::InvalidVisitor`].
pub fn parse_visit(content_type: Option<&str>, body: &[u8]) -> Result<Vec<String>, ApiError> {
    if body.len() > MAX_VISITS_BODY_BYTES {
        return Err(ApiError::BodyTooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    if let Some(ct) = content_type {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidBody("expected a JSON object".into()));
    }
    let usage = "send {\"visitor\": \"…\"} or {\"visitors\": [\"…\", …]}";
    let body: VisitBody =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(format!("{e}; {usage}")))?;
    let visitors = match body {
        VisitBody {
            visitor: Some(one),
            visitors: None,
        } => vec![one],
        VisitBody {
            visitor: None,
            visitors: Some(many),
        } if (1..=MAX_VISITORS_PER_PUT).contains(&many.len()) => many,
        VisitBody {
            visitor: None,
            visitors: Some(_),
        } => {
            return Err(ApiError::InvalidBody(format!(
                "visitors holds 1 to {MAX_VISITORS_PER_PUT} keys"
            )));
        }
        _ => return Err(ApiError::InvalidBody(usage.into())),
    };
    if visitors
        .iter()
        .any(|v| v.is_empty() || v.len() > MAX_VISITOR_LEN)
    {
        return Err(ApiError::InvalidVisitor("1 to 256 bytes of text"));
    }
    Ok(visitors)
}

/// The `day` of a read's query: absent (all-time), `today`, or `YYYY-MM-DD`.
///
/// # Errors
///
/// [`ApiError::InvalidQuery`] or [`ApiError::InvalidDay`].
pub fn parse_day_query(query: Option<&str>, today: Day) -> Result<Option<Day>, ApiError> {
    let mut day = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "day" if day.is_none() => {
                day = Some(if value == "today" {
                    today
                } else {
                    value.parse::<Day>().map_err(|_| ApiError::InvalidDay)?
                });
            }
            _ => {
                return Err(ApiError::InvalidQuery(
                    "expected at most day=YYYY-MM-DD".into(),
                ));
            }
        }
    }
    Ok(day)
}

/// The sketch hash of an application's visitor key (the sketch's own hash, xxh3).
pub fn keyed_hash(visitor: &str) -> u64 {
    HyperLogLog::hash(visitor.as_bytes())
}

/// The sketch hash of a visitor known only by address and user agent, on `day`:
/// `HMAC-SHA256(HMAC-SHA256(secret, "tally-unique-day:" + day), len(address) + address + agent)`
/// (the length as 8 little-endian bytes, so no two pairs run together),
/// first 8 bytes. The day's salt changes at midnight UTC and cannot be derived without the
/// secret, so a stored or synced hash names no address, and the same visitor counts again on
/// the next day.
pub fn derived_hash(secret: &str, day: Day, address: &str, agent: &str) -> u64 {
    let mut salt = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    salt.update(b"tally-unique-day:");
    salt.update(day.to_string().as_bytes());
    let salt = salt.finalize().into_bytes();
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&salt).expect("HMAC takes a key of any length");
    let len = u64::try_from(address.len()).unwrap_or(u64::MAX);
    mac.update(&len.to_le_bytes());
    mac.update(address.as_bytes());
    mac.update(agent.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// What the Worker asks a unique object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Count visitors: their hashes into `keys` (the all-time sketch for keyed visitors, and
    /// the day's); the answer is of the first.
    Visit {
        /// The visitors' sketch hashes.
        hashes: Vec<u64>,
        /// The sketches it goes into.
        keys: Vec<SketchKey>,
    },
    /// Read one sketch.
    Read {
        /// Which.
        key: SketchKey,
    },
}

/// A call to a unique object (`POST /unique`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// The region the object serves.
    pub region: Region,
    /// What to do.
    pub op: Op,
    /// Who sent it (the client address), for the new-id budget.
    pub client: String,
    /// Whether the application's write key came with it (no budget then).
    pub trusted: bool,
}

/// The object's answer: the estimate of the union of its sketch and the merger's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Estimated distinct visitors.
    pub count: u64,
    /// Relative standard error of the estimate.
    pub error: f64,
    /// When the merged sketch or this object's last grew.
    pub updated_at: Option<Timestamp>,
    /// Whether the merger's sketch is missing from it.
    pub partial: bool,
}

/// The public answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UniqueBody {
    /// Estimated distinct visitors.
    pub count: u64,
    /// Relative standard error (`1.04 / sqrt(4096)` = 0.01625 at the default precision).
    pub error: f64,
    /// See [`View::updated_at`].
    pub updated_at: Option<Timestamp>,
    /// The day of a daily sketch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<Day>,
}

/// `/{id}/unique`: count a visitor (`PUT`) or read (`GET [?day=]`).
pub async fn route(
    req: &mut Request,
    cx: &RequestContext<'_>,
    method: Method,
    id: &str,
) -> Result<web_sys::Response, Failure> {
    let RequestContext {
        env,
        config,
        region,
        ..
    } = cx;
    let today = crate::runtime::now().day();
    let trusted = crate::runtime::write_key_presented(req, config)?;
    let (op, answered) = match method {
        Method::Put => {
            let bytes = crate::runtime::read_body(req, MAX_VISITS_BODY_BYTES).await?;
            let content_type = req.headers().get("Content-Type").ok().flatten();
            let visitors = parse_visit(content_type.as_deref(), &bytes)?;
            let day_key = SketchKey::new(id, Some(today)).map_err(ApiError::InvalidId)?;
            let (hashes, keys) = if visitors.is_empty() {
                let secret = config
                    .unique_salt
                    .as_deref()
                    .ok_or(ApiError::VisitorRequired)?;
                let address = crate::runtime::client_address(req);
                let agent = req
                    .headers()
                    .get("User-Agent")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (
                    vec![derived_hash(secret, today, &address, &agent)],
                    vec![day_key],
                )
            } else {
                let all = SketchKey::new(id, None).map_err(ApiError::InvalidId)?;
                (
                    visitors.iter().map(|v| keyed_hash(v)).collect(),
                    vec![all, day_key],
                )
            };
            let answered = keys[0].day();
            (Op::Visit { hashes, keys }, answered)
        }
        Method::Get | Method::Head => {
            let query = crate::runtime::query_of(req);
            let day = parse_day_query(query.as_deref(), today)?;
            let key = SketchKey::new(id, day).map_err(ApiError::InvalidId)?;
            (Op::Read { key }, day)
        }
        _ => return Err(ApiError::MethodNotAllowed(Route::Unique(String::new()).allow()).into()),
    };
    let s = crate::runtime::draw_spread(config);
    let name =
        routing::unique_object_name(region, routing::unique_partition(id, s, config.partitions));
    let call = Call {
        region: region.clone(),
        op,
        client: crate::runtime::client_address(req),
        trusted,
    };
    let body = serde_json::to_string(&call).map_err(|_| ApiError::Internal)?;
    let text = post_to_object(env, UNIQUE_BINDING, &name, region, CALL_PATH, body).await?;
    let view: View = serde_json::from_str(&text).map_err(|_| ApiError::Internal)?;
    let body = UniqueBody {
        count: view.count,
        error: view.error,
        updated_at: view.updated_at,
        day: answered,
    };
    let text = serde_json::to_string(&body).map_err(|_| ApiError::Internal)?;
    let extra: &[(&str, &str)] = if view.partial {
        &[("Tally-Estimate", "partial")]
    } else {
        &[]
    };
    Ok(json_response_with(&text, 200, extra).map_err(internal)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_keys_and_days_are_checked() {
        assert_eq!(parse_visit(None, b""), Ok(vec![]));
        assert_eq!(
            parse_visit(Some("application/json"), br#"{"visitor":"u-1"}"#),
            Ok(vec!["u-1".to_owned()])
        );
        assert_eq!(
            parse_visit(None, br#"{"visitors":["a","b"]}"#),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        for bad in [
            &br#"{"visitors":[]}"#[..],
            br#"{"visitor":"a","visitors":["b"]}"#,
            br#"{}"#,
        ] {
            assert!(matches!(
                parse_visit(None, bad),
                Err(ApiError::InvalidBody(_))
            ));
        }
        let many = format!(
            r#"{{"visitors":[{}]}}"#,
            vec![r#""v""#; MAX_VISITORS_PER_PUT + 1].join(",")
        );
        assert!(matches!(
            parse_visit(None, many.as_bytes()),
            Err(ApiError::InvalidBody(_))
        ));
        assert_eq!(
            parse_visit(None, br#"{"visitor":""}"#),
            Err(ApiError::InvalidVisitor("1 to 256 bytes of text"))
        );
        let long = format!(r#"{{"visitor":"{}"}}"#, "v".repeat(MAX_VISITOR_LEN + 1));
        assert_eq!(
            parse_visit(None, long.as_bytes()),
            Err(ApiError::InvalidVisitor("1 to 256 bytes of text"))
        );
        assert!(matches!(
            parse_visit(None, br#"{"visitor":1}"#),
            Err(ApiError::InvalidBody(_))
        ));
        let today: Day = "2026-12-02".parse().unwrap();
        assert_eq!(parse_day_query(None, today), Ok(None));
        assert_eq!(parse_day_query(Some("day=today"), today), Ok(Some(today)));
        assert_eq!(
            parse_day_query(Some("day=2026-11-30"), today),
            Ok(Some("2026-11-30".parse().unwrap()))
        );
        assert_eq!(
            parse_day_query(Some("day=2026-02-30"), today),
            Err(ApiError::InvalidDay)
        );
        assert!(parse_day_query(Some("x=1"), today).is_err());
    }

    #[test]
    fn derived_keys_change_with_the_day_and_name_no_address() {
        let d1: Day = "2026-12-02".parse().unwrap();
        let d2: Day = "2026-12-03".parse().unwrap();
        let secret = "a-secret-of-sixteen+";
        let a = derived_hash(secret, d1, "203.0.113.7", "Firefox");
        assert_eq!(a, derived_hash(secret, d1, "203.0.113.7", "Firefox"));
        assert_ne!(a, derived_hash(secret, d2, "203.0.113.7", "Firefox"));
        assert_ne!(a, derived_hash(secret, d1, "203.0.113.8", "Firefox"));
        assert_ne!(a, derived_hash(secret, d1, "203.0.113.7", "Chrome"));
        assert_ne!(
            a,
            derived_hash("another-secret-16+", d1, "203.0.113.7", "Firefox")
        );
        // The address and agent are not split ambiguously.
        assert_ne!(
            derived_hash(secret, d1, "a\nb", "c"),
            derived_hash(secret, d1, "a", "b\nc")
        );
    }
}
