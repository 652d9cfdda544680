//! Unique visitors: `POST /v1/unique` (an edge object's grown sketch registers),
//! `POST /v1/read/unique` (the edge's batch read) and the public `GET /v1/unique/{id}`.
//!
//! Sketches merge register-wise with max, in the commit task ([`crate::commit`]), through its
//! bounded queue: the sketch syncs queued together are merged in one store transaction
//! ([`crate::store::SketchStore::merge_sketches_batch`]), and each is answered once its batch is
//! durable. A retried, duplicated or reordered sync changes nothing beyond the first, and
//! several mergers on one Postgres never lose a register (each locks the rows, in key order,
//! before it merges into them).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use tally_crdt::{Day, SketchKey, SketchRead, SketchResponse, SketchSync, Timestamp};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::http::schema::{
    self, CounterId, ErrorResponse, SketchRead as SketchReadSchema,
    SketchResponse as SketchResponseSchema, SketchSync as SketchSyncSchema,
};
use crate::metrics::Endpoint;

/// Merges the sync's registers and answers the merged sketch of each of its keys.
#[utoipa::path(
    post,
    path = "/v1/unique",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = SketchSyncSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "Merged (durable): the merged sketch of each key of the sync, in order", body = SketchResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed sync: a sketch that is not one, a key whose id breaks the id rules or whose day is not a day) or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "A rule of the sync: `unsupported_version`, `too_many_counters` (more than 100 sketches), `nil_replica`, `invalid_region`, `duplicate_id`, `hll_precision_mismatch`", body = ErrorResponse),
        (status = 503, description = "`overloaded` (the commit queue holds `--commit-queue` syncs, retirements, presence reports and sketch syncs), `shutting_down` or `database_unavailable`: nothing was merged; retry", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn sync(
    State(app): State<AppState>,
    body: Result<Protocol<SketchSync>, AppError>,
) -> Result<Json<SketchResponse>, AppError> {
    let result = match body {
        Err(e) => Err(e),
        // Durable once this answers; the commit task has dropped the keys' public views.
        Ok(Protocol(sync)) => {
            let version = sync.version;
            app.committer
                .merge_sketches(sync)
                .await
                .map(|sketches| SketchResponse { version, sketches })
                .map_err(AppError::from)
        }
    };
    app.metrics.request(
        Endpoint::Unique,
        result.as_ref().map_or_else(AppError::code, |_| "ok"),
    );
    result.map(Json)
}

/// Answers the merged sketch of every key asked; writes nothing.
#[utoipa::path(
    post,
    path = "/v1/read/unique",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = SketchReadSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "The merged sketch of each key asked, in order (empty, `updated_at` null, for one never synced)", body = SketchResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed read: a key whose id breaks the id rules or whose day is not a day) or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "A rule of the read: `unsupported_version`, `too_many_counters` (more than 100 sketches), `duplicate_id`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn read(
    State(app): State<AppState>,
    body: Result<Protocol<SketchRead>, AppError>,
) -> Result<Json<SketchResponse>, AppError> {
    let result = match body {
        Ok(Protocol(read)) => app
            .store
            .sketches(&read.sketches)
            .await
            .map(|sketches| SketchResponse {
                version: read.version,
                sketches,
            })
            .map_err(AppError::from),
        Err(e) => Err(e),
    };
    app.metrics.request(
        Endpoint::UniqueRead,
        result.as_ref().map_or_else(AppError::code, |_| "ok"),
    );
    result.map(Json)
}

/// Query of `view`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    day: Option<String>,
}

/// One unique id's visitors, as the public read answers it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Unique)]
pub struct UniqueView {
    #[schema(value_type = CounterId)]
    id: String,
    /// The UTC day of a daily count; `null` for the all-time one.
    #[schema(value_type = Option<schema::Day>, required)]
    day: Option<Day>,
    /// The estimated number of distinct visitors.
    #[schema(value_type = schema::Uint64)]
    count: u64,
    /// The estimate's relative standard error (1.04 / sqrt(4096) = 0.01625).
    error: f64,
    /// The sketch's last change; `null` for an id nobody has visited.
    #[schema(value_type = Option<schema::Timestamp>, required)]
    updated_at: Option<Timestamp>,
    /// The merged sketch's size on the wire and in the store, in bytes (3 per set register
    /// while sparse, at most 3075 once dense), whatever the number of visitors.
    bytes: usize,
}

/// `GET /v1/unique/{id}[?day=today|YYYY-MM-DD]`: distinct visitors across every region.
#[utoipa::path(
    get,
    path = "/v1/unique/{id}",
    tag = "unique",
    security((), ("read_token" = [])),
    params(
        ("id" = CounterId, Path, description = "The unique id"),
        ("day" = Option<String>, Query, pattern = "^(today|[0-9]{4}-[0-9]{2}-[0-9]{2})$",
            description = "A UTC day (`today` or YYYY-MM-DD): the visitors of that day, which include every visitor counted by a key derived from the client's address. Without it, all-time visitors (those with an application's own visitor keys)."),
    ),
    responses(
        (status = 200, description = "The estimate; an id nobody has visited reads 0 (`updated_at` null)", body = UniqueView),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char` (the id breaks the id rules), `invalid_path` or `invalid_query` (an unknown parameter, or `day` not a day)", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`: only with `--private-reads`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn view(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> Result<Json<UniqueView>, AppError> {
    let Path(id) = path?;
    let Query(query) = query?;
    let day = match query.day.as_deref() {
        None => None,
        Some("today") => Some(crate::clock::now().day()),
        Some(text) => Some(text.parse::<Day>().map_err(|e| {
            AppError::InvalidQuery(format!("day must be today or a UTC day YYYY-MM-DD: {e}"))
        })?),
    };
    let key = SketchKey::new(id, day).map_err(AppError::InvalidId)?;
    let cached = key.to_string();
    if let Some(view) = app.unique_views.get(&cached) {
        return Ok(Json(view));
    }
    let asked = std::time::Instant::now();
    let total = app
        .store
        .sketches(std::slice::from_ref(&key))
        .await?
        .pop()
        .ok_or_else(|| AppError::from(crate::store::corrupt("sketches", "no answer".into())))?;
    let view = UniqueView {
        id: key.id().to_owned(),
        day,
        count: total.sketch.estimate(),
        error: total.sketch.relative_error(),
        updated_at: total.updated_at,
        bytes: total.sketch.encoded_len(),
    };
    app.unique_views.put(cached, view.clone(), asked);
    Ok(Json(view))
}
