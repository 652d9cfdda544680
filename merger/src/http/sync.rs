//! `POST /v1/sync`: an edge replica's slot totals in, the merged counters out, once durable.
//!
//! The answer carries one entry per counter, in the request's order, and the request's
//! version. A version-2 sync may have counters rejected alone (answered with their error,
//! not committed); the others are committed as usual. A version-1 sync (an edge one version
//! behind, during a rolling deploy) is all or nothing, as version 1 always was.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use tally_crdt::{SyncRequest, SyncResponse, UNSYNCED_AGE_HEADER};

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
    params(
        // `maximum` is MAX_UNSYNCED_AGE_MS.
        ("Tally-Unsynced-Age" = Option<u64>, Header, nullable = false, minimum = 0, maximum = 315_360_000_000.0,
            description = "The age in milliseconds of the sending object's oldest hit not yet acknowledged (this sync's included): if the sync is not committed, the merger exports it as that object's unsynced age, else 0 (`tally_edge_unsynced_age_seconds`, the largest recent one per region)"),
    ),
    request_body(content = SyncRequestSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed (durable): one answer per counter, merged or rejected alone", body = SyncResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed sync), `unreadable_body`, or `invalid_header` (a `Tally-Unsynced-Age` that is not a whole number of milliseconds up to ten years)", body = ErrorResponse),
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
    headers: HeaderMap,
    body: Result<Protocol<SyncRequest>, AppError>,
) -> Result<Json<SyncResponse>, AppError> {
    let result = match (unsynced_age(&headers), body) {
        (Ok(age), Ok(Protocol(request))) => {
            let (region, replica) = (request.region.clone(), request.replica);
            let result = app.committer.commit(request).await.map_err(AppError::from);
            // Committed, the object's hits up to its sending are the merger's (0); refused or
            // failed, they are still only at the edge, as old as it said.
            if let Some(age) = age {
                let left = if result.is_ok() { 0 } else { age };
                let now = std::time::Instant::now();
                app.metrics.unsynced.report(&region, replica, left, now);
            }
            result
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    app.metrics.request(Endpoint::Sync, outcome);
    result.map(Json)
}

/// The largest `Tally-Unsynced-Age` taken: ten years, in milliseconds.
const MAX_UNSYNCED_AGE_MS: u64 = 315_360_000_000;

/// The `Tally-Unsynced-Age` of a sync, if it has one.
fn unsynced_age(headers: &HeaderMap) -> Result<Option<u64>, AppError> {
    let Some(value) = headers.get(UNSYNCED_AGE_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|age| *age <= MAX_UNSYNCED_AGE_MS)
        .map(Some)
        .ok_or(AppError::InvalidHeader(
            UNSYNCED_AGE_HEADER,
            "a whole number of milliseconds, at most ten years",
        ))
}
