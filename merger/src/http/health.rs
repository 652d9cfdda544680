//! `GET /healthz` (the process answers), `GET /readyz` (the database answers) and
//! `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use tally_crdt::CounterKind;

use crate::AppState;
use crate::error::AppError;
use crate::http::schema::{ErrorResponse, Status};
use crate::metrics::Kind;

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Alive: the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Status)),
)]
pub async fn alive() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the database answers a query within two seconds.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`: the database answers", body = Status),
        (status = 503, description = "`database_unavailable`: the database did not answer within 2 s", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn ready(State(app): State<AppState>) -> Result<Json<Value>, AppError> {
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(AppError::DatabaseUnavailable)
        }
        Err(_) => Err(AppError::DatabaseUnavailable),
    }
}

/// Every metric, in the Prometheus/OpenMetrics text format. The counters stored are counted
/// at scrape time (one indexed count per kind; skipped, keeping the last figures, if the
/// database does not answer within the readiness timeout).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(("read_token" = [])),
    responses(
        (status = 200, description = "Every metric (docs/protocol.md lists them)", body = String,
            content_type = "application/openmetrics-text"),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
    ),
)]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let now = std::time::Instant::now();
    app.metrics.publish_unsynced(now);
    app.metrics.publish_catchup(now, app.store.caught_up_at());
    app.metrics
        .cached_counters
        .set(i64::try_from(app.db.len()).unwrap_or(i64::MAX));
    for kind in [CounterKind::G, CounterKind::Pn] {
        if let Ok(Ok(n)) = tokio::time::timeout(READY_TIMEOUT, app.store.counter_count(kind)).await
        {
            app.metrics
                .counters
                .get_or_create(&Kind {
                    kind: kind.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}
