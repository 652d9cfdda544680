//! The HTTP API: one module per resource, merged into one [`router`].
//!
//! | route | module |
//! |---|---|
//! | `POST /v1/sync` | [`sync`] |
//! | `POST /v1/read` | [`read`] |
//! | `POST /v1/retire` | [`retire`] |
//! | `POST /v1/presence`, `POST /v1/read/presence`, `GET /v1/presence/{id}` | [`presence`] |
//! | `POST /v1/unique`, `POST /v1/read/unique`, `GET /v1/unique/{id}` | [`unique`] |
//! | `GET /v1/{counters,gauges}[/{id}[/history]]` | [`counters`] |
//! | `POST /v1/{counters,gauges}/{id}/{reset,import}`, `DELETE /v1/{counters,gauges}/{id}` | [`admin`] |
//! | `GET /v1/regions` | [`regions`] |
//! | `GET /healthz`, `/readyz`, `/metrics` | [`health`] |
//! | `GET /` (dashboard page) | [`dashboard`] |
//! | `GET /openapi.json`, `GET /openapi` (the API described, and browsable) | [`openapi`] |
//!
//! The edge-facing routes share their token check and body extractor ([`protocol`]);
//! the read token guards the lists, history and metrics, the admin token resets and deletes
//! ([`access`]).
//!
//! Every handler carries its `#[utoipa::path]` annotation, and the routes are registered from
//! those annotations (`utoipa_axum`'s `routes!`), so [`router_and_document`] yields the
//! router and the OpenAPI document of exactly the routes it serves; [`schema`] describes
//! the bodies the handlers do not define themselves.

pub mod access;
pub mod admin;
pub mod counters;
pub mod dashboard;
pub mod extract;
pub mod health;
pub mod milestones;
pub mod openapi;
pub mod presence;
pub mod protocol;
pub mod read;
pub mod regions;
pub mod retire;
pub mod schema;
pub mod sync;
pub mod unique;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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

/// The whole API over `state`, and its OpenAPI document (served at `/openapi.json`).
pub fn router(state: AppState, limits: Limits) -> Router {
    let (router, _) = router_and_document(state, limits);
    router
}

/// [`router`] and the OpenAPI document of the routes it serves. Each group of routes is an
/// `OpenApiRouter` registered from the handlers' `#[utoipa::path]` annotations, split into
/// its plain axum `Router` (merged and layered as before) and its part of the document.
pub fn router_and_document(state: AppState, limits: Limits) -> (Router, utoipa::openapi::OpenApi) {
    let metrics = Arc::clone(&state.metrics);
    let read_guard = || from_fn_with_state(state.clone(), access::require_read_token);
    let public = |method_router: UtoipaMethodRouter<AppState>| {
        method_router.map(|route| {
            if limits.private_reads {
                route.route_layer(read_guard())
            } else {
                route
            }
        })
    };
    let single = public(routes!(counters::read));
    let (admin, admin_doc) = OpenApiRouter::new()
        .routes(routes!(admin::reset))
        .routes(routes!(admin::import))
        .routes(routes!(admin::delete))
        .routes(routes!(milestones::add))
        .routes(routes!(milestones::cancel))
        .route_layer(from_fn_with_state(
            state.clone(),
            access::require_admin_token,
        ))
        .split_for_parts();
    let (guarded, guarded_doc) = OpenApiRouter::new()
        .routes(routes!(regions::list))
        .routes(routes!(counters::list))
        .routes(routes!(counters::history))
        .routes(routes!(health::metrics))
        .route_layer(read_guard())
        .split_for_parts();
    let edge_route = |method_router: UtoipaMethodRouter<AppState>, endpoint| {
        method_router.map(|route| {
            route.route_layer(from_fn_with_state(
                (state.clone(), endpoint),
                protocol::require_token,
            ))
        })
    };
    let (edge, edge_doc) = OpenApiRouter::new()
        .routes(edge_route(routes!(sync::sync), Endpoint::Sync))
        .routes(edge_route(routes!(retire::retire), Endpoint::Retire))
        .routes(edge_route(routes!(read::read), Endpoint::Read))
        .routes(edge_route(routes!(presence::report), Endpoint::Presence))
        .routes(edge_route(routes!(presence::read), Endpoint::PresenceRead))
        .routes(edge_route(routes!(unique::sync), Endpoint::Unique))
        .routes(edge_route(routes!(unique::read), Endpoint::UniqueRead))
        // The public reads of viewers now and unique visitors query the store: bounded in
        // time like the routes above.
        .routes(public(routes!(presence::view)))
        .routes(public(routes!(unique::view)))
        .routes(public(routes!(milestones::list)))
        .routes(public(routes!(milestones::receipt)))
        .split_for_parts();
    // Routes that read a body, or wait for the commit task or the store: bounded in body size
    // and time. (Each `Router::layer` boxes every route it wraps once more, and each box is a
    // clone and an allocation per request: the hot read path below has none of these.)
    let bounded = edge
        .merge(guarded)
        .merge(admin)
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    // The single-counter read (from memory; a cache miss bounds its store query itself, see
    // `Shared::read_through`), the pages, the probes and the document: no body, no wait.
    let (open, open_doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(single)
        .routes(routes!(dashboard::page))
        .routes(routes!(health::alive))
        .routes(routes!(health::ready))
        .routes(routes!(openapi::page))
        .split_for_parts();
    let (document_schemas, document_paths, document_route) = routes!(openapi::document);
    let mut document = open_doc;
    for part in [edge_doc, guarded_doc, admin_doc] {
        document.merge(part);
    }
    document.paths.merge(document_paths);
    document
        .components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(document_schemas);
    let served = document_route.with_state(openapi::Document::new(&document));
    let router = open
        .route("/openapi.json", served)
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
    (Router::new().fallback_service(service), document)
}
