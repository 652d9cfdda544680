//! [`AppError`]: every error the HTTP API answers, and the one place that decides its status
//! and JSON body, `{"error":{"code":"...","message":"..."}}`.
//!
//! Details of server-side failures are logged, never sent. Responses made by layers rather
//! than handlers (timeouts, body limits) get the same JSON shape from [`json_errors`].

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::commit::CommitError;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Every error the API answers.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `POST /v1/sync` or `POST /v1/read` without `Authorization: Bearer ...`.
    #[error("missing bearer token: send Authorization: Bearer <sync token>")]
    MissingToken,
    /// A guarded read (list, history, metrics) without `Authorization: Bearer ...`.
    #[error("missing bearer token: send Authorization: Bearer <read token>")]
    MissingReadToken,
    /// An admin request (reset, delete) without `Authorization: Bearer ...`.
    #[error("missing bearer token: send Authorization: Bearer <admin token>")]
    MissingAdminToken,
    /// An admin request to a merger started without `--admin-token`.
    #[error(
        "the admin API is off: start the merger with --admin-token to reset, delete, import or set milestones"
    )]
    AdminDisabled,
    /// A reset or delete for an epoch the counter is no longer at (someone reset it since,
    /// or this is a retry of one that was done).
    #[error("the counter is at epoch {current}, not {expected}: nothing was changed")]
    EpochChanged {
        /// The epoch asked for.
        expected: u64,
        /// The counter's epoch.
        current: u64,
    },
    /// A header of the request that does not parse (named, with what it must be).
    #[error("invalid {0} header: {1}")]
    InvalidHeader(&'static str, &'static str),
    /// An import whose value cannot be one (a negative count for a counter, a half past
    /// `u64::MAX`).
    #[error("invalid import: {0}")]
    InvalidImport(String),
    /// An import id that already brought another value into this counter.
    #[error(
        "import {name:?} already brought {existing} into this counter, not {asked}: nothing was changed"
    )]
    ImportConflict {
        /// The import id.
        name: String,
        /// The value it brought then.
        existing: i128,
        /// The value asked now.
        asked: i128,
    },
    /// A milestone that cannot be one (N of 0, a label too long).
    #[error("invalid milestone: {0}")]
    InvalidMilestone(String),
    /// A milestone at or below the count: that hit has happened.
    #[error("the count is {count} already: milestone {n} has passed")]
    MilestonePassed {
        /// The milestone asked for.
        n: u64,
        /// The count now.
        count: u128,
    },
    /// The counter has a milestone at this N.
    #[error("milestone {n} exists on this counter: cancel it first to change it")]
    MilestoneExists {
        /// The milestone.
        n: u64,
    },
    /// The counter holds as many milestones as it may.
    #[error("this counter has {max} milestones, the most it may hold")]
    TooManyMilestones {
        /// The limit.
        max: usize,
    },
    /// A cancel of a milestone already won: a winner stays a winner.
    #[error("milestone {n} is won already: a winner stays a winner")]
    MilestoneDecided {
        /// The milestone.
        n: u64,
    },
    /// No milestone at this N.
    #[error("this counter has no milestone {n}")]
    MilestoneNotFound {
        /// The milestone.
        n: u64,
    },
    /// A receipt that is not one the edge made for this counter.
    #[error("not a receipt of this counter")]
    InvalidReceipt,
    /// A bearer token that is not the one the route needs.
    #[error("invalid bearer token")]
    InvalidToken,
    /// A body that is not declared as JSON.
    #[error("unsupported content type: send Content-Type: application/json")]
    UnsupportedMediaType,
    /// A sync or read body that is malformed (400) or breaks a protocol rule (422).
    #[error("{0}")]
    InvalidBody(tally_crdt::Error),
    /// A counter id in the path that breaks the id rules.
    #[error("invalid counter id: {0}")]
    InvalidId(tally_crdt::Error),
    /// A path that cannot be decoded (e.g. percent-escapes that are not UTF-8).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A query string that cannot be used.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// No such route.
    #[error("no such resource")]
    NotFound,
    /// The route exists, the method does not.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// The body is larger than the configured limit.
    #[error("request body is larger than the limit")]
    BodyTooLarge,
    /// The body could not be read.
    #[error("request body could not be read")]
    UnreadableBody,
    /// The request took longer than the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The sync could not be committed: retry later (503), or never (409, a retired replica).
    #[error("{0}")]
    Commit(CommitError),
    /// The database does not answer.
    #[error("database unavailable; retry later")]
    DatabaseUnavailable,
}

/// Marks a response as an error with this code, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl AppError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        use tally_crdt::Error as E;
        match self {
            AppError::AdminDisabled => StatusCode::FORBIDDEN,
            AppError::EpochChanged { .. }
            | AppError::ImportConflict { .. }
            | AppError::MilestonePassed { .. }
            | AppError::MilestoneExists { .. }
            | AppError::MilestoneDecided { .. } => StatusCode::CONFLICT,
            AppError::TooManyMilestones { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::InvalidMilestone(_) | AppError::InvalidReceipt => StatusCode::BAD_REQUEST,
            AppError::MilestoneNotFound { .. } => StatusCode::NOT_FOUND,
            AppError::InvalidImport(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::InvalidHeader(..) => StatusCode::BAD_REQUEST,
            AppError::MissingToken
            | AppError::MissingReadToken
            | AppError::MissingAdminToken
            | AppError::InvalidToken => StatusCode::UNAUTHORIZED,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::InvalidBody(E::Malformed(_)) => StatusCode::BAD_REQUEST,
            AppError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::InvalidId(_)
            | AppError::InvalidPath(_)
            | AppError::InvalidQuery(_)
            | AppError::UnreadableBody => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Timeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Commit(CommitError::Retired) => StatusCode::CONFLICT,
            AppError::Commit(_) | AppError::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::MissingToken | AppError::MissingReadToken | AppError::MissingAdminToken => {
                "missing_token"
            }
            AppError::AdminDisabled => "admin_disabled",
            AppError::EpochChanged { .. } => "epoch_changed",
            AppError::InvalidImport(_) => "invalid_import",
            AppError::InvalidHeader(..) => "invalid_header",
            AppError::ImportConflict { .. } => "import_conflict",
            AppError::InvalidMilestone(_) => "invalid_milestone",
            AppError::MilestonePassed { .. } => "milestone_passed",
            AppError::MilestoneExists { .. } => "milestone_exists",
            AppError::TooManyMilestones { .. } => "too_many_milestones",
            AppError::MilestoneDecided { .. } => "milestone_decided",
            AppError::MilestoneNotFound { .. } => "milestone_not_found",
            AppError::InvalidReceipt => "invalid_receipt",
            AppError::InvalidToken => "invalid_token",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::InvalidBody(e) | AppError::InvalidId(e) => e.code(),
            AppError::InvalidPath(_) => "invalid_path",
            AppError::InvalidQuery(_) => "invalid_query",
            AppError::NotFound => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::BodyTooLarge => "body_too_large",
            AppError::UnreadableBody => "unreadable_body",
            AppError::Timeout => "request_timeout",
            AppError::Commit(CommitError::ShuttingDown) => "shutting_down",
            AppError::Commit(CommitError::Overloaded) => "overloaded",
            AppError::Commit(CommitError::Retired) => "replica_retired",
            AppError::Commit(CommitError::Database) | AppError::DatabaseUnavailable => {
                "database_unavailable"
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let code = self.code();
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(
            self,
            AppError::MissingToken
                | AppError::MissingReadToken
                | AppError::MissingAdminToken
                | AppError::InvalidToken
        ) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            // The edge honours it; one second is about a commit queue's worth of work.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

impl From<CommitError> for AppError {
    fn from(e: CommitError) -> Self {
        AppError::Commit(e)
    }
}

impl From<StoreError> for AppError {
    /// The cause is logged here, once; the client hears only that the database is away.
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store query failed");
        AppError::DatabaseUnavailable
    }
}

impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::BodyTooLarge
        } else {
            AppError::UnreadableBody
        }
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        AppError::InvalidPath(rejection.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        AppError::InvalidQuery(rejection.body_text())
    }
}

/// Outermost response mapping: gives error responses made by layers (body limit, timeout)
/// the JSON error shape, and counts every error response by code.
pub fn json_errors(metrics: &Metrics, response: Response) -> Response {
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics.error(code);
        return response;
    }
    let replacement = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::BodyTooLarge,
        StatusCode::REQUEST_TIMEOUT => AppError::Timeout,
        _ => return response,
    };
    metrics.error(replacement.code());
    replacement.into_response()
}
