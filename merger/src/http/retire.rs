//! `POST /v1/retire`: an edge replica incarnation declares its slots final.
//!
//! An edge object rotates to a new incarnation only when every slot of the old one is
//! acknowledged, then retires the old one here. The merger folds its slots into each
//! counter's base (per region) and ignores its syncs from then on, so a counter's slots stay
//! bounded by the incarnations alive now. It goes through the commit task, like a sync, and
//! is answered once durable; retiring twice answers `folded: 0`.

use axum::Json;
use axum::extract::State;
use tally_crdt::{RetireRequest, RetireResponse};

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::metrics::Endpoint;

/// Retires the replica and answers how many slots it folded.
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
