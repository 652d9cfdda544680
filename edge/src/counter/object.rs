//! The counter's Durable Object (class `Replica`): one CRDT replica of the counters routed to it,
//! on the shell every object shares ([`crate::object`]). Glue between the runtime and the pure
//! parts: [`super::store`] (its SQL tables), [`crate::counter`] (rows, what was heard, the read
//! formula), [`crate::scheduler`] (its one alarm) and [`crate::client`] (the merger).
//!
//! - A hit is written to its row (one SQL statement) before it is answered, and answered at
//!   once from the object's own state and cache: it never waits for the merger. A stale or
//!   missing global value is refreshed on the alarm, in a batch.
//! - A read writes nothing. Cached and fresh: answered. Cached but stale: answered, and
//!   refreshed on the alarm. Never heard of, or stale past the bound (`READ_TTL_MS` +
//!   `SYNC_TIMEOUT_MS`: nobody read it for a while): fetched through the merger's read
//!   endpoint, in one batch shared by every read waiting for it, bounded by the sync
//!   timeout.
//! - The alarm runs one pass of each due job: sync the dirty rows (a snapshot of the dirty
//!   set, in batches), refresh stale cache entries, a page of the anti-entropy sweep, and
//!   the retirement of earlier incarnations at the merger.
//! - Between those passes, an incarnation due to rotate ([`super::incarnation`]) rotates if
//!   the object is clean: the check and the rotation are one synchronous stretch of storage
//!   calls, so no hit and no sync answer lands between them.
//!
//! A Durable Object runs one event at a time, but events interleave at `await`s (outgoing
//! fetches, the alarm call); the in-memory state is changed only between awaits, through a
//! `RefCell` whose borrows never cross one. SQL calls are synchronous.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::select;
use lru::LruCache;
use tally_crdt::{
    CounterKey, MAX_COUNTERS_PER_SYNC, PREVIOUS_VERSION, PROTOCOL_VERSION, ReadRequest, ReplicaId,
    RetireRequest, SlotUpdate, SyncRequest, Timestamp,
};
use worker::{
    Delay, DurableObject, Env, Request, Response, Result, State, console_error, console_log,
    console_warn, durable_object, wasm_bindgen,
};

use super::exact::{ExactGate, Turn};
use super::incarnation::{Incarnation, RetireFailure};
use super::store::{Store, meta};
use crate::api::ApiError;
use crate::client::{self, MergerError};
use crate::config::Config;
use crate::counter::{
    Entry, HitPlan, HitRules, Outcome, ReadNeed, Reclaim, current_totals, outcomes,
};
use crate::internal::{Answer, HIT_PATH, HITS_PATH, Hit, HitOutcome, Hits, READ_PATH, Read, v1};
use crate::milestone::Verdict;
use crate::object::{Loaded, Shell, StoreError, internal, random_id, store_failed, take_first};
use crate::runtime::{config_from_env, internal_response, now, random_u64};
use crate::scheduler::{Job, Scheduler};

thread_local! {
    /// The protocol version a merger a release behind took last, and until when this
    /// isolate's objects send their syncs in it: such a merger costs one refused sync per
    /// `MAX_BACKOFF_MS`, not one per sync.
    static SPOKEN: Cell<Option<(u32, Timestamp)>> = const { Cell::new(None) };
}

/// How soon after a read asks for it a refresh runs: reads arriving meanwhile join the batch.
const REFRESH_DELAY_MS: u64 = 10;

/// How old a heard global value may be when a read answers it: `READ_TTL_MS`, then the
/// background refresh a read of it asked for, which takes at most `SYNC_TIMEOUT_MS`. A read
/// of an older one (a counter nobody read for a while) waits for the merger's answer, so
/// that while the merger answers no read is staler than this (plus `EDGE_CACHE_MS` in the
/// isolate cache); when it does not answer, the old value is answered, with its age.
fn stale_after_ms(config: &Config) -> u64 {
    config.read_ttl_ms.saturating_add(config.sync_timeout_ms)
}

/// Everything the object holds in memory: a bounded cache and some bookkeeping; the counters
/// themselves stay in storage.
struct Inner {
    config: Config,
    store: Store,
    /// The current incarnation, and the earlier ones still to retire.
    incarnation: Incarnation,
    /// Syncs sent and not answered yet: the object may not rotate meanwhile.
    syncs_in_flight: u32,
    /// Whether this incarnation said that its rotation is long overdue (said once).
    overdue_said: bool,
    region: String,
    cache: LruCache<CounterKey, Entry>,
    scheduler: Scheduler,
    /// Counters whose cached global value a read found stale (at most the cache's size).
    refresh: BTreeSet<CounterKey>,
    /// Counters being fetched for reads that found nothing cached, with the reads waiting.
    fetching: HashMap<CounterKey, Vec<oneshot::Sender<()>>>,
    /// Exact syncs in flight, and whether the merger is away.
    exact: ExactGate,
    /// Since when the object holds hits the merger has not acknowledged: set by the first hit
    /// after a sync pass left nothing dirty (or by the first sync after loading), moved to a
    /// pass's start when the pass succeeds and hits came meanwhile, cleared when it leaves
    /// nothing dirty; a failed pass leaves it. Each sync tells the merger how old it is
    /// ([`tally_crdt::UNSYNCED_AGE_HEADER`]).
    unsynced_since: Option<Timestamp>,
}

impl Loaded for Inner {
    fn scheduler(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }
}

impl Inner {
    /// The cache entry of `key`, read from storage on a miss (a counter never counted here
    /// gets an empty entry; nothing is written). Its row is the current incarnation's: a row
    /// of an earlier one reads as zero.
    fn entry(&mut self, key: &CounterKey) -> std::result::Result<&mut Entry, StoreError> {
        if !self.cache.contains(key) {
            let row = self.store.row(key)?;
            let entry = Entry {
                stored: row.is_some(),
                row: row
                    .unwrap_or_default()
                    .in_generation(self.incarnation.generation, &self.incarnation.lineage),
                heard: None,
                watch: None,
            };
            self.cache.put(key.clone(), entry);
        }
        Ok(self.cache.get_mut(key).expect("just inserted"))
    }

    /// Asks for `job` at `at`: the alarm time to set, if it must move.
    fn want(&mut self, job: Job, at: Timestamp) -> Option<Timestamp> {
        self.scheduler.want(job, at, now())
    }

    /// Rotates the incarnation if it is due and the object is clean (no dirty row, no sync
    /// in flight). One synchronous stretch: the check, the stored rotation and the cache's
    /// move to the new incarnation.
    fn rotate_if_due(&mut self, now: Timestamp) -> std::result::Result<(), StoreError> {
        let Some(due) = self.incarnation.due_at(self.config.rotate_ms) else {
            return Ok(());
        };
        if due > now {
            let _ = self.want(Job::Rotate, due);
            return Ok(());
        }
        let dirty = self.store.any_dirty()?;
        if let Some(blocker) = self.incarnation.blocker(dirty, self.syncs_in_flight) {
            // Looked at again after the next sync pass; this wake-up is the fallback.
            let _ = self.want(Job::Rotate, now.plus_ms(self.config.sync_interval_ms));
            let late = now.millis_since(due);
            if late > self.config.rotate_ms && !self.overdue_said {
                self.overdue_said = true;
                console_warn!("rotation overdue by {late} ms, waiting: {blocker:?}");
            }
            return Ok(());
        }
        let mut next = self.incarnation.clone();
        let old = next.rotate();
        self.store.set_metas(&next.meta())?;
        self.incarnation = next;
        self.overdue_said = false;
        let generation = self.incarnation.generation;
        let lineage = self.incarnation.lineage;
        let mut dropped = Vec::new();
        for (key, entry) in &mut self.cache {
            if !entry.rotate(generation, &lineage) {
                dropped.push(key.clone());
            }
        }
        for key in &dropped {
            self.cache.pop(key);
        }
        for (job, at) in self.incarnation.wanted(now, self.config.rotate_ms) {
            let _ = self.want(job, at);
        }
        console_log!(
            "rotated: incarnation {} (generation {generation}) follows {old}, which is final",
            self.incarnation.replica
        );
        Ok(())
    }
}

/// One replica of the counters routed to it.
#[durable_object]
pub struct Replica {
    shell: Shell<Inner>,
}

impl DurableObject for Replica {
    fn new(state: State, env: Env) -> Self {
        Replica {
            shell: Shell::new(state, env),
        }
    }

    /// Internal requests from the Worker: `POST /v1/hits` and `POST /v1/read` in the compact
    /// form ([`v1`]), or, from a Worker of the release before it (or with `OBJECT_MESSAGES =
    /// "json"`), `POST /hit` ([`Hit`]), `POST /hits` ([`Hits`]) or `POST /read` ([`Read`]) in
    /// JSON. Each is answered in the form it came in.
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        let answer = if path.starts_with("/v1/") {
            let body = req.bytes().await?;
            match path.as_str() {
                v1::HITS_PATH => match v1::decode_hits(&body) {
                    Ok(hits) => {
                        let mut out = Vec::with_capacity(hits.len() * 64);
                        for outcome in self.hits(hits).await {
                            v1::push_outcome(&outcome, &mut out);
                        }
                        Ok(out)
                    }
                    Err(e) => Err(internal(e.to_string())),
                },
                v1::READ_PATH => match v1::decode_read(&body) {
                    Ok(read) => self.read(read).await.map(|a| v1::encode_answers(&a)),
                    Err(e) => Err(internal(e.to_string())),
                },
                _ => Err(ApiError::NotFound),
            }
        } else {
            // The body as one string, decoded in Wasm: `Request::json` walks the JS object a
            // property at a time across the boundary (about 30 crossings per request).
            let body = req.text().await?;
            let answers = match path.as_str() {
                HIT_PATH => match serde_json::from_str::<Hit>(&body) {
                    Ok(hit) => self.hit(hit, false).await.map(|a| a.into_iter().collect()),
                    Err(e) => Err(internal(format!("bad internal hit: {e}"))),
                },
                HITS_PATH => match serde_json::from_str::<Hits>(&body) {
                    Ok(hits) => {
                        let hits = hits.hits.into_iter().map(|hit| (hit, false)).collect();
                        let lines: Vec<String> = self
                            .hits(hits)
                            .await
                            .iter()
                            // An outcome of plain data always encodes.
                            .map(|o| serde_json::to_string(o).unwrap_or_default())
                            .collect();
                        return internal_response(lines.join("\n"), 200);
                    }
                    Err(e) => Err(internal(format!("bad internal hits: {e}"))),
                },
                READ_PATH => match serde_json::from_str::<Read>(&body) {
                    Ok(read) => self.read(read).await,
                    Err(e) => Err(internal(format!("bad internal read: {e}"))),
                },
                _ => Err(ApiError::NotFound),
            };
            answers.and_then(|a: Vec<Answer>| {
                serde_json::to_vec(&a).map_err(|e| internal(e.to_string()))
            })
        };
        match answer {
            Ok(bytes) => internal_response(bytes, 200),
            Err(e) => internal_response(e.body(), e.status()),
        }
    }

    /// Runs one pass of each due job, then sets the alarm for what is left.
    async fn alarm(&self) -> Result<Response> {
        if let Err(e) = self.load("").await {
            console_error!("replica cannot load its state: {e}");
            return Response::ok("not loaded");
        }
        let now = now();
        let jobs = self.shell.due(now);
        for job in jobs {
            let done = match job {
                Job::Sync => self.sync_pass(now).await,
                Job::Refresh => self.refresh_pass(now).await,
                Job::Sweep => self.sweep_pass(now).await,
                Job::Retire => self.retire_pass().await,
                Job::Rotate | Job::Report | Job::Push => Ok(()),
            };
            if let Err(e) = done {
                console_error!("{job:?} pass failed: {e}");
            }
            // Right after a pass is the likeliest clean moment (a sync pass just ended).
            if let Err(e) = self.shell.with(|i| i.rotate_if_due(self::now())) {
                console_error!("rotation failed: {e}");
            }
        }
        // Set the alarm anew for what is left: one set while this handler ran may not survive it.
        self.shell.rearm().await
    }
}

impl Replica {
    /// Loads the state on first use: the tables, the incarnation (drawn and stored before
    /// anything is counted, if the storage is new), the region, and the alarm. Reads no
    /// counter: start-up does not grow with the counters held.
    async fn load(&self, region: &str) -> std::result::Result<(), String> {
        if self.shell.loaded() {
            return Ok(());
        }
        let config = config_from_env(&self.shell.env).map_err(|e| e.to_string())?;
        let store = Store::open(self.shell.state.storage().sql()).map_err(|e| e.to_string())?;
        let get = |name| store.meta(name).map_err(|e| e.to_string());
        let mut incarnation = match get(meta::REPLICA)? {
            Some(replica) => {
                let (incarnation, drawn) = Incarnation::decode(
                    &replica,
                    get(meta::GENERATION)?.as_deref(),
                    get(meta::STARTED)?.as_deref(),
                    get(meta::RETIRING)?.as_deref(),
                    get(meta::LINEAGE)?.as_deref(),
                    random_id,
                )
                .map_err(|e| e.to_string())?;
                if drawn {
                    // Storage from before lineages: the lineage is stored before any
                    // rotation names an incarnation of it.
                    store
                        .set_metas(&incarnation.meta())
                        .map_err(|e| e.to_string())?;
                }
                incarnation
            }
            None => {
                let incarnation = Incarnation::new(random_id());
                store
                    .set_metas(&incarnation.meta())
                    .map_err(|e| e.to_string())?;
                incarnation
            }
        };
        // Storage from before rotation: its incarnation has counted (rows exist) but has no
        // start; its age counts from now.
        if incarnation.generation == 0
            && incarnation.started_at.is_none()
            && store.any_row().map_err(|e| e.to_string())?
        {
            let mut started = incarnation.clone();
            started.first_use(now());
            store
                .set_metas(&started.meta())
                .map_err(|e| e.to_string())?;
            incarnation = started;
        }
        let region = match store.meta(meta::REGION).map_err(|e| e.to_string())? {
            Some(stored) => stored,
            None if !region.is_empty() => {
                store
                    .set_meta(meta::REGION, region)
                    .map_err(|e| e.to_string())?;
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
            return Ok(()); // another event loaded it during the await
        }
        let now = now();
        let mut scheduler = Scheduler::new(armed);
        // Dirty rows from before a restart: sync them now, whatever the stored alarm says.
        if store.any_dirty().map_err(|e| e.to_string())? {
            let _ = scheduler.want(Job::Sync, now, now);
        }
        if let Some(due) = store
            .meta(meta::SWEEP_DUE)
            .map_err(|e| e.to_string())?
            .and_then(|t| t.parse::<Timestamp>().ok())
        {
            let _ = scheduler.want(Job::Sweep, due, now);
        }
        for (job, at) in incarnation.wanted(now, config.rotate_ms) {
            let _ = scheduler.want(job, at, now);
        }
        let capacity = NonZeroUsize::new(config.cache_counters).unwrap_or(NonZeroUsize::MIN);
        let loaded = Inner {
            config,
            store,
            incarnation,
            syncs_in_flight: 0,
            overdue_said: false,
            region,
            cache: LruCache::new(capacity),
            scheduler,
            refresh: BTreeSet::new(),
            fetching: HashMap::new(),
            exact: ExactGate::default(),
            unsynced_since: None,
        };
        self.shell.keep(loaded, now).await;
        Ok(())
    }

    /// Counts hits the Worker combined, one after the other, each as [`Replica::hit`] would
    /// alone: one [`HitOutcome`] per hit, in order. A hit marked *alone* (sent by itself
    /// after an outcome `alone`) may take the exact path; the others answer `alone` instead.
    /// Every hit counted is stored before the answer leaves (the output gate holds it until
    /// then).
    async fn hits(&self, hits: Vec<(Hit, bool)>) -> Vec<HitOutcome> {
        let mut outcomes = Vec::with_capacity(hits.len());
        for (hit, alone) in hits {
            outcomes.push(match self.hit(hit, !alone).await {
                Ok(Some(answer)) => HitOutcome::Counted(answer),
                Ok(None) => HitOutcome::Alone,
                Err(e) => HitOutcome::Refused {
                    status: e.status(),
                    body: e.body(),
                },
            });
        }
        outcomes
    }

    /// Counts a hit: stored before answered, answered without the merger, unless its counter
    /// is near a milestone: then it takes the exact path ([`Replica::exact`]) — or, for a hit
    /// that came `combined` with others, is not counted (`None`, nothing stored): the Worker
    /// sends it again alone.
    async fn hit(&self, hit: Hit, combined: bool) -> std::result::Result<Option<Answer>, ApiError> {
        self.load(&hit.region).await.map_err(internal)?;
        let known = self.shell.with(|i| i.entry(&hit.key).map(|e| e.stored));
        if !known.map_err(store_failed)? && !hit.trusted {
            crate::runtime::admit(&self.shell.env, &hit.client).await?;
        }
        let now = now();
        let counted = self.shell.with(|i| {
            let rules = HitRules {
                read_ttl_ms: i.config.read_ttl_ms,
                sync_interval_ms: i.config.sync_interval_ms,
                exact: i.config.exact_wait_ms > 0,
            };
            let (replica, interval) = (i.incarnation.replica, rules.sync_interval_ms);
            let HitPlan {
                row,
                view,
                slot,
                stale,
                exact,
            } = i
                .entry(&hit.key)
                .map_err(store_failed)?
                .plan_hit(
                    hit.key.kind(),
                    hit.add,
                    hit.visitor.clone(),
                    replica,
                    now,
                    rules,
                )
                .map_err(ApiError::Overflow)?;
            if exact && combined {
                return Ok(None);
            }
            // The incarnation's first hit starts its age (and gives it a slot to retire).
            let mut rotation = None;
            let mut started = i.incarnation.clone();
            if started.first_use(now) {
                i.store
                    .set_meta(meta::STARTED, &now.to_string())
                    .map_err(store_failed)?;
                rotation = started.due_at(i.config.rotate_ms);
                i.incarnation = started;
            }
            i.store.put(&hit.key, &row).map_err(store_failed)?;
            i.unsynced_since.get_or_insert(now);
            let merger_away = i.exact.is_away(now);
            let entry = i.entry(&hit.key).map_err(store_failed)?;
            entry.row = row;
            entry.stored = true;
            // With the merger away, the hit answers `pending` at once.
            let away = exact && merger_away;
            let mut next = i.scheduler.want(Job::Sync, now.plus_ms(interval), now);
            if let Some(due) = rotation {
                next = i.scheduler.want(Job::Rotate, due, now).or(next);
            }
            if stale && !exact && i.refresh.len() < i.config.cache_counters {
                i.refresh.insert(hit.key.clone());
                next = i
                    .scheduler
                    .want(Job::Refresh, now.plus_ms(REFRESH_DELAY_MS), now)
                    .or(next);
            }
            if i.config.anti_entropy_ms > 0 && !i.scheduler.is_wanted(Job::Sweep) {
                let due = now.plus_ms(i.config.anti_entropy_ms);
                i.store
                    .set_meta(meta::SWEEP_DUE, &due.to_string())
                    .map_err(store_failed)?;
                next = i.scheduler.want(Job::Sweep, due, now).or(next);
            }
            Ok::<_, ApiError>(Some((view, slot, next, exact, away)))
        })?;
        let Some((view, slot, next, exact, away)) = counted else {
            return Ok(None);
        };
        self.shell.arm(next).await;
        let (view, verdict) = if away {
            (view, Some(Verdict::Pending))
        } else if exact {
            let verdict = self.exact(&hit.key, slot, hit.add.p).await;
            // What the exact sync heard is the newest word: answer from it (never below
            // `view`, as what was heard never goes backwards).
            let fresh = self.shell.with(|i| {
                i.entry(&hit.key)
                    .ok()
                    .and_then(|e| e.view(crate::runtime::now()).ok())
            });
            (fresh.unwrap_or(view), Some(verdict))
        } else {
            (view, None)
        };
        Ok(Some(Answer {
            key: hit.key,
            view: Some(view),
            slot: Some(slot),
            verdict,
        }))
    }

    /// The exact path of a hit (stored already) holding units `end - delta + 1 ..= end` of
    /// `replica`'s slot: waits until the merger has committed the slot up to `end` (every
    /// milestone those units could win is then decided, and the answer tells it) or
    /// `EXACT_WAIT_MS` has passed. At most two exact syncs of the counter are in flight,
    /// each carrying every hit stored when it left; the counter's other hits wait for one to
    /// land, and none waits while the merger is away ([`super::exact`]). The hit is counted
    /// whatever happens; only its verdict can be `Pending`.
    async fn exact(
        &self,
        key: &CounterKey,
        (replica, end): (ReplicaId, u64),
        delta: u64,
    ) -> Verdict {
        let started = now();
        // A third of the budget per attempt (at least 200 ms): a sync lost on the way costs
        // one attempt, not the whole wait.
        let (budget, attempt_ms, window_ms) = self.shell.with(|i| {
            let budget = i.config.exact_wait_ms;
            let timeout = i.config.sync_timeout_ms;
            (budget, (budget / 3).max(200).min(timeout), timeout)
        });
        let mut failures = 0u64;
        loop {
            let left = budget.saturating_sub(now().millis_since(started));
            // One synchronous stretch: the verdict, and if there is none the turn (and the
            // totals a leader sends, every hit stored so far).
            let step = self.shell.with(|i| {
                if i.incarnation.replica != replica {
                    return Err(()); // rotated: unreachable while the hit is not acknowledged
                }
                let keep = i.config.reclaim_after_ms;
                let entry = i.entry(key).map_err(|_| ())?;
                let acked = entry.row.acked.p;
                let verdict = match &entry.watch {
                    Some(w) => w.verdict(replica, end, delta, acked),
                    None => (acked >= end).then_some(Verdict::Lost),
                };
                if let Some(verdict) = verdict {
                    return Ok(Step::Told(verdict));
                }
                if left == 0 {
                    return Err(());
                }
                let update = entry.row.clone().as_sent(now(), keep).update(key.clone());
                Ok(match i.exact.turn(key, now()) {
                    Turn::Lead { probe } => Step::Lead(update, probe),
                    Turn::Wait(rx) => Step::Wait(rx),
                    Turn::Away => Step::Away,
                })
            });
            match step {
                Ok(Step::Told(verdict)) => return verdict,
                Err(()) | Ok(Step::Away) => return Verdict::Pending,
                Ok(Step::Wait(rx)) => {
                    let limit = Box::pin(Delay::from(Duration::from_millis(left)));
                    let _ = select(rx, limit).await;
                }
                Ok(Step::Lead(update, probe)) => {
                    let mut flight = Flight {
                        replica: self,
                        key,
                        probe,
                        window_ms,
                        ok: None,
                    };
                    let (config, request, age) = self.sync_request(vec![update]);
                    let answer = self
                        .post_sync(&config, &request, left.min(attempt_ms), age)
                        .await;
                    let ok = match answer {
                        Ok(response) => match self.apply(&request, &response) {
                            Ok(()) => true,
                            Err(e) => {
                                console_error!("applying an exact sync failed: {e}");
                                return Verdict::Pending;
                            }
                        },
                        Err(e) => {
                            failures += 1;
                            console_warn!("exact sync of {key} failed ({e}); attempt {failures}");
                            false
                        }
                    };
                    flight.ok = Some(ok);
                    drop(flight);
                    if !ok {
                        // A merger that refuses at once is not asked in a tight loop (and an
                        // answer to another sync may tell the verdict meanwhile).
                        let left = budget.saturating_sub(now().millis_since(started));
                        let pause = (25 * failures).min(200).min(left);
                        Delay::from(Duration::from_millis(pause)).await;
                    }
                }
            }
        }
    }

    /// Reads counters: writes nothing, waits for the merger only for counters it has never
    /// heard of or not heard of for longer than the staleness bound ([`stale_after_ms`]).
    async fn read(&self, read: Read) -> std::result::Result<Vec<Answer>, ApiError> {
        self.load(&read.region).await.map_err(internal)?;
        let now = now();
        let (missing, next) = self.shell.with(|i| {
            let ttl = i.config.read_ttl_ms;
            let bound = stale_after_ms(&i.config);
            let mut missing = Vec::new();
            let mut next = None;
            for key in &read.keys {
                match i
                    .entry(key)
                    .map_err(store_failed)?
                    .read_need(now, ttl, bound)
                {
                    ReadNeed::Fetch => missing.push(key.clone()),
                    ReadNeed::Refresh if i.refresh.len() < i.config.cache_counters => {
                        i.refresh.insert(key.clone());
                        next = i.want(Job::Refresh, now.plus_ms(REFRESH_DELAY_MS)).or(next);
                    }
                    ReadNeed::Refresh | ReadNeed::Fresh => {}
                }
            }
            Ok::<_, ApiError>((missing, next))
        })?;
        self.shell.arm(next).await;
        if !missing.is_empty() {
            self.fetch_now(missing).await;
        }
        let now = crate::runtime::now().max(now);
        self.shell.with(|i| {
            read.keys
                .into_iter()
                .map(|key| {
                    let view = i
                        .entry(&key)
                        .map_err(store_failed)?
                        .read_view(now)
                        .map_err(ApiError::Overflow)?;
                    Ok(Answer {
                        key,
                        view,
                        slot: None,
                        verdict: None,
                    })
                })
                .collect()
        })
    }

    /// Fetches counters not heard of (or not for too long), once for all the reads that need
    /// them at the same time; a read waits at most one merger call for them.
    async fn fetch_now(&self, keys: Vec<CounterKey>) {
        let (mine, waits, timeout_ms) = self.shell.with(|i| {
            let mut mine = Vec::new();
            let mut waits = Vec::new();
            for key in keys {
                match i.fetching.get_mut(&key) {
                    Some(queue) => {
                        let (tx, rx) = oneshot::channel();
                        queue.push(tx);
                        waits.push(rx);
                    }
                    None => {
                        i.fetching.insert(key.clone(), Vec::new());
                        mine.push(key);
                    }
                }
            }
            (mine, waits, i.config.sync_timeout_ms)
        });
        if !mine.is_empty() {
            // Whatever happens to this future, the reads waiting on these keys are released.
            let _release = Release {
                replica: self,
                keys: &mine,
            };
            if let Err(e) = self.read_from_merger(mine.clone()).await {
                console_warn!("read of {} counters failed: {e}", mine.len());
            }
        }
        for rx in waits {
            let limit = Box::pin(Delay::from(Duration::from_millis(
                timeout_ms.saturating_add(1000),
            )));
            let _ = select(rx, limit).await;
        }
    }

    /// One `POST /v1/read` for `keys`; the answers go into the cache (never backwards).
    async fn read_from_merger(
        &self,
        keys: Vec<CounterKey>,
    ) -> std::result::Result<(), MergerError> {
        let (config, request) = self.shell.with(|i| {
            let request = ReadRequest {
                version: PREVIOUS_VERSION,
                replica: Some(i.incarnation.replica),
                counters: keys,
            };
            (i.config.clone(), request)
        });
        let response = client::read(&config, &request).await?;
        let now = now();
        self.shell.with(|i| {
            if request.replica != Some(i.incarnation.replica) {
                // The object rotated meanwhile: `recorded` is the old incarnation's slot,
                // which the new one must not subtract.
                return;
            }
            for merged in &response.counters {
                if request.counters.contains(&merged.key)
                    && let Ok(entry) = i.entry(&merged.key)
                {
                    let newer = entry.hear(merged, now);
                    entry.hear_milestones(merged, false, newer, now);
                }
            }
        });
        Ok(())
    }

    /// A sync pass: a snapshot of the dirty set, sent in batches in key order; then the
    /// next pass a full interval later (or after a backoff, on failure).
    async fn sync_pass(&self, now: Timestamp) -> std::result::Result<(), StoreError> {
        let mut after: Option<CounterKey> = None;
        loop {
            let batch = self
                .shell
                .with(|i| i.store.dirty_after(after.as_ref(), MAX_COUNTERS_PER_SYNC))?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            let full = batch.len() == MAX_COUNTERS_PER_SYNC;
            let (generation, lineage, keep) = self.shell.with(|i| {
                let n = &i.incarnation;
                (n.generation, n.lineage, i.config.reclaim_after_ms)
            });
            let sent = current_totals(batch, generation, &lineage, now, keep);
            if sent.is_empty() {
                continue;
            }
            if !self.send(sent, Job::Sync).await? {
                return Ok(());
            }
            if !full {
                break;
            }
        }
        self.shell.with(|i| {
            // Every dirty row went and was answered: what is dirty now came during the pass.
            if i.store.any_dirty()? {
                i.unsynced_since = Some(now);
                let _ = i.want(Job::Sync, now.plus_ms(i.config.sync_interval_ms));
            } else {
                i.unsynced_since = None;
            }
            Ok(())
        })
    }

    /// Sends one sync; applies the answers by counter. On failure, re-asks for `job` after a
    /// backoff and returns false.
    async fn send(&self, sent: Vec<SlotUpdate>, job: Job) -> std::result::Result<bool, StoreError> {
        let (config, request, age) = self.sync_request(sent);
        match self
            .post_sync(&config, &request, config.sync_timeout_ms, age)
            .await
        {
            Ok(response) => {
                self.shell.with(|i| {
                    i.scheduler.succeeded();
                    i.exact.reached();
                });
                self.apply(&request, &response)?;
                Ok(true)
            }
            Err(e) => {
                self.shell.with(|i| {
                    let wait =
                        i.scheduler
                            .failed(self::now(), i.config.max_backoff_ms, random_u64());
                    console_warn!(
                        "{job:?} failed ({e}); attempt {}, retrying in {wait} ms",
                        i.scheduler.failures()
                    );
                    let _ = i.want(job, now().plus_ms(wait));
                });
                Ok(false)
            }
        }
    }

    /// The sync of `sent` (with the visits of their rows) from the current incarnation, in
    /// the newest version (6), whose answers tell each row its share of the counter's last
    /// reset ([`tally_crdt::Cut`]) and a later frame the merger holds for the object's carry
    /// (a row reclaimed here and counted again takes it up). A merger a release behind
    /// refuses it, and it goes again one version down ([`Replica::post_sync`]).
    ///
    /// Also the age of the object's oldest unsynced hit, in milliseconds, for the merger.
    fn sync_request(&self, sent: Vec<SlotUpdate>) -> (Config, SyncRequest, u64) {
        let now = now();
        self.shell.with(|i| {
            let age = now.millis_since(*i.unsynced_since.get_or_insert(now));
            let request = SyncRequest {
                version: PROTOCOL_VERSION,
                replica: i.incarnation.replica,
                region: i.region.clone(),
                counters: sent,
            };
            (i.config.clone(), request, age)
        })
    }

    /// One `POST /v1/sync`, counted in flight (no rotation meanwhile) until it ends.
    async fn post_sync(
        &self,
        config: &Config,
        request: &SyncRequest,
        timeout_ms: u64,
        unsynced_age_ms: u64,
    ) -> std::result::Result<tally_crdt::SyncResponse, MergerError> {
        self.shell
            .with(|i| i.syncs_in_flight = i.syncs_in_flight.saturating_add(1));
        let _in_flight = InFlight { replica: self };
        // A merger a release behind (a rolling deploy in the wrong order): the same totals
        // in the version it speaks, without the carries and visits it cannot take. The
        // version it took last goes first while it is remembered.
        let mut older = request.clone();
        let now = now();
        if let Some(spoken) = SPOKEN.get().filter(|(_, until)| now < *until) {
            while older.version > spoken.0 {
                match older.downgraded() {
                    Some(down) => older = down,
                    None => break,
                }
            }
        }
        let mut answer = client::sync_within(config, &older, timeout_ms, unsynced_age_ms).await;
        let mut refused = false;
        while let Err(MergerError::Status { status: 422, body }) = &answer {
            if !body.contains("unsupported_version") {
                break;
            }
            let Some(down) = older.downgraded() else {
                break;
            };
            console_warn!(
                "the merger refuses protocol {}: syncing as {}",
                older.version,
                down.version
            );
            older = down;
            refused = true;
            answer = client::sync_within(config, &older, timeout_ms, unsynced_age_ms).await;
        }
        if answer.is_ok() {
            if older.version == request.version {
                SPOKEN.set(None);
            } else if refused {
                // Taken below the newest version after a refusal: speak it for
                // `MAX_BACKOFF_MS` from now, then try the newest again (the merger may have
                // been upgraded meanwhile). A sync taken in the remembered version does not
                // extend the time, or steady syncs would never try the newest again.
                SPOKEN.set(Some((older.version, now.plus_ms(config.max_backoff_ms))));
            }
        }
        answer
    }

    /// Applies a sync's answers, by counter.
    fn apply(
        &self,
        request: &SyncRequest,
        response: &tally_crdt::SyncResponse,
    ) -> std::result::Result<(), StoreError> {
        let now = now();
        self.shell.with(|i| {
            if request.replica != i.incarnation.replica {
                // Unreachable (no rotation while a sync is in flight), and harmful if not
                // ignored: the answers are the old incarnation's slots.
                console_error!("a sync answer arrived after a rotation; ignored");
                return Ok(());
            }
            for (update, outcome) in outcomes(&request.counters, &response.counters) {
                match &outcome {
                    Outcome::Rejected(code, message) => console_warn!(
                        "the merger rejected {} ({code}: {message}); the sweep offers it again",
                        update.key
                    ),
                    Outcome::Missing => console_warn!(
                        "the merger did not answer for {}; it stays dirty",
                        update.key
                    ),
                    Outcome::Merged(_) => {}
                }
                let keep = i.config.reclaim_after_ms;
                let entry = i.entry(&update.key)?;
                let before = entry.row.clone();
                entry.settle(update.totals, &outcome, now, keep);
                if entry.row != before {
                    let row = entry.row.clone();
                    i.store.put(&update.key, &row)?;
                }
            }
            Ok(())
        })
    }

    /// A refresh pass: one `POST /v1/read` for the stale counters reads asked about.
    async fn refresh_pass(&self, now: Timestamp) -> std::result::Result<(), StoreError> {
        let keys = self
            .shell
            .with(|i| take_first(&mut i.refresh, MAX_COUNTERS_PER_SYNC));
        if keys.is_empty() {
            return Ok(());
        }
        match self.read_from_merger(keys.clone()).await {
            Ok(()) => self.shell.with(|i| {
                i.scheduler.succeeded();
                i.exact.reached();
                if !i.refresh.is_empty() {
                    let _ = i.want(Job::Refresh, now);
                }
            }),
            Err(e) => self.shell.with(|i| {
                let wait = i
                    .scheduler
                    .failed(self::now(), i.config.max_backoff_ms, random_u64());
                console_warn!("refresh failed ({e}); retrying in {wait} ms");
                i.refresh.extend(keys);
                let _ = i.want(Job::Refresh, now.plus_ms(wait));
            }),
        }
        Ok(())
    }

    /// One page of the anti-entropy sweep: the next batch of rows in key order, sent whatever
    /// their state. The sweep goes on every sync interval until it has covered every row,
    /// then waits `ANTI_ENTROPY_MS`.
    async fn sweep_pass(&self, now: Timestamp) -> std::result::Result<(), StoreError> {
        let (period, interval) = self
            .shell
            .with(|i| (i.config.anti_entropy_ms, i.config.sync_interval_ms));
        if period == 0 {
            return Ok(());
        }
        let after = self.shell.with(|i| i.store.meta(meta::SWEEP_CURSOR))?;
        let after = after.and_then(|k| CounterKey::from_storage_key(&k).ok());
        let page = self
            .shell
            .with(|i| i.store.rows_after(after.as_ref(), MAX_COUNTERS_PER_SYNC))?;
        let Some((last, _)) = page.last().cloned() else {
            // The sweep is complete: the next starts a period later.
            return self.shell.with(|i| {
                i.store.clear_meta(meta::SWEEP_CURSOR)?;
                let due = now.plus_ms(period);
                i.store.set_meta(meta::SWEEP_DUE, &due.to_string())?;
                let _ = i.want(Job::Sweep, due);
                Ok(())
            });
        };
        // Rows rebased more than `RECLAIM_AFTER_MS` ago: deleted if they hold nothing the
        // merger lacks, else they stop re-sending what they reclaimed ([`Row::reclaim`]); a
        // cut told more than that after its reset is dropped ([`Row::expire`]). Rows of
        // earlier incarnations send their carry alone: their slots are final.
        let page = self.shell.with(|i| -> std::result::Result<_, StoreError> {
            let after = i.config.reclaim_after_ms;
            let mut kept = Vec::with_capacity(page.len());
            let mut deleted = 0;
            for (key, stored) in page {
                // A cached row is the one a hit or an answer changes next: it decides.
                let mut row = i.cache.peek(&key).map_or(stored, |e| e.row.clone());
                if row.reclaim(now, after) == Reclaim::Delete {
                    i.store.delete(&key)?;
                    i.cache.pop(&key);
                    deleted += 1;
                    continue;
                }
                if row.expire(now, after) {
                    i.store.put(&key, &row)?;
                    if let Some(entry) = i.cache.peek_mut(&key) {
                        entry.row = row.clone();
                    }
                }
                kept.push((key, row));
            }
            if deleted > 0 {
                console_log!("reclaimed {deleted} rows of counters nobody counts any more");
            }
            Ok(kept)
        })?;
        let (generation, lineage, keep) = self.shell.with(|i| {
            let n = &i.incarnation;
            (n.generation, n.lineage, i.config.reclaim_after_ms)
        });
        let sent = current_totals(page, generation, &lineage, now, keep);
        if sent.is_empty() || self.send(sent, Job::Sweep).await? {
            self.shell.with(|i| {
                i.store.set_meta(meta::SWEEP_CURSOR, &last.storage_key())?;
                let due = now.plus_ms(interval);
                i.store.set_meta(meta::SWEEP_DUE, &due.to_string())?;
                let _ = i.want(Job::Sweep, due);
                Ok(())
            })
        } else {
            Ok(())
        }
    }
}

impl Replica {
    /// A retirement pass: `POST /v1/retire` for each earlier incarnation on the list, oldest
    /// first; an id leaves the list only once the merger answered 2xx (the retirement is
    /// durable). The first failure ends the pass and backs off.
    async fn retire_pass(&self) -> std::result::Result<(), StoreError> {
        loop {
            let (config, next) = self.shell.with(|i| {
                let next = i.incarnation.retiring.first().copied();
                let next = next.map(|r| (r, i.incarnation.retire_version(r)));
                (i.config.clone(), next)
            });
            let Some((replica, version)) = next else {
                return Ok(());
            };
            let request = RetireRequest { version, replica };
            match client::retire(&config, &request).await {
                Ok(answer) => self.shell.with(|i| {
                    i.scheduler.retire_succeeded();
                    let mut next = i.incarnation.clone();
                    next.retired(replica);
                    i.store.set_meta(meta::RETIRING, &next.retiring_text())?;
                    i.incarnation = next;
                    console_log!("retired {replica}: {} slots folded", answer.folded);
                    Ok::<_, StoreError>(())
                })?,
                Err(e) => {
                    let failure = RetireFailure::of(&e);
                    self.shell.with(|i| {
                        let wait = i.scheduler.retire_failed(
                            self::now(),
                            i.config.max_backoff_ms,
                            random_u64(),
                            failure == RetireFailure::MergerDown,
                        );
                        match failure {
                            RetireFailure::Bug => console_error!(
                                "retiring {replica} failed ({e}): a bug on one side; kept, \
                                 retrying in {wait} ms"
                            ),
                            RetireFailure::MergerDown | RetireFailure::Refused => console_warn!(
                                "retiring {replica} failed ({e}); kept, retrying in {wait} ms"
                            ),
                        }
                        let _ = i.want(Job::Retire, self::now().plus_ms(wait));
                    });
                    return Ok(());
                }
            }
        }
    }
}

/// Counts a sync as in flight until its call ends, however it ends.
struct InFlight<'a> {
    replica: &'a Replica,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.replica.shell.try_with(|inner| {
            inner.syncs_in_flight = inner.syncs_in_flight.saturating_sub(1);
        });
    }
}

/// A step of a hit on the exact path.
enum Step {
    /// Its verdict is known.
    Told(Verdict),
    /// It sends the counter's exact sync (the totals, whether it is the away window's probe).
    Lead(SlotUpdate, bool),
    /// It waits for one of the syncs in flight to land.
    Wait(oneshot::Receiver<()>),
    /// The merger is away: `pending` now.
    Away,
}

/// An exact sync in flight: when it ends (or its hit's request goes away), the gate hears
/// of it and the counter's waiting hits wake.
struct Flight<'a> {
    replica: &'a Replica,
    key: &'a CounterKey,
    probe: bool,
    window_ms: u64,
    /// The outcome: answered 2xx or not; `None` if the request went away first.
    ok: Option<bool>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.replica.shell.try_with(|inner| match self.ok {
            Some(ok) => {
                inner
                    .exact
                    .landed(self.key, self.probe, ok, now(), self.window_ms);
                if !ok && inner.exact.is_away(now()) {
                    console_warn!("the merger is away: hits near a milestone answer pending");
                }
            }
            None => inner.exact.abandoned(self.key, self.probe),
        });
    }
}

/// Releases the reads waiting on a fetch when the fetch ends, however it ends (dropping
/// their senders wakes them).
struct Release<'a> {
    replica: &'a Replica,
    keys: &'a [CounterKey],
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.replica.shell.try_with(|inner| {
            for key in self.keys {
                inner.fetching.remove(key);
            }
        });
    }
}
