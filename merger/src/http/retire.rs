//! `POST /v1/retire`: an edge replica incarnation declares its slots final.
//!
//! An edge object rotates to a new incarnation only when every slot of the old one is
//! acknowledged, then retires the old one here (versions 2 to 6 alike). The merger folds the
//! live slots of the object's incarnations up to this one into the object's carry of each
//! counter (`tally_crdt::CounterState::retire`) and ignores the incarnation's syncs from then
//! on, so a counter's slots stay bounded by the incarnations alive now. It goes through the
//! commit task, like a sync, and is answered once durable; retiring twice answers
//! `folded: 0`.

use axum::Json;
use axum::extract::State;
use tally_crdt::{RetireRequest, RetireResponse};

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::http::schema::{
    ErrorResponse, RetireRequest as RetireRequestSchema, RetireResponse as RetireResponseSchema,
};
use crate::metrics::Endpoint;

/// Retires the replica and answers how many slots it folded.
#[utoipa::path(
    post,
    path = "/v1/retire",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = RetireRequestSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "Retired (durable); `folded` is 0 when it already was", body = RetireResponseSchema),
        (status = 400, description = "`malformed_body` or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "`unsupported_version` (before 2) or `nil_replica`", body = ErrorResponse),
        (status = 503, description = "`overloaded`, `shutting_down` or `database_unavailable`: retry", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn retire(
    State(app): State<AppState>,
    body: Result<Protocol<RetireRequest>, AppError>,
) -> Result<Json<RetireResponse>, AppError> {
    let result = match body {
        Ok(Protocol(request)) => app.committer.retire(request).await.map_err(AppError::from),
        Err(e) => Err(e),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    app.metrics.request(Endpoint::Retire, outcome);
    result.map(Json)
}
