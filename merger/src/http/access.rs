//! Who may do what. The admin API (reset, delete) needs `Authorization: Bearer <admin token>`,
//! and is off without `--admin-token`. With `--read-token`, what enumerates counters (the lists, the history,
//! `/metrics`) needs `Authorization: Bearer <read token>`; single-counter reads stay public
//! unless `--private-reads`. Without a read token everything readable is open, as before.
//!
//! The dashboard page itself is a static shell with no data in it: it is always served, and
//! asks for the read token when the API refuses it.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::AppError;
use crate::http::protocol::{bearer, same};

/// Refuses the request without the read token, when one is configured.
pub async fn require_read_token(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = app.read_token.as_deref() else {
        return next.run(request).await;
    };
    match bearer(&request) {
        None => AppError::MissingReadToken.into_response(),
        Some(token) if same(token, expected) => next.run(request).await,
        Some(_) => AppError::InvalidToken.into_response(),
    }
}

/// Refuses an admin request without the admin token, and every admin request when none is
/// configured.
pub async fn require_admin_token(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = app.admin_token.as_deref() else {
        return AppError::AdminDisabled.into_response();
    };
    match bearer(&request) {
        None => AppError::MissingAdminToken.into_response(),
        Some(token) if same(token, expected) => next.run(request).await,
        Some(_) => AppError::InvalidToken.into_response(),
    }
}
