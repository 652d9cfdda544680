//! Viewers now: `POST /v1/presence` (an edge object's report), `POST /v1/read/presence` (the
//! edge's batch read) and the public `GET /v1/presence/{id}`.
//!
//! A report is stored, not merged in memory: per (id, reporter) the store keeps the report
//! with the highest `seq`, and every read sums the reports not expired at the merger's clock
//! ([`crate::store::PresenceStore::presence`]). So several mergers on one Postgres answer the same
//! sum, a merger restart loses nothing that counts, and a reporter that stops reporting
//! drops out after its lease with no message from anyone.
//!
//! Reports are written by the commit task ([`crate::commit`]), through its bounded queue: the
//! reports queued together are stored in one statement, and each is answered once its batch
//! is durable, with the sums of its ids read after that.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use tally_crdt::{PresenceRead, PresenceReport, PresenceResponse, Timestamp, check_counter_id};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::http::schema::{
    self, CounterId, ErrorResponse, PresenceRead as PresenceReadSchema,
    PresenceReport as PresenceReportSchema, PresenceResponse as PresenceResponseSchema,
};
use crate::metrics::Endpoint;

/// Stores the report (in the commit task's next batch of reports), then answers the totals of
/// its ids with the reporter's recorded count.
#[utoipa::path(
    post,
    path = "/v1/presence",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = PresenceReportSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored: the viewers now of each id of the report, in order", body = PresenceResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed report) or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "A rule of the report: `unsupported_version`, `too_many_counters`, `nil_replica`, `invalid_region`, `presence_ttl_out_of_range`, `empty_id`, `id_too_long`, `id_bad_char`, `duplicate_id`", body = ErrorResponse),
        (status = 503, description = "`overloaded` (the commit queue holds `--commit-queue` syncs, retirements, reports and sketch syncs), `shutting_down` or `database_unavailable` (the report's batch was not stored, or its sums could not be read): retry", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn report(
    State(app): State<AppState>,
    body: Result<Protocol<PresenceReport>, AppError>,
) -> Result<Json<PresenceResponse>, AppError> {
    let result = match body {
        Ok(Protocol(report)) => store_report(&app, report).await,
        Err(e) => Err(e),
    };
    app.metrics.request(
        Endpoint::Presence,
        result.as_ref().map_or_else(AppError::code, |_| "ok"),
    );
    result.map(Json)
}

async fn store_report(
    app: &AppState,
    report: PresenceReport,
) -> Result<PresenceResponse, AppError> {
    let (version, reporter) = (report.version, report.reporter);
    let ids: Vec<String> = report.counts.iter().map(|c| c.id.clone()).collect();
    // Durable once this answers; the commit task has dropped the ids' public views.
    let received = app.committer.report(report).await?;
    let sums = app.store.presence(&ids, Some(reporter), received).await?;
    Ok(PresenceResponse {
        version,
        presence: sums.iter().map(|s| s.to_total()).collect(),
    })
}

/// Answers the viewers now of every id asked; writes nothing.
#[utoipa::path(
    post,
    path = "/v1/read/presence",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = PresenceReadSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "The viewers now of each id asked, in order", body = PresenceResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed read) or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "A rule of the read: `unsupported_version`, `too_many_counters`, `nil_replica`, `empty_id`, `id_too_long`, `id_bad_char`, `duplicate_id`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn read(
    State(app): State<AppState>,
    body: Result<Protocol<PresenceRead>, AppError>,
) -> Result<Json<PresenceResponse>, AppError> {
    let result = match body {
        Ok(Protocol(read)) => app
            .store
            .presence(&read.ids, read.reporter, crate::clock::now())
            .await
            .map(|sums| PresenceResponse {
                version: read.version,
                presence: sums.iter().map(|s| s.to_total()).collect(),
            })
            .map_err(AppError::from),
        Err(e) => Err(e),
    };
    app.metrics.request(
        Endpoint::PresenceRead,
        result.as_ref().map_or_else(AppError::code, |_| "ok"),
    );
    result.map(Json)
}

/// One presence id's viewers now, as the public read answers it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Presence)]
pub struct PresenceView {
    #[schema(value_type = CounterId)]
    id: String,
    /// Live sessions over every edge object's fresh report.
    #[schema(value_type = schema::Uint64)]
    count: u64,
    /// The newest fresh report; `null` when none is fresh (nobody is viewing).
    #[schema(value_type = Option<schema::Timestamp>, required)]
    updated_at: Option<Timestamp>,
    /// Edge objects with a fresh report.
    #[schema(value_type = schema::Uint64)]
    reporters: u64,
}

/// `GET /v1/presence/{id}`: viewers now across every region.
#[utoipa::path(
    get,
    path = "/v1/presence/{id}",
    tag = "presence",
    security((), ("read_token" = [])),
    params(("id" = CounterId, Path, description = "The presence id")),
    responses(
        (status = 200, description = "Viewers now; an id nobody views reads 0 (`updated_at` null)", body = PresenceView),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char` (the id breaks the id rules) or `invalid_path`", body = ErrorResponse),
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
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PresenceView>, AppError> {
    let Path(id) = path?;
    check_counter_id(&id).map_err(AppError::InvalidId)?;
    if let Some(view) = app.presence_views.get(&id) {
        return Ok(Json(view));
    }
    let asked = std::time::Instant::now();
    let sum = app
        .store
        .presence(std::slice::from_ref(&id), None, crate::clock::now())
        .await?
        .pop()
        .unwrap_or_default();
    let view = PresenceView {
        id,
        count: sum.count,
        updated_at: sum.updated_at,
        reporters: sum.reporters,
    };
    app.presence_views.put(view.id.clone(), view.clone(), asked);
    Ok(Json(view))
}
