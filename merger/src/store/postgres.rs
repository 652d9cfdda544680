//! The Postgres store (`postgres://`): several merger processes share one database as
//! stateless peers, with no coordination between them. Schema and its reasons in
//! `migrations/postgres/0001_schema.sql`.
//!
//! Why it is safe for any number of mergers to write at once:
//! - **Merge in SQL.** Every write is an upsert whose conflict branch keeps
//!   `GREATEST(stored, new)` per half of a slot (and for `replicas.last_sync` and history
//!   points). Max is commutative, associative and idempotent, so whatever order the commits of
//!   several mergers land in, each slot ends at the largest total any of them saw, and a
//!   stale or repeated batch changes nothing (the slot upsert's `WHERE` then skips the row).
//!   Carries merge the same way, column by column (`UPSERT_CARRIES`).
//! - **Sorted batches.** Rows are deduplicated in Rust (an `ON CONFLICT` statement may not
//!   touch one row twice) and every statement inserts in one global order: replicas by id,
//!   counters by (kind, name), slots a carry holds by (counter, replica) as they are deleted,
//!   carries by (counter, object), slots by (counter, replica) surrogate ids, history by
//!   (counter, time). A transaction takes its row locks in that order, phase after phase, so
//!   two mergers never wait on each other in a cycle: no deadlocks, whatever their batches
//!   (a retirement takes the same phases: its object's replicas, their slots, the carries).
//! - **Surrogate keys.** Counters and replicas get BIGINT ids; slots, which every commit
//!   walks, are two integers per key. Each statement is one round trip whatever the batch
//!   size: rows travel as arrays expanded by `UNNEST`, and `u64`/`u128` totals as decimal text
//!   cast to NUMERIC, so no value goes through an `i64` or a float.
//!
//! How a merger hears what the others commit ([`Store::watch`](super::Store::watch)):
//! - **NOTIFY as a hint.** A commit that changed slots sends `pg_notify('tally_changed', …)`
//!   with the changed counters (one `kind:id` per line; ids never hold a newline, and the
//!   kind never holds the `:` that ids may), delivered when the transaction commits. A
//!   payload over [`MAX_PAYLOAD`] bytes is not sent. Notifications are also lost while the
//!   listening connection is down.
//! - **An exact catch-up from a change log.** Triggers on every table that holds a count
//!   (slots, carries, cuts, and counters for their epoch) add a row per statement to
//!   `changes`: the writing transaction's id (xid8) and the counters it changed
//!   (`migrations/postgres/0013_change_log.sql`), whoever writes. Every [`CATCH_UP_EVERY`]
//!   the watcher asks, in one statement, for the counters of the log rows whose transaction
//!   is in `[since, xmin)`, where `xmin` is its snapshot's oldest running transaction id,
//!   then sets `since = xmin`. Transactions below `xmin` have all ended, so their committed
//!   rows are visible to that very snapshot; transactions at or above it may still run and
//!   are left to a later round. No clock is involved and nothing is skipped (see
//!   [`CATCH_UP`]). Watchers prune rows older than [`CHANGE_LOG_KEEP`]; one that had not
//!   read a pruned row reports [`Changes::All`].
//!
//! The bound: a change committed by any merger reaches every watcher's stream within about
//! [`CATCH_UP_EVERY`] plus the duration of the longest transaction open on the database at
//! the time (an open transaction holds `xmin` back), usually far sooner through NOTIFY. The
//! stream starts from the moment the store was opened, and it leaves out what this store
//! committed itself (its notifications and its log rows carry its origin; its cache holds
//! what it committed): a key in it means "another writer may have changed it, reload it".

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tally_crdt::{
    CounterKey, CounterKind, GlobalTotals, HyperLogLog, ReplicaId, SketchKey, SlotTotals, Timestamp,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::backend::{Fetched, KindId, Statements};
use super::counters::{K_COLUMNS, parts_of_k};
use super::sketches::SketchColumns;
use super::{
    CarryRow, Changes, Committed, ReplicaRow, SlotRow, SnapshotRow, StoreError, StoredCounter,
    corrupt, encode_u64, encode_u128, key_of, replica_of,
};
use crate::config::Durability;
use crate::milestone::Pending;
use crate::presence::PresenceRow;

/// The NOTIFY channel of slot changes.
pub const CHANNEL: &str = "tally_changed";

/// Largest NOTIFY payload sent, in bytes (Postgres refuses 8000 and more); a commit that
/// changed more counters than fit sends none and is found by the catch-up.
pub const MAX_PAYLOAD: usize = 7900;

/// How often a watcher runs its catch-up.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// How long the change log keeps a row: a watcher that could not read it for longer reloads
/// every counter it holds ([`Changes::All`]).
pub const CHANGE_LOG_KEEP: Duration = Duration::from_secs(600);

/// Catch-up rounds between two prunes of the change log by a watcher.
const PRUNE_EVERY: u32 = 60;

/// Batches a watcher's stream holds before the listener drops notifications (the catch-up
/// waits for room instead: it is the one that must not lose anything).
const WATCH_QUEUE: usize = 64;

/// Most keys in one batch of the watch stream.
const WATCH_BATCH: usize = tally_crdt::MAX_COUNTERS_PER_SYNC;

/// Connections per merger: the commit task, cache misses, reads of history and the catch-up.
const POOL_SIZE: u32 = 8;

/// How long to wait for a connection (to connect, or for one of the pool's to be free).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// First and longest waits before reconnecting the listener.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The Postgres store.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// For the watcher's own listening connection.
    options: PgConnectOptions,
    /// The snapshot xmin (xid8, as text) when the store was opened: where a watcher's
    /// catch-up starts, so it reports every change committed since.
    opened_xmin: String,
    /// Turns true on [`close`](super::Store::close): watchers stop.
    closing: watch::Sender<bool>,
    /// The watchers' tasks, which [`close`](super::Store::close) waits for: each closes its own
    /// listening connection as it ends. A std `Mutex`: nothing awaits under it.
    watchers: Mutex<Vec<JoinHandle<()>>>,
    /// This store's name in its notifications: its own watcher skips them (this merger's
    /// cache already holds what it committed).
    origin: String,
    /// When a watcher last finished a catch-up round.
    caught_up: Arc<Mutex<Option<std::time::Instant>>>,
    /// Counters this store saw committed, with their rows' ids: the rows exist and keep their
    /// ids (none is ever deleted or renumbered; a restore runs with every merger stopped), so a
    /// batch neither registers them again nor looks their ids up. Bounded: emptied when full.
    known: Mutex<foldhash::HashMap<CounterKey, i64>>,
}

/// Counters [`PostgresStore`] remembers as registered before it forgets them all.
const KNOWN_COUNTERS: usize = 200_000;

impl PostgresStore {
    /// Connects to the database at `url` and applies the migrations. `Durability::Full`
    /// commits with `synchronous_commit=on` (a commit returns once its WAL is flushed),
    /// `Normal` with `off` (a crash of the database server may lose the last commits, never
    /// corrupt them).
    pub async fn open(url: &str, durability: Durability) -> Result<PostgresStore, StoreError> {
        let synchronous_commit = match durability {
            Durability::Full => "on",
            Durability::Normal => "off",
        };
        // The change log's triggers record it with each row this store writes, so its own
        // catch-up skips them (migrations/postgres/0014_change_log_origin.sql).
        let origin = random_origin();
        let options = PgConnectOptions::from_str(url)?
            .application_name("tally-merger")
            .options([
                ("synchronous_commit", synchronous_commit),
                ("tally.origin", origin.as_str()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        // sqlx holds an advisory lock while it migrates: mergers starting together take turns.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let opened_xmin =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&pool)
                .await?;
        Ok(PostgresStore {
            pool,
            options,
            opened_xmin,
            closing: watch::Sender::new(false),
            watchers: Mutex::new(Vec::new()),
            origin,
            caught_up: Arc::new(Mutex::new(None)),
            known: Mutex::default(),
        })
    }

    /// Deletes the change log rows older than `keep` (every watcher does this with
    /// [`CHANGE_LOG_KEEP`]); answers how many.
    pub async fn prune_change_log(&self, keep: Duration) -> Result<u64, StoreError> {
        prune_changes(&self.pool, keep).await
    }

    /// The ids of the counters of `slots` this store has seen committed, and the others.
    fn known_ids<'a>(&self, slots: &'a [SlotRow]) -> (CounterIds<'a>, BTreeSet<&'a CounterKey>) {
        let known = self
            .known
            .lock()
            .expect("no thread panics while holding the known set");
        let (mut ids, mut unknown) = (CounterIds::default(), BTreeSet::new());
        for key in slots.iter().map(|s| &s.key) {
            match known.get(key) {
                Some(&id) => {
                    ids.insert(key, id);
                }
                None => {
                    unknown.insert(key);
                }
            }
        }
        (ids, unknown)
    }

    /// Remembers the counters of `ids` as registered (their batch committed).
    fn registered(&self, ids: &CounterIds<'_>) {
        let mut known = self
            .known
            .lock()
            .expect("no thread panics while holding the known set");
        if known.len() + ids.len() > KNOWN_COUNTERS {
            known.clear();
        }
        known.extend(ids.iter().map(|(key, id)| ((*key).clone(), *id)));
    }

    /// The watchers' tasks, locked.
    fn watcher_tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.watchers
            .lock()
            .expect("no thread panics while holding the watcher list")
    }
}

/// Replica metadata: `ORDER BY` is the lock order. The conflict branch always writes (it
/// must, for `RETURNING` to give the stored row), so the region returned is the stored one,
/// that of the first sync; `xmax = 0` only on a row this statement inserted.
const UPSERT_REPLICAS: &str = "\
    INSERT INTO replicas (replica, region, first_sync, last_sync) \
    SELECT u.replica, u.region, u.first_sync, u.last_sync \
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) \
        AS u(replica, region, first_sync, last_sync) \
    ORDER BY u.replica COLLATE \"C\" \
    ON CONFLICT (replica) DO UPDATE SET \
        last_sync = GREATEST(replicas.last_sync, excluded.last_sync) \
    RETURNING id, replica, region, (xmax = 0) AS inserted, retired_at IS NOT NULL AS retired";

/// Marks retired the replicas of the arrays (`replica`, its object column, its generation;
/// each just registered by this transaction, so their rows are locked already) that a carry of
/// their object holds, in some counter: the object retired a later generation, so they were
/// retired, and their row was pruned ([`CounterStore::prune_replicas`]); a late sync of one is then
/// ignored as it was before. One probe of `carries_by_object` each. Answers the ids marked.
const REGISTER_CARRIED_RETIRED: &str = "\
    UPDATE replicas r SET retired_at = r.last_sync \
    FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(replica, object, generation) \
    WHERE r.replica = u.replica AND r.retired_at IS NULL \
        AND EXISTS (SELECT 1 FROM carries x \
            WHERE x.object = u.object AND x.through > u.generation) \
    RETURNING r.replica";

/// Deletes the slots that carries hold, each row of the arrays an object's incarnations
/// `first..=last` (a text range of `replicas.replica`) of one counter, locked in (counter,
/// replica) order.
const DELETE_CARRIED_SLOTS: &str = "\
    DELETE FROM slots s USING ( \
        SELECT h.counter, h.replica \
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(kind, name, first, last) \
        JOIN counters c ON c.kind = u.kind AND c.name = u.name \
        JOIN replicas r ON r.replica BETWEEN u.first AND u.last \
        JOIN slots h ON h.counter = c.id AND h.replica = r.id \
        ORDER BY h.counter, h.replica FOR UPDATE OF h \
    ) d WHERE s.counter = d.counter AND s.replica = d.replica";

/// The carry merge, [`tally_crdt::Carry`]'s join, in (counter, object) lock order: a carry
/// of a later frame replaces the stored one whole, one of an earlier frame changes nothing,
/// and within a frame each column takes the max. A row that grows in no column is not
/// written (so the change log names only counters that grew). Answers the counters whose
/// carries changed, for the notification.
const UPSERT_CARRIES: &str = "\
    WITH changed AS ( \
        INSERT INTO carries AS x (counter, object, region, through, p, n, updated_at, frame, \
            rp, rn) \
        SELECT c.id, u.object, u.region, u.through, u.p::numeric, u.n::numeric, u.at, \
            u.frame, u.rp::numeric, u.rn::numeric \
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
                $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[]) \
            AS u(kind, name, object, region, through, p, n, at, frame, rp, rn) \
        JOIN counters c ON c.kind = u.kind AND c.name = u.name \
        ORDER BY c.id, u.object COLLATE \"C\" \
        ON CONFLICT (counter, object) DO UPDATE SET \
            region = CASE WHEN excluded.frame > x.frame THEN excluded.region \
                ELSE GREATEST(x.region, excluded.region) END, \
            through = CASE WHEN excluded.frame > x.frame THEN excluded.through \
                ELSE GREATEST(x.through, excluded.through) END, \
            p = CASE WHEN excluded.frame > x.frame THEN excluded.p ELSE GREATEST(x.p, excluded.p) END, \
            n = CASE WHEN excluded.frame > x.frame THEN excluded.n ELSE GREATEST(x.n, excluded.n) END, \
            rp = CASE WHEN excluded.frame > x.frame THEN excluded.rp \
                ELSE GREATEST(x.rp, excluded.rp) END, \
            rn = CASE WHEN excluded.frame > x.frame THEN excluded.rn \
                ELSE GREATEST(x.rn, excluded.rn) END, \
            frame = excluded.frame, \
            updated_at = GREATEST(x.updated_at, excluded.updated_at) \
        WHERE excluded.frame > x.frame OR (excluded.frame = x.frame AND ( \
            excluded.region > x.region OR excluded.through > x.through \
            OR excluded.p > x.p OR excluded.n > x.n \
            OR excluded.rp > x.rp OR excluded.rn > x.rn)) \
        RETURNING x.counter \
    ) \
    SELECT DISTINCT c.kind, c.name FROM changed JOIN counters c ON c.id = changed.counter";

/// The counters of a batch, in lock order; a counter already there is left alone.
const INSERT_COUNTERS: &str = "\
    WITH u AS (SELECT * FROM UNNEST($1::text[], $2::text[]) AS u(kind, name)), \
    made AS ( \
        INSERT INTO counters (kind, name) \
        SELECT u.kind, u.name FROM u ORDER BY u.kind COLLATE \"C\", u.name COLLATE \"C\" \
        ON CONFLICT DO NOTHING \
        RETURNING id, kind, name) \
    SELECT id, kind, name FROM made \
    UNION ALL \
    SELECT c.id, c.kind, c.name FROM u JOIN counters c ON c.kind = u.kind AND c.name = u.name";

/// The ids of the counters of the arrays (kinds, names) that have a row.
const COUNTER_IDS: &str = "\
    SELECT c.id, c.kind, c.name \
    FROM UNNEST($1::text[], $2::text[]) AS u(kind, name) \
    JOIN counters c ON c.kind = u.kind AND c.name = u.name";

/// The CRDT merge: max per half, in (counter, replica) lock order, by the rows' ids (the
/// batch's counters registered, its replicas upserted, both in this transaction: no join by
/// text). A row that grows in neither half is not written (so the change log names only
/// counters that grew), nor is a slot its object's carry holds (it is final); no indexed
/// column changes, so Postgres can make the update in place (HOT, migration 0016). Answers
/// the ids of the counters whose slots changed, for the notification.
const MERGE_SLOTS: &str = "\
    WITH changed AS ( \
        INSERT INTO slots AS s (counter, replica, p, n, updated_at) \
        SELECT u.counter, u.replica, u.p::numeric, u.n::numeric, u.at \
        FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int8[], \
                $6::text[], $7::int8[]) \
            AS u(counter, replica, p, n, at, object, generation) \
        WHERE NOT EXISTS (SELECT 1 FROM carries x WHERE x.counter = u.counter \
            AND x.object = u.object AND x.through > u.generation) \
        ORDER BY u.counter, u.replica \
        ON CONFLICT (counter, replica) DO UPDATE SET \
            p = GREATEST(s.p, excluded.p), \
            n = GREATEST(s.n, excluded.n), \
            updated_at = GREATEST(s.updated_at, excluded.updated_at) \
        WHERE excluded.p > s.p OR excluded.n > s.n \
        RETURNING s.counter \
    ) \
    SELECT DISTINCT counter FROM changed";

/// History points, in (counter, time) lock order; counters unknown to the store are dropped
/// by the inner join (they have no slot, so nothing to show a history of).
const UPSERT_HISTORY: &str = "\
    INSERT INTO history AS h (counter, taken_at, p, n, epoch) \
    SELECT c.id, u.taken_at, u.p::numeric, u.n::numeric, u.epoch \
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[]) \
        AS u(kind, name, taken_at, p, n, epoch) \
    JOIN counters c ON c.kind = u.kind AND c.name = u.name \
    WHERE c.epoch = u.epoch \
    ORDER BY c.id, u.taken_at \
    ON CONFLICT (counter, taken_at) DO UPDATE SET \
        p = GREATEST(h.p, excluded.p), \
        n = GREATEST(h.n, excluded.n)";

/// One round of the watcher's catch-up: the counters the change log names for transactions
/// in `[since, xmin)` of writers other than this store (`$2`, its origin: what it committed
/// is in its cache already), that `xmin`, and whether the log was pruned at or past `since`
/// (`missed`: rows this watcher never read may be gone), from one statement and so one
/// snapshot. The log is written by triggers on every table that holds a count
/// (`migrations/postgres/0013_change_log.sql`): it is the catch-up's only source.
///
/// Why nothing is missed: `xmin` is the oldest transaction still running when the snapshot
/// was taken, so every transaction below it has ended and, if it committed, its log rows are
/// visible to this snapshot. Transaction ids are handed out in increasing order and a
/// transaction gets its id at its first write, so one that had not written yet gets an id at
/// or above `xmin`, left to a later round like those still running. A prune that deleted a
/// row at or above `since` before this round read it moved the horizon there, which `missed`
/// reports. The one left-joined row carries `xmin` when nothing changed.
pub const CATCH_UP: &str = "\
    WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) \
    SELECT snap.xmin::text AS xmin, \
        (SELECT h.through >= $1::text::xid8 FROM change_log_horizon h) AS missed, \
        k.kind, k.name \
    FROM snap LEFT JOIN LATERAL ( \
        SELECT DISTINCT c.kind, c.name \
        FROM changes g CROSS JOIN LATERAL UNNEST(g.counters) AS u(id) \
        JOIN counters c ON c.id = u.id \
        WHERE g.xid >= $1::text::xid8 AND g.xid < snap.xmin \
            AND g.origin IS DISTINCT FROM $2 \
    ) k ON true \
    ORDER BY k.kind, k.name";

/// Deletes at most `$2` change log rows written more than `$1` seconds ago and moves the
/// horizon to the largest `xid` deleted; answers how many it deleted. Several mergers may run
/// it at once: a row is deleted once, and the horizon only grows.
const PRUNE_CHANGES: &str = "\
    WITH gone AS ( \
        DELETE FROM changes WHERE ctid = ANY(ARRAY( \
            SELECT ctid FROM changes WHERE at < now() - make_interval(secs => $1) LIMIT $2)) \
        RETURNING xid \
    ), moved AS ( \
        UPDATE change_log_horizon SET through = GREATEST(through, \
            (SELECT xid FROM gone ORDER BY xid DESC LIMIT 1)) \
        WHERE EXISTS (SELECT 1 FROM gone) \
    ) \
    SELECT count(*) FROM gone";

/// Change log rows deleted per statement of a prune.
const PRUNE_CHUNK: i64 = 10_000;

/// Deletes the change log rows older than `keep`, in chunks; answers how many.
async fn prune_changes(pool: &PgPool, keep: Duration) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let n: i64 = sqlx::query_scalar(PRUNE_CHANGES)
            .bind(keep.as_secs_f64())
            .bind(PRUNE_CHUNK)
            .fetch_one(pool)
            .await?;
        deleted += u64::try_from(n).unwrap_or_default();
        if n < PRUNE_CHUNK {
            return Ok(deleted);
        }
    }
}

#[async_trait]
impl super::backend::Backend for PostgresStore {
    type Conn = sqlx::PgConnection;
    type Db = sqlx::Postgres;
    const DIALECT: super::backend::Dialect = super::backend::Dialect::Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn close_all(&self) {
        // Watchers first: their catch-up holds pool connections that close() waits for, and
        // each closes its listening connection before it ends.
        self.closing.send_replace(true);
        let watchers = std::mem::take(&mut *self.watcher_tasks());
        for watcher in watchers {
            if let Err(e) = watcher.await {
                warn!(error = %e, "a change watcher failed");
            }
        }
        // A connection goes back to the pool from a task of its own (sqlx 0.8.6 pings it
        // first); sqlx's close() can return before one on its way back lands in the idle
        // queue, where it would stay open until the pool is dropped. Wait (a bounded while)
        // until every connection is idle, so close() finds and closes them all.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while self.pool.num_idle() < usize::try_from(self.pool.size()).unwrap_or(usize::MAX)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.pool.close().await;
    }

    fn caught_up_at(&self) -> Option<std::time::Instant> {
        *self.caught_up.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changes(&self, stop: watch::Receiver<bool>) -> Option<mpsc::Receiver<Changes>> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let watcher = Watcher {
            pool: self.pool.clone(),
            options: self.options.clone(),
            since: self.opened_xmin.clone(),
            origin: self.origin.clone(),
            tx,
            caught_up: Arc::clone(&self.caught_up),
        };
        let closing = self.closing.subscribe();
        let task = tokio::spawn(watcher.run(stop, closing));
        let mut watchers = self.watcher_tasks();
        watchers.retain(|w| !w.is_finished());
        watchers.push(task);
        Some(rx)
    }

    async fn commit_batch(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
    ) -> Result<Committed, StoreError> {
        if replicas.is_empty() && slots.is_empty() {
            return Ok(Committed::default());
        }
        let mut tx = self.pool.begin().await?;
        let (committed, mut replica_ids) = upsert_replicas(&mut tx, replicas).await?;
        // A retired replica's slots are final and folded: a late sync of it changes nothing.
        // The upsert above holds its replica row's lock until this transaction ends, so a
        // retirement cannot slip in between.
        let live: Vec<SlotRow> = slots
            .iter()
            .filter(|s| !committed.retired.contains(&s.replica))
            .cloned()
            .collect();
        // Counters with a milestone pending: locked (every commit of such a counter, by any
        // merger, waits here for the one before it), then read as they stand.
        let names: BTreeSet<&str> = live
            .iter()
            .filter(|s| s.key.kind() == CounterKind::G)
            .map(|s| s.key.id())
            .collect();
        let since = crate::clock::now().minus_ms(super::NEWS_WINDOW_MS);
        let watch =
            lock_watch(&mut tx, &names.into_iter().collect::<Vec<_>>(), Some(since)).await?;
        let pending = crate::milestone::pending_of(&watch);
        let before = if pending.is_empty() {
            Vec::new()
        } else {
            load_in(&mut tx, &super::watched_keys(&pending)?).await?
        };
        let (mut ids, unknown) = self.known_ids(&live);
        insert_counters(&mut tx, &unknown, &mut ids).await?;
        let regions: BTreeMap<ReplicaId, &str> = committed
            .regions
            .iter()
            .map(|(replica, region)| (*replica, region.as_str()))
            .collect();
        let carries = super::batch_carries(&live, |r| regions.get(&r).map(|&region| region.into()));
        let mut changed = tx.merge_carries(&carries).await?;
        replica_ids_of(&mut tx, &live, &mut replica_ids).await?;
        changed.extend(merge_slots(&mut tx, &live, &ids, &replica_ids).await?);
        changed.sort_unstable();
        changed.dedup();
        let mut committed = committed;
        committed.decided = crate::milestone::decide_batch(&pending, &before, &live, &carries);
        let at = crate::clock::now();
        for (id, decision) in &committed.decided {
            super::milestones::record_winner::<Self>(&mut tx, id, decision, at).await?;
        }
        committed.news = crate::milestone::news_of(&watch, &committed.decided);
        notify(&mut tx, &self.origin, &changed).await?;
        tx.commit().await?;
        self.registered(&ids);
        Ok(committed)
    }

    async fn changed(&self, conn: &mut Self::Conn, changed: &[KindId]) -> Result<(), StoreError> {
        notify(conn, &self.origin, changed).await
    }

    /// One row per (counter, time), of the latest epoch and the larger of each half, in
    /// lock order.
    async fn upsert_history(&self, rows: &[SnapshotRow]) -> Result<(), StoreError> {
        let mut points: BTreeMap<(&CounterKey, Timestamp), (u64, GlobalTotals)> = BTreeMap::new();
        for row in rows {
            let point = points.entry((&row.key, row.at)).or_default();
            if row.epoch > point.0 {
                *point = (row.epoch, row.totals);
            } else if row.epoch == point.0 {
                point.1 = point.1.join(row.totals);
            }
        }
        let mut columns = HistoryColumns::default();
        for ((key, at), (epoch, totals)) in points {
            columns.kinds.push(key.kind().as_str());
            columns.names.push(key.id());
            columns.taken_at.push(at.unix_ms());
            columns.p.push(encode_u128(totals.p));
            columns.n.push(encode_u128(totals.n));
            columns.epochs.push(super::epoch_param(epoch));
        }
        sqlx::query(UPSERT_HISTORY)
            .bind(columns.kinds)
            .bind(columns.names)
            .bind(columns.taken_at)
            .bind(columns.p)
            .bind(columns.n)
            .bind(columns.epochs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rows in (id, reporter) order, each once: two mergers storing reports of the same ids
    /// lock their rows in the same order.
    async fn upsert_presence(&self, rows: &[PresenceRow<'_>]) -> Result<(), StoreError> {
        let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
        let reporters: Vec<String> = rows.iter().map(|r| r.reporter.to_string()).collect();
        let regions: Vec<&str> = rows.iter().map(|r| r.region).collect();
        let seqs: Vec<String> = rows.iter().map(|r| r.seq.to_string()).collect();
        let counts: Vec<String> = rows.iter().map(|r| r.count.to_string()).collect();
        let ats: Vec<i64> = rows.iter().map(|r| r.at.unix_ms()).collect();
        let expiries: Vec<i64> = rows.iter().map(|r| r.expires_at.unix_ms()).collect();
        sqlx::query(
            "INSERT INTO presence AS p (name, reporter, region, seq, count, at, expires_at) \
             SELECT u.name, u.reporter, u.region, u.seq::numeric, u.count::numeric, u.at, \
                 u.expires_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::bigint[], $7::bigint[]) \
                 AS u(name, reporter, region, seq, count, at, expires_at) \
             ORDER BY u.name COLLATE \"C\", u.reporter COLLATE \"C\" \
             ON CONFLICT (name, reporter) DO UPDATE SET region = excluded.region, \
                 seq = excluded.seq, count = excluded.count, at = excluded.at, \
                 expires_at = excluded.expires_at \
             WHERE excluded.seq > p.seq",
        )
        .bind(&names)
        .bind(&reporters)
        .bind(&regions)
        .bind(&seqs)
        .bind(&counts)
        .bind(&ats)
        .bind(&expiries)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Statements for sqlx::PgConnection {
    async fn load_in(&mut self, keys: &[CounterKey]) -> Result<Vec<StoredCounter>, StoreError> {
        load_in(self, keys.iter().collect::<BTreeSet<_>>()).await
    }

    /// Waits for the commits under way (each holds ROW SHARE from locking its counters'
    /// pending milestones) and holds the next ones until this transaction ends.
    async fn lock_milestones(&mut self, _id: &str) -> Result<(), StoreError> {
        sqlx::query("LOCK TABLE milestones IN EXCLUSIVE MODE")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn lock_pending(&mut self, names: &[&str]) -> Result<Pending, StoreError> {
        Ok(crate::milestone::pending_of(
            &lock_watch(self, names, None).await?,
        ))
    }

    async fn write_cuts(&mut self, id: i64, counter: &StoredCounter) -> Result<(), StoreError> {
        let (regions, (ps, ns)): (Vec<&str>, (Vec<String>, Vec<String>)) = counter
            .cuts
            .iter()
            .map(|(region, t)| (region.as_str(), (t.p.to_string(), t.n.to_string())))
            .unzip();
        sqlx::query(
            "INSERT INTO cuts AS x (counter, region, p, n) \
             SELECT $1, u.region, u.p::numeric, u.n::numeric \
             FROM UNNEST($2::text[], $3::text[], $4::text[]) AS u(region, p, n) \
             ON CONFLICT (counter, region) DO UPDATE SET p = excluded.p, n = excluded.n",
        )
        .bind(id)
        .bind(regions)
        .bind(ps)
        .bind(ns)
        .execute(&mut *self)
        .await?;
        let mut objects = Vec::with_capacity(counter.object_cuts.len());
        let mut regions = Vec::with_capacity(counter.object_cuts.len());
        let (mut ps, mut ns) = (Vec::new(), Vec::new());
        for (object, region, t) in &counter.object_cuts {
            objects.push(super::object_column(*object));
            regions.push(region.as_str());
            ps.push(t.p.to_string());
            ns.push(t.n.to_string());
        }
        sqlx::query(
            "INSERT INTO object_cuts (counter, object, region, p, n) \
             SELECT $1, u.object, u.region, u.p::numeric, u.n::numeric \
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) AS u(object, region, p, n)",
        )
        .bind(id)
        .bind(objects)
        .bind(regions)
        .bind(ps)
        .bind(ns)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn merge_carries(&mut self, carries: &[CarryRow]) -> Result<Vec<KindId>, StoreError> {
        if carries.is_empty() {
            return Ok(Vec::new());
        }
        // The incarnations each carry holds: its object's generations below `through`.
        let (mut kinds, mut names, mut firsts, mut lasts) = (vec![], vec![], vec![], vec![]);
        for c in carries {
            let Some(last) = c.carry.through.checked_sub(1) else {
                continue;
            };
            kinds.push(c.key.kind().as_str());
            names.push(c.key.id());
            firsts.push(ReplicaId::lineage(c.object, 0).to_string());
            let last = u32::try_from(last).unwrap_or(u32::MAX);
            lasts.push(ReplicaId::lineage(c.object, last).to_string());
        }
        sqlx::query(DELETE_CARRIED_SLOTS)
            .bind(kinds)
            .bind(names)
            .bind(firsts)
            .bind(lasts)
            .execute(&mut *self)
            .await?;
        let mut columns = CarryColumns::default();
        for c in carries {
            columns.kinds.push(c.key.kind().as_str());
            columns.names.push(c.key.id());
            columns.objects.push(super::object_column(c.object));
            columns.regions.push(&c.carry.region);
            columns
                .through
                .push(i64::try_from(c.carry.through).unwrap_or(i64::MAX));
            columns.p.push(encode_u128(c.carry.totals.p));
            columns.n.push(encode_u128(c.carry.totals.n));
            columns.at.push(c.at.unix_ms());
            columns
                .frame
                .push(i64::try_from(c.carry.frame).unwrap_or(i64::MAX));
            columns.rp.push(encode_u128(c.carry.reclaimed.p));
            columns.rn.push(encode_u128(c.carry.reclaimed.n));
        }
        let rows = sqlx::query(UPSERT_CARRIES)
            .bind(columns.kinds)
            .bind(columns.names)
            .bind(columns.objects)
            .bind(columns.regions)
            .bind(columns.through)
            .bind(columns.p)
            .bind(columns.n)
            .bind(columns.at)
            .bind(columns.frame)
            .bind(columns.rp)
            .bind(columns.rn)
            .fetch_all(&mut *self)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("kind")?, row.try_get("name")?)))
            .collect()
    }

    async fn presence_in(&mut self, ids: &[String], now: Timestamp) -> Fetched<Self> {
        Ok(sqlx::query(
            "SELECT name, reporter, count::text AS count, at FROM presence \
             WHERE name = ANY($1::text[]) AND expires_at > $2",
        )
        .bind(ids)
        .bind(now.unix_ms())
        .fetch_all(&mut *self)
        .await?)
    }

    async fn create_sketches(&mut self, keys: &[SketchColumns]) -> Result<(), StoreError> {
        let (names, days): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(n, d)| (n.as_str(), d.as_str())).unzip();
        sqlx::query(
            "INSERT INTO sketches (name, day, sketch, updated_at) \
             SELECT u.name, u.day, $3, NULL FROM UNNEST($1::text[], $2::text[]) AS u(name, day) \
             ORDER BY u.name COLLATE \"C\", u.day COLLATE \"C\" \
             ON CONFLICT (name, day) DO NOTHING",
        )
        .bind(&names)
        .bind(&days)
        .bind(HyperLogLog::new().to_bytes())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn sketches_in(&mut self, keys: &[SketchColumns], lock: bool) -> Fetched<Self> {
        let (names, days): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(n, d)| (n.as_str(), d.as_str())).unzip();
        let lock = if lock {
            "ORDER BY s.name, s.day FOR UPDATE OF s"
        } else {
            ""
        };
        Ok(sqlx::query(&format!(
            "SELECT s.name, s.day, s.sketch, s.updated_at FROM sketches s \
             JOIN UNNEST($1::text[], $2::text[]) AS u(name, day) \
                 ON s.name = u.name AND s.day = u.day {lock}"
        ))
        .bind(&names)
        .bind(&days)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn write_sketches(
        &mut self,
        writes: &[(SketchKey, Vec<u8>)],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let names: Vec<&str> = writes.iter().map(|(k, _)| k.id()).collect();
        let days: Vec<String> = writes.iter().map(|(k, _)| super::day_column(k)).collect();
        let sketches: Vec<&[u8]> = writes.iter().map(|(_, b)| b.as_slice()).collect();
        sqlx::query(
            "UPDATE sketches s SET sketch = u.sketch, \
                 updated_at = GREATEST(coalesce(s.updated_at, $4), $4) \
             FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS u(name, day, sketch) \
             WHERE s.name = u.name AND s.day = u.day",
        )
        .bind(&names)
        .bind(&days)
        .bind(&sketches)
        .bind(at.unix_ms())
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}

async fn upsert_replicas(
    tx: &mut Transaction<'static, Postgres>,
    replicas: &[ReplicaRow],
) -> Result<(Committed, BTreeMap<ReplicaId, i64>), StoreError> {
    let mut distinct: BTreeMap<ReplicaId, (&str, Timestamp, Timestamp)> = BTreeMap::new();
    for row in replicas {
        let entry = distinct
            .entry(row.replica)
            .or_insert((row.region.as_str(), row.at, row.at));
        if row.at < entry.1 {
            *entry = (row.region.as_str(), row.at, entry.2);
        }
        entry.2 = entry.2.max(row.at);
    }
    let mut committed = Committed::default();
    let mut ids = BTreeMap::new();
    if distinct.is_empty() {
        return Ok((committed, ids));
    }
    let mut texts = Vec::with_capacity(distinct.len());
    let mut regions = Vec::with_capacity(distinct.len());
    let mut first = Vec::with_capacity(distinct.len());
    let mut last = Vec::with_capacity(distinct.len());
    for (replica, (region, first_at, last_at)) in distinct {
        texts.push(replica.to_string());
        regions.push(region);
        first.push(first_at.unix_ms());
        last.push(last_at.unix_ms());
    }
    let rows = sqlx::query(UPSERT_REPLICAS)
        .bind(texts)
        .bind(regions)
        .bind(first)
        .bind(last)
        .fetch_all(&mut **tx)
        .await?;
    let mut inserted: (Vec<String>, Vec<String>, Vec<i64>) = Default::default();
    for row in &rows {
        let replica = replica_of("replicas", row.try_get("replica")?)?;
        ids.insert(replica, row.try_get("id")?);
        committed.regions.push((replica, row.try_get("region")?));
        if row.try_get::<bool, _>("inserted")? {
            inserted.0.push(replica.to_string());
            inserted.1.push(super::object_column(replica.object()));
            inserted.2.push(i64::from(replica.generation()));
        }
        if row.try_get::<bool, _>("retired")? {
            committed.retired.push(replica);
        }
    }
    committed.new_replicas = !inserted.0.is_empty();
    if committed.new_replicas {
        let carried: Vec<String> = sqlx::query_scalar(REGISTER_CARRIED_RETIRED)
            .bind(inserted.0)
            .bind(inserted.1)
            .bind(inserted.2)
            .fetch_all(&mut **tx)
            .await?;
        for text in &carried {
            committed.retired.push(replica_of("replicas", text)?);
        }
    }
    Ok((committed, ids))
}

/// The counters asked for that have a slot, a base or a cut, each whole, read in `conn` (a
/// transaction, to read what it wrote and locked).
async fn load_in<'k>(
    conn: &mut sqlx::PgConnection,
    keys: impl IntoIterator<Item = &'k CounterKey>,
) -> Result<Vec<StoredCounter>, StoreError> {
    let (kinds, names): (Vec<&str>, Vec<&str>) = keys
        .into_iter()
        .map(|k| (k.kind().as_str(), k.id()))
        .unzip();
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    let parts = parts_of_k(super::backend::Dialect::Postgres);
    let rows = sqlx::query(&format!(
        "WITH k AS (SELECT {K_COLUMNS} \
             FROM UNNEST($1::text[], $2::text[]) AS u(kind, name) \
             JOIN counters c ON c.kind = u.kind AND c.name = u.name) \
         {parts}"
    ))
    .bind(kinds)
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    super::counters_of(&rows)
}

/// Locks the milestones of counters `names` (kind `g`) that are pending or (with
/// `won_since`) won since then, in key order, and answers them by counter. Locking a won row
/// too costs a commit of that counter nothing it was not waiting for already, for the
/// minute its news lasts.
async fn lock_watch(
    conn: &mut sqlx::PgConnection,
    names: &[&str],
    won_since: Option<Timestamp>,
) -> Result<crate::milestone::Watch, StoreError> {
    let mut watch = crate::milestone::Watch::new();
    if names.is_empty() {
        return Ok(watch);
    }
    let rows = sqlx::query(
        "SELECT name, n::text AS n, label, won_replica, won_unit::text AS won_unit \
         FROM milestones WHERE name = ANY($1::text[]) AND (won_at IS NULL OR won_at >= $2) \
         ORDER BY name, n FOR UPDATE",
    )
    .bind(names)
    .bind(won_since.map_or(i64::MAX, Timestamp::unix_ms))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let watched = super::watched_from(
            row.try_get("n")?,
            row.try_get("label")?,
            (row.try_get("won_replica")?, row.try_get("won_unit")?),
        )?;
        watch.entry(row.try_get("name")?).or_default().push(watched);
    }
    Ok(watch)
}

/// Registers the counters of a batch the store did not know to have, and adds their ids to
/// `ids`: the rows this statement made, and the ones that existed before it. A row another
/// merger committed while the statement waited is in neither (its snapshot predates it): those
/// are read again, by a statement of their own.
async fn insert_counters<'a>(
    tx: &mut Transaction<'static, Postgres>,
    counters: &BTreeSet<&'a CounterKey>,
    ids: &mut CounterIds<'a>,
) -> Result<(), StoreError> {
    if counters.is_empty() {
        return Ok(());
    }
    let by_text: BTreeMap<(&str, &str), &CounterKey> = counters
        .iter()
        .map(|k| ((k.kind().as_str(), k.id()), *k))
        .collect();
    let (kinds, names): (Vec<&str>, Vec<&str>) = by_text.keys().copied().unzip();
    // The second statement only for rows another merger committed meanwhile.
    for statement in [INSERT_COUNTERS, COUNTER_IDS] {
        if counters.iter().all(|k| ids.contains_key(k)) {
            break;
        }
        let rows = sqlx::query(statement)
            .bind(&kinds)
            .bind(&names)
            .fetch_all(&mut **tx)
            .await?;
        add_ids(&rows, &by_text, ids)?;
    }
    match counters.iter().find(|k| !ids.contains_key(*k)) {
        Some(key) => Err(super::corrupt(
            "counters",
            format!("counter {key} has no row after its registration"),
        )),
        None => Ok(()),
    }
}

/// Adds to `ids` the ids of the replicas of `slots` that the batch did not register itself
/// (they were, by an earlier one).
async fn replica_ids_of(
    tx: &mut Transaction<'static, Postgres>,
    slots: &[SlotRow],
    ids: &mut BTreeMap<ReplicaId, i64>,
) -> Result<(), StoreError> {
    let missing: BTreeSet<ReplicaId> = slots
        .iter()
        .map(|s| s.replica)
        .filter(|r| !ids.contains_key(r))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let texts: Vec<String> = missing.iter().map(ReplicaId::to_string).collect();
    let rows = sqlx::query("SELECT id, replica FROM replicas WHERE replica = ANY($1::text[])")
        .bind(texts)
        .fetch_all(&mut **tx)
        .await?;
    for row in rows {
        ids.insert(
            replica_of("replicas", row.try_get("replica")?)?,
            row.try_get("id")?,
        );
    }
    Ok(())
}

/// Adds to `ids` the counters of `rows` (columns `id`, `kind`, `name`) that `by_text` names.
fn add_ids<'a>(
    rows: &[sqlx::postgres::PgRow],
    by_text: &BTreeMap<(&str, &str), &'a CounterKey>,
    ids: &mut CounterIds<'a>,
) -> Result<(), StoreError> {
    for row in rows {
        let (kind, name): (&str, &str) = (row.try_get("kind")?, row.try_get("name")?);
        if let Some(key) = by_text.get(&(kind, name)) {
            ids.insert(key, row.try_get("id")?);
        }
    }
    Ok(())
}

/// Merges a batch's slots (its counters registered: their ids in `counters`; its replicas'
/// in `replicas`); answers the counters whose stored slots grew. A slot of zero is not
/// written.
async fn merge_slots(
    tx: &mut Transaction<'static, Postgres>,
    slots: &[SlotRow],
    counters: &CounterIds<'_>,
    replicas: &BTreeMap<ReplicaId, i64>,
) -> Result<Vec<(String, String)>, StoreError> {
    // One row per (counter, replica), the larger of each half: `ON CONFLICT` may not touch
    // one row twice in a statement.
    let mut distinct: BTreeMap<(&CounterKey, ReplicaId), (SlotTotals, Timestamp)> = BTreeMap::new();
    for row in slots.iter().filter(|s| s.totals != SlotTotals::default()) {
        let entry = distinct
            .entry((&row.key, row.replica))
            .or_insert((row.totals, row.at));
        *entry = (entry.0.join(row.totals), entry.1.max(row.at));
    }
    if distinct.is_empty() {
        return Ok(Vec::new());
    }
    let mut columns = SlotColumns::default();
    let mut keys: BTreeMap<i64, &CounterKey> = BTreeMap::new();
    for ((key, replica), (totals, at)) in distinct {
        let counter = *counters.get(key).ok_or_else(|| {
            super::corrupt("counters", format!("counter {key} is not registered"))
        })?;
        let replica_id = *replicas.get(&replica).ok_or_else(|| {
            super::corrupt("replicas", format!("replica {replica} is not registered"))
        })?;
        keys.insert(counter, key);
        columns.counters.push(counter);
        columns.replicas.push(replica_id);
        columns.p.push(encode_u64(totals.p));
        columns.n.push(encode_u64(totals.n));
        columns.at.push(at.unix_ms());
        columns.objects.push(super::object_column(replica.object()));
        columns.generations.push(i64::from(replica.generation()));
    }
    let rows = sqlx::query(MERGE_SLOTS)
        .bind(columns.counters)
        .bind(columns.replicas)
        .bind(columns.p)
        .bind(columns.n)
        .bind(columns.at)
        .bind(columns.objects)
        .bind(columns.generations)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get("counter")?;
            let key = keys.get(&id).ok_or_else(|| {
                super::corrupt("slots", format!("counter id {id} not of the batch"))
            })?;
            Ok((key.kind().as_str().to_owned(), key.id().to_owned()))
        })
        .collect()
}

/// Carry rows, column by column, for `UNNEST`.
#[derive(Default)]
struct CarryColumns<'a> {
    kinds: Vec<&'a str>,
    names: Vec<&'a str>,
    objects: Vec<String>,
    regions: Vec<&'a str>,
    through: Vec<i64>,
    p: Vec<String>,
    n: Vec<String>,
    at: Vec<i64>,
    frame: Vec<i64>,
    rp: Vec<String>,
    rn: Vec<String>,
}

/// The ids of a batch's counters (their `counters` rows).
type CounterIds<'a> = foldhash::HashMap<&'a CounterKey, i64>;

/// The slot rows of a commit, column by column, for `UNNEST`.
#[derive(Default)]
struct SlotColumns {
    counters: Vec<i64>,
    replicas: Vec<i64>,
    p: Vec<String>,
    n: Vec<String>,
    at: Vec<i64>,
    objects: Vec<String>,
    generations: Vec<i64>,
}

/// History points, column by column, for `UNNEST`.
#[derive(Default)]
struct HistoryColumns<'a> {
    kinds: Vec<&'a str>,
    names: Vec<&'a str>,
    taken_at: Vec<i64>,
    p: Vec<String>,
    n: Vec<String>,
    epochs: Vec<i64>,
}

/// Announces the changed counters (if any, and if they fit in a notification) to the other
/// mergers: queued by the server and delivered when, and only if, `tx` commits.
async fn notify(
    conn: &mut sqlx::PgConnection,
    origin: &str,
    changed: &[(String, String)],
) -> Result<(), StoreError> {
    if let Some(payload) = notification(origin, changed) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A name for a store in its notifications: 16 random hex digits.
fn random_origin() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The NOTIFY payload for these changed counters: `@origin`, then `kind:id` lines; if any
/// changed and it fits under [`MAX_PAYLOAD`].
fn notification(origin: &str, changed: &[(String, String)]) -> Option<String> {
    if changed.is_empty() {
        return None;
    }
    let mut payload = format!("@{origin}");
    for (kind, name) in changed {
        payload.push('\n');
        payload.push_str(kind);
        payload.push(':');
        payload.push_str(name);
        if payload.len() > MAX_PAYLOAD {
            return None;
        }
    }
    Some(payload)
}

/// The origin and keys of a NOTIFY payload. A line that is not a key (a hand-sent
/// notification) is skipped: notifications are only hints.
fn parse_notification(payload: &str) -> (Option<&str>, Vec<CounterKey>) {
    let origin = payload.lines().next().and_then(|l| l.strip_prefix('@'));
    let keys = payload
        .lines()
        .filter(|line| !line.starts_with('@'))
        .filter_map(|line| {
            let parsed = line
                .split_once(':')
                .ok_or_else(|| corrupt("notification", format!("line {line:?} is not kind:id")))
                .and_then(|(kind, name)| key_of("notification", kind, name));
            parsed
                .inspect_err(|e| warn!(error = %e, "ignoring a line of a change notification"))
                .ok()
        })
        .collect();
    (origin, keys)
}

/// The task behind [`Store::watch`](super::Store::watch).
struct Watcher {
    pool: PgPool,
    options: PgConnectOptions,
    /// xid8 as text: the catch-up's lower bound.
    since: String,
    /// Notifications from this origin are this store's own.
    origin: String,
    tx: mpsc::Sender<Changes>,
    /// Set when a catch-up round was reported whole.
    caught_up: Arc<Mutex<Option<std::time::Instant>>>,
}

impl Watcher {
    /// Listens and catches up, both in this one task, until `stop` or `closing` turns true
    /// or the stream's receiver is dropped.
    async fn run(self, stop: watch::Receiver<bool>, closing: watch::Receiver<bool>) {
        let Watcher {
            pool,
            options,
            since,
            origin,
            tx,
            caught_up,
        } = self;
        // A pool of one connection that never expires: PgListener reconnects through it and
        // listens again on the new connection.
        let listening = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        let listener_ended = ended(stop.clone(), closing.clone(), tx.clone());
        let catch_up_ended = ended(stop, closing, tx.clone());
        let listener_tx = tx.clone();
        // The catch-up is not dropped in the middle of a query (its connection would go back
        // to the pool from a task of its own, maybe after the pool closed): it stops between
        // rounds.
        tokio::join!(
            async {
                tokio::select! {
                    () = listener_ended => {}
                    () = listen(&listening, &origin, listener_tx) => {}
                }
            },
            catch_up(pool, since, &origin, tx, &caught_up, catch_up_ended),
        );
        // The listener, dropped with its future, hands its connection back to the pool (after
        // an UNLISTEN, in a task of its own); closing the pool waits for that and closes it, so
        // no connection of the watcher outlives it.
        listening.close().await;
        debug!("change watcher stopped");
    }
}

/// Ends when `stop` or `closing` turns true or the stream's receiver is gone.
async fn ended(
    stop: watch::Receiver<bool>,
    closing: watch::Receiver<bool>,
    tx: mpsc::Sender<Changes>,
) {
    tokio::select! {
        () = turns_true(stop) => {}
        () = turns_true(closing) => {}
        () = tx.closed() => {}
    }
}

/// Waits until the flag is true; forever if its sender is gone without saying so.
async fn turns_true(mut flag: watch::Receiver<bool>) {
    if flag.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Forwards each notification's keys, on the connection of `pool` (the watcher's own, of one),
/// reconnecting with backoff. Returns only when the stream's receiver is gone.
async fn listen(pool: &PgPool, origin: &str, tx: mpsc::Sender<Changes>) {
    let mut backoff = Backoff::default();
    let mut listener = loop {
        let connected = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match connected.await {
            Ok(listener) => break listener,
            Err(e) => {
                warn!(error = %e, "cannot listen for changes; retrying");
                backoff.wait().await;
            }
        }
    };
    backoff = Backoff::default();
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                backoff = Backoff::default();
                let (from, keys) = parse_notification(notification.payload());
                if keys.is_empty() || from == Some(origin) {
                    continue;
                }
                match tx.try_send(Changes::Counters(keys)) {
                    Ok(()) => {}
                    // The catch-up reports these keys within a round.
                    Err(TrySendError::Full(_)) => {
                        debug!("change stream full: dropping a notification");
                    }
                    Err(TrySendError::Closed(_)) => return,
                }
            }
            Ok(None) => warn!(
                "the connection listening for changes was lost and reopened; \
                 the catch-up covers what it missed"
            ),
            Err(e) => {
                warn!(error = %e, "listening for changes failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Every [`CATCH_UP_EVERY`], sends the counters changed since the last round (see
/// [`CATCH_UP`]), waiting for room in the stream, or [`Changes::All`] if the log lost rows
/// it had not read; every [`PRUNE_EVERY`] rounds prunes the log. Returns when `ended` does
/// (checked between statements), or when the pool is closed.
async fn catch_up(
    pool: PgPool,
    mut since: String,
    origin: &str,
    tx: mpsc::Sender<Changes>,
    progress: &Mutex<Option<std::time::Instant>>,
    ended: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(ended);
    let mut tick = tokio::time::interval(CATCH_UP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut rounds: u32 = 0;
    loop {
        tokio::select! {
            () = &mut ended => return,
            _ = tick.tick() => {}
        }
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(PRUNE_EVERY) {
            match prune_changes(&pool, CHANGE_LOG_KEEP).await {
                Ok(deleted) => debug!(deleted, "pruned the change log"),
                Err(StoreError::Database(sqlx::Error::PoolClosed)) => return,
                Err(e) => warn!(error = %e, "cannot prune the change log; retrying later"),
            }
        }
        let rows = match sqlx::query(CATCH_UP)
            .bind(&since)
            .bind(origin)
            .fetch_all(&pool)
            .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                // `since` stays: the next round covers this one's range too.
                failures = failures.saturating_add(1);
                if failures.is_power_of_two() {
                    warn!(error = %e, failures, "the change catch-up failed; retrying");
                }
                continue;
            }
        };
        failures = 0;
        let mut keys = Vec::new();
        let mut missed = false;
        for row in &rows {
            match caught_up(row) {
                Ok(round) => {
                    since = round.xmin;
                    missed |= round.missed;
                    keys.extend(round.key);
                }
                // A damaged row must not stall the catch-up for every other counter.
                Err(e) => warn!(error = %e, "the change catch-up skips a row"),
            }
        }
        let mut batches = Vec::new();
        if missed {
            warn!(
                "the change log was pruned past this merger's catch-up; \
                 reloading every counter it holds"
            );
            batches.push(Changes::All);
        } else {
            while !keys.is_empty() {
                let rest = keys.split_off(keys.len().min(WATCH_BATCH));
                batches.push(Changes::Counters(keys));
                keys = rest;
            }
        }
        for batch in batches {
            tokio::select! {
                () = &mut ended => return,
                sent = tx.send(batch) => if sent.is_err() { return },
            }
        }
        *progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }
}

/// What one row of [`CATCH_UP`] says.
struct Round {
    /// The snapshot's xmin: the next round's `since`.
    xmin: String,
    /// The log was pruned at or past `since`.
    missed: bool,
    /// A changed counter, if any.
    key: Option<CounterKey>,
}

/// A row of [`CATCH_UP`].
fn caught_up(row: &PgRow) -> Result<Round, StoreError> {
    let xmin = row.try_get("xmin")?;
    let missed: Option<bool> = row.try_get("missed")?;
    let kind: Option<&str> = row.try_get("kind")?;
    let name: Option<&str> = row.try_get("name")?;
    let key = match (kind, name) {
        (Some(kind), Some(name)) => Some(key_of("counters", kind, name)?),
        _ => None,
    };
    Ok(Round {
        xmin,
        missed: missed.unwrap_or(false),
        key,
    })
}

/// Capped exponential backoff.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(BACKOFF.0)
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_round_trip_ids_with_colons() {
        let changed = vec![
            ("g".to_owned(), "a:b:c".to_owned()),
            ("pn".to_owned(), "x_1.y-z".to_owned()),
        ];
        let payload = notification("0a1b", &changed).expect("small payload");
        assert_eq!(payload, "@0a1b\ng:a:b:c\npn:x_1.y-z");
        let (origin, keys) = parse_notification(&payload);
        assert_eq!(origin, Some("0a1b"));
        assert_eq!(
            keys,
            vec![
                CounterKey::new(CounterKind::G, "a:b:c").expect("valid id"),
                CounterKey::new(CounterKind::Pn, "x_1.y-z").expect("valid id"),
            ]
        );
        assert!(parse_notification("nonsense\n\nq:x").1.is_empty());
        assert_eq!(
            parse_notification("g:a").0,
            None,
            "a hand-sent notice has no origin"
        );
    }

    #[test]
    fn a_payload_too_large_to_notify_is_not_sent() {
        assert_eq!(notification("o", &[]), None);
        let name = "x".repeat(120);
        let changed: Vec<_> = (0..100)
            .map(|i| ("g".to_owned(), format!("{name}{i}")))
            .collect();
        assert_eq!(notification("o", &changed), None);
        assert!(notification("o", &changed[..10]).is_some());
    }
}
