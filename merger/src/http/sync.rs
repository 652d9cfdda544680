//! `POST /v1/sync`: an edge replica's slot totals in, the merged counters out, once durable.
//!
//! The answer carries one entry per counter, in the request's order, and the request's
//! version. A version-2 sync may have counters rejected alone (answered with their error,
//! not committed); the others are committed as usual. A version-1 sync (an edge one version
//! behind, during a rolling deploy) is all or nothing, as version 1 always was.

use axum::Json;
use axum::extract::State;
use tally_crdt::{SyncRequest, SyncResponse};

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::http::schema::{
    ErrorResponse, SyncRequest as SyncRequestSchema, SyncResponse as SyncResponseSchema,
};
use crate::metrics::Endpoint;

/// Commits the sync (grouped with concurrent ones) and answers with the merged totals of each
/// of its counters, or the rejection of a counter refused alone.
#[utoipa::path(
    post,
    path = "/v1/sync",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = SyncRequestSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed (durable): one answer per counter, merged or rejected alone", body = SyncResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed sync) or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 409, description = "`replica_retired`: the replica was retired; nothing was committed", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "A rule of the whole sync: `unsupported_version`, `too_many_counters`, `nil_replica`, `invalid_region`, `empty_id`, `id_too_long`, `id_bad_char`, `duplicate_counter`, `decrement_on_counter` (version 1)", body = ErrorResponse),
        (status = 503, description = "`overloaded` (commit queue full), `shutting_down` or `database_unavailable`: nothing was committed; retry", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn sync(
    State(app): State<AppState>,
    body: Result<Protocol<SyncRequest>, AppError>,
) -> Result<Json<SyncResponse>, AppError> {
    let result = match body {
        Ok(Protocol(request)) => app.committer.commit(request).await.map_err(AppError::from),
        Err(e) => Err(e),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    app.metrics.request(Endpoint::Sync, outcome);
    result.map(Json)
}
