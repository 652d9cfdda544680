//! `GET /v1/regions`: each edge region's freshness, for the dashboard's region view.
//!
//! Per region: the last time a sync from one of its replicas raised a slot (`last_sync`) and
//! how many of its replicas did (`replicas`), with the merger's clock (`now`) so a client
//! computes ages without trusting its own clock. It is what this merger process committed
//! since it started ([`crate::state::Db::regions`]), kept in memory: after a restart a region
//! appears again with its next sync, and behind a load balancer each merger answers for the
//! syncs it committed. A sync that raises nothing (a retry, an anti-entropy pass of totals
//! already held) does not move `last_sync`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tally_crdt::Timestamp;
use utoipa::ToSchema;

use crate::AppState;
use crate::clock::now;
use crate::http::schema::{self, ErrorResponse};

/// The answer: regions in name order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Regions {
    /// The merger's clock when it answered.
    #[schema(value_type = schema::Timestamp)]
    now: Timestamp,
    /// Regions in name order.
    items: Vec<RegionItem>,
}

/// One region.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionItem {
    #[schema(value_type = schema::Region)]
    region: String,
    /// The latest sync of one of its replicas that raised a slot.
    #[schema(value_type = schema::Timestamp)]
    last_sync: Timestamp,
    /// Its replicas that raised a slot through this merger and are not retired.
    replicas: usize,
}

/// `GET /v1/regions` (read token).
#[utoipa::path(
    get,
    path = "/v1/regions",
    tag = "counters",
    security(("read_token" = [])),
    responses(
        (status = 200, description = "Each region's freshness, as this merger process committed it", body = Regions),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
    ),
)]
pub async fn list(State(app): State<AppState>) -> Json<Regions> {
    let items = app
        .db
        .regions()
        .into_iter()
        .map(|seen| RegionItem {
            region: seen.region.to_string(),
            last_sync: seen.last_sync,
            replicas: seen.replicas,
        })
        .collect();
    Json(Regions { now: now(), items })
}
