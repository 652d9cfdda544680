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
use crate::metrics::Kind;

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Alive: the process serves requests.
pub async fn alive() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the database answers a query within two seconds.
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
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
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
