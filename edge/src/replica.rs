//! The Durable Object: one CRDT replica. Glue between the runtime and the pure logic of
//! [`crate::sync`] and [`crate::api`].
//!
//! Storage (Durable Object key-value API): `replica` (its incarnation id, drawn on first use
//! and never reused), `region`, and one record per counter under `c:<kind>:<id>` holding the
//! own slot, what the merger acknowledged, and the last global totals heard. A hit is written
//! to storage before it is answered; an alarm sends the dirty counters to the merger.
//!
//! A Durable Object runs one event at a time, but events interleave at `await`s (outgoing
//! fetches); the in-memory state is therefore changed only between awaits, through a
//! `RefCell` whose borrows never cross one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::{Either, select};
use tally_crdt::{
    MAX_COUNTERS_PER_SYNC, MergedCounter, PROTOCOL_VERSION, ReplicaId, SlotTotals, SlotUpdate,
    SyncRequest, SyncResponse,
};
use worker::{
    AbortController, Date, Delay, DurableObject, Env, Fetch, Headers, Method, Request, RequestInit,
    Response, Result, State, console_error, console_warn, durable_object, wasm_bindgen,
};

use crate::api::{ApiError, CountBody, Target};
use crate::config::Config;
use crate::sync::{Record, backoff_ms, dirty_batches, key, target_of};
use crate::{REGION_HEADER, config_from_env, json_response, random_u64};

/// Durable Object storage takes at most 128 keys per `put` of several.
const KEYS_PER_PUT: usize = 128;

/// Everything the object holds in memory, loaded from storage on first use.
struct Loaded {
    config: Config,
    replica: ReplicaId,
    region: String,
    records: HashMap<Target, Record>,
    /// Whether an alarm is scheduled.
    alarm_set: bool,
    /// Failed syncs in a row (for the backoff).
    failures: u32,
    /// Reads waiting on a fetch of the same counter already under way.
    waiting: HashMap<Target, Vec<oneshot::Sender<()>>>,
}

/// One replica of every counter routed to it.
#[durable_object]
pub struct Replica {
    state: State,
    env: Env,
    loaded: RefCell<Option<Loaded>>,
}

impl DurableObject for Replica {
    fn new(state: State, env: Env) -> Self {
        Replica {
            state,
            env,
            loaded: RefCell::new(None),
        }
    }

    /// Internal requests from the Worker: `GET|PUT /<kind>/<id>` with the region in a header
    /// and, for `PUT`, the slot totals to add as JSON.
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let region = req.headers().get(REGION_HEADER)?.unwrap_or_default();
        if let Err(e) = self.load(&region).await {
            console_error!("replica cannot load its state: {e}");
            return json_response(&ApiError::Internal.body(), 500);
        }
        let Some(target) = internal_target(&req.path()) else {
            return json_response(&ApiError::NotFound.body(), 404);
        };
        let answer = match req.method() {
            Method::Put => {
                let add: SlotTotals = req.json().await?;
                self.hit(&target, add).await
            }
            _ => self.read(&target).await,
        };
        match answer {
            Ok(answer) => answer.into_response(),
            Err(e) => json_response(&e.body(), e.status()),
        }
    }

    /// Sends every dirty counter to the merger; on failure, retries later with backoff.
    async fn alarm(&self) -> Result<Response> {
        self.load("").await?;
        self.with(|l| l.alarm_set = false);
        loop {
            // One batch at a time: records may change while a sync is in flight.
            let batch = self.with(|l| {
                dirty_batches(l.records.iter(), MAX_COUNTERS_PER_SYNC)
                    .into_iter()
                    .next()
            });
            let Some(batch) = batch else { break };
            if let Err(why) = self.sync(batch).await {
                let (failures, cap) = self.with(|l| {
                    l.failures = l.failures.saturating_add(1);
                    (l.failures, l.config.max_backoff_ms)
                });
                let wait = backoff_ms(failures, cap, random_u64());
                console_warn!("sync failed ({why}); attempt {failures}, retrying in {wait} ms");
                self.schedule(wait).await?;
                return Response::ok("retry scheduled");
            }
            self.with(|l| l.failures = 0);
        }
        Response::ok("synced")
    }
}

/// What a request is answered with.
struct Answer {
    body: CountBody,
    /// Seconds since the global part was heard, when older than the read TTL.
    stale_age_s: Option<i64>,
    /// Whether the count is this replica's own hits only (no global value heard yet).
    partial: bool,
}

impl Answer {
    fn into_response(self) -> Result<Response> {
        let body = serde_json::to_string(&self.body)
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        let mut response = json_response(&body, 200)?;
        if let Some(age) = self.stale_age_s {
            response.headers_mut().set("Age", &age.to_string())?;
        }
        if self.partial {
            response.headers_mut().set("Tally-Estimate", "partial")?;
        }
        Ok(response)
    }
}

impl Replica {
    /// Runs `f` on the loaded state; never across an await.
    fn with<T>(&self, f: impl FnOnce(&mut Loaded) -> T) -> T {
        let mut guard = self.loaded.borrow_mut();
        f(guard
            .as_mut()
            .expect("load() runs before any use of the state"))
    }

    /// Loads the state on first use: the incarnation id (drawn and stored before anything
    /// is counted, if the storage is new), the region, every record, and the alarm.
    async fn load(&self, region: &str) -> Result<()> {
        if self.loaded.borrow().is_some() {
            return Ok(());
        }
        let config =
            config_from_env(&self.env).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let storage = self.state.storage();
        let replica = match storage.get::<String>("replica").await? {
            Some(text) => text.parse().map_err(|_| {
                worker::Error::RustError(format!("stored replica id {text:?} is damaged"))
            })?,
            None => {
                let id = new_replica_id();
                storage.put("replica", id.to_string()).await?;
                id
            }
        };
        let region = match storage.get::<String>("region").await? {
            Some(stored) => stored,
            None if !region.is_empty() => {
                storage.put("region", region).await?;
                region.to_owned()
            }
            None => "unknown".to_owned(),
        };
        let mut records = HashMap::new();
        let listed = storage
            .list_with_options(worker::ListOptions::new().prefix("c:"))
            .await?;
        for entry in listed.entries() {
            let Ok(pair) = entry.map(js_sys_array) else {
                continue;
            };
            let (Some(k), Some(v)) = (pair.0.as_string(), pair.1.as_string()) else {
                continue;
            };
            match (target_of(&k), Record::from_stored(&v)) {
                (Some(target), Some(record)) => {
                    records.insert(target, record);
                }
                _ => console_error!("skipping damaged record {k:?}"),
            }
        }
        let mut alarm_set = storage.get_alarm().await?.is_some();
        // Dirty counters with no alarm (a runtime that lost its alarm schedule across a
        // restart): schedule the sync now rather than at the next hit, which may never come.
        if !alarm_set && records.values().any(Record::is_dirty) {
            storage
                .set_alarm(Duration::from_millis(config.sync_interval_ms))
                .await?;
            alarm_set = true;
        }
        // Another event may have loaded meanwhile; the first one wins.
        let mut slot = self.loaded.borrow_mut();
        if slot.is_none() {
            *slot = Some(Loaded {
                config,
                replica,
                region,
                records,
                alarm_set,
                failures: 0,
                waiting: HashMap::new(),
            });
        }
        Ok(())
    }

    /// Counts a hit: in memory, then in storage, before answering; schedules a sync.
    async fn hit(&self, target: &Target, add: SlotTotals) -> std::result::Result<Answer, ApiError> {
        let now = now_ms();
        let stored = self.with(|l| {
            let replica = l.replica;
            let record = l.records.entry(target.clone()).or_default();
            record.hit(add, replica, now).map(|()| record.to_stored())
        });
        let stored = stored.map_err(ApiError::Overflow)?;
        let storage = self.state.storage();
        storage.put(&key(target), stored).await.map_err(internal)?;
        let (alarm_set, interval) = self.with(|l| (l.alarm_set, l.config.sync_interval_ms));
        if !alarm_set {
            self.schedule(interval).await.map_err(internal)?;
        }
        self.answer(target, now, true).await
    }

    /// Reads from the cache, fetching the global value if it is missing or expired.
    async fn read(&self, target: &Target) -> std::result::Result<Answer, ApiError> {
        self.answer(target, now_ms(), false).await
    }

    async fn answer(
        &self,
        target: &Target,
        now: i64,
        is_hit: bool,
    ) -> std::result::Result<Answer, ApiError> {
        let ttl = self.with(|l| l.config.read_ttl_ms);
        let fresh = self.with(|l| l.records.get(target).is_some_and(|r| r.is_fresh(now, ttl)));
        if !fresh {
            self.refresh(target).await;
        }
        let now = now_ms().max(now);
        let record = self
            .with(|l| l.records.get(target).cloned())
            .unwrap_or_default();
        match record.estimate(now) {
            Some(Ok(estimate)) => {
                let stale = !record.is_fresh(now, ttl);
                Ok(Answer {
                    body: CountBody::new(estimate.count, record.changed_at),
                    stale_age_s: stale.then_some(estimate.age_ms / 1000),
                    partial: false,
                })
            }
            Some(Err(e)) => Err(ApiError::Overflow(e)),
            // The hit is stored and will be synced: answer it, with what this replica knows.
            None if is_hit => Ok(Answer {
                body: CountBody::new(record.own_value(), record.changed_at),
                stale_age_s: None,
                partial: true,
            }),
            None => Err(ApiError::Unavailable),
        }
    }

    /// Fetches the global totals of one counter (a sync of this replica's own totals for it,
    /// which also acknowledges them), once for all the reads that need it at the same time.
    /// A reader never waits longer than one sync may take; then it answers from what it has.
    async fn refresh(&self, target: &Target) {
        let (waiter, timeout_ms) = self.with(|l| {
            let waiter = match l.waiting.get_mut(target) {
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push(tx);
                    Some(rx)
                }
                None => {
                    l.waiting.insert(target.clone(), Vec::new());
                    None
                }
            };
            (waiter, l.config.sync_timeout_ms)
        });
        if let Some(rx) = waiter {
            let limit = Box::pin(Delay::from(Duration::from_millis(
                timeout_ms.saturating_add(1000),
            )));
            let _ = select(rx, limit).await;
            return;
        }
        // Whatever happens to this future, the readers waiting on it are released.
        let _release = Release {
            replica: self,
            target,
        };
        let update = self.with(|l| {
            l.records
                .get(target)
                .cloned()
                .unwrap_or_default()
                .update(target)
        });
        if let Err(why) = self.sync(vec![update]).await {
            console_warn!("read fetch of {} failed: {why}", key(target));
        }
    }

    /// Sends one sync; on a 2xx, applies the answer to the records and stores them.
    async fn sync(&self, batch: Vec<SlotUpdate>) -> std::result::Result<(), String> {
        let (config, request) = self.with(|l| {
            let request = SyncRequest {
                version: PROTOCOL_VERSION,
                replica: l.replica,
                region: l.region.clone(),
                counters: batch,
            };
            (l.config.clone(), request)
        });
        let response = post_sync(&config, &request).await?;
        if response.counters.len() != request.counters.len() {
            return Err(format!(
                "answer has {} counters for {} sent",
                response.counters.len(),
                request.counters.len()
            ));
        }
        let now = now_ms();
        let changed: Vec<(String, String)> = self.with(|l| {
            request
                .counters
                .iter()
                .zip(&response.counters)
                .map(|(sent, merged): (&SlotUpdate, &MergedCounter)| {
                    let target = Target {
                        kind: sent.kind,
                        id: sent.id.clone(),
                    };
                    let record = l.records.entry(target.clone()).or_default();
                    record.acknowledge(sent.totals(), merged, now);
                    (key(&target), record.to_stored())
                })
                .collect()
        });
        let storage = self.state.storage();
        for chunk in changed.chunks(KEYS_PER_PUT) {
            let map: HashMap<&str, &str> = chunk
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            storage
                .put_multiple(map)
                .await
                .map_err(|e| format!("storing the answer: {e}"))?;
        }
        Ok(())
    }

    async fn schedule(&self, after_ms: u64) -> Result<()> {
        self.state
            .storage()
            .set_alarm(Duration::from_millis(after_ms))
            .await?;
        self.with(|l| l.alarm_set = true);
        Ok(())
    }
}

/// Releases the readers waiting on a fetch when the fetch ends, however it ends (dropping
/// their senders wakes them).
struct Release<'a> {
    replica: &'a Replica,
    target: &'a Target,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.replica.loaded.try_borrow_mut()
            && let Some(loaded) = guard.as_mut()
        {
            loaded.waiting.remove(self.target);
        }
    }
}

/// `POST {MERGER_URL}/v1/sync` with the token, bounded by the sync timeout.
async fn post_sync(
    config: &Config,
    request: &SyncRequest,
) -> std::result::Result<SyncResponse, String> {
    let body = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| e.to_string());
    set("Authorization", &format!("Bearer {}", config.sync_token))?;
    set("Content-Type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers.clone())
        .with_body(Some(body.into()));
    let req = Request::new_with_init(&format!("{}/v1/sync", config.merger_url), &init)
        .map_err(|e| e.to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let send = Box::pin(fetch.send_with_signal(&signal));
    let timeout = Box::pin(Delay::from(Duration::from_millis(config.sync_timeout_ms)));
    let mut response = match select(send, timeout).await {
        Either::Left((result, _)) => result.map_err(|e| format!("merger unreachable: {e}"))?,
        Either::Right(_) => {
            controller.abort();
            return Err(format!(
                "no answer from the merger within {} ms",
                config.sync_timeout_ms
            ));
        }
    };
    let status = response.status_code();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !(200..300).contains(&status) {
        return Err(format!("merger answered {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("unreadable answer from the merger: {e}"))
}

/// `/<kind>/<id>` of an internal request.
fn internal_target(path: &str) -> Option<Target> {
    let (kind, id) = path.strip_prefix('/')?.split_once('/')?;
    target_of(&format!("c:{kind}:{id}"))
}

fn js_sys_array(
    value: worker::wasm_bindgen::JsValue,
) -> (worker::wasm_bindgen::JsValue, worker::wasm_bindgen::JsValue) {
    let pair = worker::js_sys::Array::from(&value);
    (pair.get(0), pair.get(1))
}

fn new_replica_id() -> ReplicaId {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("crypto.getRandomValues is available in Workers");
    ReplicaId::from_bytes(bytes)
}

fn now_ms() -> i64 {
    i64::try_from(Date::now().as_millis()).unwrap_or(i64::MAX)
}

fn internal(e: worker::Error) -> ApiError {
    console_error!("storage failed: {e}");
    ApiError::Internal
}
