//! The merger client: `POST /v1/sync`, `/v1/read`, `/v1/retire`, `/v1/presence`, `/v1/read/presence`,
//! `/v1/unique` and `/v1/read/unique`, with the sync
//! token, bounded by the sync timeout, with typed errors.

use std::time::Duration;

use futures_util::future::{Either, select};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tally_crdt::{
    PresenceRead, PresenceReport, PresenceResponse, ReadRequest, ReadResponse, RetireRequest,
    RetireResponse, SketchRead, SketchResponse, SketchSync, SyncRequest, SyncResponse,
    UNSYNCED_AGE_HEADER,
};
use worker::worker_sys::web_sys;
use worker::{AbortController, Delay, Fetch, Headers, Request};

use crate::config::Config;

/// Why a call to the merger failed. Every variant means "try again later": nothing the
/// object holds is changed by a failed call.
#[derive(Debug, thiserror::Error)]
pub enum MergerError {
    /// The request could not be built or sent (DNS, connection refused, reset).
    #[error("merger unreachable: {0}")]
    Unreachable(String),
    /// No answer within the sync timeout; the request was aborted.
    #[error("no answer from the merger within {0} ms")]
    Timeout(u64),
    /// A non-2xx answer.
    #[error("merger answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A 2xx answer that is not the protocol's JSON.
    #[error("unreadable answer from the merger: {0}")]
    BadAnswer(String),
}

/// `POST {MERGER_URL}/v1/sync`.
///
/// # Errors
///
/// [`MergerError`]; the state at the merger is then unknown (the sync may have been
/// committed), which is harmless: syncs carry totals.
pub async fn sync(config: &Config, request: &SyncRequest) -> Result<SyncResponse, MergerError> {
    post(config, "/v1/sync", request).await
}

/// [`sync`], given up after `timeout_ms` (the exact path's attempts, within its budget).
///
/// # Errors
///
/// [`MergerError`].
pub async fn sync_within(
    config: &Config,
    request: &SyncRequest,
    timeout_ms: u64,
    unsynced_age_ms: u64,
) -> Result<SyncResponse, MergerError> {
    let age = (UNSYNCED_AGE_HEADER, unsynced_age_ms.to_string());
    post_within(config, "/v1/sync", request, timeout_ms, &[age]).await
}

/// `POST {MERGER_URL}/v1/read`: global totals of many counters, written nowhere.
///
/// # Errors
///
/// [`MergerError`].
pub async fn read(config: &Config, request: &ReadRequest) -> Result<ReadResponse, MergerError> {
    post(config, "/v1/read", request).await
}

/// `POST {MERGER_URL}/v1/retire`: every slot of an earlier incarnation is final.
///
/// # Errors
///
/// [`MergerError`], including an answer for another replica than the one retired
/// ([`MergerError::BadAnswer`]). The retirement is then not known to be durable, and is sent
/// again later (retiring twice is harmless).
pub async fn retire(
    config: &Config,
    request: &RetireRequest,
) -> Result<RetireResponse, MergerError> {
    let response: RetireResponse = post(config, "/v1/retire", request).await?;
    if response.replica != request.replica {
        return Err(MergerError::BadAnswer(format!(
            "retirement of {} answered for {}",
            request.replica, response.replica
        )));
    }
    Ok(response)
}

/// `POST {MERGER_URL}/v1/presence`: this object's live-session counts.
///
/// # Errors
///
/// [`MergerError`]; the report may have been stored, which is harmless: the merger keeps the
/// report with the highest sequence number.
pub async fn report_presence(
    config: &Config,
    report: &PresenceReport,
) -> Result<PresenceResponse, MergerError> {
    post(config, "/v1/presence", report).await
}

/// `POST {MERGER_URL}/v1/read/presence`: viewers now of some ids, written nowhere.
///
/// # Errors
///
/// [`MergerError`].
pub async fn read_presence(
    config: &Config,
    read: &PresenceRead,
) -> Result<PresenceResponse, MergerError> {
    post(config, "/v1/read/presence", read).await
}

/// `POST {MERGER_URL}/v1/unique`: the registers of this object's sketches that grew.
///
/// # Errors
///
/// [`MergerError`]; the merge may have been committed, which is harmless (max per register).
pub async fn sync_sketches(
    config: &Config,
    sync: &SketchSync,
) -> Result<SketchResponse, MergerError> {
    post(config, "/v1/unique", sync).await
}

/// `POST {MERGER_URL}/v1/read/unique`: merged sketches, written nowhere.
///
/// # Errors
///
/// [`MergerError`].
pub async fn read_sketches(
    config: &Config,
    read: &SketchRead,
) -> Result<SketchResponse, MergerError> {
    post(config, "/v1/read/unique", read).await
}

async fn post<Q: Serialize, A: DeserializeOwned>(
    config: &Config,
    path: &str,
    request: &Q,
) -> Result<A, MergerError> {
    post_within(config, path, request, config.sync_timeout_ms, &[]).await
}

async fn post_within<Q: Serialize, A: DeserializeOwned>(
    config: &Config,
    path: &str,
    request: &Q,
    timeout_ms: u64,
    extra: &[(&str, String)],
) -> Result<A, MergerError> {
    let unreachable = |e: worker::Error| MergerError::Unreachable(e.to_string());
    let body = serde_json::to_string(request)
        .map_err(|e| MergerError::Unreachable(format!("encoding the request: {e}")))?;
    let headers = Headers::new();
    headers
        .set("Authorization", &format!("Bearer {}", config.sync_token))
        .map_err(unreachable)?;
    headers
        .set("Content-Type", "application/json")
        .map_err(unreachable)?;
    for (name, value) in extra {
        headers.set(name, value).map_err(unreachable)?;
    }
    // The runtime's own RequestInit: worker::RequestInit's conversion carries the whole `cf`
    // options encoder (image resizing and all), never used here.
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers(headers.as_ref());
    init.set_body(&body.into());
    let req: Request =
        web_sys::Request::new_with_str_and_init(&format!("{}{path}", config.merger_url), &init)
            .map_err(|e| unreachable(e.into()))?
            .into();
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let send = Box::pin(fetch.send_with_signal(&signal));
    let timeout = Box::pin(Delay::from(Duration::from_millis(timeout_ms)));
    let mut response = match select(send, timeout).await {
        Either::Left((result, _)) => result.map_err(unreachable)?,
        Either::Right(_) => {
            controller.abort();
            return Err(MergerError::Timeout(timeout_ms));
        }
    };
    let status = response.status_code();
    let text = response.text().await.map_err(unreachable)?;
    if !(200..300).contains(&status) {
        return Err(MergerError::Status {
            status,
            body: text.chars().take(300).collect(),
        });
    }
    serde_json::from_str(&text).map_err(|e| MergerError::BadAnswer(e.to_string()))
}
