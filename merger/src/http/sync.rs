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
use crate::metrics::Endpoint;

/// Commits the sync (grouped with concurrent ones) and answers with the merged totals of each
/// of its counters, or the rejection of a counter refused alone.
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
