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
use tally_crdt::{CounterKind, ReadRequest, ReadResponse};

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::Protocol;
use crate::http::schema::{
    ErrorResponse, ReadRequest as ReadRequestSchema, ReadResponse as ReadResponseSchema,
};
use crate::metrics::Endpoint;

/// Answers every counter asked, under one read lock.
#[utoipa::path(
    post,
    path = "/v1/read",
    tag = "edge",
    security(("sync_token" = [])),
    request_body(content = ReadRequestSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "One answer per counter asked, in order; one nobody has hit has zero totals and no `updated_at`", body = ReadResponseSchema),
        (status = 400, description = "`malformed_body` (not a well-formed read, or a counter id that breaks the id rules) or `unreadable_body`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "A rule of the read: `unsupported_version`, `too_many_counters`, `nil_replica`, `duplicate_counter`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`: counters not held in memory could not be loaded", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn read(
    State(app): State<AppState>,
    body: Result<Protocol<ReadRequest>, AppError>,
) -> Result<Json<ReadResponse>, AppError> {
    let result = match body {
        Ok(Protocol(request)) => app
            .read_through(&request.counters, |held| {
                let news = held.news(crate::clock::now());
                ReadResponse {
                    version: request.version,
                    counters: request
                        .counters
                        .iter()
                        .map(|key| {
                            let mut merged = held.counter(key).merged(key, request.replica);
                            if key.kind() == CounterKind::G {
                                merged.milestones = news.get(key.id());
                            }
                            merged
                        })
                        .collect(),
                }
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
