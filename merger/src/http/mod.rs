//! The HTTP API: one module per resource, merged into one [`router`].
//!
//! | route | module |
//! |---|---|
//! | `POST /v1/sync` | [`sync`] |
//! | `POST /v1/read` | [`read`] |
//! | `POST /v1/retire` | [`retire`] |
//! | `GET /v1/{counters,gauges}[/{id}[/history]]` | [`counters`] |
//! | `POST /v1/{counters,gauges}/{id}/{reset,import}`, `DELETE /v1/{counters,gauges}/{id}` | [`admin`] |
//! | `GET /v1/regions` | [`regions`] |
//! | `GET /healthz`, `/readyz`, `/metrics` | [`health`] |
//! | `GET /` (dashboard page) | [`dashboard`] |
//!
//! The two edge-facing routes share their token check and body extractor ([`protocol`]);
//! the read token guards the lists, history and metrics, the admin token resets and deletes
//! ([`access`]).

pub mod access;
pub mod admin;
pub mod counters;
pub mod dashboard;
pub mod extract;
pub mod health;
pub mod protocol;
pub mod read;
pub mod regions;
pub mod retire;
pub mod sync;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::{AppError, json_errors};
use crate::metrics::Endpoint;

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time for a whole request.
    pub request_timeout: Duration,
    /// Single-counter reads need the read token too.
    pub private_reads: bool,
}

/// The whole API over `state`.
pub fn router(state: AppState, limits: Limits) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let read_guard = || from_fn_with_state(state.clone(), access::require_read_token);
    let single = get(counters::read);
    let single = if limits.private_reads {
        single.route_layer(read_guard())
    } else {
        single
    };
    let admin = Router::new()
        .route("/v1/{namespace}/{id}/reset", post(admin::reset))
        .route("/v1/{namespace}/{id}/import", post(admin::import))
        .route("/v1/{namespace}/{id}", axum::routing::delete(admin::delete))
        .route_layer(from_fn_with_state(
            state.clone(),
            access::require_admin_token,
        ));
    let guarded = Router::new()
        .route("/v1/regions", get(regions::list))
        .route("/v1/{namespace}", get(counters::list))
        .route("/v1/{namespace}/{id}/history", get(counters::history))
        .route("/metrics", get(health::metrics))
        .route_layer(read_guard());
    // Routes that read a body, or wait for the commit task or the store: bounded in body size
    // and time. (Each `Router::layer` boxes every route it wraps once more, and each box is a
    // clone and an allocation per request: the hot read path below has none of these.)
    let bounded = Router::new()
        .route(
            "/v1/sync",
            post(sync::sync).route_layer(from_fn_with_state(
                (state.clone(), Endpoint::Sync),
                protocol::require_token,
            )),
        )
        .route(
            "/v1/retire",
            post(retire::retire).route_layer(from_fn_with_state(
                (state.clone(), Endpoint::Retire),
                protocol::require_token,
            )),
        )
        .route(
            "/v1/read",
            post(read::read).route_layer(from_fn_with_state(
                (state.clone(), Endpoint::Read),
                protocol::require_token,
            )),
        )
        .merge(guarded)
        .merge(admin)
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    // The single-counter read (from memory; a cache miss bounds its store query itself, see
    // `Shared::read_through`), the page and the probes: no body, no wait.
    let router = Router::new()
        .route("/v1/{namespace}/{id}", single)
        .route("/", get(dashboard::page))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .merge(bounded)
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state);
    // Request tracing logs at DEBUG: skip its per-request cost (about 6% of read throughput)
    // unless that level is enabled for it.
    let router = if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        router.layer(TraceLayer::new_for_http())
    } else {
        router
    };
    // Around everything, as one statically typed stack (no per-route boxing). Outermost
    // first: errors from every layer below get the JSON shape and are counted.
    let service = ServiceBuilder::new()
        .layer(MapResponseLayer::new(move |response| {
            json_errors(&metrics, response)
        }))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .service(router);
    Router::new().fallback_service(service)
}
