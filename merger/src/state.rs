//! [`Db`]: the merged counters in memory, a bounded cache over the store and the source of
//! every read.
//!
//! It holds at most `--cache-counters` counters (a merger with millions of counters starts
//! empty and fills on demand), each complete: every slot the store held when it was loaded,
//! merged since with every commit of this merger and every change other mergers announced.
//! It only ever holds committed values, so a read never shows one a crash could take back,
//! and a slot it holds is never above the store's, so "the cache already has this total" is
//! a safe reason to skip a write.
//!
//! Eviction is CLOCK (second chance): a read sets a counter's reference bit under the read
//! lock (an atomic, no write lock on the hot path); the hand clears bits and evicts the
//! first counter found without one. The commit task pins its batch's counters so nothing
//! evicts them between loading them and answering from them.
//!
//! The lock is a std `RwLock` owned here, as mini-redis's `Db` owns its mutex: callers pass
//! closures and never hold the guard, and nothing is awaited while it is held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use foldhash::{HashMap, HashSet};

use axum::body::Bytes;

use indexmap::IndexMap;
use prometheus_client::metrics::counter::Counter as Tally;
use tally_crdt::{
    Carry, CounterKey, CounterState, Cut, Frame, GlobalTotals, MergedCounter, MilestoneNews,
    ReplicaId, SlotTotals, Timestamp,
};

use crate::milestone::{Milestone, NewsBoard, NewsView};
use crate::store::{Epoch, Retired, SlotRow, StoredCounter};

/// One region's share of a counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionShare {
    /// Totals over the slots, carries and base of this region, above its cut.
    pub totals: GlobalTotals,
    /// Latest sync of this counter from this region.
    pub last_sync: Timestamp,
}

/// One merged counter (possibly one nobody has hit: no slots, no `updated_at`): its state,
/// the lattice of `tally_crdt` ([`CounterState`]), and what this cache keeps beside it.
#[derive(Debug, Default)]
pub struct Counter {
    /// Slots, carries, bases with their retired replicas, epoch and cuts; every merge is its
    /// join.
    state: CounterState,
    /// Per region, the latest sync of this counter from it.
    last_sync: BTreeMap<Arc<str>, Timestamp>,
    /// Last time a slot grew; `None` while no slot has.
    updated_at: Option<Timestamp>,
    /// Read since the clock hand last passed.
    referenced: AtomicBool,
    /// Its public read's JSON body, made at the first read after a change: the hot read path
    /// then clones bytes instead of writing JSON (cleared by every change).
    rendered: OnceLock<Bytes>,
}

impl Counter {
    /// Global totals in the current epoch (`p - n` is the count).
    pub fn totals(&self) -> GlobalTotals {
        self.state.value()
    }
    /// Its resets.
    pub fn epoch(&self) -> Epoch {
        self.state.epoch()
    }
    /// Per-region shares, in region order.
    pub fn regions(&self) -> impl Iterator<Item = (&Arc<str>, RegionShare)> {
        self.state.shares().iter().map(|(region, totals)| {
            let share = RegionShare {
                totals: *totals,
                last_sync: self.last_sync.get(region).copied().unwrap_or_default(),
            };
            (region, share)
        })
    }
    /// Number of live replicas with a non-zero slot.
    pub fn replicas(&self) -> usize {
        self.state.replicas()
    }
    /// Last time a slot grew; `None` for a counter nobody has hit.
    pub fn updated_at(&self) -> Option<Timestamp> {
        self.updated_at
    }
    /// Its public read's body: `render`'s output, kept until the counter next changes.
    pub fn rendered(&self, render: impl FnOnce(&Counter) -> Vec<u8>) -> Bytes {
        if std::ptr::eq(self, &NOBODY) {
            return Bytes::from(render(self));
        }
        self.rendered
            .get_or_init(|| Bytes::from(render(self)))
            .clone()
    }

    /// `replica`'s live slot (zero for none, or a retired one).
    pub fn slot(&self, replica: ReplicaId) -> SlotTotals {
        self.state.slot(replica)
    }

    /// Whether `replica`'s slot is final here: in its object's carry, or in a base.
    pub fn is_retired(&self, replica: ReplicaId) -> bool {
        self.state.is_retired(replica)
    }

    /// Whether merging `carry` of `object` would change what is held (the held carry does
    /// not [cover](Carry::covers) it). An object re-sends the carry it holds with every sync,
    /// so the carry is mostly the one held already.
    pub fn carry_grows(&self, object: ReplicaId, carry: &Carry) -> bool {
        self.state
            .carries()
            .get(&object.object())
            .is_none_or(|held| !held.covers(carry))
    }

    /// The frame of `object`'s carry, when it was rebased ([`tally_crdt::Frame`]): what a
    /// version-5 sync answer tells an object that sent an earlier one. Its epoch alone: what
    /// was reclaimed stays here (an object that re-sent it would keep it alive past the time
    /// the edge forgets it).
    pub fn frame_of(&self, object: ReplicaId) -> Option<Frame> {
        let held = self.state.carries().get(&object.object())?;
        (held.frame > 0).then(|| Frame {
            epoch: held.frame,
            reclaimed: SlotTotals::default(),
        })
    }

    /// What a version-6 sync answer tells `object` of the counter's last reset
    /// ([`tally_crdt::Cut`]): its share of the cut, when the sync sent the cut of an earlier
    /// epoch or none (`sent`); `None` for a counter never reset.
    pub fn cut_for(&self, object: ReplicaId, sent: Option<&Cut>) -> Option<Cut> {
        let epoch = self.state.epoch();
        let at = epoch.at?;
        (epoch.number > sent.map_or(0, |c| c.epoch)).then(|| Cut {
            epoch: epoch.number,
            deleted: epoch.deleted,
            at,
            totals: self.state.object_cut(object),
        })
    }

    /// Whether applying `cut`, told by `object`, would change what is held: it is of a later
    /// epoch, or of this one with a larger share than held ([`CounterState::tell_cut`]).
    pub fn cut_grows(&self, object: ReplicaId, cut: &Cut) -> bool {
        let epoch = self.state.epoch().number;
        cut.epoch > epoch
            || (cut.epoch == epoch && !self.state.object_cut(object).dominates(cut.totals))
    }

    /// The counter as the store holds it.
    fn from_stored(stored: &StoredCounter) -> Counter {
        let mut counter = Counter::default();
        counter.merge_stored(stored);
        counter
    }

    /// Merges a load of the store into what is held: the join of the two states, and the
    /// latest times of both.
    fn merge_stored(&mut self, stored: &StoredCounter) {
        self.rendered.take();
        for slot in &stored.slots {
            self.touched(Some(&Arc::from(slot.region.as_str())), slot.at);
        }
        for (_, carry, at) in &stored.carries {
            self.touched(Some(&carry.region), *at);
        }
        for (region, _, at) in &stored.bases {
            self.touched(Some(&Arc::from(region.as_str())), *at);
        }
        if stored.epoch.number > self.state.epoch().number
            && let Some(at) = stored.epoch.at
        {
            self.touched(None, at);
        }
        self.state.join(&stored.state());
    }

    /// Merges one committed slot (max). Returns whether it grew.
    fn merge_slot(
        &mut self,
        replica: ReplicaId,
        region: &Arc<str>,
        totals: SlotTotals,
        at: Timestamp,
    ) -> bool {
        if !self.state.merge_slot(replica, region, totals) {
            return false;
        }
        // The slot's region of record: the one it was first held with.
        let region = self
            .state
            .slots()
            .get(&replica)
            .map_or_else(|| Arc::clone(region), |s| Arc::clone(s.region));
        self.touched(Some(&region), at);
        true
    }

    /// Merges a committed carry of `object` (a join: the slots it holds go). Returns whether
    /// it raised the count.
    fn merge_carry(&mut self, object: ReplicaId, carry: &Carry, at: Timestamp) -> bool {
        let before = self.totals();
        if !self.state.merge_carry(object, carry) {
            return false;
        }
        self.touched(Some(&carry.region), at);
        self.totals() != before
    }

    /// Records a sync at `at` (of `region`, when known).
    fn touched(&mut self, region: Option<&Arc<str>>, at: Timestamp) {
        self.rendered.take();
        if let Some(region) = region {
            let last = self.last_sync.entry(Arc::clone(region)).or_default();
            *last = (*last).max(at);
        }
        self.updated_at = Some(self.updated_at.map_or(at, |u| u.max(at)));
    }

    /// As the protocol answers it, with `replica`'s recorded slot (zero without one).
    pub fn merged(&self, key: &CounterKey, replica: Option<ReplicaId>) -> MergedCounter {
        MergedCounter {
            key: key.clone(),
            global: self.totals(),
            recorded: replica.map(|r| self.slot(r)).unwrap_or_default(),
            updated_at: self.updated_at,
            epoch: self.epoch().number,
            milestones: None,
            frame: None,
            cut: None,
        }
    }
}

/// What a counter nobody has hit reads as (shared, so never given a rendered body).
static NOBODY: Counter = Counter {
    state: CounterState::new(),
    last_sync: BTreeMap::new(),
    updated_at: None,
    referenced: AtomicBool::new(false),
    rendered: OnceLock::new(),
};

/// The counters held, as a closure sees them.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a>(&'a Merged);

impl<'a> Held<'a> {
    /// The counter `key`. Every key the call was made for is held; any other reads as a
    /// counter nobody has hit.
    pub fn counter(&self, key: &CounterKey) -> &'a Counter {
        self.0.counters.get(key).unwrap_or(&NOBODY)
    }

    /// The milestone news board at `now`.
    pub fn news(&self, now: Timestamp) -> NewsView<'a> {
        self.0.news.view(now)
    }
}

#[derive(Debug, Default)]
struct Merged {
    counters: IndexMap<CounterKey, Counter, foldhash::fast::RandomState>,
    /// The milestone news of the counters that have any.
    news: NewsBoard,
    /// Ids a read found nobody has counted, oldest first: answered as zero without the store,
    /// and kept apart from `counters`, so that reads of random ids never evict a counter.
    /// At most the cache's capacity; a commit, reset, import or another merger's change of
    /// one of them takes it out.
    absent: Absent,
    /// The clock hand: an index into `counters`.
    hand: usize,
    /// Counters the commit task is working on, with the number of its batches that hold
    /// each (two while one batch is written and the next prepared): never evicted.
    pinned: HashMap<CounterKey, u32>,
    /// Held counters this merger changed since their last history point.
    snapshot_due: HashSet<CounterKey>,
    /// Counters evicted while due for a history point, with their totals then; at most the
    /// cache's capacity (beyond, a point is dropped and counted), so the due set is bounded
    /// by the setting like the cache, and writing a point never loads a counter.
    evicted_due: HashMap<CounterKey, Point>,
    /// Per region, the syncs this merger process committed since it started (for
    /// `GET /v1/regions`): not stored, not loaded, not heard from other mergers.
    regions: BTreeMap<Arc<str>, RegionSyncs>,
}

/// A bounded set of keys, oldest first out.
#[derive(Debug, Default)]
struct Absent {
    keys: HashSet<CounterKey>,
    order: std::collections::VecDeque<CounterKey>,
}

impl Absent {
    fn contains(&self, key: &CounterKey) -> bool {
        self.keys.contains(key)
    }

    /// Adds `key`; the oldest keys leave beyond `capacity`.
    fn insert(&mut self, key: CounterKey, capacity: usize) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.keys.len() > capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.keys.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Empties the set.
    fn clear(&mut self) {
        self.keys.clear();
        self.order.clear();
    }

    /// Takes `key` out (the queue drops it lazily, when it reaches the front).
    fn remove(&mut self, key: &CounterKey) {
        if self.keys.remove(key) {
            // Keep the queue bounded by what is in the set: drop stale fronts.
            while self
                .order
                .front()
                .is_some_and(|front| !self.keys.contains(front))
            {
                self.order.pop_front();
            }
            if self.order.len() > 2 * self.keys.len() + 16 {
                let keys = &self.keys;
                self.order.retain(|k| keys.contains(k));
            }
        }
    }
}

/// One region's syncs as this merger process committed them.
#[derive(Debug, Default)]
struct RegionSyncs {
    /// The latest commit that raised a slot of one of its replicas.
    last_sync: Timestamp,
    /// Its replicas that raised a slot here, less those retired here since.
    replicas: HashSet<ReplicaId>,
}

/// A region's freshness as this merger process saw it (see [`Db::regions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSeen {
    /// The region.
    pub region: Arc<str>,
    /// The latest commit that raised a slot of one of its replicas.
    pub last_sync: Timestamp,
    /// Its replicas that raised a slot through this merger and were not retired through it.
    pub replicas: usize,
}

/// A history point due: a counter's totals and the epoch they belong to.
pub type Point = (GlobalTotals, u64);

/// Counts of what the cache did (shared with the metrics registry).
#[derive(Debug, Default, Clone)]
pub struct CacheStats {
    /// Reads that found every counter they asked for held.
    pub hits: Tally,
    /// Counters loaded from the store into the cache.
    pub misses: Tally,
    /// Counters evicted.
    pub evictions: Tally,
    /// History points not written because too many evicted counters were due at once.
    pub points_dropped: Tally,
    /// Carries a sync brought that raised a held counter's count (a store restored from a
    /// backup healing, or an incarnation's last hits arriving with its successor's sync).
    pub carries_merged: Tally,
}

/// The bounded cache of merged counters.
#[derive(Debug)]
pub struct Db {
    state: RwLock<Merged>,
    capacity: usize,
    /// What the cache did.
    pub stats: CacheStats,
}

impl Db {
    /// An empty cache of at most `capacity` counters (at least 1), counting into `stats`.
    pub fn new(capacity: usize, stats: CacheStats) -> Db {
        Db {
            state: RwLock::default(),
            capacity: capacity.max(1),
            stats,
        }
    }

    /// Posts the milestone news a commit at `at` computed.
    pub fn post_news(&self, at: Timestamp, news: &BTreeMap<String, MilestoneNews>) {
        self.write_lock().news.post(at, news);
    }

    /// Posts the news of counter `id` from its whole list of milestones, at `at`.
    pub fn post_milestones(&self, id: &str, milestones: &[Milestone], at: Timestamp) {
        self.write_lock().news.post_list(id, milestones, at);
    }

    /// Counters held now.
    pub fn len(&self) -> usize {
        self.read_lock().counters.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` over the held counters when every key is held (marking them read), under the
    /// read lock. Otherwise answers the keys that are not held.
    pub fn read<R>(
        &self,
        keys: &[CounterKey],
        f: impl FnOnce(Held<'_>) -> R,
    ) -> Result<R, Vec<CounterKey>> {
        let merged = self.read_lock();
        let mut missing = Vec::new();
        for key in keys {
            match merged.counters.get(key) {
                Some(c) => {
                    // A plain load first: the store (and its cache-line write) only when
                    // the bit is not set yet.
                    if !c.referenced.load(Ordering::Relaxed) {
                        c.referenced.store(true, Ordering::Relaxed);
                    }
                }
                None if merged.absent.contains(key) => {}
                None => missing.push(key.clone()),
            }
        }
        if missing.is_empty() {
            self.stats.hits.inc();
            Ok(f(Held(&merged)))
        } else {
            Err(missing)
        }
    }

    /// Adds what the store holds of `loaded_for` (counters with no slot are absent from
    /// `loaded`) to the cache, merging with what is held; then, when every one of `keys` is
    /// held, runs `f` over them before evicting beyond capacity. Answers the keys still
    /// missing otherwise (evicted by someone else in between: load them again).
    pub fn fill<R>(
        &self,
        keys: &[CounterKey],
        loaded_for: &[CounterKey],
        loaded: Vec<StoredCounter>,
        f: impl FnOnce(Held<'_>) -> R,
    ) -> Result<R, Vec<CounterKey>> {
        let mut merged = self.write_lock();
        self.insert(&mut merged, loaded_for, loaded, true);
        let missing: Vec<CounterKey> = keys
            .iter()
            .filter(|k| !merged.counters.contains_key(*k) && !merged.absent.contains(k))
            .cloned()
            .collect();
        let answer = missing.is_empty().then(|| f(Held(&merged)));
        self.evict(&mut merged, keys);
        answer.ok_or(missing)
    }

    /// Pins `keys` for a batch of the commit task (until [`apply_commit`](Db::apply_commit) or
    /// [`unpin`](Db::unpin) with the same keys), and answers those not held.
    pub fn pin(&self, keys: &[CounterKey]) -> Vec<CounterKey> {
        let mut merged = self.write_lock();
        for key in keys {
            *merged.pinned.entry(key.clone()).or_default() += 1;
        }
        keys.iter()
            .filter(|k| !merged.counters.contains_key(*k))
            .cloned()
            .collect()
    }

    /// Adds loaded counters for the commit task (whose keys are pinned).
    pub fn insert_pinned(&self, loaded_for: &[CounterKey], loaded: Vec<StoredCounter>) {
        let mut merged = self.write_lock();
        self.insert(&mut merged, loaded_for, loaded, false);
    }

    /// Runs `f` over the held counters under the read lock, whatever is held (the commit
    /// task, over its pinned counters).
    pub fn with_held<R>(&self, f: impl FnOnce(Held<'_>) -> R) -> R {
        f(Held(&self.read_lock()))
    }

    /// Applies a committed batch: each slot, and the carry it brought, with its replica's
    /// region of record; then runs `f` (the answers), unpins the batch's `pinned` keys and
    /// evicts beyond capacity.
    pub fn apply_commit<R>(
        &self,
        pinned: &[CounterKey],
        slots: &[SlotRow],
        region_of: impl Fn(ReplicaId) -> Arc<str>,
        f: impl FnOnce(Held<'_>) -> R,
    ) -> R {
        let mut merged = self.write_lock();
        for s in slots {
            let region = region_of(s.replica);
            if !region.is_empty() {
                let seen = merged.regions.entry(Arc::clone(&region)).or_default();
                seen.last_sync = seen.last_sync.max(s.at);
                seen.replicas.insert(s.replica);
            }
            let Some(counter) = merged.counters.get_mut(&s.key) else {
                // Pinned counters are held; a counter that is not is no longer complete in
                // memory, so it must not be patched: its next read loads it whole.
                merged.absent.remove(&s.key);
                continue;
            };
            let mut grew = false;
            if let Some((object, carry)) = s.carry(&region)
                && counter.merge_carry(object, &carry, s.at)
            {
                self.stats.carries_merged.inc();
                grew = true;
            }
            grew |= counter.merge_slot(s.replica, &region, s.totals, s.at);
            if grew {
                merged.snapshot_due.insert(s.key.clone());
            }
        }
        let answer = f(Held(&merged));
        Self::release(&mut merged, pinned);
        self.evict(&mut merged, &[]);
        answer
    }

    /// Applies a retirement the store committed: each held counter takes its new carry of
    /// the replica's object (the join drops the slots it holds), and the replica's region
    /// stops counting it and its object's earlier incarnations.
    pub fn apply_retire(&self, replica: ReplicaId, retired: &Retired) {
        let mut merged = self.write_lock();
        let region: Arc<str> = Arc::from(retired.region.as_str());
        if let Some(seen) = merged.regions.get_mut(&region) {
            seen.replicas.retain(|r| {
                r.object() != replica.object() || r.generation() > replica.generation()
            });
        }
        for row in &retired.carries {
            if let Some(counter) = merged.counters.get_mut(&row.key)
                && counter.merge_carry(row.object, &row.carry, row.at)
            {
                // A cache behind the store (another merger raised a folded slot) catches up.
                merged.snapshot_due.insert(row.key.clone());
            }
        }
    }

    /// Applies a reset or delete the store committed: a held counter takes its new epoch
    /// and cuts. A history point due from before it is dropped (its totals are of the old
    /// epoch); after a reset the counter is due a point of its new count, after a delete
    /// it has no history until it is counted again.
    pub fn apply_reset(&self, stored: StoredCounter) {
        let mut merged = self.write_lock();
        let key = stored.key.clone();
        merged.absent.remove(&key);
        let delete = stored.epoch.deleted;
        merged.evicted_due.remove(&key);
        merged.snapshot_due.remove(&key);
        if let Some(counter) = merged.counters.get_mut(&key) {
            counter.merge_stored(&stored);
            if !delete {
                merged.snapshot_due.insert(key);
            }
        }
    }

    /// Applies an import the store committed: a held counter merges the import's new slot
    /// (as any load), and is due a history point.
    pub fn apply_import(&self, stored: StoredCounter) {
        let mut merged = self.write_lock();
        let key = stored.key.clone();
        merged.absent.remove(&key);
        if let Some(counter) = merged.counters.get_mut(&key) {
            counter.merge_stored(&stored);
            merged.snapshot_due.insert(key);
        }
    }

    /// Unpins a batch's keys after its commit failed.
    pub fn unpin(&self, pinned: &[CounterKey]) {
        let mut merged = self.write_lock();
        Self::release(&mut merged, pinned);
        self.evict(&mut merged, &[]);
    }

    /// Takes one batch's pin off each of `keys`.
    fn release(merged: &mut Merged, keys: &[CounterKey]) {
        for key in keys {
            if let Some(count) = merged.pinned.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    merged.pinned.remove(key);
                }
            }
        }
    }

    /// The held counters among `keys`, which other mergers changed (to refresh them); none
    /// of `keys` is absent any more.
    pub fn held_among(&self, keys: Vec<CounterKey>) -> Vec<CounterKey> {
        let mut merged = self.write_lock();
        for key in &keys {
            merged.absent.remove(key);
        }
        keys.into_iter()
            .filter(|k| merged.counters.contains_key(k))
            .collect()
    }

    /// Every held counter, after changes of other mergers were lost: all to refresh, and
    /// no id is known to be absent any more.
    pub fn held_all(&self) -> Vec<CounterKey> {
        let mut merged = self.write_lock();
        merged.absent.clear();
        merged.counters.keys().cloned().collect()
    }

    /// Merges what another merger committed into the counters still held; counters not
    /// held are left out (their next read loads them whole).
    pub fn refresh(&self, loaded: Vec<StoredCounter>) {
        let mut merged = self.write_lock();
        for stored in loaded {
            merged.absent.remove(&stored.key);
            if let Some(counter) = merged.counters.get_mut(&stored.key) {
                counter.merge_stored(&stored);
            }
        }
    }

    /// Up to `max` counters due for a history point, with their totals now (or when they
    /// were evicted). Taken out of the due set: give them back with
    /// [`snapshot_failed`](Db::snapshot_failed) if writing fails.
    pub fn take_snapshot_due(&self, max: usize) -> Vec<(CounterKey, Point)> {
        let mut merged = self.write_lock();
        let evicted: Vec<CounterKey> = merged.evicted_due.keys().take(max).cloned().collect();
        let mut due: Vec<(CounterKey, Point)> = evicted
            .into_iter()
            .filter_map(|k| merged.evicted_due.remove(&k).map(|t| (k, t)))
            .collect();
        let held: Vec<CounterKey> = merged
            .snapshot_due
            .iter()
            .take(max - due.len())
            .cloned()
            .collect();
        for k in held {
            merged.snapshot_due.remove(&k);
            if let Some(counter) = merged.counters.get(&k) {
                due.push((k, (counter.totals(), counter.epoch().number)));
            }
        }
        due
    }

    /// Per region (in name order), the latest commit of this merger process that raised a
    /// slot of its replicas, and how many replicas did. Kept in memory only: empty after a
    /// start until syncs come, and with several mergers each knows the syncs it committed.
    pub fn regions(&self) -> Vec<RegionSeen> {
        self.read_lock()
            .regions
            .iter()
            .map(|(region, seen)| RegionSeen {
                region: Arc::clone(region),
                last_sync: seen.last_sync,
                replicas: seen.replicas.len(),
            })
            .collect()
    }

    /// Drops counters from the cache (unless pinned): their next read loads them whole.
    pub fn forget(&self, keys: &[CounterKey]) {
        let mut merged = self.write_lock();
        for key in keys {
            merged.absent.remove(key);
            if !merged.pinned.contains_key(key)
                && let Some(counter) = merged.counters.swap_remove(key)
            {
                self.leaving(&mut merged, key, &counter);
            }
        }
    }

    /// A counter leaves the cache: a history point it is due keeps its totals.
    fn leaving(&self, merged: &mut Merged, key: &CounterKey, counter: &Counter) {
        if merged.snapshot_due.remove(key) {
            if merged.evicted_due.len() < self.capacity {
                merged
                    .evicted_due
                    .insert(key.clone(), (counter.totals(), counter.epoch().number));
            } else {
                self.stats.points_dropped.inc();
            }
        }
    }

    /// Puts points back after a failed history write (within the same bound).
    pub fn snapshot_failed(&self, points: impl IntoIterator<Item = (CounterKey, Point)>) {
        let mut merged = self.write_lock();
        for (key, totals) in points {
            if merged.evicted_due.len() < self.capacity {
                merged.evicted_due.entry(key).or_insert(totals);
            } else {
                self.stats.points_dropped.inc();
            }
        }
    }

    /// Adds loaded counters. A key the store holds nothing of is held as a counter nobody
    /// has hit for the commit task (`for_read` false), and only noted as absent for a read.
    fn insert(
        &self,
        merged: &mut Merged,
        loaded_for: &[CounterKey],
        loaded: Vec<StoredCounter>,
        for_read: bool,
    ) {
        let mut by_key: HashMap<CounterKey, StoredCounter> =
            loaded.into_iter().map(|c| (c.key.clone(), c)).collect();
        for key in loaded_for {
            let stored = by_key.remove(key);
            match merged.counters.get_mut(key) {
                Some(counter) => {
                    if let Some(stored) = stored {
                        counter.merge_stored(&stored);
                    }
                }
                None if stored.is_none() && for_read => {
                    merged.absent.insert(key.clone(), self.capacity);
                }
                None => {
                    merged.absent.remove(key);
                    let counter = stored
                        .as_ref()
                        .map(Counter::from_stored)
                        .unwrap_or_default();
                    merged.counters.insert(key.clone(), counter);
                    self.stats.misses.inc();
                }
            }
        }
    }

    /// CLOCK: evicts until within capacity, sparing pinned counters and `spare`.
    fn evict(&self, merged: &mut Merged, spare: &[CounterKey]) {
        let mut passes = 0;
        while merged.counters.len() > self.capacity {
            let len = merged.counters.len();
            if merged.hand >= len {
                merged.hand = 0;
                passes += 1;
                // Two full turns without a victim: everything left is pinned or spared.
                if passes > 2 {
                    return;
                }
            }
            let (key, counter) = merged
                .counters
                .get_index(merged.hand)
                .expect("the hand is below the length");
            // Spared, or read since the hand last passed (the bit is cleared: a second chance).
            let keep = merged.pinned.contains_key(key)
                || spare.contains(key)
                || counter.referenced.swap(false, Ordering::Relaxed);
            if keep {
                merged.hand += 1;
            } else {
                // The last counter moves into the hole: the hand stays to look at it next.
                let (key, counter) = merged
                    .counters
                    .swap_remove_index(merged.hand)
                    .expect("the hand is below the length");
                self.leaving(merged, &key, &counter);
                self.stats.evictions.inc();
            }
        }
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, Merged> {
        self.state
            .read()
            .expect("no thread panics while holding the state lock")
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Merged> {
        self.state
            .write()
            .expect("no thread panics while holding the state lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredSlot;
    use tally_crdt::CounterKind;

    fn key(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::Pn, id).unwrap()
    }

    fn ms(at: i64) -> Timestamp {
        Timestamp::from_unix_ms(at)
    }

    fn stored(id: &str, slots: &[(u128, &str, u64, u64)]) -> StoredCounter {
        StoredCounter {
            key: key(id),
            slots: slots
                .iter()
                .map(|&(r, region, p, n)| StoredSlot {
                    replica: ReplicaId::from_u128(r),
                    region: region.into(),
                    totals: SlotTotals { p, n },
                    at: ms(10),
                })
                .collect(),
            carries: Vec::new(),
            bases: Vec::new(),
            folded: Vec::new(),
            epoch: Epoch::default(),
            cuts: Vec::new(),
            object_cuts: Vec::new(),
        }
    }

    /// Fills `counter` into `db`, as a read that loaded it from the store does.
    fn load(db: &Db, counter: StoredCounter) {
        let k = [counter.key.clone()];
        db.fill(&k, &k, vec![counter], |_| ())
            .expect("a fill answers for the keys it loaded");
    }

    fn slot(id: &str, replica: u128, p: u64, n: u64, at: i64) -> SlotRow {
        SlotRow {
            key: key(id),
            replica: ReplicaId::from_u128(replica),
            totals: SlotTotals { p, n },
            at: ms(at),
            visits: Vec::new(),
            carry: None,
        }
    }

    fn count(db: &Db, id: &str) -> Option<GlobalTotals> {
        db.read(&[key(id)], |h| h.counter(&key(id)).totals()).ok()
    }

    #[test]
    fn totals_and_region_shares_follow_the_max_of_each_slot() {
        let db = Db::new(10, CacheStats::default());
        let x = [key("x")];
        db.pin(&x);
        db.insert_pinned(&x, vec![stored("x", &[(1, "eu", 5, 1)])]);
        let region = |r: ReplicaId| {
            Arc::from(if r == ReplicaId::from_u128(1) {
                "eu"
            } else {
                "us"
            })
        };
        db.apply_commit(
            &x,
            &[
                slot("x", 2, 7, 0, 11),
                slot("x", 1, 3, 1, 12),
                slot("x", 1, 6, 1, 13),
            ],
            region,
            |_| (),
        );
        db.read(&x, |h| {
            let c = h.counter(&key("x"));
            assert_eq!(c.totals(), GlobalTotals { p: 13, n: 1 });
            let regions: BTreeMap<&Arc<str>, RegionShare> = c.regions().collect();
            assert_eq!(
                regions[&Arc::from("eu")].totals,
                GlobalTotals { p: 6, n: 1 }
            );
            assert_eq!(regions[&Arc::from("eu")].last_sync, ms(13));
            assert_eq!(
                regions[&Arc::from("us")].totals,
                GlobalTotals { p: 7, n: 0 }
            );
            assert_eq!((c.replicas(), c.updated_at()), (2, Some(ms(13))));
        })
        .unwrap();
    }

    #[test]
    fn a_rendered_body_is_kept_until_the_counter_changes_and_never_shared() {
        let db = Db::new(10, CacheStats::default());
        let x = [key("x")];
        db.pin(&x);
        db.insert_pinned(&x, vec![stored("x", &[(1, "eu", 5, 0)])]);
        let render = |c: &Counter| c.totals().p.to_string().into_bytes();
        let body = |db: &Db| {
            db.read(&x, |h| h.counter(&key("x")).rendered(render))
                .unwrap()
        };
        assert_eq!(&body(&db)[..], b"5");
        // Kept: the same bytes, not made again.
        let kept = db.read(&x, |h| h.counter(&key("x")).rendered(|_| unreachable!()));
        assert_eq!(&kept.unwrap()[..], b"5");
        db.apply_commit(&x, &[slot("x", 2, 3, 0, 20)], |_| Arc::from("us"), |_| ());
        assert_eq!(&body(&db)[..], b"8", "a change drops the kept body");
        // Keys not held read as the one shared empty counter, which keeps no body.
        db.with_held(|h| {
            let unknown = h.counter(&key("nobody"));
            assert_eq!(&unknown.rendered(|_| b"a".to_vec())[..], b"a");
            assert_eq!(&unknown.rendered(|_| b"b".to_vec())[..], b"b");
        });
    }

    #[test]
    fn a_counter_nobody_has_hit_is_held_as_known_absent() {
        let db = Db::new(10, CacheStats::default());
        assert_eq!(db.read(&[key("x")], |_| ()), Err(vec![key("x")]));
        let at = db
            .fill(&[key("x")], &[key("x")], vec![], |h| {
                h.counter(&key("x")).updated_at()
            })
            .unwrap();
        assert_eq!(at, None);
        assert_eq!(count(&db, "x"), Some(GlobalTotals::default()));
    }

    #[test]
    fn reads_of_ids_nobody_counted_never_evict_a_counter() {
        // Fails on d2f0bce: each unknown id was held as a counter, and evicted real ones.
        let db = Db::new(3, CacheStats::default());
        for id in ["a", "b"] {
            load(&db, stored(id, &[(1, "eu", 4, 0)]));
        }
        for i in 0..100 {
            let id = format!("random-{i}");
            let zero = db.fill(&[key(&id)], &[key(&id)], vec![], |h| {
                h.counter(&key(&id)).totals()
            });
            assert_eq!(zero, Ok(GlobalTotals::default()));
        }
        assert_eq!(db.stats.evictions.get(), 0);
        assert_eq!(count(&db, "a"), Some(GlobalTotals { p: 4, n: 0 }));
        assert_eq!(count(&db, "b"), Some(GlobalTotals { p: 4, n: 0 }));
        // The last ids read are answered without the store; the oldest were forgotten.
        assert_eq!(count(&db, "random-99"), Some(GlobalTotals::default()));
        assert_eq!(count(&db, "random-96"), None);
        // Once counted, an id is no longer absent: the commit task loads it whole.
        assert_eq!(db.pin(&[key("random-99")]), [key("random-99")]);
        db.insert_pinned(&[key("random-99")], vec![]);
        db.apply_commit(
            &[key("random-99")],
            &[slot("random-99", 1, 3, 0, 20)],
            |_| Arc::from("eu"),
            |_| (),
        );
        assert_eq!(count(&db, "random-99"), Some(GlobalTotals { p: 3, n: 0 }));
        // A commit of an absent id this cache does not hold takes it out too.
        db.apply_commit(
            &[],
            &[slot("random-98", 1, 2, 0, 20)],
            |_| Arc::from("eu"),
            |_| (),
        );
        assert_eq!(count(&db, "random-98"), None, "its next read loads it");
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_keeps_what_is_read() {
        let db = Db::new(3, CacheStats::default());
        for id in ["a", "b", "c"] {
            load(&db, stored(id, &[(1, "eu", 1, 0)]));
        }
        // "a" is read again: the hand spares it once and evicts the next unread one.
        count(&db, "a");
        load(&db, stored("d", &[(1, "eu", 1, 0)]));
        assert_eq!(db.len(), 3);
        assert!(
            count(&db, "a").is_some(),
            "a read counter has a second chance"
        );
        assert!(count(&db, "d").is_some(), "the counter just filled is kept");
        assert_eq!(db.stats.evictions.get(), 1);
    }

    #[test]
    fn pinned_counters_survive_eviction_until_the_commit_is_applied() {
        let db = Db::new(1, CacheStats::default());
        let batch = [key("a"), key("b")];
        assert_eq!(db.pin(&batch), batch.to_vec());
        db.insert_pinned(&batch, vec![stored("a", &[(1, "eu", 1, 0)])]);
        load(&db, stored("c", &[(1, "eu", 1, 0)]));
        assert_eq!(db.len(), 3, "the pinned batch and the counter being read");
        let answered = db.apply_commit(
            &batch,
            &[slot("b", 1, 2, 0, 5)],
            |_| Arc::from("eu"),
            |h| {
                (
                    h.counter(&key("a")).totals().p,
                    h.counter(&key("b")).totals().p,
                )
            },
        );
        assert_eq!(answered, (1, 2));
        assert_eq!(db.len(), 1, "unpinned and evicted down to capacity");
    }

    #[test]
    fn a_batch_prepared_while_another_is_written_keeps_its_pins_when_that_one_lands() {
        // Fails with one set of pins: the first batch's commit unpinned the second's
        // counters, and a read evicted one before the second batch was applied.
        let db = Db::new(1, CacheStats::default());
        let first = [key("a"), key("b")];
        let second = [key("b"), key("c")];
        db.pin(&first);
        db.insert_pinned(&first, vec![]);
        assert_eq!(db.pin(&second), vec![key("c")]);
        db.insert_pinned(&[key("c")], vec![]);
        db.apply_commit(
            &first,
            &[slot("a", 1, 1, 0, 5)],
            |_| Arc::from("eu"),
            |_| (),
        );
        load(&db, stored("d", &[(1, "eu", 1, 0)]));
        let answered = db.apply_commit(
            &second,
            &[slot("b", 1, 2, 0, 6), slot("c", 1, 3, 0, 6)],
            |_| Arc::from("eu"),
            |h| {
                (
                    h.counter(&key("b")).totals().p,
                    h.counter(&key("c")).totals().p,
                )
            },
        );
        assert_eq!(answered, (2, 3), "both held and patched, not dropped");
        assert_eq!(db.len(), 1, "unpinned and evicted down to capacity");
    }

    #[test]
    fn a_fill_merges_with_what_a_commit_added_meanwhile() {
        let db = Db::new(10, CacheStats::default());
        let x = [key("x")];
        db.pin(&x);
        db.insert_pinned(&x, vec![stored("x", &[(1, "eu", 5, 0)])]);
        db.apply_commit(&x, &[slot("x", 1, 9, 0, 20)], |_| Arc::from("eu"), |_| ());
        // A read that loaded before that commit landed fills an older total: max keeps 9.
        load(&db, stored("x", &[(1, "eu", 5, 0)]));
        assert_eq!(count(&db, "x"), Some(GlobalTotals { p: 9, n: 0 }));
    }

    #[test]
    fn refresh_merges_into_held_counters_only() {
        let db = Db::new(10, CacheStats::default());
        load(&db, stored("x", &[(1, "eu", 1, 0)]));
        db.fill(&[key("z")], &[key("z")], vec![], |_| ()).unwrap();
        db.refresh(vec![
            stored("x", &[(2, "us", 4, 0)]),
            stored("y", &[(2, "us", 1, 0)]),
            stored("z", &[(2, "us", 1, 0)]),
        ]);
        assert_eq!(count(&db, "x"), Some(GlobalTotals { p: 5, n: 0 }));
        assert_eq!(count(&db, "y"), None, "not loaded by a refresh");
        assert_eq!(
            count(&db, "z"),
            None,
            "no longer absent: its next read loads it"
        );
        assert_eq!(db.held_among(vec![key("x"), key("y")]), vec![key("x")]);
    }

    #[test]
    fn only_changed_counters_are_due_for_a_history_point() {
        let db = Db::new(10, CacheStats::default());
        let batch = [key("x"), key("y")];
        db.pin(&batch);
        db.insert_pinned(&batch, vec![stored("y", &[(1, "eu", 3, 0)])]);
        db.apply_commit(
            &batch,
            &[slot("x", 1, 1, 0, 1), slot("y", 1, 2, 0, 1)],
            |_| Arc::from("eu"),
            |_| (),
        );
        let due = db.take_snapshot_due(10);
        assert_eq!(due, vec![(key("x"), (GlobalTotals { p: 1, n: 0 }, 0))]);
        assert!(db.take_snapshot_due(10).is_empty());
        db.snapshot_failed(due);
        assert_eq!(db.take_snapshot_due(10).len(), 1);
    }

    #[test]
    fn evicted_counters_keep_their_point_within_the_cache_bound() {
        let db = Db::new(2, CacheStats::default());
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let k = [key(id)];
            db.pin(&k);
            db.insert_pinned(&k, vec![]);
            db.apply_commit(
                &k,
                &[slot(id, 1, i as u64 + 1, 0, 1)],
                |_| Arc::from("eu"),
                |_| (),
            );
        }
        assert_eq!(db.len(), 2);
        // Three evicted while due: two keep their point (the bound is the capacity of 2),
        // one is dropped and counted; the two held ones are due too.
        let due = db.take_snapshot_due(100);
        assert_eq!(due.len(), 4);
        assert_eq!(db.stats.points_dropped.get(), 1);
        assert!(
            due.iter()
                .all(|(k, (t, _))| t.p == u128::from(k.id().as_bytes()[0] - b'a' + 1))
        );
    }

    /// The id of incarnation `generation` of edge object `object`.
    fn inc(object: u128, generation: u32) -> ReplicaId {
        ReplicaId::lineage(ReplicaId::from_u128(object << 32), generation)
    }

    /// Object 1 (eu) at generations 0 and 1, object 2 (us) at generation 0, as `stored` and
    /// `slot` take replicas.
    const A0: u128 = 1 << 32;
    const A1: u128 = (1 << 32) + 1;
    const B0: u128 = 2 << 32;

    /// Object 1's carry of `x` through generation `through`, at `p`.
    fn carry_of_a(through: u64, p: u128) -> crate::store::CarryRow {
        crate::store::CarryRow {
            key: key("x"),
            object: inc(1, 0),
            carry: Carry {
                region: Arc::from("eu"),
                through,
                totals: GlobalTotals { p, n: 0 },
                ..Carry::default()
            },
            at: ms(10),
        }
    }

    /// What the store answers retiring `A0` after it counted `p` in `x`.
    fn retired_a0(p: u64) -> Retired {
        Retired {
            region: "eu".into(),
            carries: vec![carry_of_a(1, p.into())],
            folded: 1,
        }
    }

    /// `x` as the store holds it before a fold: object 1's generation 0 (eu) at 5, object 2
    /// (us) at 7.
    fn before_fold() -> StoredCounter {
        stored("x", &[(A0, "eu", 5, 0), (B0, "us", 7, 0)])
    }

    /// `x` as the store holds it after object 1's generation 0 (eu, at `p`) was folded, with
    /// object 2 (us) at `live`.
    fn after_fold(p: u64, live: u64) -> StoredCounter {
        let mut after = stored("x", &[(B0, "us", live, 0)]);
        let row = carry_of_a(1, p.into());
        after.carries = vec![(row.object, row.carry, row.at)];
        after
    }

    #[test]
    fn a_fold_moves_a_slot_into_its_objects_carry_and_keeps_the_count() {
        let db = Db::new(10, CacheStats::default());
        load(&db, before_fold());
        let x = [key("x")];
        db.apply_retire(inc(1, 0), &retired_a0(5));
        let check = |db: &Db| {
            db.read(&x, |h| {
                let c = h.counter(&key("x"));
                assert_eq!(c.totals(), GlobalTotals { p: 12, n: 0 });
                let eu = c.regions().find(|(r, _)| &***r == "eu").unwrap().1;
                assert_eq!(eu.totals, GlobalTotals { p: 5, n: 0 });
                assert_eq!(c.replicas(), 1, "only the live slot is a replica");
                assert_eq!(c.slot(inc(1, 0)), SlotTotals::default());
                assert!(c.is_retired(inc(1, 0)));
            })
            .unwrap();
        };
        check(&db);
        // A load of the store after it agrees, and changes nothing.
        db.refresh(vec![after_fold(5, 7)]);
        check(&db);
    }

    #[test]
    fn a_load_from_before_a_fold_does_not_bring_the_folded_slot_back() {
        let db = Db::new(10, CacheStats::default());
        load(&db, before_fold());
        db.refresh(vec![after_fold(5, 7)]);
        // A read that loaded before the fold lands after it.
        db.refresh(vec![before_fold()]);
        assert_eq!(count(&db, "x"), Some(GlobalTotals { p: 12, n: 0 }));
    }

    #[test]
    fn a_load_after_a_fold_this_cache_missed_replaces_the_folded_slot_by_its_carry() {
        let db = Db::new(10, CacheStats::default());
        load(&db, before_fold());
        let x = [key("x")];
        // Another merger retired A0 (its slot had reached 6) and object 2 grew.
        db.refresh(vec![after_fold(6, 9)]);
        db.read(&x, |h| {
            let c = h.counter(&key("x"));
            assert_eq!(c.totals(), GlobalTotals { p: 15, n: 0 });
            assert_eq!(c.replicas(), 1);
        })
        .unwrap();
    }

    #[test]
    fn a_slot_born_after_a_fold_survives_a_load_from_between() {
        // Fails with the fold count of d2f0bce: the load saw one more fold than the cache,
        // so the cache's slot of the next incarnation (committed after the load was read)
        // was dropped.
        let db = Db::new(10, CacheStats::default());
        load(&db, before_fold());
        // Another merger folded A0; this one missed it and committed object 1's next one.
        let load = after_fold(5, 7);
        db.apply_commit(&[], &[slot("x", A1, 4, 0, 20)], |_| Arc::from("eu"), |_| ());
        db.refresh(vec![load]);
        assert_eq!(count(&db, "x"), Some(GlobalTotals { p: 16, n: 0 }));
    }

    /// A sync of `x` by `replica` at `p` that carried `carried`.
    fn carrying(replica: u128, p: u64, carried: u64) -> SlotRow {
        let row = slot("x", replica, p, 0, 30);
        SlotRow {
            carry: Some(Carry::sent(
                row.replica,
                tally_crdt::Region::from("eu"),
                SlotTotals { p: carried, n: 0 },
                None,
            )),
            ..row
        }
    }

    #[test]
    fn a_synced_carry_takes_the_slots_it_holds_and_counts_them_once() {
        let db = Db::new(10, CacheStats::default());
        load(&db, stored("x", &[(A0, "eu", 5, 0)]));
        let x = [key("x")];
        // Generation 1 syncs with the carry of generation 0 (5): not 5 + 5.
        let answer = db.apply_commit(
            &[],
            &[carrying(A1, 1, 5)],
            |_| Arc::from("eu"),
            |h| h.counter(&key("x")).totals(),
        );
        assert_eq!(answer, GlobalTotals { p: 6, n: 0 });
        db.read(&x, |h| {
            let c = h.counter(&key("x"));
            assert_eq!(
                (c.replicas(), c.slot(inc(1, 1))),
                (1, SlotTotals { p: 1, n: 0 })
            );
            assert!(c.is_retired(inc(1, 0)));
        })
        .unwrap();
        assert_eq!(db.stats.carries_merged.get(), 0, "the count did not move");
        // A late sync of generation 0, even higher: final, nothing changes.
        db.apply_commit(&[], &[slot("x", A0, 9, 0, 40)], |_| Arc::from("eu"), |_| ());
        assert_eq!(count(&db, "x"), Some(GlobalTotals { p: 6, n: 0 }));
    }

    #[test]
    fn a_synced_carry_larger_than_what_is_held_raises_the_count_and_the_answer() {
        // A restored store: it knows only object 2, and object 1's generation 0 at 5.
        let db = Db::new(10, CacheStats::default());
        load(&db, before_fold());
        // Object 1 is at generation 3: its own carry of generations 0 to 2 is 15.
        let a3 = inc(1, 3).as_u128();
        let answer = db.apply_commit(
            &[],
            &[carrying(a3, 2, 15)],
            |_| Arc::from("eu"),
            |h| h.counter(&key("x")).merged(&key("x"), Some(inc(1, 3))),
        );
        assert_eq!(answer.global, GlobalTotals { p: 24, n: 0 });
        assert_eq!(answer.recorded, SlotTotals { p: 2, n: 0 });
        assert_eq!(db.stats.carries_merged.get(), 1);
        // The same sync again, and a retirement of generation 2 folding what the store held
        // (less than the carry): nothing moves.
        db.apply_commit(&[], &[carrying(a3, 2, 15)], |_| Arc::from("eu"), |_| ());
        db.apply_retire(
            inc(1, 2),
            &Retired {
                region: "eu".into(),
                carries: vec![carry_of_a(3, 5)],
                folded: 1,
            },
        );
        assert_eq!(count(&db, "x"), Some(GlobalTotals { p: 24, n: 0 }));
        assert_eq!(db.stats.carries_merged.get(), 1);
        assert!(
            db.take_snapshot_due(10).iter().any(|(k, _)| *k == key("x")),
            "a healed counter is due a history point"
        );
    }
}
