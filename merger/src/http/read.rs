//! `POST /v1/read`: the edge's batch read, answered from memory.
//!
//! An edge replica refreshes its stale cache entries here, many counters per request: the
//! global totals of each and, when it names itself, its own recorded slot (which its read
//! formula `global - recorded_own + current_own` needs). This is the read path of the whole
//! system, so it writes nothing: no transaction, no trip through the commit task, and the
//! caller is not registered as a replica (a replica exists for the merger once it syncs).
//! Counters the merger's cache holds are answered from memory; the others are loaded with
//! one query for the whole request.
//! A counter nobody has hit answers zero totals and no `updated_at` (known-absent), so the
//! edge can cache that too. Answers come in the request's order, each naming its counter.

use axum::Json;
use axum::extract::State;
use tally_crdt::{ReadRequest, ReadResponse};

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::metrics::Endpoint;

/// Answers every counter asked, under one read lock.
pub async fn read(
    State(app): State<AppState>,
    body: Result<Protocol<ReadRequest>, AppError>,
) -> Result<Json<ReadResponse>, AppError> {
    let result = match body {
        Ok(Protocol(request)) => app
            .read_through(&request.counters, |held| ReadResponse {
                version: request.version,
                counters: request
                    .counters
                    .iter()
                    .map(|key| held.counter(key).merged(key, request.replica))
                    .collect(),
            })
            .await
            .map_err(AppError::from),
        Err(e) => Err(e),
    };
    match &result {
        Ok(answer) => {
            app.metrics.request(Endpoint::Read, "ok");
            app.metrics
                .counters_read
                .inc_by(u64::try_from(answer.counters.len()).unwrap_or(u64::MAX));
        }
        Err(e) => app.metrics.request(Endpoint::Read, e.code()),
    }
    result.map(Json)
}
