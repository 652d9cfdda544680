//! `POST /v1/sync`: an edge replica's slot totals in, the merged counters out, once durable.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tally_crdt::{SyncRequest, SyncResponse};

use crate::AppState;
use crate::error::AppError;
use crate::metrics::Outcome;

/// Refuses a request without the sync token, before its body is read. The comparison takes
/// the same time wherever the first differing byte is.
pub async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110); the token is compared exactly.
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
    let verdict = match presented {
        None => Err(AppError::MissingToken),
        Some(token) if bool::from(token.as_bytes().ct_eq(app.token.as_bytes())) => Ok(()),
        Some(_) => Err(AppError::InvalidToken),
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(e) => {
            app.metrics
                .syncs
                .get_or_create(&Outcome { outcome: e.code() })
                .inc();
            e.into_response()
        }
    }
}

/// Decodes and validates the sync, commits it (grouped with concurrent ones), and answers
/// with the merged totals of each of its counters.
pub async fn sync(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SyncResponse>, AppError> {
    let result = merge(&app, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    app.metrics.syncs.get_or_create(&Outcome { outcome }).inc();
    result.map(Json)
}

async fn merge(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<SyncResponse, AppError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(AppError::UnsupportedMediaType);
    }
    let request = SyncRequest::from_json(&body?).map_err(AppError::InvalidSync)?;
    Ok(app.committer.commit(request).await?)
}
