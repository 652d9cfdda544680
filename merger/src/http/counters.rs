//! `GET /v1/counters/...` and `GET /v1/gauges/...`: the global read API, from memory.
//!
//! `/v1/counters` are the increment-only counters (G-Counters), `/v1/gauges` the ones that go
//! up and down (PN-Counters); the same id in each is a different counter. Every read is
//! answered from the merged state in memory; only `history` queries the database.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_crdt::{Count, CounterKind, GlobalTotals, check_counter_id};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::AppState;
use crate::error::AppError;
use crate::state::{Counter, RegionShare};

/// Default and largest page of `list`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Default and largest number of history points.
const DEFAULT_HISTORY: u32 = 1000;
const MAX_HISTORY: u32 = 10_000;
/// One counter as read, borrowed from the merged state (serialized under the read lock).
#[derive(Debug, Serialize)]
pub struct CounterView<'a> {
    id: &'a str,
    count: Count,
    updated_at: String,
    regions: RegionsView<'a>,
    replicas: usize,
}

/// The per-region shares, written as a JSON object `{"<region>": {"count", "last_sync"}}`.
#[derive(Debug)]
pub struct RegionsView<'a>(&'a BTreeMap<Arc<str>, RegionShare>);

impl Serialize for RegionsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(region, share)| {
            let view = RegionView {
                count: count(share.totals),
                last_sync: rfc3339(share.last_sync),
            };
            (&**region, view)
        }))
    }
}

/// One region's share.
#[derive(Debug, Serialize)]
pub struct RegionView {
    count: Count,
    last_sync: String,
}

/// A page of counters.
#[derive(Debug, Serialize)]
pub struct Page {
    items: Vec<CounterSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// One counter in a page.
#[derive(Debug, Serialize)]
pub struct CounterSummary {
    id: String,
    count: Count,
    updated_at: String,
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
#[derive(Debug, Serialize)]
pub struct History {
    id: String,
    points: Vec<Point>,
    /// Pass as `from` for the points after these; `null` when there are no more.
    next_from: Option<String>,
}

/// The count at one snapshot.
#[derive(Debug, Serialize)]
pub struct Point {
    at: String,
    count: Count,
}

/// `GET /v1/{namespace}/{id}`: the hot read path, one read lock and one serialization.
pub async fn read(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, AppError> {
    let Path((namespace, id)) = path?;
    let kind = kind_of(&namespace)?;
    check_counter_id(&id).map_err(AppError::InvalidId)?;
    let body = {
        let merged = app
            .merged
            .read()
            .expect("no thread panics while holding the state lock");
        let counter = merged
            .get(kind, &id)
            .ok_or_else(|| AppError::CounterNotFound {
                kind,
                id: id.clone(),
            })?;
        serde_json::to_vec(&CounterView {
            id: &id,
            count: count(counter.totals()),
            updated_at: rfc3339(counter.updated_at()),
            regions: RegionsView(counter.regions()),
            replicas: counter.replicas(),
        })
        .expect("a view of strings and integers serializes")
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/{namespace}?prefix=&limit=&cursor=`: counters in id order.
pub async fn list(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, AppError> {
    let Path(namespace) = path?;
    let kind = kind_of(&namespace)?;
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
    if let Some(cursor) = &q.cursor {
        check_counter_id(cursor).map_err(AppError::InvalidId)?;
    }
    let merged = app
        .merged
        .read()
        .expect("no thread panics while holding the state lock");
    // One more than asked tells whether there is a next page.
    let mut items: Vec<CounterSummary> = merged
        .list(kind, &q.prefix, q.cursor.as_deref(), limit + 1)
        .map(|(id, c)| summary(id, c))
        .collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|i| i.id.clone())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// `GET /v1/{namespace}/{id}/history?from=&to=&limit=`: snapshot totals in a time range
/// (RFC 3339 bounds, both inclusive; default: all), oldest first.
pub async fn history(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, AppError> {
    let Path((namespace, id)) = path?;
    let kind = kind_of(&namespace)?;
    check_counter_id(&id).map_err(AppError::InvalidId)?;
    let Query(q) = query?;
    let from = q
        .from
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(i64::MIN);
    let to =
        q.to.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(i64::MAX);
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(AppError::InvalidQuery(format!(
            "limit must be 1 to {MAX_HISTORY}"
        )));
    }
    if from > to {
        return Err(AppError::InvalidQuery("from is after to".into()));
    }
    let known = app
        .merged
        .read()
        .expect("no thread panics while holding the state lock")
        .get(kind, &id)
        .is_some();
    if !known {
        return Err(AppError::CounterNotFound { kind, id });
    }
    let mut rows = app
        .store
        .history(kind, &id, from, to, limit + 1)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "history query failed");
            AppError::DatabaseUnavailable
        })?;
    let next_from = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.pop().map(|r| rfc3339(r.at))
    } else {
        None
    };
    let points = rows
        .into_iter()
        .map(|r| Point {
            at: rfc3339(r.at),
            count: count(r.totals),
        })
        .collect();
    Ok(Json(History {
        id,
        points,
        next_from,
    }))
}

fn kind_of(namespace: &str) -> Result<CounterKind, AppError> {
    match namespace {
        "counters" => Ok(CounterKind::G),
        "gauges" => Ok(CounterKind::Pn),
        _ => Err(AppError::NotFound),
    }
}

fn summary(id: &str, c: &Counter) -> CounterSummary {
    CounterSummary {
        id: id.to_owned(),
        count: count(c.totals()),
        updated_at: rfc3339(c.updated_at()),
        replicas: c.replicas(),
    }
}

fn count(totals: GlobalTotals) -> Count {
    // Sums of u64 slots stay far below i128::MAX (that would take 2^63 replicas).
    Count(totals.value().expect("sums of u64 slots fit in an i128"))
}

/// Unix milliseconds as RFC 3339 UTC, e.g. `2030-10-10T12:11:42.5Z`.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_time(text: &str) -> Result<i64, AppError> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        AppError::InvalidQuery(format!(
            "{text:?} is not an RFC 3339 time (e.g. 2030-10-10T12:11:42Z): {e}"
        ))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| AppError::InvalidQuery(format!("{text:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_and_parse_back() {
        assert_eq!(rfc3339(1_917_864_702_000), "2030-10-10T12:11:42Z");
        assert_eq!(
            parse_time("2030-10-10T12:11:42Z").unwrap(),
            1_917_864_702_000
        );
        assert!(parse_time("yesterday").is_err());
    }
}
