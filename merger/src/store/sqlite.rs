//! The SQLite backend: one merger process on an embedded file, in WAL mode.
//!
//! The single writer is the merger's commit task (history snapshots write in small chunks
//! from their own task and wait on SQLite's lock for a moment at most). Rows travel as JSON
//! arrays expanded by `json_each`, one statement per table per commit.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tally_crdt::{
    CounterKey, CounterKind, HyperLogLog, ReplicaId, SketchKey, SlotTotals, Timestamp,
};

use super::backend::{Fetched, KindId, Statements, kind_id};
use super::counters::{K_COLUMNS, parts_of_k};
use super::sketches::SketchColumns;
use crate::milestone::Pending;
use crate::presence::PresenceRow;

use super::{
    CarryRow, Committed, ReplicaRow, SlotRow, SnapshotRow, StoreError, StoredCounter, corrupt,
    encode_u64, encode_u128, replica_of,
};
use crate::config::Durability;

/// The SQLite store: one merger process on one file, in WAL mode.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` in WAL mode with the given durability,
    /// and applies the migrations.
    pub async fn open(url: &str, durability: Durability) -> Result<SqliteStore, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
        let file = path.split('?').next().unwrap_or_default();
        if let Some(dir) = Path::new(file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(5))
            // The slots of every live replica should stay in memory: a 64 MiB page cache per
            // connection and reads through mmap instead of a syscall per page.
            .pragma("cache_size", "-65536")
            .pragma("mmap_size", "268435456")
            .pragma("temp_store", "memory");
        // One writer (the commit task), one for history, readers for cache misses and lists.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

/// The carry upsert of [`merge_carries`], [`tally_crdt::Carry`]'s join: a carry of a later
/// frame replaces the stored one whole, one of an earlier frame changes nothing, and within a
/// frame each column takes the max, so carries merge in any order (fixed-width text compares
/// like the numbers it holds; regions by bytes, as Rust orders them).
const UPSERT_CARRIES: &str = "\
    INSERT INTO carries (counter, object, region, through, p, n, updated_at, frame, rp, rn) \
    SELECT c.id, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6, \
        j.value ->> 7, j.value ->> 8, j.value ->> 9, j.value ->> 10 \
    FROM json_each(?1) AS j \
    JOIN counters c ON c.kind = j.value ->> 0 AND c.name = j.value ->> 1 \
    WHERE true \
    ON CONFLICT (counter, object) DO UPDATE SET \
        region = iif(excluded.frame > carries.frame, excluded.region, \
            max(carries.region, excluded.region)), \
        through = iif(excluded.frame > carries.frame, excluded.through, \
            max(carries.through, excluded.through)), \
        p = iif(excluded.frame > carries.frame, excluded.p, max(carries.p, excluded.p)), \
        n = iif(excluded.frame > carries.frame, excluded.n, max(carries.n, excluded.n)), \
        rp = iif(excluded.frame > carries.frame, excluded.rp, max(carries.rp, excluded.rp)), \
        rn = iif(excluded.frame > carries.frame, excluded.rn, max(carries.rn, excluded.rn)), \
        updated_at = max(carries.updated_at, excluded.updated_at), \
        frame = excluded.frame \
    WHERE excluded.frame >= carries.frame";

/// Deletes the slots that the stored carries of the `[kind, name, object]` rows of `?1` hold:
/// those of the object's generations below the carry's `through`. An object's incarnations
/// are one range of `replicas.replica` (the generation is the last 8 hex digits).
const DELETE_CARRIED_SLOTS: &str = "\
    DELETE FROM slots WHERE (counter, replica) IN ( \
        SELECT x.counter, r.id FROM json_each(?1) AS j \
        JOIN counters c ON c.kind = j.value ->> 0 AND c.name = j.value ->> 1 \
        JOIN carries x ON x.counter = c.id AND x.object = j.value ->> 2 \
        JOIN replicas r ON r.replica >= x.object || '00000000' \
            AND r.replica <= x.object || printf('%08x', x.through - 1) \
        WHERE x.through > 0)";

/// Marks retired the replicas of `?1` (`[replica, object column, generation]` rows, each just
/// registered) that a carry of their object holds, in some counter: the object retired a
/// later generation, so they were retired, and their row was pruned
/// ([`CounterStore::prune_replicas`]); a late sync of one is then ignored as it was before. One
/// probe of `carries_by_object` each.
const REGISTER_CARRIED_RETIRED: &str = "\
    UPDATE replicas SET retired_at = last_sync \
    WHERE retired_at IS NULL AND replica IN ( \
        SELECT j.value ->> 0 FROM json_each(?1) AS j \
        WHERE EXISTS (SELECT 1 FROM carries x \
            WHERE x.object = j.value ->> 1 AND x.through > j.value ->> 2))";

#[async_trait]
impl super::backend::Backend for SqliteStore {
    type Conn = sqlx::SqliteConnection;
    type Db = sqlx::Sqlite;
    const DIALECT: super::backend::Dialect = super::backend::Dialect::Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Each table gets one statement whatever the batch size: the rows travel as one JSON
    /// array expanded by SQLite's `json_each`, so the statements are prepared once and
    /// reused, and no per-row parameters cross the driver.
    async fn commit_batch(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut committed = Committed::default();
        let mut replica_ids: HashMap<ReplicaId, i64> = HashMap::with_capacity(replicas.len());
        if !replicas.is_empty() {
            let rows: Vec<_> = replicas
                .iter()
                .map(|r| (r.replica.to_string(), r.region.as_str(), r.at.unix_ms()))
                .collect();
            let rows = json_rows(&rows);
            let inserted: Vec<String> = sqlx::query_scalar(
                "INSERT INTO replicas (replica, region, first_sync, last_sync) \
                 SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 2 \
                 FROM json_each(?1) AS j WHERE true ON CONFLICT (replica) DO NOTHING \
                 RETURNING replica",
            )
            .bind(&rows)
            .fetch_all(&mut *tx)
            .await?;
            committed.new_replicas = !inserted.is_empty();
            if committed.new_replicas {
                let inserted = inserted
                    .iter()
                    .map(|text| {
                        let replica = replica_of("replicas", text)?;
                        Ok((
                            text.as_str(),
                            super::object_column(replica.object()),
                            replica.generation(),
                        ))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                sqlx::query(REGISTER_CARRIED_RETIRED)
                    .bind(json_rows(&inserted))
                    .execute(&mut *tx)
                    .await?;
            }
            let recorded = sqlx::query(
                "UPDATE replicas SET last_sync = max(last_sync, j.value ->> 2) \
                 FROM json_each(?1) AS j WHERE replicas.replica = j.value ->> 0 \
                 RETURNING id, replica, region, retired_at IS NOT NULL AS retired",
            )
            .bind(&rows)
            .fetch_all(&mut *tx)
            .await?;
            for row in recorded {
                let replica = replica_of("replicas", row.get("replica"))?;
                if row.get::<bool, _>("retired") {
                    committed.retired.push(replica);
                } else {
                    replica_ids.insert(replica, row.get("id"));
                }
                committed.regions.push((replica, row.get("region")));
            }
        }
        if !slots.is_empty() {
            // A retired replica's slots are final and folded: a late sync of it changes nothing.
            let slots: Vec<&SlotRow> = slots
                .iter()
                .filter(|s| !committed.retired.contains(&s.replica))
                .collect();
            let mut keys: Vec<(&str, &str)> = slots
                .iter()
                .map(|s| (s.key.kind().as_str(), s.key.id()))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            sqlx::query(
                "INSERT INTO counters (kind, name) \
                 SELECT j.value ->> 0, j.value ->> 1 \
                 FROM json_each(?1) AS j WHERE true ON CONFLICT (kind, name) DO NOTHING",
            )
            .bind(json_rows(&keys))
            .execute(&mut *tx)
            .await?;
            // Counters with a milestone pending: how they stood before this commit.
            let since = crate::clock::now().minus_ms(super::NEWS_WINDOW_MS);
            let watch = watch_milestones(&mut tx, &keys, Some(since)).await?;
            let pending = crate::milestone::pending_of(&watch);
            let before = if pending.is_empty() {
                Vec::new()
            } else {
                load_in(&mut tx, &super::watched_keys(&pending)?).await?
            };
            let regions: HashMap<ReplicaId, &str> = committed
                .regions
                .iter()
                .map(|(replica, region)| (*replica, region.as_str()))
                .collect();
            let carries =
                super::batch_carries(&slots, |r| regions.get(&r).map(|&region| region.into()));
            tx.merge_carries(&carries).await?;
            let mut rows = Vec::with_capacity(slots.len());
            for s in slots.iter().filter(|s| s.totals != SlotTotals::default()) {
                let replica = replica_ids.get(&s.replica).ok_or_else(|| {
                    corrupt(
                        "replicas",
                        format!("slot of replica {} committed without it", s.replica),
                    )
                })?;
                rows.push((
                    s.key.kind().as_str(),
                    s.key.id(),
                    replica,
                    encode_u64(s.totals.p),
                    encode_u64(s.totals.n),
                    s.at.unix_ms(),
                    super::object_column(s.replica.object()),
                    s.replica.generation(),
                ));
            }
            // The CRDT merge, in SQL: fixed-width text compares like the numbers it holds. A
            // slot its object's carry holds is final already: not written; nor is one that
            // does not grow (its time is when it last grew).
            sqlx::query(
                "INSERT INTO slots (counter, replica, p, n, updated_at) \
                 SELECT c.id, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5 \
                 FROM json_each(?1) AS j \
                 JOIN counters c ON c.kind = j.value ->> 0 AND c.name = j.value ->> 1 \
                 WHERE NOT EXISTS (SELECT 1 FROM carries x WHERE x.counter = c.id \
                     AND x.object = j.value ->> 6 AND x.through > j.value ->> 7) \
                 ON CONFLICT (counter, replica) DO UPDATE SET \
                 p = max(slots.p, excluded.p), \
                 n = max(slots.n, excluded.n), \
                 updated_at = max(slots.updated_at, excluded.updated_at) \
                 WHERE excluded.p > slots.p OR excluded.n > slots.n",
            )
            .bind(json_rows(&rows))
            .execute(&mut *tx)
            .await?;
            committed.decided = crate::milestone::decide_batch(&pending, &before, &slots, &carries);
            let at = crate::clock::now();
            for (id, decision) in &committed.decided {
                super::milestones::record_winner::<Self>(&mut tx, id, decision, at).await?;
            }
            committed.news = crate::milestone::news_of(&watch, &committed.decided);
        }
        tx.commit().await?;
        Ok(committed)
    }

    async fn upsert_history(&self, rows: &[SnapshotRow]) -> Result<(), StoreError> {
        let rows: Vec<_> = rows
            .iter()
            .map(|s| {
                (
                    s.key.kind().as_str(),
                    s.key.id(),
                    s.at.unix_ms(),
                    encode_u128(s.totals.p),
                    encode_u128(s.totals.n),
                    super::epoch_param(s.epoch),
                )
            })
            .collect();
        sqlx::query(
            "INSERT INTO history (counter, taken_at, p, n, epoch) \
             SELECT c.id, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5 \
             FROM json_each(?1) AS j \
             JOIN counters c ON c.kind = j.value ->> 0 AND c.name = j.value ->> 1 \
             WHERE c.epoch = j.value ->> 5 \
             ON CONFLICT (counter, taken_at) DO UPDATE SET \
             p = max(history.p, excluded.p), n = max(history.n, excluded.n)",
        )
        .bind(json_rows(&rows))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn upsert_presence(&self, rows: &[PresenceRow<'_>]) -> Result<(), StoreError> {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.name,
                    r.reporter.to_string(),
                    r.region,
                    encode_u64(r.seq),
                    encode_u64(r.count),
                    r.at.unix_ms(),
                    r.expires_at.unix_ms(),
                )
            })
            .collect();
        sqlx::query(
            "INSERT INTO presence (name, reporter, region, seq, count, at, expires_at) \
             SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, \
                 j.value ->> 5, j.value ->> 6 \
             FROM json_each(?1) AS j WHERE true \
             ON CONFLICT (name, reporter) DO UPDATE SET region = excluded.region, \
                 seq = excluded.seq, count = excluded.count, at = excluded.at, \
                 expires_at = excluded.expires_at \
             WHERE excluded.seq > presence.seq",
        )
        .bind(json_rows(&rows))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Statements for sqlx::SqliteConnection {
    async fn load_in(&mut self, keys: &[CounterKey]) -> Result<Vec<StoredCounter>, StoreError> {
        load_in(self, keys).await
    }

    /// A write first: the transaction holds the write lock from here on.
    async fn lock_milestones(&mut self, id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO counters (kind, name) VALUES ('g', ?1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    /// Under the write lock the transaction holds already.
    async fn lock_pending(&mut self, names: &[&str]) -> Result<Pending, StoreError> {
        let keys: Vec<(&str, &str)> = names.iter().map(|name| ("g", *name)).collect();
        Ok(crate::milestone::pending_of(
            &watch_milestones(self, &keys, None).await?,
        ))
    }

    async fn write_cuts(&mut self, id: i64, counter: &StoredCounter) -> Result<(), StoreError> {
        let cuts: Vec<_> = counter
            .cuts
            .iter()
            .map(|(region, t)| (region.as_str(), encode_u128(t.p), encode_u128(t.n)))
            .collect();
        sqlx::query(
            "INSERT INTO cuts (counter, region, p, n) \
             SELECT ?1, j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM json_each(?2) AS j \
             WHERE true ON CONFLICT (counter, region) DO UPDATE SET p = excluded.p, n = excluded.n",
        )
        .bind(id)
        .bind(json_rows(&cuts))
        .execute(&mut *self)
        .await?;
        let shares: Vec<_> = counter
            .object_cuts
            .iter()
            .map(|(object, region, t)| {
                let object = super::object_column(*object);
                (object, region.as_str(), encode_u128(t.p), encode_u128(t.n))
            })
            .collect();
        sqlx::query(
            "INSERT INTO object_cuts (counter, object, region, p, n) \
             SELECT ?1, j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3 \
             FROM json_each(?2) AS j",
        )
        .bind(id)
        .bind(json_rows(&shares))
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    /// Every counter of `carries` is answered: SQLite has no other merger to tell.
    async fn merge_carries(&mut self, carries: &[CarryRow]) -> Result<Vec<KindId>, StoreError> {
        if carries.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<_> = carries
            .iter()
            .map(|c| {
                (
                    c.key.kind().as_str(),
                    c.key.id(),
                    super::object_column(c.object),
                    &*c.carry.region,
                    c.carry.through,
                    encode_u128(c.carry.totals.p),
                    encode_u128(c.carry.totals.n),
                    c.at.unix_ms(),
                    c.carry.frame,
                    encode_u128(c.carry.reclaimed.p),
                    encode_u128(c.carry.reclaimed.n),
                )
            })
            .collect();
        let rows = json_rows(&rows);
        sqlx::query(UPSERT_CARRIES)
            .bind(&rows)
            .execute(&mut *self)
            .await?;
        sqlx::query(DELETE_CARRIED_SLOTS)
            .bind(&rows)
            .execute(&mut *self)
            .await?;
        Ok(carries.iter().map(|c| kind_id(&c.key)).collect())
    }

    async fn presence_in(&mut self, ids: &[String], now: Timestamp) -> Fetched<Self> {
        Ok(sqlx::query(
            "SELECT p.name, p.reporter, p.count, p.at FROM json_each(?1) AS j \
             JOIN presence p ON p.name = j.value WHERE p.expires_at > ?2",
        )
        .bind(json_rows(ids))
        .bind(now.unix_ms())
        .fetch_all(&mut *self)
        .await?)
    }

    async fn create_sketches(&mut self, keys: &[SketchColumns]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sketches (name, day, sketch, updated_at) \
             SELECT j.value ->> 0, j.value ->> 1, ?2, NULL FROM json_each(?1) AS j WHERE true \
             ON CONFLICT (name, day) DO NOTHING",
        )
        .bind(json_rows(keys))
        .bind(HyperLogLog::new().to_bytes())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    /// Read in the transaction that created them, the rows are under its write lock.
    async fn sketches_in(&mut self, keys: &[SketchColumns], _lock: bool) -> Fetched<Self> {
        Ok(sqlx::query(
            "SELECT s.name, s.day, s.sketch, s.updated_at FROM json_each(?1) AS j \
             JOIN sketches s ON s.name = j.value ->> 0 AND s.day = j.value ->> 1",
        )
        .bind(json_rows(keys))
        .fetch_all(&mut *self)
        .await?)
    }

    async fn write_sketches(
        &mut self,
        writes: &[(SketchKey, Vec<u8>)],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        for (key, bytes) in writes {
            sqlx::query(
                "UPDATE sketches SET sketch = ?3, updated_at = max(coalesce(updated_at, ?4), ?4) \
                 WHERE name = ?1 AND day = ?2",
            )
            .bind(key.id())
            .bind(super::day_column(key))
            .bind(bytes.as_slice())
            .bind(at.unix_ms())
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }
}

/// Rows as one JSON array of arrays, for `json_each`.
fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("rows of strings and integers serialize")
}

/// The counters asked for that have a slot, a carry, a base or a cut, each whole, read on
/// `conn` (a transaction's, to read what it wrote).
async fn load_in(
    conn: &mut sqlx::SqliteConnection,
    keys: &[CounterKey],
) -> Result<Vec<StoredCounter>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // Each counter once, however often it is asked for.
    let mut asked: Vec<(&str, &str)> = keys.iter().map(|k| (k.kind().as_str(), k.id())).collect();
    asked.sort_unstable();
    asked.dedup();
    let parts = parts_of_k(super::backend::Dialect::Sqlite);
    let rows = sqlx::query(&format!(
        "WITH k AS (SELECT {K_COLUMNS} FROM json_each(?1) AS j \
         JOIN counters c ON c.kind = j.value ->> 0 AND c.name = j.value ->> 1) {parts}"
    ))
    .bind(json_rows(&asked))
    .fetch_all(&mut *conn)
    .await?;
    super::counters_of(&rows)
}

/// The milestones of the counters (kind `g`) among `keys` that are pending, or (with
/// `won_since`) won since then.
async fn watch_milestones(
    conn: &mut sqlx::SqliteConnection,
    keys: &[(&str, &str)],
    won_since: Option<Timestamp>,
) -> Result<crate::milestone::Watch, StoreError> {
    let names: Vec<&str> = keys
        .iter()
        .filter(|(kind, _)| *kind == CounterKind::G.as_str())
        .map(|(_, name)| *name)
        .collect();
    let mut watch = crate::milestone::Watch::new();
    if names.is_empty() {
        return Ok(watch);
    }
    let rows = sqlx::query(
        "SELECT m.name, m.n, m.label, m.won_replica, m.won_unit FROM json_each(?1) AS j \
         JOIN milestones m ON m.name = j.value AND (m.won_at IS NULL OR m.won_at >= ?2) \
         ORDER BY m.name, m.n",
    )
    .bind(json_rows(&names))
    .bind(won_since.map_or(i64::MAX, Timestamp::unix_ms))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let watched = super::watched_from(
            row.get("n"),
            row.get("label"),
            (row.get("won_replica"), row.get("won_unit")),
        )?;
        watch.entry(row.get("name")).or_default().push(watched);
    }
    Ok(watch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CounterStore, HistoryStore};
    use tally_crdt::GlobalTotals;

    async fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db/tally.db").display());
        let store = SqliteStore::open(&url, Durability::Full).await.unwrap();
        (dir, store)
    }

    fn key(kind: CounterKind, id: &str) -> CounterKey {
        CounterKey::new(kind, id).unwrap()
    }

    fn replica(r: u128, region: &str) -> ReplicaRow {
        ReplicaRow {
            replica: ReplicaId::from_u128(r),
            region: region.into(),
            at: Timestamp::from_unix_ms(1),
        }
    }

    fn slot(id: &str, r: u128, p: u64, n: u64) -> SlotRow {
        SlotRow {
            key: key(CounterKind::Pn, id),
            replica: ReplicaId::from_u128(r),
            totals: SlotTotals { p, n },
            at: Timestamp::from_unix_ms(1),
            visits: Vec::new(),
            carry: None,
        }
    }

    #[tokio::test]
    async fn bases_from_before_carries_stay_beside_them_and_nothing_writes_them() {
        let (_dir, store) = temp_store().await;
        let k = key(CounterKind::Pn, "x");
        // A replica retired before carries: its slot folded into the base of `us`, as the
        // retirement of 0011 wrote it.
        store
            .commit(&[replica(9, "us")], &[slot("x", 9, 4, 1)])
            .await
            .unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO bases (counter, region, p, n, updated_at) \
             SELECT counter, 'us', ?1, ?2, 1 FROM slots",
        )
        .bind(encode_u128(4))
        .bind(encode_u128(1))
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query("INSERT INTO folded (counter, replica) SELECT counter, replica FROM slots")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM slots")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let legacy = store
            .load(std::slice::from_ref(&k))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            legacy.totals(),
            GlobalTotals { p: 4, n: 1 },
            "the base counts"
        );
        // An edge object of today counts, rotates, and retires: a carry beside the base.
        let object = 7_u128 << 32;
        let rows = [replica(object, "eu"), replica(object + 1, "eu")];
        store
            .commit(&rows[..1], &[slot("x", object, 5, 0)])
            .await
            .unwrap();
        let retired = store
            .retire(ReplicaId::from_u128(object), Timestamp::from_unix_ms(2))
            .await;
        assert_eq!(retired.unwrap().folded, 1);
        store
            .commit(&rows[1..], &[slot("x", object + 1, 1, 0)])
            .await
            .unwrap();
        let now = store
            .load(std::slice::from_ref(&k))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (&now.bases, &now.folded),
            (&legacy.bases, &legacy.folded),
            "untouched"
        );
        assert_eq!(now.carries.len(), 1);
        assert_eq!(now.totals(), GlobalTotals { p: 10, n: 1 });
    }

    #[tokio::test]
    async fn a_version_1_database_is_carried_over_to_surrogate_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tally.db").display());
        // The schema and rows a merger before 0002 wrote.
        {
            let pool = SqlitePoolOptions::new()
                .connect_with(
                    SqliteConnectOptions::from_str(&url)
                        .unwrap()
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            // Only the first migration, as a runtime migrator over a folder holding just it.
            let first = dir.path().join("v1");
            std::fs::create_dir(&first).unwrap();
            std::fs::copy(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/migrations/sqlite/0001_slots.sql"
                ),
                first.join("0001_slots.sql"),
            )
            .unwrap();
            sqlx::migrate::Migrator::new(first.as_path())
                .await
                .unwrap()
                .run(&pool)
                .await
                .unwrap();
            let mut conn = pool.acquire().await.unwrap();
            let r = ReplicaId::from_u128(9).to_string();
            sqlx::query("INSERT INTO replicas VALUES (?, 'eu', 1, 2)")
                .bind(&r)
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO slots VALUES ('g', 'home', ?, ?, ?, 2)")
                .bind(&r)
                .bind(encode_u64(u64::MAX))
                .bind(encode_u64(0))
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO snapshots VALUES ('g', 'home', 2, ?, ?)")
                .bind(encode_u128(u128::from(u64::MAX)))
                .bind(encode_u128(0))
                .execute(&mut *conn)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open(&url, Durability::Full).await.unwrap();
        let k = key(CounterKind::G, "home");
        let loaded = store.load(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(loaded[0].slots[0].totals.p, u64::MAX);
        assert_eq!(loaded[0].slots[0].region, "eu");
        let history = store
            .history(&k, Timestamp::MIN, Timestamp::MAX, 10)
            .await
            .unwrap();
        assert_eq!(history[0].totals.p, u128::from(u64::MAX));
    }
}
