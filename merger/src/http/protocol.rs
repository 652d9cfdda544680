//! What the edge-facing endpoints (`POST /v1/sync`, `/v1/read`, `/v1/retire`, `/v1/presence`,
//! `/v1/unique`, `/v1/read/presence`, `/v1/read/unique`) share: the bearer
//! sync token, checked before the body is read, and a JSON body decoded and validated by
//! `tally-crdt`'s one decoder, so the edge and the merger refuse the same bodies the same way.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tally_crdt::{
    PresenceRead, PresenceReport, ReadRequest, RetireRequest, SketchRead, SketchSync, SyncRequest,
};

use crate::AppState;
use crate::error::AppError;
use crate::metrics::Endpoint;

/// Refuses a request without the sync token, before its body is read, and counts the refusal
/// as an outcome of `endpoint`. The comparison takes the same time wherever the first
/// differing byte is.
pub async fn require_token(
    State((app, endpoint)): State<(AppState, Endpoint)>,
    request: Request,
    next: Next,
) -> Response {
    let verdict = match bearer(&request) {
        None => Err(AppError::MissingToken),
        Some(token) if same(token, &app.token) => Ok(()),
        Some(_) => Err(AppError::InvalidToken),
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(e) => {
            app.metrics.request(endpoint, e.code());
            e.into_response()
        }
    }
}

/// The bearer token of `Authorization: Bearer <token>`. The scheme is case-insensitive
/// (RFC 9110); the token is taken as sent.
pub fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
}

/// Whether `presented` is `expected`, in a time that does not depend on where they differ.
pub fn same(presented: &str, expected: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// A protocol body the merger accepts.
pub trait Decode: Sized {
    /// Decodes and validates `body`.
    ///
    /// # Errors
    ///
    /// The first rule the body breaks.
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error>;
}

impl Decode for SyncRequest {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        SyncRequest::from_json(body)
    }
}

impl Decode for RetireRequest {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        RetireRequest::from_json(body)
    }
}

impl Decode for ReadRequest {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        ReadRequest::from_json(body)
    }
}

impl Decode for PresenceReport {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        PresenceReport::from_json(body)
    }
}

impl Decode for PresenceRead {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        PresenceRead::from_json(body)
    }
}

impl Decode for SketchSync {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        SketchSync::from_json(body)
    }
}

impl Decode for SketchRead {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        SketchRead::from_json(body)
    }
}

/// Extracts a valid protocol body: declared `application/json` (else 415), within the body
/// limit (else 413), and decoded and validated (else 400 `malformed_body` or 422 with the
/// rule broken). Handlers take `Result<Protocol<T>, AppError>` so that they can count the
/// refusals among their outcomes.
#[derive(Debug)]
pub struct Protocol<T>(pub T);

impl<S: Send + Sync, T: Decode> FromRequest<S> for Protocol<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(AppError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(request, state).await?;
        T::decode(&body)
            .map(Protocol)
            .map_err(AppError::InvalidBody)
    }
}
