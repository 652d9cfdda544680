//! The admin API: `POST /v1/{namespace}/{id}/reset` and `DELETE /v1/{namespace}/{id}`, behind
//! the admin token ([`access::require_admin_token`](super::access::require_admin_token)).
//!
//! A reset starts a new epoch of the counter: it counts from zero, and nothing counted before
//! comes back, whatever syncs, retries or replays arrive later (the store keeps, per region,
//! the sums at the reset and subtracts them; see `store::ResetRequest`). Hits an edge counted
//! before the reset but had not synced yet count in the new epoch: a reset removes exactly
//! what the merger had counted, which it answers as `removed`. A delete is a reset that also
//! deletes the counter's history and hides it from the lists until it is hit again.
//!
//! `POST /v1/{namespace}/{id}/import` brings a starting value from another system: the
//! import id's own replica gets the value as its slot of the counter, so it adds to whatever
//! the edge counts, and re-running the import changes nothing (the same id with another value
//! is `409 import_conflict`).
//!
//! `?epoch=N` makes either reset conditional: done only if the counter is still at epoch `N`, else
//! `409 epoch_changed` and nothing changes. A client that retries a reset whose answer it
//! lost sends the epoch it saw, so the retry cannot reset a second time.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use tally_crdt::{Count, CounterKind, SlotTotals, Timestamp, check_counter_id};

use crate::AppState;
use crate::commit::now;
use crate::error::AppError;
use crate::http::counters::count;
use crate::http::extract::CounterPath;
use crate::http::protocol::{Decode, Protocol};
use crate::store::{ImportOutcome, ImportRequest, ResetOutcome, ResetRequest};

/// Query of both routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochQuery {
    /// Only if the counter is at this epoch.
    epoch: Option<u64>,
}

/// What a reset or delete answers.
#[derive(Debug, Serialize)]
pub struct Reset {
    id: String,
    /// The new epoch (unchanged for a counter nobody has hit: there was nothing to reset).
    epoch: u64,
    /// The count now: 0, unless hits arrived in the same instant.
    count: Count,
    /// The count the epoch that ended had.
    removed: Count,
    deleted: bool,
    /// When it was reset; `null` for a counter nobody has hit.
    updated_at: Option<Timestamp>,
}

/// `POST /v1/{namespace}/{id}/reset[?epoch=N]`.
pub async fn reset(
    State(app): State<AppState>,
    CounterPath(key): CounterPath,
    query: Result<Query<EpochQuery>, QueryRejection>,
) -> Result<Json<Reset>, AppError> {
    apply(&app, key, query, false).await
}

/// `DELETE /v1/{namespace}/{id}[?epoch=N]`.
pub async fn delete(
    State(app): State<AppState>,
    CounterPath(key): CounterPath,
    query: Result<Query<EpochQuery>, QueryRejection>,
) -> Result<Json<Reset>, AppError> {
    apply(&app, key, query, true).await
}

async fn apply(
    app: &AppState,
    key: tally_crdt::CounterKey,
    query: Result<Query<EpochQuery>, QueryRejection>,
    delete: bool,
) -> Result<Json<Reset>, AppError> {
    let Query(q) = query?;
    let request = ResetRequest {
        delete,
        expect_epoch: q.epoch,
        at: now(),
    };
    let id = key.id().to_owned();
    match app.reset(&key, request).await? {
        ResetOutcome::Done { counter, removed } => {
            tracing::info!(counter = %key, epoch = counter.epoch.number, delete, "reset");
            Ok(Json(Reset {
                id,
                epoch: counter.epoch.number,
                count: count(counter.totals()),
                removed: count(removed),
                deleted: delete,
                updated_at: counter.epoch.at,
            }))
        }
        ResetOutcome::Unknown => match q.epoch {
            Some(expected) if expected != 0 => Err(AppError::EpochChanged {
                expected,
                current: 0,
            }),
            _ => Ok(Json(Reset {
                id,
                epoch: 0,
                count: Count(0),
                removed: Count(0),
                deleted: delete,
                updated_at: None,
            })),
        },
        ResetOutcome::EpochMismatch { current } => Err(AppError::EpochChanged {
            expected: q.epoch.unwrap_or_default(),
            current,
        }),
    }
}

/// The body of an import: `{"import": "<import id>", "count": <value>}`, the value a JSON
/// integer or a decimal string (past 2^53).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// The import id: the rules of a counter id (1-128 of `A-Z a-z 0-9 - _ . :`).
    import: String,
    /// The value to bring in.
    count: Count,
}

impl Decode for ImportBody {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        let body: ImportBody = serde_json::from_slice(body)
            .map_err(|e| tally_crdt::Error::Malformed(e.to_string()))?;
        check_counter_id(&body.import)?;
        Ok(body)
    }
}

/// What an import answers.
#[derive(Debug, Serialize)]
pub struct Imported {
    id: String,
    import: String,
    /// The value this import brought into the counter.
    imported: Count,
    /// Whether this request brought it (`false`: an earlier run of the same import had).
    created: bool,
    /// The counter's count now.
    count: Count,
}

/// `POST /v1/{namespace}/{id}/import` with `{"import", "count"}`.
pub async fn import(
    State(app): State<AppState>,
    CounterPath(key): CounterPath,
    body: Result<Protocol<ImportBody>, AppError>,
) -> Result<Json<Imported>, AppError> {
    let Protocol(body) = body?;
    let value = body.count.0;
    let magnitude = u64::try_from(value.unsigned_abs()).map_err(|_| {
        AppError::InvalidImport(format!("{value} is beyond what one slot holds (2^64 - 1)"))
    })?;
    let totals = match (key.kind(), value >= 0) {
        (_, true) => SlotTotals { p: magnitude, n: 0 },
        (CounterKind::Pn, false) => SlotTotals { p: 0, n: magnitude },
        (CounterKind::G, false) => {
            return Err(AppError::InvalidImport(format!(
                "{value} is negative: a counter only grows (import it into a gauge)"
            )));
        }
    };
    let request = ImportRequest {
        name: body.import.clone(),
        totals,
        at: now(),
    };
    let (counter, created) = match app.import(&key, &request).await? {
        ImportOutcome::Imported(counter) => (counter, true),
        ImportOutcome::Unchanged(counter) => (counter, false),
        ImportOutcome::Conflict { existing } => {
            return Err(AppError::ImportConflict {
                name: body.import,
                existing: existing.value(),
                asked: value,
            });
        }
    };
    if created {
        tracing::info!(counter = %key, import = %body.import, value, "imported");
    }
    Ok(Json(Imported {
        id: key.id().to_owned(),
        import: body.import,
        imported: Count(value),
        created,
        count: count(counter.totals()),
    }))
}
