//! Extractors that yield validated values, so handlers never see a raw path or a rejection:
//! a bad path is an [`AppError`] before the handler runs.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use tally_crdt::{CounterKey, CounterKind};

use crate::error::AppError;

/// The counter `/v1/{namespace}/{id}[/…]` names: `counters` or `gauges` (else 404) and a
/// valid id (else 400 with the rule broken).
#[derive(Debug, Clone)]
pub struct CounterPath(pub CounterKey);

impl<S: Send + Sync> FromRequestParts<S> for CounterPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path((namespace, id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(AppError::from)?;
        let kind = CounterKind::from_namespace(&namespace).ok_or(AppError::NotFound)?;
        CounterKey::new(kind, id)
            .map(CounterPath)
            .map_err(AppError::InvalidId)
    }
}

/// The kind `/v1/{namespace}` names: `counters` or `gauges`, else 404.
#[derive(Debug, Clone, Copy)]
pub struct NamespacePath(pub CounterKind);

impl<S: Send + Sync> FromRequestParts<S> for NamespacePath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(namespace) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(AppError::from)?;
        CounterKind::from_namespace(&namespace)
            .map(NamespacePath)
            .ok_or(AppError::NotFound)
    }
}
