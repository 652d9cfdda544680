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
use utoipa::ToSchema;

use crate::AppState;
use crate::clock::now;
use crate::error::AppError;
use crate::http::counters::count;
use crate::http::extract::CounterPath;
use crate::http::protocol::{Decode, Protocol};
use crate::http::schema::{self, CounterId, ErrorResponse, Namespace};
use crate::store::{ImportOutcome, ImportRequest, ResetOutcome, ResetRequest};

/// Query of both routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochQuery {
    /// Only if the counter is at this epoch.
    epoch: Option<u64>,
}

/// What a reset or delete answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reset {
    #[schema(value_type = CounterId)]
    id: String,
    /// The new epoch (unchanged for a counter nobody has hit: there was nothing to reset).
    epoch: u64,
    /// The count now: 0, unless hits arrived in the same instant.
    #[schema(value_type = schema::Count)]
    count: Count,
    /// The count the epoch that ended had.
    #[schema(value_type = schema::Count)]
    removed: Count,
    /// `true` for a delete.
    deleted: bool,
    /// When it was reset; `null` for a counter nobody has hit.
    #[schema(value_type = Option<schema::Timestamp>, required)]
    updated_at: Option<Timestamp>,
}

/// `POST /v1/{namespace}/{id}/reset[?epoch=N]`.
#[utoipa::path(
    post,
    path = "/v1/{namespace}/{id}/reset",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` or `gauges`"),
        ("id" = CounterId, Path, description = "The counter's id"),
        ("epoch" = Option<u64>, Query, description = "Only if the counter is still at this epoch, else 409 `epoch_changed`"),
    ),
    responses(
        (status = 200, description = "Reset: a new epoch, the count from zero", body = Reset),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char`, `invalid_query` (an unknown parameter, an epoch that is not a number) or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`admin_disabled`: the merger was started without `--admin-token`", body = ErrorResponse),
        (status = 404, description = "`not_found`: a namespace other than `counters` or `gauges`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 409, description = "`epoch_changed`: the counter is not at `epoch`; nothing was changed", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn reset(
    State(app): State<AppState>,
    CounterPath(key): CounterPath,
    query: Result<Query<EpochQuery>, QueryRejection>,
) -> Result<Json<Reset>, AppError> {
    apply(&app, key, query, false).await
}

/// `DELETE /v1/{namespace}/{id}[?epoch=N]`.
#[utoipa::path(
    delete,
    path = "/v1/{namespace}/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` or `gauges`"),
        ("id" = CounterId, Path, description = "The counter's id"),
        ("epoch" = Option<u64>, Query, description = "Only if the counter is still at this epoch, else 409 `epoch_changed`"),
    ),
    responses(
        (status = 200, description = "Deleted: a reset that also deletes the history and hides the counter from the lists until it is hit again", body = Reset),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char`, `invalid_query` (an unknown parameter, an epoch that is not a number) or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`admin_disabled`: the merger was started without `--admin-token`", body = ErrorResponse),
        (status = 404, description = "`not_found`: a namespace other than `counters` or `gauges`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 409, description = "`epoch_changed`: the counter is not at `epoch`; nothing was changed", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// The import id: the rules of a counter id (1-128 of `A-Z a-z 0-9 - _ . :`).
    #[schema(value_type = CounterId)]
    import: String,
    /// The value to bring in: negative only for a gauge; its magnitude at most 2^64 - 1.
    #[schema(value_type = schema::ImportCount)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    #[schema(value_type = CounterId)]
    id: String,
    /// The import id.
    #[schema(value_type = CounterId)]
    import: String,
    /// The value this import brought into the counter.
    #[schema(value_type = schema::Count)]
    imported: Count,
    /// Whether this request brought it (`false`: an earlier run of the same import had).
    created: bool,
    /// The counter's count now.
    #[schema(value_type = schema::Count)]
    count: Count,
}

/// `POST /v1/{namespace}/{id}/import` with `{"import", "count"}`.
#[utoipa::path(
    post,
    path = "/v1/{namespace}/{id}/import",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` or `gauges`"),
        ("id" = CounterId, Path, description = "The counter's id"),
    ),
    request_body(content = ImportBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Imported, or already imported with this value (`created: false`)", body = Imported),
        (status = 400, description = "`malformed_body` (not an import body), `empty_id`, `id_too_long`, `id_bad_char` (the id or the import id), `unreadable_body` or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`admin_disabled`: the merger was started without `--admin-token`", body = ErrorResponse),
        (status = 404, description = "`not_found`: a namespace other than `counters` or `gauges`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 409, description = "`import_conflict`: this import id brought another value into this counter; nothing was changed", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "`invalid_import`: a negative value for a counter, or a half past 2^64 - 1", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
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
