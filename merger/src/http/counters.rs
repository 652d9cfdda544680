//! `GET /v1/counters/...` and `GET /v1/gauges/...`: the global read API, from memory.
//!
//! `/v1/counters` are the increment-only counters (G-Counters), `/v1/gauges` the ones that go
//! up and down (PN-Counters); the same id in each is a different counter. A counter read is
//! answered from the merger's cache (loaded from the store on a miss); the list and the
//! history are queries of the store.
//!
//! A counter nobody has hit reads as zero (`"count": 0, "updated_at": null`, no regions, no
//! replicas) and has an empty history, as the edge answers it: to a reader, a counter not
//! hit yet and a counter at zero are the same thing, and a 404 would make every client of
//! a fresh page handle an error.

use std::str::FromStr;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_crdt::{Count, CounterKey, GlobalTotals, Timestamp, check_counter_id};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::AppError;
use crate::http::extract::{CounterPath, NamespacePath};
use crate::http::schema::{self, CounterId, ErrorResponse, Namespace};
use crate::state::Counter;
use crate::store::StoredCounter;

/// Default and largest page of `list`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Default and largest number of history points.
const DEFAULT_HISTORY: u32 = 1000;
const MAX_HISTORY: u32 = 10_000;
/// One counter as read, borrowed from the merged state (serialized under the read lock).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Counter)]
pub struct CounterView<'a> {
    #[schema(value_type = CounterId)]
    id: &'a str,
    /// The global value.
    #[schema(value_type = schema::Count)]
    count: Count,
    /// Resets so far: `count` is what came after the last one.
    epoch: u64,
    /// The last change (a hit or a reset); `null` for a counter nobody has hit.
    #[schema(value_type = Option<schema::Timestamp>, required)]
    updated_at: Option<Timestamp>,
    /// The count over each region's replicas, and the last sync of this counter from there.
    #[schema(value_type = std::collections::BTreeMap<String, RegionView>)]
    regions: RegionsView<'a>,
    /// Replica incarnations with a non-zero slot.
    replicas: usize,
}

/// The per-region shares of a counter, written as a JSON object
/// `{"<region>": {"count", "last_sync"}}`.
#[derive(Debug)]
pub struct RegionsView<'a>(&'a Counter);

impl Serialize for RegionsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.regions().map(|(region, share)| {
            let view = RegionView {
                count: count(share.totals),
                last_sync: share.last_sync,
            };
            (&**region, view)
        }))
    }
}

/// One region's share.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionView {
    /// The count over the slots of the region's replicas.
    #[schema(value_type = schema::Count)]
    count: Count,
    /// The last sync of this counter from the region.
    #[schema(value_type = schema::Timestamp)]
    last_sync: Timestamp,
}

/// A page of counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// Counters in id order.
    items: Vec<CounterSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(value_type = Option<CounterId>, required)]
    next_cursor: Option<String>,
}

/// One counter in a page.
#[derive(Debug, Serialize, ToSchema)]
pub struct CounterSummary {
    #[schema(value_type = CounterId)]
    id: String,
    #[schema(value_type = schema::Count)]
    count: Count,
    /// Resets so far.
    epoch: u64,
    /// The last change.
    #[schema(value_type = schema::Timestamp)]
    updated_at: Timestamp,
    /// Replica incarnations with a non-zero slot.
    replicas: usize,
}

/// Query of `list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Query of `history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
}

/// A counter's totals over time.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    #[schema(value_type = CounterId)]
    id: String,
    /// Oldest first.
    points: Vec<Point>,
    /// Pass as `from` for the points after these; `null` when there are no more.
    #[schema(value_type = Option<schema::Timestamp>, required)]
    next_from: Option<Timestamp>,
}

/// The count at one snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct Point {
    /// When the snapshot was taken.
    #[schema(value_type = schema::Timestamp)]
    at: Timestamp,
    /// The count then.
    #[schema(value_type = schema::Count)]
    count: Count,
    /// The epoch the count belongs to: it goes up at each reset, where the count drops.
    epoch: u64,
}

/// `GET /v1/{namespace}/{id}`: the hot read path, one read lock and, unless the counter
/// changed since its last read, no serialization (the body is kept with the counter).
#[utoipa::path(
    get,
    path = "/v1/{namespace}/{id}",
    tag = "counters",
    security((), ("read_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` or `gauges`"),
        ("id" = CounterId, Path, description = "The counter's id"),
    ),
    responses(
        (status = 200, description = "The counter; one nobody has hit reads as zero (`updated_at` null)", body = CounterView),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char` (the id breaks the id rules) or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`: only with `--private-reads`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: a namespace other than `counters` or `gauges`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`: the counter is not in memory and the store does not answer", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn read(
    State(app): State<AppState>,
    CounterPath(key): CounterPath,
) -> Result<Response, AppError> {
    let body = app
        .read_through(std::slice::from_ref(&key), |held| {
            held.counter(&key).rendered(|counter| {
                let view = CounterView {
                    id: key.id(),
                    count: count(counter.totals()),
                    epoch: counter.epoch().number,
                    updated_at: counter.updated_at(),
                    regions: RegionsView(counter),
                    replicas: counter.replicas(),
                };
                serde_json::to_vec(&view).expect("a view of strings and integers serializes")
            })
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/{namespace}?prefix=&limit=&cursor=`: counters in id order, from the store.
#[utoipa::path(
    get,
    path = "/v1/{namespace}",
    tag = "counters",
    security(("read_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` or `gauges`"),
        ("prefix" = Option<String>, Query, pattern = "^([A-Za-z0-9][A-Za-z0-9._:-]*)?$", max_length = 128,
            description = "Only ids that start with this (a prefix of a valid id; empty: all)"),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 1000, description = "Counters per page, 1-1000 (default 100)"),
        ("cursor" = Option<CounterId>, Query, description = "The ids after this one: a page's `next_cursor`"),
    ),
    responses(
        (status = 200, description = "A page of counters in id order", body = Page),
        (status = 400, description = "`invalid_query` (an unknown parameter, `limit` out of range), `empty_id`, `id_too_long`, `id_bad_char` (`prefix` or `cursor`) or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: a namespace other than `counters` or `gauges`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn list(
    State(app): State<AppState>,
    NamespacePath(kind): NamespacePath,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, AppError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::InvalidQuery(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    if !q.prefix.is_empty() {
        check_counter_id(&q.prefix).map_err(AppError::InvalidId)?;
    }
    let cursor = q
        .cursor
        .map(|cursor| CounterKey::new(kind, cursor))
        .transpose()
        .map_err(AppError::InvalidId)?;
    // One more than asked tells whether there is a next page.
    let asked = u32::try_from(limit + 1).expect("limit is at most MAX_LIMIT");
    let mut scanned = app
        .store
        .list(kind, &q.prefix, cursor.as_ref(), asked)
        .await?;
    let next_cursor = if scanned.len() > limit {
        scanned.truncate(limit);
        scanned.last().map(|c| c.key.id().to_owned())
    } else {
        None
    };
    // Deleted counters not hit since are left out: a page may hold fewer than `limit`
    // items and still have a next one.
    let items = scanned.iter().filter(|c| c.listed()).map(summary).collect();
    Ok(Json(Page { items, next_cursor }))
}

/// `GET /v1/{namespace}/{id}/history?from=&to=&limit=`: snapshot totals in a time range
/// (RFC 3339 bounds, both inclusive; default: all), oldest first.
#[utoipa::path(
    get,
    path = "/v1/{namespace}/{id}/history",
    tag = "counters",
    security(("read_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` or `gauges`"),
        ("id" = CounterId, Path, description = "The counter's id"),
        ("from" = Option<schema::Timestamp>, Query, description = "Points at or after this time (any RFC 3339 time; default: all)"),
        ("to" = Option<schema::Timestamp>, Query, description = "Points at or before this time (any RFC 3339 time, not before `from`; default: all)"),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 10000, description = "Points at most, 1-10000 (default 1000)"),
    ),
    responses(
        (status = 200, description = "Snapshot totals in the range, oldest first; empty for a counter nobody has hit", body = History),
        (status = 400, description = "`invalid_query` (an unknown parameter, `limit` out of range, a time that is not RFC 3339, `from` after `to`), `empty_id`, `id_too_long`, `id_bad_char` or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: a namespace other than `counters` or `gauges`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn history(
    State(app): State<AppState>,
    CounterPath(key): CounterPath,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, AppError> {
    let Query(q) = query?;
    let from = q
        .from
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(Timestamp::MIN);
    let to =
        q.to.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(Timestamp::MAX);
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(AppError::InvalidQuery(format!(
            "limit must be 1 to {MAX_HISTORY}"
        )));
    }
    if from > to {
        return Err(AppError::InvalidQuery("from is after to".into()));
    }
    let mut rows = app.store.history(&key, from, to, limit + 1).await?;
    let next_from = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.pop().map(|r| r.at)
    } else {
        None
    };
    let points = rows
        .into_iter()
        .map(|r| Point {
            at: r.at,
            count: count(r.totals),
            epoch: r.epoch,
        })
        .collect();
    Ok(Json(History {
        id: key.id().to_owned(),
        points,
        next_from,
    }))
}

/// A stored counter as a list item. The store lists only counters with a slot, a carry or a
/// base, so there is always an `updated_at`.
fn summary(c: &StoredCounter) -> CounterSummary {
    let grown = c
        .slots
        .iter()
        .map(|s| s.at)
        .chain(c.carries.iter().map(|x| x.2))
        .chain(c.bases.iter().map(|b| b.2));
    CounterSummary {
        id: c.key.id().to_owned(),
        count: count(c.totals()),
        epoch: c.epoch.number,
        updated_at: grown.chain(c.epoch.at).max().unwrap_or(Timestamp::MIN),
        replicas: c
            .slots
            .iter()
            .filter(|s| s.totals != tally_crdt::SlotTotals::default())
            .count(),
    }
}

/// Totals as the API writes a count.
pub fn count(totals: GlobalTotals) -> Count {
    // Sums of u64 slots stay far below i128::MAX (that would take 2^63 replicas).
    Count(totals.value().expect("sums of u64 slots fit in an i128"))
}

/// A history bound: any RFC 3339 time (`Timestamp`'s one parser).
fn parse_time(text: &str) -> Result<Timestamp, AppError> {
    Timestamp::from_str(text).map_err(|e| AppError::InvalidQuery(format!("{text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_bounds_take_any_rfc3339_time() {
        let at = Timestamp::from_unix_ms(1_917_864_702_000);
        assert_eq!(parse_time("2030-10-10T12:11:42Z").unwrap(), at);
        assert_eq!(parse_time("2030-10-10T14:11:42.000+02:00").unwrap(), at);
        assert!(matches!(
            parse_time("yesterday"),
            Err(AppError::InvalidQuery(_))
        ));
    }
}
