//! `GET /`: a small dashboard page, listing counters and gauges with their global counts. A
//! static page (compiled in) that reads the JSON API from the browser.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../../assets/dashboard.html");

/// The dashboard page.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}
