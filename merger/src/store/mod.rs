//! The durable store: the [`Store`] trait every backend implements, and the rows it moves.
//!
//! Two backends, chosen by the `--database-url` scheme ([`open`]):
//! - [`sqlite`] (`sqlite://`, the default): one merger process on an embedded file.
//! - [`postgres`] (`postgres://`): several merger processes on one database, as stateless
//!   peers. Each one hears what the others commit through [`Store::watch`].
//!
//! The store is written once: each concern's trait is implemented a single time, for any
//! [`backend::Backend`], in a module of its own ([`counters`], [`epochs`], [`reclaim`],
//! [`milestones`], [`history`], [`presence`], [`sketches`]), with statements run through
//! [`sql`] on either database. A backend adds only what really differs
//! ([`backend::Backend`], [`backend::Statements`], [`backend::Dialect`]): a batch's commit
//! and the statements that take a batch (JSON rows expanded by `json_each` on SQLite, arrays
//! expanded by `UNNEST` on Postgres), how a transaction locks (SQLite's one write lock, taken
//! by a first write; Postgres's row locks, in one global order), how totals are typed
//! (fixed-width text on SQLite, `NUMERIC` on Postgres), and Postgres's change feed.
//!
//! Both merge slots with "max per slot" in SQL, so mergers never coordinate: whatever order
//! their commits land in, each slot ends at the largest total any of them saw. An edge
//! object's carry (the sums of its retired incarnations' final slots, [`Carry`]) merges the
//! same way, column by column, whether a sync brought it or a retirement folded it; the slots
//! it holds are deleted with it. Counters and replicas get integer surrogate keys, so the
//! slots table, which every commit walks, holds two integers per key instead of an id and 32
//! hex digits.
//!
//! Nothing is loaded whole at start: the merger's memory is a bounded cache over the store
//! ([`crate::state`]), filled by [`CounterStore::load`] on a miss.

pub mod backend;
pub mod counters;
pub mod epochs;
pub mod history;
pub mod milestones;
pub mod postgres;
pub mod presence;
pub mod reclaim;
pub mod sketches;
pub mod sql;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
pub use tally_crdt::minus;
use tally_crdt::{
    Carry, CounterKey, CounterKind, CounterState, GlobalTotals, HyperLogLog, MilestoneNews,
    PresenceReport, Region, ReplicaId, SketchKey, SketchTotal, SketchUpdate, SlotTotals, Timestamp,
};
use tokio::sync::{mpsc, watch};

use crate::config::Durability;
use crate::milestone::{AddMilestone, Announcement, CancelMilestone, Decision, Milestone};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this merger can open.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// Creating the database's directory failed.
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A query or the connection failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// A stored value is not what the schema promises (hand-edited or damaged database).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
}

pub use crate::rows::{
    CarryRow, Epoch, ReplicaRow, SlotRow, SnapshotRow, StoredCounter, StoredSlot, batch_carries,
    sent_carry,
};

/// One part of a stored counter, as a load query answers it row by row.
#[derive(Debug, Clone)]
pub enum Part {
    /// A live slot.
    Slot(StoredSlot),
    /// An object's carry, and when it last grew.
    Carry(ReplicaId, Carry, Timestamp),
    /// A region's base, and when it last grew.
    Base(String, GlobalTotals, Timestamp),
    /// A region's cut.
    Cut(String, GlobalTotals),
    /// An object's share of the cuts, with its region.
    ObjectCut(ReplicaId, String, GlobalTotals),
    /// A retired replica folded into its region's base.
    Folded(String, ReplicaId),
}

/// What a reset or a delete asks for.
#[derive(Debug, Clone, Copy)]
pub struct ResetRequest {
    /// A delete (the counter leaves the lists, its history is deleted) or a reset.
    pub delete: bool,
    /// Only if the counter is at this epoch still (so a retried reset does not reset twice).
    pub expect_epoch: Option<u64>,
    /// When.
    pub at: Timestamp,
}

/// What a reset or a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOutcome {
    /// Done: the counter as stored after it, and the totals it had before.
    Done {
        /// The counter, in its new epoch (boxed: the other answers are a number).
        counter: Box<StoredCounter>,
        /// Its totals in the epoch that ended.
        removed: GlobalTotals,
    },
    /// Nobody has hit the counter: there is nothing to reset (and no epoch changes).
    Unknown,
    /// The counter is not at the expected epoch: nothing was done.
    EpochMismatch {
        /// Its epoch.
        current: u64,
    },
}

/// What a retirement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    /// The replica's region of record (empty for a replica that never synced).
    pub region: String,
    /// Per counter that held live slots of the replica's object up to its generation, the
    /// object's carry with them folded in ([`CounterState::retire`]); empty when there were
    /// none (a retirement repeated, or of a replica that never counted).
    pub carries: Vec<CarryRow>,
    /// How many slots went into those carries.
    pub folded: u64,
}

/// What retiring `replica` does to the live slots of its object up to its generation and to
/// the object's carries: per counter, `slots` are those slots (with their regions and times)
/// and `carries` the object's carry, as stored. Answers the new carries (the lattice's
/// [`CounterState::retire`] on a state of the object's parts alone, so a slot already in the
/// carry is not added twice) and how many slots they took. Both backends' retirement.
pub fn fold_object(
    replica: ReplicaId,
    slots: Vec<(CounterKey, StoredSlot)>,
    carries: Vec<(CounterKey, Carry, Timestamp)>,
) -> (Vec<CarryRow>, u64) {
    type Parts = (Vec<StoredSlot>, Vec<(Carry, Timestamp)>);
    let mut by_key: BTreeMap<CounterKey, Parts> = BTreeMap::new();
    for (key, slot) in slots {
        by_key.entry(key).or_default().0.push(slot);
    }
    for (key, carry, at) in carries {
        if let Some(parts) = by_key.get_mut(&key) {
            parts.1.push((carry, at));
        }
    }
    let object = replica.object();
    let mut folded = 0;
    let mut rows = Vec::with_capacity(by_key.len());
    for (key, (slots, carries)) in by_key {
        let mut state = CounterState::from_parts(
            slots
                .iter()
                .map(|s| (s.replica, Region::from(s.region.as_str()), s.totals)),
            carries.iter().map(|(carry, _)| (object, carry.clone())),
            [],
            Epoch::default(),
            [],
        );
        let live: BTreeSet<ReplicaId> = state.slots().keys().copied().collect();
        let Some((_, carry)) = state.retire(replica) else {
            continue;
        };
        let gone = |r: &ReplicaId| live.contains(r) && !state.slots().contains_key(r);
        folded += u64::try_from(live.iter().filter(|r| gone(r)).count()).unwrap_or(u64::MAX);
        let at = slots
            .iter()
            .filter(|s| gone(&s.replica))
            .map(|s| s.at)
            .chain(carries.iter().map(|(_, at)| *at))
            .max()
            .unwrap_or_default();
        rows.push(CarryRow {
            key,
            object,
            carry,
            at,
        });
    }
    (rows, folded)
}

/// The text range of `replicas.replica` holding the incarnations of `replica`'s object up to
/// its generation: ids are 32 lowercase hex digits with the generation in the last 8, so
/// their text order is their numeric order, and an object's generations are one range.
pub fn generations_through(replica: ReplicaId) -> (String, String) {
    (
        ReplicaId::lineage(replica, 0).to_string(),
        replica.to_string(),
    )
}

/// An object's `object` column in `carries`: the first 24 hex digits its incarnations' ids
/// share.
pub fn object_column(object: ReplicaId) -> String {
    let mut text = object.to_string();
    text.truncate(OBJECT_DIGITS);
    text
}

/// Hex digits of an `object` column.
pub const OBJECT_DIGITS: usize = 24;

/// The object an `object` column names.
pub fn object_of(table: &'static str, text: &str) -> Result<ReplicaId, StoreError> {
    if text.len() != OBJECT_DIGITS {
        return Err(corrupt(
            table,
            format!("object {text:?} is not {OBJECT_DIGITS} hex digits"),
        ));
    }
    replica_of(table, &format!("{text}00000000"))
}

/// What an import asks for: the value `totals` for one counter, under `name`.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The import id (a counter id's rules).
    pub name: String,
    /// The value as slot halves: a count `c` is `p = c` for `c >= 0`, `n = -c` below.
    pub totals: SlotTotals,
    /// When.
    pub at: Timestamp,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The value is now the import's slot of the counter, as stored after it.
    Imported(StoredCounter),
    /// The import had already brought this very value into the counter: nothing changed.
    Unchanged(StoredCounter),
    /// The import had brought another value into the counter: nothing changed.
    Conflict {
        /// The value it brought then.
        existing: SlotTotals,
    },
}

/// The region of every import's replica.
pub const IMPORT_REGION: &str = "import";

/// What a commit tells the merger back.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// The region of record (that of its first sync) of every replica of the batch.
    pub regions: Vec<(ReplicaId, String)>,
    /// Whether the batch registered a replica the store did not know.
    pub new_replicas: bool,
    /// Replicas of the batch that are retired: their slots were not written.
    pub retired: Vec<ReplicaId>,
    /// Milestones this commit decided: the counter id and the winner.
    pub decided: Vec<(String, Decision)>,
    /// For each counter of the batch with milestones pending or won in the last
    /// [`NEWS_WINDOW_MS`], as they stand after the commit: what the sync answers tell the edge.
    pub news: BTreeMap<String, MilestoneNews>,
}

pub use crate::milestone::NEWS_WINDOW_MS;

pub use crate::milestone::Watched;

/// A watched milestone from its row's columns, as both backends read them (`n`, `won_unit`
/// as decimal text).
pub fn watched_from(
    n: &str,
    label: Option<String>,
    won: (Option<&str>, Option<&str>),
) -> Result<Watched, StoreError> {
    let won = match won {
        (Some(replica), Some(unit)) => Some((
            replica_of("milestones", replica)?,
            decode("milestones", unit)?,
        )),
        _ => None,
    };
    Ok(Watched {
        n: decode("milestones", n)?,
        label,
        won,
    })
}

/// The counters (kind `g`) with pending milestones, as keys to load.
pub fn watched_keys(pending: &crate::milestone::Pending) -> Result<Vec<CounterKey>, StoreError> {
    pending
        .keys()
        .map(|id| CounterKey::new(CounterKind::G, id))
        .collect::<Result<_, _>>()
        .map_err(|e| corrupt("milestones", e.to_string()))
}

/// The `day` column of a sketch: `''` for the all-time sketch.
pub fn day_column(key: &SketchKey) -> String {
    key.day().map(|d| d.to_string()).unwrap_or_default()
}

/// A sketch row's key and sketch; anything unreadable is a corrupt row.
pub fn sketch_of(
    name: &str,
    day: &str,
    bytes: &[u8],
) -> Result<(SketchKey, HyperLogLog), StoreError> {
    let day = if day.is_empty() {
        None
    } else {
        Some(
            day.parse()
                .map_err(|e| corrupt("sketches", format!("day {day:?}: {e}")))?,
        )
    };
    let key = SketchKey::new(name, day)
        .map_err(|e| corrupt("sketches", format!("unique id {name:?}: {e}")))?;
    let sketch = HyperLogLog::from_bytes(bytes)
        .map_err(|e| corrupt("sketches", format!("sketch of {key}: {e}")))?;
    Ok((key, sketch))
}

/// The distinct keys of `syncs`' updates, in (id, day) order: the rows a merge of them
/// creates if missing and locks, in the order every merger locks them.
pub fn sketch_keys(syncs: &[&[SketchUpdate]]) -> Vec<(String, String)> {
    let keys: BTreeSet<(String, String)> = syncs
        .iter()
        .flat_map(|updates| updates.iter())
        .map(|u| (u.key.id().to_owned(), day_column(&u.key)))
        .collect();
    keys.into_iter().collect()
}

/// A durable store of slots, replicas and history.
///
/// Split by concern: each part is a trait of its own ([`CounterStore`], [`MilestoneStore`],
/// [`HistoryStore`], [`PresenceStore`], [`SketchStore`]); a store is all of them, with what
/// this trait adds.
///
/// Every method is one short transaction or query; [`commit`](CounterStore::commit) returns only
/// once the batch is durable (per the configured [`Durability`]).
#[async_trait]
pub trait Store:
    CounterStore + MilestoneStore + HistoryStore + PresenceStore + SketchStore
where
    Self: fmt::Debug + 'static,
{
    /// `sqlite` or `postgres`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes every connection.
    async fn close(&self);

    /// The counters other processes change, for a backend that several mergers share:
    /// batches of keys, until `stop` turns true. `None` for a backend only one process uses.
    fn watch(&self, stop: watch::Receiver<bool>) -> Option<mpsc::Receiver<Changes>>;

    /// When a watcher of this store last finished a catch-up round (every change other
    /// processes committed before it started was reported); `None` before the first, and for
    /// a backend only one process uses.
    fn caught_up_at(&self) -> Option<std::time::Instant>;
}

/// Counters: the commit of a batch of syncs, retirements, resets and deletes, imports, and
/// the loads and lists that read them.
#[async_trait]
pub trait CounterStore: Send + Sync {
    /// Writes one batch in one transaction: replica metadata (the region of a replica's
    /// first sync is kept; `last_sync` takes the max; a replica the store does not know that a
    /// carry of its object holds, in some counter, is registered retired: its object retired
    /// a later generation, and its row was pruned
    /// ([`prune_replicas`](CounterStore::prune_replicas))), the carries the slots bring
    /// ([`batch_carries`], merged column by column with max, the slots they hold deleted),
    /// and slots merged with max (a slot of zero, or in a carry, is not written). Slots may
    /// arrive in any order and name counters the store has not seen yet. Slots (and carries)
    /// of a retired replica are not written ([`Committed::retired`]). Every replica a slot
    /// names is among `replicas` (as in every batch of the commit task); a slot of a replica
    /// the store does not know is refused with an error, never written or dropped.
    async fn commit(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
    ) -> Result<Committed, StoreError>;

    /// Retires `replica` at `at`, in one transaction: every live slot of its object up to
    /// its generation is folded into the object's carry of its counter ([`fold_object`]) and
    /// deleted, and its later syncs are ignored. Retiring a replica twice, or one the store
    /// never saw, folds nothing.
    async fn retire(&self, replica: ReplicaId, at: Timestamp) -> Result<Retired, StoreError>;

    /// Resets or deletes `key`, in one transaction: its epoch goes up by one and its cuts
    /// become the sums of its slots and bases, so it counts from zero; a delete also marks
    /// it deleted and deletes its history. Slots are left as they are.
    async fn reset(
        &self,
        key: &CounterKey,
        request: ResetRequest,
    ) -> Result<ResetOutcome, StoreError>;

    /// Applies what `object` (of `region`) told of `key`'s last reset in a sync
    /// ([`tally_crdt::Cut`], [`told_cut`]), in one transaction: a counter at an earlier epoch
    /// (this store was restored from a backup older than that reset) starts the cut's, with
    /// everything it holds cut and, for a delete, its history deleted; then the object's
    /// share of the cuts is raised to the cut's totals, and its region's cut with it. A
    /// counter the store does not know is created. Returns the counter after, or `None` when
    /// nothing changed.
    async fn tell_cut(
        &self,
        key: &CounterKey,
        object: ReplicaId,
        region: &str,
        cut: &tally_crdt::Cut,
    ) -> Result<Option<StoredCounter>, StoreError>;

    /// Imports a value into `key`, in one transaction: the import's replica (created on its
    /// first use, region [`IMPORT_REGION`]) gets the value as its slot of the counter, unless
    /// it has one: the same value changes nothing, another is a conflict.
    async fn import(
        &self,
        key: &CounterKey,
        request: &ImportRequest,
    ) -> Result<ImportOutcome, StoreError>;

    /// The counters asked for that have a slot, a carry, a base or a cut, each whole; the
    /// others are left out of the answer.
    async fn load(&self, keys: &[CounterKey]) -> Result<Vec<StoredCounter>, StoreError>;

    /// Counters of `kind` whose id starts with `prefix`, after `after` (exclusive), in id
    /// order, at most `limit`, each with its slots.
    async fn list(
        &self,
        kind: CounterKind,
        prefix: &str,
        after: Option<&CounterKey>,
        limit: u32,
    ) -> Result<Vec<StoredCounter>, StoreError>;

    /// Replica incarnations alive (not retired).
    async fn replica_count(&self) -> Result<u64, StoreError>;

    /// Deletes the rows of at most `limit` replicas retired before `before` into their
    /// objects' carries: never one retired into a region base before carries (`kept`, whose
    /// row is what keeps its late syncs out), nor one whose id a slot, a folded replica or an
    /// import still names. A late sync of a deleted one counts nothing: its slots are in its
    /// object's carries, so [`commit`](CounterStore::commit) does not write them, and registers it
    /// retired again. Returns how many it deleted: call again until it deletes fewer than
    /// `limit`.
    async fn prune_replicas(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Nets what rebased carries reclaimed against their counters' cuts, for at most `limit`
    /// carries in a frame above 0 that reclaimed something and last grew before `before`
    /// (`--reclaim-days` ago: no edge re-sends what they reclaimed any more): each one's
    /// reclaimed sums leave it and its region's cut alike ([`net_reclaimed`]), so no count
    /// changes, and a carry left holding nothing is deleted. A carry that reclaimed more than
    /// its region's cut is left as it is. Returns how many it netted: call again until it
    /// nets fewer than `limit`.
    async fn reclaim_carries(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Counters stored of `kind` (for metrics).
    async fn counter_count(&self, kind: CounterKind) -> Result<u64, StoreError>;
}

/// Milestones: registering, listing and cancelling them, and the announcements of their
/// winners (the decisions are made in [`CounterStore::commit`]).
#[async_trait]
pub trait MilestoneStore: Send + Sync {
    /// Registers milestone `n` (with `label`) of counter `id` at `at`, in one transaction
    /// that serializes with every commit of the counter: refused when the count is at `n`
    /// already, when `n` exists, or when the counter has too many.
    async fn add_milestone(
        &self,
        id: &str,
        n: u64,
        label: Option<&str>,
        at: Timestamp,
    ) -> Result<AddMilestone, StoreError>;

    /// The milestones of counter `id`, by N.
    async fn milestones(&self, id: &str) -> Result<Vec<Milestone>, StoreError>;

    /// Cancels the pending milestone `n` of counter `id`.
    async fn cancel_milestone(&self, id: &str, n: u64) -> Result<CancelMilestone, StoreError>;

    /// Up to `limit` won milestones not announced yet whose next attempt is due at `now`,
    /// each claimed for `lease_ms` (its next attempt moved that far ahead) and its attempts
    /// counted.
    async fn claim_announcements(
        &self,
        now: Timestamp,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<Announcement>, StoreError>;

    /// How many won milestones the webhook has not acknowledged yet (the webhook's backlog).
    async fn pending_announcements(&self) -> Result<u64, StoreError>;

    /// The webhook acknowledged milestone `n` of counter `id` at `at`.
    async fn announced(&self, id: &str, n: u64, at: Timestamp) -> Result<(), StoreError>;

    /// The announcement of milestone `n` of counter `id` failed: try again at `at`.
    async fn retry_announcement(&self, id: &str, n: u64, at: Timestamp) -> Result<(), StoreError>;
}

/// History: the points of each counter's totals over time.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Writes history points; a point already written for the same counter and time keeps
    /// the larger totals (several mergers may snapshot the same counter). Points of an epoch
    /// other than the counter's are not written.
    async fn write_history(&self, rows: &[SnapshotRow]) -> Result<(), StoreError>;

    /// Deletes at most `limit` history points taken in `from..to`: every one when `bucket` is
    /// `None`, else those with a later point of the same counter in the same bucket (a
    /// multiple of `bucket` milliseconds), so one point, the last, is left per bucket.
    /// Returns how many it deleted: call again until it deletes fewer than `limit`.
    async fn prune_history(
        &self,
        from: Timestamp,
        to: Timestamp,
        bucket: Option<NonZeroU64>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// The history points of one counter taken in `from..=to`, oldest first, at most `limit`.
    async fn history(
        &self,
        key: &CounterKey,
        from: Timestamp,
        to: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotRow>, StoreError>;
}

/// Viewers now: the edge objects' presence reports and their sums.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Stores presence reports received at `received` (a batch of the commit task), in one
    /// statement, so one transaction: per id and reporter, a report replaces the stored one
    /// only if its `seq` is higher ([`crate::presence::presence_rows`]). Nothing of the batch
    /// is stored if it fails.
    async fn report_presence_batch(
        &self,
        reports: &[PresenceReport],
        received: Timestamp,
    ) -> Result<(), StoreError>;

    /// Stores one presence report: [`PresenceStore::report_presence_batch`] of it alone.
    async fn report_presence(
        &self,
        report: &PresenceReport,
        received: Timestamp,
    ) -> Result<(), StoreError> {
        self.report_presence_batch(std::slice::from_ref(report), received)
            .await
    }

    /// Viewers now of `ids` (each once), summed over the reports not expired at `now`, one
    /// per id in their order; `recorded` is `reporter`'s count.
    async fn presence(
        &self,
        ids: &[String],
        reporter: Option<ReplicaId>,
        now: Timestamp,
    ) -> Result<Vec<crate::presence::PresenceSum>, StoreError>;

    /// Deletes at most `limit` presence reports that expired before `before`. Returns how
    /// many it deleted: call again until it deletes fewer than `limit`.
    async fn prune_presence(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;
}

/// Unique visitors: the daily and all-time sketches.
#[async_trait]
pub trait SketchStore: Send + Sync {
    /// Deletes at most `limit` daily sketches of days before `before` (`YYYY-MM-DD`; the
    /// all-time sketches are never deleted). Returns how many it deleted: call again until it
    /// deletes fewer than `limit`.
    async fn prune_sketches(&self, before: &str, limit: u32) -> Result<u64, StoreError>;

    /// Merges the updates of sketch syncs (a batch of the commit task, each sync's keys once)
    /// into the stored sketches at `at`, in one transaction that locks their rows in key
    /// order, and answers per sync the merged sketch of each of its keys, in its updates'
    /// order ([`crate::unique::merge_sketch_rows`]). Nothing of the batch is merged if it fails.
    async fn merge_sketches_batch(
        &self,
        syncs: &[&[SketchUpdate]],
        at: Timestamp,
    ) -> Result<Vec<Vec<SketchTotal>>, StoreError>;

    /// Merges one sync's sketch updates: [`SketchStore::merge_sketches_batch`] of it alone.
    async fn merge_sketches(
        &self,
        updates: &[SketchUpdate],
        at: Timestamp,
    ) -> Result<Vec<SketchTotal>, StoreError> {
        let mut totals = self.merge_sketches_batch(&[updates], at).await?;
        Ok(totals.pop().unwrap_or_default())
    }

    /// The merged sketches of `keys`, in their order (empty for a key never synced).
    async fn sketches(&self, keys: &[SketchKey]) -> Result<Vec<SketchTotal>, StoreError>;
}

/// One report of a store's change feed ([`Store::watch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// These counters may have changed since the watcher last looked: reload them.
    Counters(Vec<CounterKey>),
    /// Changes were lost to the watcher (its change log was pruned past what it had read,
    /// after it could not reach the database for that long): reload every counter held.
    All,
}

/// Opens the backend the URL's scheme names, creating and migrating its schema.
pub async fn open(url: &str, durability: Durability) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, durability).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PostgresStore::open(url, durability).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// A `u64` as exactly 20 decimal digits: text order is then numeric order.
pub fn encode_u64(v: u64) -> String {
    format!("{v:020}")
}

/// A `u128` as exactly 39 decimal digits.
pub fn encode_u128(v: u128) -> String {
    format!("{v:039}")
}

/// Decimal digits back to a number; anything else is a corrupt row of `table`.
pub fn decode<T: FromStr>(table: &'static str, text: &str) -> Result<T, StoreError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt(
            table,
            format!("total {text:?} is not decimal digits"),
        ));
    }
    text.parse()
        .map_err(|_| corrupt(table, format!("total {text:?} is out of range")))
}

/// The counter of a row's `kind` and `name` columns. Every id stored came through a
/// validated sync, so an invalid one means the database was changed by hand or damaged.
pub fn key_of(table: &'static str, kind: &str, name: &str) -> Result<CounterKey, StoreError> {
    let kind = match kind {
        "g" => CounterKind::G,
        "pn" => CounterKind::Pn,
        other => return Err(corrupt(table, format!("unknown kind {other:?}"))),
    };
    CounterKey::new(kind, name).map_err(|e| corrupt(table, format!("counter id {name:?}: {e}")))
}

/// A replica id from its 32 hex digits.
pub fn replica_of(table: &'static str, text: &str) -> Result<ReplicaId, StoreError> {
    text.parse()
        .map_err(|_| corrupt(table, format!("replica id {text:?} is not 32 hex digits")))
}

/// A corrupt-row error.
pub fn corrupt(table: &'static str, detail: String) -> StoreError {
    StoreError::Corrupt { table, detail }
}

/// Rows of a backend's parts query (columns `kind`, `name`, `epoch`, `deleted`, `reset_at`,
/// `part` (`s` for a slot, `o` for an object's carry, `b` for a base, `c` for a cut, `f` for
/// a folded replica), `replica` (a carry's `object` column), `region`, `p`, `n`,
/// `updated_at`, `through` (a carry's, else null); totals as decimal text), sorted by key,
/// grouped into counters. One reader for both backends.
pub fn counters_of<R: sql::Read>(rows: &[R]) -> Result<Vec<StoredCounter>, StoreError> {
    let mut parts = Vec::with_capacity(rows.len());
    for row in rows {
        let key = key_of("counters", row.text("kind")?, row.text("name")?)?;
        let meta = Meta {
            epoch: epoch_of(row)?,
        };
        let totals = |table: &'static str| totals_of(table, row, ["p", "n"]);
        let part = match row.text("part")? {
            "c" => Part::Cut(row.text("region")?.to_owned(), totals("cuts")?),
            "h" => Part::ObjectCut(
                object_of("object_cuts", row.text("replica")?)?,
                row.text("region")?.to_owned(),
                totals("object_cuts")?,
            ),
            "f" => Part::Folded(
                row.text("region")?.to_owned(),
                replica_of("folded", row.text("replica")?)?,
            ),
            "o" => Part::Carry(
                object_of("carries", row.text("replica")?)?,
                carry_of(row)?,
                Timestamp::from_unix_ms(row.int("updated_at")?),
            ),
            "b" => Part::Base(
                row.text("region")?.to_owned(),
                totals("bases")?,
                Timestamp::from_unix_ms(row.int("updated_at")?),
            ),
            _ => Part::Slot(stored_slot(row)?),
        };
        parts.push((key, meta, part));
    }
    Ok(group_parts(parts))
}

/// A live slot from a row of either backend (columns `replica`, `region`, `p`, `n` as
/// decimal text, `updated_at`).
pub fn stored_slot<R: sql::Read>(row: &R) -> Result<StoredSlot, StoreError> {
    Ok(StoredSlot {
        replica: replica_of("replicas", row.text("replica")?)?,
        region: row.text("region")?.to_owned(),
        totals: SlotTotals {
            p: decode("slots", row.text("p")?)?,
            n: decode("slots", row.text("n")?)?,
        },
        at: Timestamp::from_unix_ms(row.int("updated_at")?),
    })
}

/// An object's carry from a row of either backend (columns `region`, `through`, `p`, `n` as
/// decimal text, `frame`, and `rp`, `rn` as decimal text).
pub fn carry_of<R: sql::Read>(row: &R) -> Result<Carry, StoreError> {
    let through = row.int("through")?;
    let frame = row.int("frame")?;
    Ok(Carry {
        region: Region::from(row.text("region")?),
        through: u64::try_from(through)
            .map_err(|_| corrupt("carries", format!("through {through}")))?,
        totals: totals_of("carries", row, ["p", "n"])?,
        frame: u64::try_from(frame).map_err(|_| corrupt("carries", format!("frame {frame}")))?,
        reclaimed: totals_of("carries", row, ["rp", "rn"])?,
    })
}

/// Totals from the columns `[p, n]` (decimal text) of a row of `table` of either backend.
pub fn totals_of<R: sql::Read>(
    table: &'static str,
    row: &R,
    [p, n]: [&str; 2],
) -> Result<GlobalTotals, StoreError> {
    Ok(GlobalTotals {
        p: decode(table, row.text(p)?)?,
        n: decode(table, row.text(n)?)?,
    })
}

/// What netting a rebased carry against its region's cut writes
/// ([`CounterStore::reclaim_carries`]): the cut less what the carry reclaimed, and whether
/// the carry then holds nothing (it is deleted; else its reclaimed sums go to zero). The
/// region's sums lose what the cut loses, so its share, and the count, stay the same. `None`
/// when there is nothing to net, or the carry reclaimed more than the cut holds.
pub fn net_reclaimed(carry: &Carry, cut: GlobalTotals) -> Option<(GlobalTotals, bool)> {
    let reclaimed = carry.reclaimed;
    if carry.frame == 0 || reclaimed == GlobalTotals::default() || !cut.dominates(reclaimed) {
        return None;
    }
    let left = GlobalTotals {
        p: cut.p - reclaimed.p,
        n: cut.n - reclaimed.n,
    };
    Some((left, carry.totals == GlobalTotals::default()))
}

/// A counter's key from the `kind` and `name` columns of a row of either backend.
pub fn key_of_row<R: sql::Read>(row: &R) -> Result<CounterKey, StoreError> {
    key_of("counters", row.text("kind")?, row.text("name")?)
}

/// One counter's carry of the object a retirement folds, from a row of either backend (its
/// key's columns, [`carry_of`]'s, and `updated_at`).
pub fn keyed_carry<R: sql::Read>(row: &R) -> Result<(CounterKey, Carry, Timestamp), StoreError> {
    Ok((
        key_of_row(row)?,
        carry_of(row)?,
        Timestamp::from_unix_ms(row.int("updated_at")?),
    ))
}

/// What a parts row says of its counter as a whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    /// Its resets.
    pub epoch: Epoch,
}

/// Groups `(key, meta, part)` rows, sorted by key, into counters.
pub fn group_parts(rows: Vec<(CounterKey, Meta, Part)>) -> Vec<StoredCounter> {
    let mut counters: Vec<StoredCounter> = Vec::new();
    for (key, meta, part) in rows {
        let counter = match counters.last_mut() {
            Some(last) if last.key == key => last,
            _ => {
                counters.push(StoredCounter {
                    key,
                    slots: Vec::new(),
                    carries: Vec::new(),
                    bases: Vec::new(),
                    folded: Vec::new(),
                    epoch: meta.epoch,
                    cuts: Vec::new(),
                    object_cuts: Vec::new(),
                });
                counters.last_mut().expect("just pushed")
            }
        };
        match part {
            Part::Slot(slot) => counter.slots.push(slot),
            Part::Carry(object, carry, at) => counter.carries.push((object, carry, at)),
            Part::Base(region, totals, at) => counter.bases.push((region, totals, at)),
            Part::Cut(region, totals) => counter.cuts.push((region, totals)),
            Part::ObjectCut(object, region, totals) => {
                counter.object_cuts.push((object, region, totals));
            }
            Part::Folded(region, replica) => counter.folded.push((region, replica)),
        }
    }
    counters
}

/// Sets `counter`'s cuts to what a reset of it cuts now ([`CounterState::reset`]): per region
/// the sums of its slots, carries and bases (zero for a region cut before that has nothing
/// now), and per object its share, the sums of its carry and its live slots.
pub fn cut_now(counter: &mut StoredCounter) {
    let state = counter.state();
    set_cuts(counter, &state.region_sums(), &state.object_sums());
}

/// Sets `counter`'s cuts and its objects' shares of them, as a [`StoredCounter`] holds them.
fn set_cuts(
    counter: &mut StoredCounter,
    cuts: &BTreeMap<tally_crdt::Region, GlobalTotals>,
    shares: &BTreeMap<ReplicaId, tally_crdt::ObjectCut>,
) {
    counter.cuts = cuts
        .iter()
        .map(|(region, totals)| (region.to_string(), *totals))
        .collect();
    counter.object_cuts = shares
        .iter()
        .map(|(object, cut)| (*object, cut.region.to_string(), cut.totals))
        .collect();
}

/// What `cut`, told by `object` (of `region`) in a sync of `counter`, makes of it
/// ([`CounterState::adopt`], then [`CounterState::tell_cut`]): the counter with its epoch,
/// cuts and shares after, and whether it started the cut's epoch; `None` when nothing
/// changes (the cut is of an earlier epoch, or its share is held already).
pub fn told_cut(
    counter: &StoredCounter,
    object: ReplicaId,
    region: &str,
    cut: &tally_crdt::Cut,
) -> Option<(StoredCounter, bool)> {
    let mut state = counter.state();
    let adopted = state.adopt(Epoch {
        number: cut.epoch,
        deleted: cut.deleted,
        at: Some(cut.at),
    });
    let raised =
        state.epoch().number == cut.epoch && state.tell_cut(object, &Arc::from(region), cut.totals);
    if !adopted && !raised {
        return None;
    }
    let mut after = counter.clone();
    after.epoch = state.epoch();
    set_cuts(&mut after, state.cuts(), state.object_cuts());
    Some((after, adopted))
}

/// The epoch of a `counters` row (columns `epoch`, `deleted`, `reset_at`).
pub fn epoch_of<R: sql::Read>(row: &R) -> Result<Epoch, StoreError> {
    let number = row.int("epoch")?;
    Ok(Epoch {
        number: u64::try_from(number)
            .map_err(|_| corrupt("counters", format!("epoch {number}")))?,
        deleted: row.flag("deleted")?,
        at: row.opt_int("reset_at")?.map(Timestamp::from_unix_ms),
    })
}

/// A counter with no part stored (yet), at `epoch`.
pub fn no_parts(key: &CounterKey, epoch: Epoch) -> StoredCounter {
    StoredCounter {
        key: key.clone(),
        slots: Vec::new(),
        carries: Vec::new(),
        bases: Vec::new(),
        folded: Vec::new(),
        epoch,
        cuts: Vec::new(),
        object_cuts: Vec::new(),
    }
}

/// A fresh replica id for an import's slots: random, like an edge incarnation's, so it never
/// names another replica.
pub fn import_replica() -> ReplicaId {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    ReplicaId::from_u128(u128::from_le_bytes(bytes).max(1))
}

/// An expected epoch as a query parameter: one past `i64::MAX` matches no stored epoch.
pub fn epoch_param(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_text_orders_like_the_numbers() {
        let values = [
            0,
            1,
            9,
            10,
            999,
            1 << 53,
            (1 << 53) + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        for pair in values.windows(2) {
            assert!(encode_u64(pair[0]) < encode_u64(pair[1]));
        }
        assert_eq!(encode_u64(u64::MAX).len(), 20);
        assert_eq!(encode_u128(u128::MAX).len(), 39);
        assert_eq!(decode::<u64>("t", &encode_u64(u64::MAX)).unwrap(), u64::MAX);
        assert!(decode::<u64>("t", "18446744073709551616").is_err());
        assert!(decode::<u64>("t", "-1").is_err());
        assert!(decode::<u64>("t", "").is_err());
    }

    #[test]
    fn an_objects_incarnations_are_one_text_range_in_generation_order() {
        let object = ReplicaId::from_u128(0xabc_u128 << 32);
        let ids: Vec<String> = [0, 1, 9, 10, 255, 256, u32::MAX - 1, u32::MAX]
            .map(|g| ReplicaId::lineage(object, g).to_string())
            .to_vec();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        let (first, last) = generations_through(ReplicaId::lineage(object, 10));
        assert_eq!(
            (first.as_str(), last.as_str()),
            (ids[0].as_str(), ids[3].as_str())
        );
        // The neighbours' incarnations are outside it.
        let next = ReplicaId::from_u128(0xabd_u128 << 32).to_string();
        let previous = ReplicaId::lineage(ReplicaId::from_u128(0xabb_u128 << 32), u32::MAX);
        assert!(next > last && previous.to_string() < first);
        assert_eq!(object_column(ReplicaId::lineage(object, 7)), &ids[0][..24]);
        assert_eq!(object_of("t", &object_column(object)).unwrap(), object);
        assert!(object_of("t", "abc").is_err());
    }

    #[test]
    fn a_retirement_folds_the_objects_live_slots_up_to_its_generation_once() {
        let key = CounterKey::new(CounterKind::G, "x").unwrap();
        let inc = |g| ReplicaId::lineage(ReplicaId::from_u128(1 << 32), g);
        let slot = |g, p, at| {
            let slot = StoredSlot {
                replica: inc(g),
                region: "eu".into(),
                totals: SlotTotals { p, n: 0 },
                at: Timestamp::from_unix_ms(at),
            };
            (key.clone(), slot)
        };
        // Generation 0 is in the stored carry already (a late row of it): not added again.
        let carry = Carry {
            region: "eu".into(),
            through: 1,
            totals: GlobalTotals { p: 4, n: 0 },
            ..Carry::default()
        };
        let stored = vec![(key.clone(), carry, Timestamp::from_unix_ms(5))];
        let slots = vec![slot(0, 9, 30), slot(1, 2, 10), slot(2, 3, 20)];
        let (rows, folded) = fold_object(inc(1), slots, stored);
        assert_eq!(folded, 1);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].carry.through, rows[0].carry.totals.p, rows[0].at),
            (2, 6, Timestamp::from_unix_ms(10))
        );
        // No live slot up to the generation: nothing to write.
        assert_eq!(
            fold_object(inc(1), vec![slot(2, 3, 20)], vec![]),
            (vec![], 0)
        );
    }
}
