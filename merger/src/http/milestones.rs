//! Milestones on a counter: `POST`, `GET /v1/counters/{id}/milestones`,
//! `DELETE /v1/counters/{id}/milestones/{n}` and `GET /v1/counters/{id}/receipts/{receipt}`
//! (docs/milestones.md).
//!
//! Registering and cancelling are admin calls (the admin token); reading the milestones and
//! their winners, and looking up a receipt, are reads (the read token with
//! `--private-reads`). Milestones are for counters only: `/v1/gauges/...` is 404, since a
//! count that goes down has no "N-th hit".

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tally_crdt::{Count, CounterKey, CounterKind, Receipt, Timestamp};
use utoipa::ToSchema;

use crate::AppState;
use crate::clock::now;
use crate::error::AppError;
use crate::http::counters::count;
use crate::http::protocol::{Decode, Protocol};
use crate::http::schema::{self, CounterId, ErrorResponse, Namespace};
use crate::milestone::{AddMilestone, CancelMilestone};
use crate::milestone::{MAX_LABEL_LEN, MAX_MILESTONES_PER_COUNTER, Milestone};

/// The counter a milestone route names: `counters` only (gauges have no N-th hit).
fn counter_of(namespace: &str, id: String) -> Result<CounterKey, AppError> {
    match CounterKind::from_namespace(namespace) {
        Some(CounterKind::G) => CounterKey::new(CounterKind::G, id).map_err(AppError::InvalidId),
        _ => Err(AppError::NotFound),
    }
}

/// The body of a registration: `{"n": N, "label": "…"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMilestone {
    /// The ordinal that wins: 1 to 2^64 - 1, a JSON integer or a decimal string.
    #[schema(value_type = schema::MilestoneN)]
    n: Count,
    /// What it is for (at most 200 characters), shown with the winner.
    #[schema(max_length = 200)]
    label: Option<String>,
}

impl Decode for NewMilestone {
    fn decode(body: &[u8]) -> Result<Self, tally_crdt::Error> {
        serde_json::from_slice(body).map_err(|e| tally_crdt::Error::Malformed(e.to_string()))
    }
}

/// A milestone and, once decided, its winner.
#[derive(Debug, Serialize, ToSchema)]
pub struct MilestoneView {
    /// The ordinal that wins.
    #[schema(value_type = schema::Count)]
    n: Count,
    #[schema(required)]
    label: Option<String>,
    /// `pending` or `won` (`cancelled` in the answer to a cancel).
    #[schema(pattern = "^(pending|won|cancelled)$")]
    status: &'static str,
    #[schema(value_type = schema::Timestamp)]
    created_at: Timestamp,
    /// The hit that was the N-th; `null` while pending.
    #[schema(required)]
    winner: Option<WinnerView>,
    /// When the webhook acknowledged the winner's announcement; `null` before (or without a
    /// webhook).
    #[schema(value_type = Option<schema::Timestamp>, required)]
    announced_at: Option<Timestamp>,
}

/// The N-th hit: unit `unit` of replica `replica`'s slot got ordinal N. The receipt of the
/// `PUT` that counted it holds that unit.
#[derive(Debug, Serialize, ToSchema)]
pub struct WinnerView {
    /// The edge replica (incarnation) that counted it, 32 hex digits.
    replica: String,
    /// The unit of that replica's slot.
    #[schema(value_type = schema::Count)]
    unit: Count,
    /// When the commit that decided it was made.
    #[schema(value_type = schema::Timestamp)]
    decided_at: Timestamp,
    /// The visitor key the winning hit carried (`{"visitor": "…"}` on the `PUT`), when its
    /// counter was near the milestone then; `null` otherwise.
    #[schema(required, max_length = 64)]
    visitor: Option<String>,
}

impl From<Milestone> for MilestoneView {
    fn from(m: Milestone) -> Self {
        MilestoneView {
            n: Count(i128::from(m.n)),
            label: m.label,
            status: if m.winner.is_some() { "won" } else { "pending" },
            created_at: m.created_at,
            winner: m.winner.map(|w| WinnerView {
                replica: w.replica.to_string(),
                unit: Count(i128::from(w.unit)),
                decided_at: w.at,
                visitor: w.visitor,
            }),
            announced_at: m.announced_at,
        }
    }
}

/// A counter's milestones.
#[derive(Debug, Serialize, ToSchema)]
pub struct Milestones {
    #[schema(value_type = CounterId)]
    id: String,
    /// The count now.
    #[schema(value_type = schema::Count)]
    count: Count,
    /// Every milestone, by N.
    milestones: Vec<MilestoneView>,
}

/// `POST /v1/counters/{id}/milestones` with `{"n", "label"}`.
#[utoipa::path(
    post,
    path = "/v1/{namespace}/{id}/milestones",
    tag = "milestones",
    security(("admin_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` (a gauge has no N-th hit: 404)"),
        ("id" = CounterId, Path, description = "The counter's id"),
    ),
    request_body(content = NewMilestone, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered: pending until the N-th hit is committed", body = MilestoneView),
        (status = 400, description = "`malformed_body` (not a milestone body), `invalid_milestone` (N of 0 or past 2^64 - 1, a label over 200 characters), `empty_id`, `id_too_long`, `id_bad_char`, `unreadable_body` or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`admin_disabled`: the merger was started without `--admin-token`", body = ErrorResponse),
        (status = 404, description = "`not_found`: a namespace other than `counters`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 409, description = "`milestone_passed`: the count is at N already; `milestone_exists`: the counter has a milestone at N. Nothing was changed", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorResponse),
        (status = 422, description = "`too_many_milestones`: the counter holds 100 pending milestones (won ones do not count)", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn add(
    State(app): State<AppState>,
    Path((namespace, id)): Path<(String, String)>,
    body: Result<Protocol<NewMilestone>, AppError>,
) -> Result<(StatusCode, Json<MilestoneView>), AppError> {
    let key = counter_of(&namespace, id)?;
    let Protocol(body) = body?;
    let n = u64::try_from(body.n.0)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            AppError::InvalidMilestone(format!("n is {}, not 1 to 2^64 - 1", body.n.0))
        })?;
    if let Some(label) = &body.label
        && label.chars().count() > MAX_LABEL_LEN
    {
        return Err(AppError::InvalidMilestone(format!(
            "the label is {} characters, more than {MAX_LABEL_LEN}",
            label.chars().count()
        )));
    }
    match app
        .store
        .add_milestone(key.id(), n, body.label.as_deref(), now())
        .await?
    {
        AddMilestone::Added(m) => {
            tracing::info!(counter = %key, n, "milestone registered");
            post_news(&app, key.id()).await;
            Ok((StatusCode::CREATED, Json(m.into())))
        }
        AddMilestone::Exists(_) => Err(AppError::MilestoneExists { n }),
        AddMilestone::Passed { count } => Err(AppError::MilestonePassed { n, count }),
        AddMilestone::TooMany => Err(AppError::TooManyMilestones {
            max: MAX_MILESTONES_PER_COUNTER,
        }),
    }
}

/// Posts counter `id`'s news on this merger's board after a registration or a cancel, so
/// that reads tell the edge at once (a failure only delays that to the next commit).
async fn post_news(app: &AppState, id: &str) {
    app.milestone_views.changed(id);
    match app.store.milestones(id).await {
        Ok(list) => app.db.post_milestones(id, &list, now()),
        Err(e) => tracing::warn!(error = %e, counter = id, "milestone news not posted"),
    }
}

/// `GET /v1/counters/{id}/milestones`: the list from memory for a second (bounded, as the
/// presence and unique views: [`crate::views`]); this merger's registrations, cancels and
/// decisions show at once, another merger's within the second.
#[utoipa::path(
    get,
    path = "/v1/{namespace}/{id}/milestones",
    tag = "milestones",
    security((), ("read_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` (a gauge has no N-th hit: 404)"),
        ("id" = CounterId, Path, description = "The counter's id"),
    ),
    responses(
        (status = 200, description = "Every milestone of the counter, by N, with its winner once decided", body = Milestones),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char` or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`: only with `--private-reads`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: a namespace other than `counters`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn list(
    State(app): State<AppState>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<Json<Milestones>, AppError> {
    let key = counter_of(&namespace, id)?;
    let lists = &app.milestone_views;
    let milestones = match lists.get(key.id()) {
        Some(list) => list,
        None => {
            let asked = std::time::Instant::now();
            let list = app.store.milestones(key.id()).await?;
            lists.put(key.id().to_owned(), list.clone(), asked);
            list
        }
    };
    let counted = app.load(std::slice::from_ref(&key)).await?;
    Ok(Json(Milestones {
        id: key.id().to_owned(),
        count: counted.first().map_or(Count(0), |c| count(c.totals())),
        milestones: milestones.into_iter().map(MilestoneView::from).collect(),
    }))
}

/// `DELETE /v1/counters/{id}/milestones/{n}`.
#[utoipa::path(
    delete,
    path = "/v1/{namespace}/{id}/milestones/{n}",
    tag = "milestones",
    security(("admin_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` (a gauge has no N-th hit: 404)"),
        ("id" = CounterId, Path, description = "The counter's id"),
        ("n" = u64, Path, minimum = 1, description = "The milestone"),
    ),
    responses(
        (status = 200, description = "Cancelled: it will not be decided", body = MilestoneView),
        (status = 400, description = "`empty_id`, `id_too_long`, `id_bad_char`, `invalid_milestone` (N not 1 to 2^64 - 1) or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`admin_disabled`: the merger was started without `--admin-token`", body = ErrorResponse),
        (status = 404, description = "`not_found` (a namespace other than `counters`) or `milestone_not_found`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 409, description = "`milestone_decided`: it is won already; a winner stays a winner", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn cancel(
    State(app): State<AppState>,
    Path((namespace, id, n)): Path<(String, String, String)>,
) -> Result<Json<MilestoneView>, AppError> {
    let key = counter_of(&namespace, id)?;
    let n = n
        .parse::<u64>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| AppError::InvalidMilestone(format!("{n:?} is not 1 to 2^64 - 1")))?;
    match app.store.cancel_milestone(key.id(), n).await? {
        CancelMilestone::Cancelled(m) => {
            tracing::info!(counter = %key, n, "milestone cancelled");
            post_news(&app, key.id()).await;
            Ok(Json(MilestoneView {
                status: "cancelled",
                ..m.into()
            }))
        }
        CancelMilestone::Decided(_) => Err(AppError::MilestoneDecided { n }),
        CancelMilestone::Unknown => Err(AppError::MilestoneNotFound { n }),
    }
}

/// What a receipt names, and the milestones it won.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptView {
    #[schema(value_type = CounterId)]
    id: String,
    /// The replica (incarnation) that counted the hit.
    replica: String,
    /// The first unit of that replica's slot the hit owns.
    #[schema(value_type = schema::Count)]
    first: Count,
    /// The last one.
    #[schema(value_type = schema::Count)]
    last: Count,
    /// Whether the hit won a milestone.
    winner: bool,
    /// The milestones it won (a hit with delta d can win several), by N.
    won: Vec<MilestoneView>,
}

/// `GET /v1/counters/{id}/receipts/{receipt}`.
#[utoipa::path(
    get,
    path = "/v1/{namespace}/{id}/receipts/{receipt}",
    tag = "milestones",
    security((), ("read_token" = [])),
    params(
        ("namespace" = Namespace, Path, description = "`counters` (a gauge has no N-th hit: 404)"),
        ("id" = CounterId, Path, description = "The counter's id"),
        ("receipt" = String, Path, description = "The `Tally-Receipt` of the hit's `PUT` answer", pattern = "^[A-Za-z0-9_-]{50}$"),
    ),
    responses(
        (status = 200, description = "The hit the receipt names, and whether it won (`winner`, `won`); a milestone not decided yet may still be won by it", body = ReceiptView),
        (status = 400, description = "`invalid_receipt` (not a receipt the edge made for this counter), `empty_id`, `id_too_long`, `id_bad_char` or `invalid_path`", body = ErrorResponse),
        (status = 401, description = "`missing_token` (no `Authorization: Bearer`) or `invalid_token`: only with `--private-reads`", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: a namespace other than `counters`", body = ErrorResponse),
        (status = 408, description = "`request_timeout`: longer than `--request-timeout`", body = ErrorResponse),
        (status = 413, description = "`body_too_large`: a body larger than `--max-body-bytes`", body = ErrorResponse),
        (status = 503, description = "`database_unavailable`", body = ErrorResponse,
            headers(("Retry-After" = String, description = "Seconds to wait: `1`"))),
    ),
)]
pub async fn receipt(
    State(app): State<AppState>,
    Path((namespace, id, receipt)): Path<(String, String, String)>,
) -> Result<Json<ReceiptView>, AppError> {
    let key = counter_of(&namespace, id)?;
    let hit = Receipt::decode(&receipt, app.token.as_bytes(), key.id())
        .map_err(|_| AppError::InvalidReceipt)?;
    let won: Vec<MilestoneView> = app
        .store
        .milestones(key.id())
        .await?
        .into_iter()
        .filter(|m| {
            m.winner
                .as_ref()
                .is_some_and(|w| hit.holds(w.replica, w.unit))
        })
        .map(MilestoneView::from)
        .collect();
    Ok(Json(ReceiptView {
        id: key.id().to_owned(),
        replica: hit.replica.to_string(),
        first: Count(i128::from(hit.first())),
        last: Count(i128::from(hit.end)),
        winner: !won.is_empty(),
        won,
    }))
}
