//! `GET /`: the dashboard page. One static file (`assets/dashboard.html`: markup, style and
//! script, no build step), compiled into the binary, that reads the JSON API from the
//! browser: the counter and gauge lists (sortable, searchable), a selected counter's history
//! as a hand-drawn SVG chart, and each region's freshness (`GET /v1/regions`), polled every
//! few seconds. It holds no data itself, so it is served without the read token and asks
//! for it when the API answers 401.
//!
//! Its content security policy allows nothing from elsewhere: the page works offline and
//! cannot be made to load a script or send a token to another origin.

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../../assets/dashboard.html");

/// Same-origin fetches only; the inline style and script are the page's own.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The dashboard page.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses(
        (status = 200, description = "The dashboard page (no data in it: it reads the API)", content_type = "text/html", body = String),
    ),
)]
pub async fn page() -> impl IntoResponse {
    static_page(PAGE, POLICY)
}

/// A page compiled into the binary (this one, the OpenAPI page), with its content security
/// policy and no content sniffing.
pub fn static_page(page: &'static str, policy: &'static str) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(policy),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        page,
    )
}
