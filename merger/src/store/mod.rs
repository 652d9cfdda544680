//! The durable store: every SQL statement of the merger, and nothing else.
//!
//! Slots are upserted with "max per slot" in SQL, so several merger processes could share one
//! database without coordinating: whatever order their commits land in, each slot ends at the
//! largest total any of them saw. `u64` totals are stored as fixed-width decimal text (see
//! `migrations/0001_slots.sql`), whose text order is numeric order.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tally_crdt::{CounterKey, CounterKind, GlobalTotals, ReplicaId, SlotTotals, Timestamp};

use crate::config::Durability;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this merger can open.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH")]
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
    /// A stored value is not what the schema promises (hand-edited or damaged database).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// One replica's metadata to record: its region (kept from the first sync) and when it synced.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    /// The replica incarnation.
    pub replica: ReplicaId,
    /// Region of the sync.
    pub region: String,
    /// Time of the sync.
    pub at: Timestamp,
}

/// One replica as stored: its region and its first and latest sync.
#[derive(Debug, Clone)]
pub struct StoredReplica {
    /// The replica incarnation.
    pub replica: ReplicaId,
    /// Region of its first sync.
    pub region: String,
    /// First sync.
    pub first_sync: Timestamp,
    /// Latest sync.
    pub last_sync: Timestamp,
}

/// One slot total to merge (max) into the store.
#[derive(Debug, Clone)]
pub struct SlotRow {
    /// The counter.
    pub key: CounterKey,
    /// Owner of the slot.
    pub replica: ReplicaId,
    /// Its totals.
    pub totals: SlotTotals,
    /// Time of the sync.
    pub at: Timestamp,
}

/// One counter's global totals at one time, for the history.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    /// The counter.
    pub key: CounterKey,
    /// Time taken.
    pub at: Timestamp,
    /// Totals then.
    pub totals: GlobalTotals,
}

/// Everything the store holds, as read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every replica.
    pub replicas: Vec<StoredReplica>,
    /// Every slot.
    pub slots: Vec<SlotRow>,
    /// The latest snapshot of every counter that has one.
    pub latest_snapshots: Vec<SnapshotRow>,
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `url` in WAL mode with the given durability,
    /// and applies the migrations.
    pub async fn open(url: &str, durability: Durability) -> Result<Store, StoreError> {
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
        // One writer (the commit task) plus readers for history and readiness.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Reads everything needed to rebuild the in-memory state.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        for row in sqlx::query("SELECT replica, region, first_sync, last_sync FROM replicas")
            .fetch_all(&self.pool)
            .await?
        {
            loaded.replicas.push(StoredReplica {
                replica: replica_of(row.get("replica"))?,
                region: row.get("region"),
                first_sync: Timestamp::from_unix_ms(row.get("first_sync")),
                last_sync: Timestamp::from_unix_ms(row.get("last_sync")),
            });
        }
        for row in sqlx::query("SELECT kind, counter, replica, p, n, updated_at FROM slots")
            .fetch_all(&self.pool)
            .await?
        {
            loaded.slots.push(SlotRow {
                key: key_of("slots", row.get("kind"), row.get("counter"))?,
                replica: replica_of(row.get("replica"))?,
                totals: SlotTotals {
                    p: decode("slots", row.get("p"))?,
                    n: decode("slots", row.get("n"))?,
                },
                at: Timestamp::from_unix_ms(row.get("updated_at")),
            });
        }
        let latest = "SELECT s.kind, s.counter, s.taken_at, s.p, s.n FROM snapshots s \
             JOIN (SELECT kind, counter, max(taken_at) AS taken_at FROM snapshots GROUP BY kind, counter) l \
             ON s.kind = l.kind AND s.counter = l.counter AND s.taken_at = l.taken_at";
        for row in sqlx::query(latest).fetch_all(&self.pool).await? {
            loaded.latest_snapshots.push(snapshot_of(
                key_of("snapshots", row.get("kind"), row.get("counter"))?,
                &row,
            )?);
        }
        Ok(loaded)
    }

    /// Writes one batch in one transaction: replica metadata, slots merged with max, and
    /// snapshots. Returns only once the transaction is committed (durable per the
    /// configured [`Durability`]).
    ///
    /// Each table gets one statement whatever the batch size: the rows travel as one JSON
    /// array expanded by SQLite's `json_each`, so the statements are prepared once and
    /// reused, and no per-row parameters cross the driver.
    pub async fn commit(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
        snapshots: &[SnapshotRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if !replicas.is_empty() {
            let rows: Vec<_> = replicas
                .iter()
                .map(|r| (r.replica.to_string(), r.region.as_str(), r.at.unix_ms()))
                .collect();
            sqlx::query(
                "INSERT INTO replicas (replica, region, first_sync, last_sync) \
                 SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 2 \
                 FROM json_each(?1) AS j WHERE true \
                 ON CONFLICT (replica) DO UPDATE SET \
                 last_sync = max(replicas.last_sync, excluded.last_sync)",
            )
            .bind(json_rows(&rows))
            .execute(&mut *tx)
            .await?;
        }
        if !slots.is_empty() {
            let rows: Vec<_> = slots
                .iter()
                .map(|s| {
                    let (p, n) = (encode_u64(s.totals.p), encode_u64(s.totals.n));
                    (
                        s.key.kind().as_str(),
                        s.key.id(),
                        s.replica.to_string(),
                        p,
                        n,
                        s.at.unix_ms(),
                    )
                })
                .collect();
            // The CRDT merge, in SQL: fixed-width text compares like the numbers it holds.
            sqlx::query(
                "INSERT INTO slots (kind, counter, replica, p, n, updated_at) \
                 SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5 \
                 FROM json_each(?1) AS j WHERE true \
                 ON CONFLICT (kind, counter, replica) DO UPDATE SET \
                 p = max(slots.p, excluded.p), \
                 n = max(slots.n, excluded.n), \
                 updated_at = max(slots.updated_at, excluded.updated_at)",
            )
            .bind(json_rows(&rows))
            .execute(&mut *tx)
            .await?;
        }
        if !snapshots.is_empty() {
            let rows: Vec<_> = snapshots
                .iter()
                .map(|s| {
                    let (p, n) = (encode_u128(s.totals.p), encode_u128(s.totals.n));
                    (s.key.kind().as_str(), s.key.id(), s.at.unix_ms(), p, n)
                })
                .collect();
            sqlx::query(
                "INSERT INTO snapshots (kind, counter, taken_at, p, n) \
                 SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4 \
                 FROM json_each(?1) AS j WHERE true \
                 ON CONFLICT (kind, counter, taken_at) DO UPDATE SET p = excluded.p, n = excluded.n",
            )
            .bind(json_rows(&rows))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The snapshots of one counter taken in `from..=to`, oldest first, at most `limit`.
    pub async fn history(
        &self,
        key: &CounterKey,
        from: Timestamp,
        to: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT taken_at, p, n FROM snapshots \
             WHERE kind = ? AND counter = ? AND taken_at >= ? AND taken_at <= ? \
             ORDER BY taken_at LIMIT ?",
        )
        .bind(key.kind().as_str())
        .bind(key.id())
        .bind(from.unix_ms())
        .bind(to.unix_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| snapshot_of(key.clone(), row))
            .collect()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Rows as one JSON array of arrays, for `json_each`.
fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("rows of strings and integers serialize")
}

/// A `u64` as exactly 20 decimal digits.
pub fn encode_u64(v: u64) -> String {
    format!("{v:020}")
}

/// A `u128` as exactly 39 decimal digits.
pub fn encode_u128(v: u128) -> String {
    format!("{v:039}")
}

fn decode<T: FromStr>(table: &'static str, text: &str) -> Result<T, StoreError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt(
            table,
            format!("total {text:?} is not decimal digits"),
        ));
    }
    text.parse()
        .map_err(|_| corrupt(table, format!("total {text:?} is out of range")))
}

/// The counter of a row's `kind` and `counter` columns. Every id stored came through a
/// validated sync, so an invalid one means the file was changed by hand or damaged.
fn key_of(table: &'static str, kind: &str, counter: &str) -> Result<CounterKey, StoreError> {
    let kind = match kind {
        "g" => CounterKind::G,
        "pn" => CounterKind::Pn,
        other => return Err(corrupt(table, format!("unknown kind {other:?}"))),
    };
    CounterKey::new(kind, counter)
        .map_err(|e| corrupt(table, format!("counter id {counter:?}: {e}")))
}

fn replica_of(text: &str) -> Result<ReplicaId, StoreError> {
    text.parse()
        .map_err(|_| corrupt("slots", format!("replica id {text:?} is not 32 hex digits")))
}

fn snapshot_of(key: CounterKey, row: &sqlx::sqlite::SqliteRow) -> Result<SnapshotRow, StoreError> {
    Ok(SnapshotRow {
        key,
        at: Timestamp::from_unix_ms(row.get("taken_at")),
        totals: GlobalTotals {
            p: decode("snapshots", row.get("p"))?,
            n: decode("snapshots", row.get("n"))?,
        },
    })
}

fn corrupt(table: &'static str, detail: String) -> StoreError {
    StoreError::Corrupt { table, detail }
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
    }

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db/tally.db").display());
        let store = Store::open(&url, Durability::Full).await.unwrap();
        (dir, store)
    }

    fn slot(p: u64, n: u64) -> SlotRow {
        SlotRow {
            key: CounterKey::new(CounterKind::Pn, "x").unwrap(),
            replica: ReplicaId::from_u128(7),
            totals: SlotTotals { p, n },
            at: Timestamp::from_unix_ms(1),
        }
    }

    #[tokio::test]
    async fn u64_extremes_round_trip_exactly_and_merge_by_max_in_sql() {
        let (_dir, store) = temp_store().await;
        store
            .commit(&[], &[slot(u64::MAX - 1, 1 << 53)], &[])
            .await
            .unwrap();
        // Smaller p, larger n: each half keeps its max.
        store
            .commit(&[], &[slot(5, (1 << 53) + 1)], &[])
            .await
            .unwrap();
        store.commit(&[], &[slot(u64::MAX, 0)], &[]).await.unwrap();
        let loaded = store.load().await.unwrap();
        assert_eq!(loaded.slots.len(), 1);
        assert_eq!(
            loaded.slots[0].totals,
            SlotTotals {
                p: u64::MAX,
                n: (1 << 53) + 1
            }
        );
    }

    #[tokio::test]
    async fn snapshots_keep_u128_totals_and_load_returns_the_latest() {
        let (_dir, store) = temp_store().await;
        let key = CounterKey::new(CounterKind::G, "x").unwrap();
        let snap = |at, p| SnapshotRow {
            key: key.clone(),
            at: Timestamp::from_unix_ms(at),
            totals: GlobalTotals { p, n: 0 },
        };
        store
            .commit(&[], &[], &[snap(10, 1), snap(20, u128::MAX)])
            .await
            .unwrap();
        let loaded = store.load().await.unwrap();
        assert_eq!(loaded.latest_snapshots.len(), 1);
        assert_eq!(loaded.latest_snapshots[0].totals.p, u128::MAX);
        let (from, to) = (Timestamp::from_unix_ms(0), Timestamp::from_unix_ms(15));
        let history = store.history(&key, from, to, 10).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].totals.p, 1);
    }
}
