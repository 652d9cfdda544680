//! `GET /openapi.json`: the API as an OpenAPI 3.1 document, and `GET /openapi`: a page that
//! shows it.
//!
//! The document is generated from the code that serves the API: every handler carries a
//! `#[utoipa::path]` annotation (path, parameters, body, and each status it can answer with
//! its body), and [`super::router`] registers the routes through `utoipa_axum`'s `routes!`
//! from those same annotations, so a route cannot be served without being described, nor
//! described at a path it is not served at. Errors are one schema,
//! [`ErrorResponse`](super::schema::ErrorResponse), listed per status; there are no `default`
//! responses.
//!
//! The page (`assets/openapi.html`) is one static file, like the dashboard: a small script
//! that fetches `/openapi.json` and lists each operation with its parameters, body and
//! responses. It loads nothing from elsewhere.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::schema;

/// The document's fixed parts: what the routes do not say themselves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally-merger",
        description = "The tally merger: merges the edge replicas' CRDT counter syncs durably and \
            serves the global counts. Counts are JSON integers below 2^53 and decimal strings \
            beyond; times are RFC 3339. Every error is `{\"error\": {\"code\", \"message\"}}` \
            (docs/protocol.md has each code). Every answer carries `Cache-Control: no-store`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    // The scalars parameters name: a parameter's schema is not collected from the handlers
    // as a body's is; and `Frame` and `Cut`, which a sync's slot names through schemas of
    // their own.
    components(schemas(
        schema::Count, schema::Timestamp, schema::CounterId, schema::CounterKind,
        schema::Namespace, schema::ReplicaId, schema::Region, schema::Uint64, schema::Uint128,
        schema::SyncVersion, schema::Version2, schema::ErrorResponse, schema::Frame,
        schema::Cut,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "edge", description = "The edge replicas' protocol (sync token)"),
        (name = "counters", description = "The global read API"),
        (name = "admin", description = "Reset, delete and import (admin token)"),
        (name = "milestones", description = "The exact N-th hit of a counter: register and cancel (admin token), winners and receipts (reads)"),
        (name = "operations", description = "Probes, metrics, the dashboard and this document"),
    ),
)]
pub struct ApiDoc;

/// The three bearer tokens, as security schemes the routes name.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "sync_token",
                "The edge's sync token (--token): POST /v1/sync, /v1/read, /v1/retire.",
            ),
            (
                "read_token",
                "The read token (--read-token): lists, history, regions, metrics, and \
                 single-counter reads with --private-reads. Without --read-token they are open.",
            ),
            (
                "admin_token",
                "The admin token (--admin-token): reset, delete, import. Without \
                 --admin-token those routes answer 403 admin_disabled.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The document as served: serialized once, when the router is built.
#[derive(Debug, Clone)]
pub struct Document(pub Bytes);

impl Document {
    /// Serializes `openapi`.
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Document {
        let json = openapi
            .to_pretty_json()
            .expect("an OpenAPI document of plain data serializes");
        Document(Bytes::from(json))
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
    ),
)]
pub async fn document(State(document): State<Document>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.0,
    )
}

const PAGE: &str = include_str!("../../assets/openapi.html");

/// Same-origin fetches only; the inline style and script are the page's own.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `GET /openapi`: the document, browsable.
#[utoipa::path(
    get,
    path = "/openapi",
    tag = "operations",
    responses(
        (status = 200, description = "A page that lists the operations of `/openapi.json`", content_type = "text/html", body = String),
    ),
)]
pub async fn page() -> impl IntoResponse {
    super::dashboard::static_page(PAGE, POLICY)
}
