//! The unique-visitor Durable Object: the sketches of the visitors routed to it, synced to
//! the merger as the registers that grew. Glue between the runtime and [`super::store`],
//! [`crate::scheduler`] and [`crate::client`].
//!
//! - A visit that grows a sketch is written to its row (one SQL statement) before it is
//!   answered; a repeat visit grows nothing and writes nothing. Either is answered at once
//!   from the object's sketch and the merger's last merged one: it never waits.
//! - A read writes nothing; a read of a sketch nothing is known of waits for one merger read,
//!   shared by every read that needs it.
//! - One alarm ([`Scheduler`]): `Sync` sends the grown registers of the dirty sketches, a
//!   batch at a time, then waits a sync interval; `Refresh` reads the merged sketches reads
//!   found stale. A failed call backs off and leaves everything dirty; a register only ever
//!   takes the max, so a sync sent twice or late changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::select;
use lru::LruCache;
use tally_crdt::{
    HyperLogLog, MAX_SKETCHES_PER_SYNC, PREVIOUS_VERSION, ReplicaId, SketchKey, SketchRead,
    SketchSync, SketchTotal, SketchUpdate, Timestamp,
};
use worker::{
    Delay, DurableObject, Env, Request, Response, Result, State, console_error, console_warn,
    durable_object, wasm_bindgen,
};

use super::store::{Row, SketchStore, meta};
use super::{CALL_PATH, Call, Op, View};
use crate::api::ApiError;
use crate::client;
use crate::config::Config;
use crate::object::{Loaded, Shell, StoreError, internal, store_failed, take_first};
use crate::runtime::{config_from_env, internal_response, now, random_u64};
use crate::scheduler::{Job, Scheduler};

/// How soon after a visit or read asks for it a refresh runs.
const REFRESH_DELAY_MS: u64 = 10;

/// The merged sketch as the merger last answered it.
struct Heard {
    sketch: HyperLogLog,
    updated_at: Option<Timestamp>,
    at: Timestamp,
}

/// One sketch in memory: its row and what the merger said of it.
struct Entry {
    row: Row,
    stored: bool,
    heard: Option<Heard>,
}

impl Entry {
    fn view(&self) -> View {
        let mut union = self.row.own.clone();
        let mut updated_at = self.stored.then_some(self.row.changed_at);
        if let Some(heard) = &self.heard {
            // Both are of the default precision (the merger refuses any other).
            let _ = union.merge(&heard.sketch);
            updated_at = match (updated_at, heard.updated_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        View {
            count: union.estimate(),
            error: union.relative_error(),
            updated_at,
            partial: self.heard.is_none(),
        }
    }

    fn is_fresh(&self, now: Timestamp, ttl_ms: u64) -> bool {
        self.heard
            .as_ref()
            .is_some_and(|h| now.millis_since(h.at) < ttl_ms)
    }
}

struct Inner {
    config: Config,
    store: SketchStore,
    /// This storage's id at the merger (for its logs and per-region view).
    replica: ReplicaId,
    region: String,
    cache: LruCache<SketchKey, Entry>,
    scheduler: Scheduler,
    refresh: BTreeSet<SketchKey>,
    fetching: HashMap<SketchKey, Vec<oneshot::Sender<()>>>,
}

impl Loaded for Inner {
    fn scheduler(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }
}

impl Inner {
    fn entry(&mut self, key: &SketchKey) -> std::result::Result<&mut Entry, StoreError> {
        if !self.cache.contains(key) {
            let row = self.store.row(key)?;
            let entry = Entry {
                stored: row.is_some(),
                row: row.unwrap_or_else(|| Row {
                    own: HyperLogLog::new(),
                    acked: HyperLogLog::new(),
                    dirty: false,
                    changed_at: Timestamp::EPOCH,
                }),
                heard: None,
            };
            self.cache.put(key.clone(), entry);
        }
        Ok(self.cache.get_mut(key).expect("just inserted"))
    }

    fn want(&mut self, job: Job, at: Timestamp) -> Option<Timestamp> {
        self.scheduler.want(job, at, now())
    }

    /// Asks for a refresh of `key` if its merged sketch is stale.
    fn refresh_if_stale(
        &mut self,
        key: &SketchKey,
        now: Timestamp,
    ) -> std::result::Result<Option<Timestamp>, StoreError> {
        let ttl = self.config.read_ttl_ms;
        let fresh = self.entry(key)?.is_fresh(now, ttl);
        if fresh || self.refresh.len() >= self.config.cache_counters {
            return Ok(None);
        }
        self.refresh.insert(key.clone());
        Ok(self.want(Job::Refresh, now.plus_ms(REFRESH_DELAY_MS)))
    }

    /// The merger's answers, into the cache.
    fn heard(&mut self, totals: Vec<SketchTotal>, now: Timestamp) {
        for total in totals {
            if let Ok(entry) = self.entry(&total.key) {
                entry.heard = Some(Heard {
                    sketch: total.sketch,
                    updated_at: total.updated_at,
                    at: now,
                });
            }
        }
    }
}

/// The sketches of the visitors routed to it.
#[durable_object]
pub struct Unique {
    shell: Shell<Inner>,
}

impl DurableObject for Unique {
    fn new(state: State, env: Env) -> Self {
        Unique {
            shell: Shell::new(state, env),
        }
    }

    /// `POST /unique` ([`Call`]).
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() != CALL_PATH {
            return internal_response(ApiError::NotFound.body(), 404);
        }
        let body = req.text().await?;
        let answer = match serde_json::from_str::<Call>(&body) {
            Ok(call) => self.call(call).await,
            Err(e) => Err(internal(format!("bad internal unique call: {e}"))),
        };
        match answer {
            Ok(view) => internal_response(
                serde_json::to_string(&view)
                    .map_err(|e| worker::Error::RustError(e.to_string()))?,
                200,
            ),
            Err(e) => internal_response(e.body(), e.status()),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        if let Err(e) = self.load("").await {
            console_error!("unique object cannot load its state: {e}");
            return Response::ok("not loaded");
        }
        let now = now();
        let jobs = self.shell.due(now);
        for job in jobs {
            let done = match job {
                Job::Sync => self.sync_pass(now).await,
                Job::Refresh => self.refresh_pass().await,
                _ => Ok(()),
            };
            if let Err(e) = done {
                console_error!("{job:?} pass failed: {e}");
            }
        }
        self.shell.rearm().await
    }
}

impl Unique {
    /// Loads the state on first use: the tables, the storage's id, the region, the alarm.
    /// Reads no sketch.
    async fn load(&self, region: &str) -> std::result::Result<(), String> {
        if self.shell.loaded() {
            return Ok(());
        }
        let text = |e: StoreError| e.to_string();
        let config = config_from_env(&self.shell.env).map_err(|e| e.to_string())?;
        let store = SketchStore::open(self.shell.state.storage().sql()).map_err(text)?;
        let replica = match store.meta("replica").map_err(text)? {
            Some(hex) => hex.parse::<ReplicaId>().map_err(|e| e.to_string())?,
            None => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes)
                    .expect("crypto.getRandomValues is available in Workers");
                let id = ReplicaId::from_bytes(bytes);
                store.set_meta("replica", &id.to_string()).map_err(text)?;
                id
            }
        };
        let region = match store.meta(meta::REGION).map_err(text)? {
            Some(stored) => stored,
            None if !region.is_empty() => {
                store.set_meta(meta::REGION, region).map_err(text)?;
                region.to_owned()
            }
            None => "unknown".to_owned(),
        };
        let armed = self
            .shell
            .state
            .storage()
            .get_alarm()
            .await
            .map_err(|e| e.to_string())?
            .map(Timestamp::from_unix_ms);
        if self.shell.loaded() {
            return Ok(());
        }
        let now = now();
        let mut scheduler = Scheduler::new(armed);
        if store.any_dirty().map_err(text)? {
            let _ = scheduler.want(Job::Sync, now, now);
        }
        let capacity = NonZeroUsize::new(config.cache_counters).unwrap_or(NonZeroUsize::MIN);
        let loaded = Inner {
            config,
            store,
            replica,
            region,
            cache: LruCache::new(capacity),
            scheduler,
            refresh: BTreeSet::new(),
            fetching: HashMap::new(),
        };
        self.shell.keep(loaded, now).await;
        Ok(())
    }

    async fn call(&self, call: Call) -> std::result::Result<View, ApiError> {
        self.load(&call.region).await.map_err(internal)?;
        let now = now();
        match call.op {
            Op::Visit { hashes, keys } => {
                // A sketch new to this object spends the client's new-id budget, as a new
                // counter does: no client makes rows without bound.
                if !call.trusted {
                    let new = self.shell.with(|i| {
                        keys.iter().try_fold(false, |new, key| {
                            Ok::<_, StoreError>(new || !i.entry(key)?.stored)
                        })
                    });
                    if new.map_err(store_failed)? {
                        crate::runtime::admit(&self.shell.env, &call.client).await?;
                    }
                }
                let (view, next) = self.shell.with(|i| {
                    let mut next = None;
                    for key in &keys {
                        let entry = i.entry(key).map_err(store_failed)?;
                        let mut grew = false;
                        for &hash in &hashes {
                            grew |= entry.row.own.insert_hash(hash);
                        }
                        if grew {
                            entry.row.dirty = true;
                            entry.row.changed_at = now;
                            entry.stored = true;
                            let row = entry.row.clone();
                            i.store.put(key, &row).map_err(store_failed)?;
                            next = i
                                .want(Job::Sync, now.plus_ms(i.config.sync_interval_ms))
                                .or(next);
                        }
                        next = i.refresh_if_stale(key, now).map_err(store_failed)?.or(next);
                    }
                    let first = keys.first().ok_or(ApiError::Internal)?;
                    let view = i.entry(first).map_err(store_failed)?.view();
                    Ok::<_, ApiError>((view, next))
                })?;
                self.shell.arm(next).await;
                Ok(view)
            }
            Op::Read { key } => {
                self.known(&key, now).await?;
                self.shell
                    .with(|i| Ok(i.entry(&key).map_err(store_failed)?.view()))
            }
        }
    }

    /// Makes sure the merged sketch of `key` is known (read now, once for every read that
    /// needs it) or being refreshed (when stale).
    async fn known(&self, key: &SketchKey, now: Timestamp) -> std::result::Result<(), ApiError> {
        enum Need {
            Nothing,
            Fetch,
            Wait(oneshot::Receiver<()>),
        }
        let (need, next, timeout_ms) = self.shell.with(|i| {
            let timeout = i.config.sync_timeout_ms;
            if i.entry(key).map_err(store_failed)?.heard.is_some() {
                let next = i.refresh_if_stale(key, now).map_err(store_failed)?;
                return Ok::<_, ApiError>((Need::Nothing, next, timeout));
            }
            let need = match i.fetching.get_mut(key) {
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push(tx);
                    Need::Wait(rx)
                }
                None => {
                    i.fetching.insert(key.clone(), Vec::new());
                    Need::Fetch
                }
            };
            Ok((need, None, timeout))
        })?;
        self.shell.arm(next).await;
        match need {
            Need::Nothing => {}
            Need::Fetch => {
                if let Err(e) = self.read_from_merger(vec![key.clone()]).await {
                    console_warn!("sketch read of {key} failed: {e}");
                }
                // Dropping the senders wakes the reads waiting on them.
                self.shell.with(|i| i.fetching.remove(key));
            }
            Need::Wait(rx) => {
                let limit = Box::pin(Delay::from(Duration::from_millis(
                    timeout_ms.saturating_add(1000),
                )));
                let _ = select(rx, limit).await;
            }
        }
        Ok(())
    }

    async fn read_from_merger(
        &self,
        keys: Vec<SketchKey>,
    ) -> std::result::Result<(), client::MergerError> {
        let config = self.shell.with(|i| i.config.clone());
        let read = SketchRead {
            version: PREVIOUS_VERSION,
            sketches: keys,
        };
        let response = client::read_sketches(&config, &read).await?;
        let now = now();
        self.shell.with(|i| i.heard(response.sketches, now));
        Ok(())
    }

    /// A sync pass: the dirty sketches in key order, a batch at a time; for each, the
    /// registers that grew since the merger's last acknowledgement.
    async fn sync_pass(&self, now: Timestamp) -> std::result::Result<(), StoreError> {
        let mut after: Option<SketchKey> = None;
        loop {
            let batch = self
                .shell
                .with(|i| i.store.dirty_after(after.as_ref(), MAX_SKETCHES_PER_SYNC))?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            let full = batch.len() == MAX_SKETCHES_PER_SYNC;
            let mut sent: HashMap<SketchKey, HyperLogLog> = HashMap::new();
            let mut sketches = Vec::with_capacity(batch.len());
            for (key, row) in batch {
                let mut registers = HyperLogLog::new();
                match row.own.changes_since(&row.acked) {
                    Ok(grown) => {
                        let _ = registers.merge_registers(&grown);
                    }
                    // A precision this edge does not write: send it whole, the merger decides.
                    Err(_) => registers = row.own.clone(),
                }
                sketches.push(SketchUpdate {
                    key: key.clone(),
                    registers,
                });
                sent.insert(key, row.own);
            }
            let (config, request) = self.shell.with(|i| {
                (
                    i.config.clone(),
                    SketchSync {
                        version: PREVIOUS_VERSION,
                        replica: i.replica,
                        region: i.region.clone(),
                        sketches,
                    },
                )
            });
            match client::sync_sketches(&config, &request).await {
                Ok(response) => self.shell.with(|i| {
                    i.scheduler.succeeded();
                    let at = self::now();
                    for total in &response.sketches {
                        let Some(own) = sent.get(&total.key) else {
                            continue;
                        };
                        let entry = i.entry(&total.key)?;
                        let _ = entry.row.acked.merge(own);
                        entry.row.dirty = entry.row.own != entry.row.acked;
                        let row = entry.row.clone();
                        i.store.put(&total.key, &row)?;
                    }
                    i.heard(response.sketches, at);
                    Ok::<_, StoreError>(())
                })?,
                Err(e) => {
                    self.shell.with(|i| {
                        let at = self::now();
                        let wait = i
                            .scheduler
                            .failed(at, i.config.max_backoff_ms, random_u64());
                        console_warn!("sketch sync failed ({e}); retrying in {wait} ms");
                        let _ = i.want(Job::Sync, at.plus_ms(wait));
                    });
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        self.shell.with(|i| {
            // Yesterday's sketch may still grow from visits of its last moments.
            let yesterday = Timestamp::from_unix_ms(now.unix_ms() - 86_400_000).day();
            i.store.forget_days_before(yesterday)?;
            if i.store.any_dirty()? {
                let _ = i.want(Job::Sync, now.plus_ms(i.config.sync_interval_ms));
            }
            Ok(())
        })
    }

    /// One `POST /v1/read/unique` for the sketches reads found stale.
    async fn refresh_pass(&self) -> std::result::Result<(), StoreError> {
        let keys = self
            .shell
            .with(|i| take_first(&mut i.refresh, MAX_SKETCHES_PER_SYNC));
        if keys.is_empty() {
            return Ok(());
        }
        match self.read_from_merger(keys.clone()).await {
            Ok(()) => self.shell.with(|i| {
                i.scheduler.succeeded();
                if !i.refresh.is_empty() {
                    let _ = i.want(Job::Refresh, now());
                }
            }),
            Err(e) => self.shell.with(|i| {
                let at = now();
                let wait = i
                    .scheduler
                    .failed(at, i.config.max_backoff_ms, random_u64());
                console_warn!("sketch refresh failed ({e}); retrying in {wait} ms");
                i.refresh.extend(keys);
                let _ = i.want(Job::Refresh, at.plus_ms(wait));
            }),
        }
        Ok(())
    }
}
