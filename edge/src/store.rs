//! The object's storage: SQLite-backed Durable Object storage through the SQL API, every
//! statement of the edge and nothing else.
//!
//! - `counters`: one row per counter (key `g:<id>` / `pn:<id>`), updated in place per hit:
//!   the own slot totals, the acknowledged totals, the last hit time and the sync state. An
//!   index over the dirty rows alone finds what to sync with a bounded query; nothing is
//!   listed whole, so start-up costs the same with ten counters or a million.
//! - `meta`: the incarnation id, the region, the anti-entropy cursor.
//!
//! Totals are `u64`, written as decimal TEXT: the SQL API hands integers to Wasm through
//! JavaScript numbers, exact only to 2^53. Storage calls are synchronous; the runtime's
//! output gate holds every answer until the writes before it are durable, so "stored before
//! answered" needs no await.

use serde::Deserialize;
use tally_crdt::{CounterKey, SlotTotals, Timestamp};
use worker::{SqlStorage, SqlStorageValue};

use crate::counter::{Row, SyncState};

/// A storage failure, or a row that does not read back as written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQL API failed.
    #[error("storage: {0}")]
    Sql(#[from] worker::Error),
    /// A stored row is not what this module writes (damaged storage).
    #[error("damaged row {key:?}: {why}")]
    Damaged {
        /// The row's key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    p TEXT NOT NULL,
    n TEXT NOT NULL,
    ap TEXT NOT NULL,
    an TEXT NOT NULL,
    changed_at INTEGER NOT NULL,
    state INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_dirty ON counters (key) WHERE state = 1;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

/// One row as the SQL API returns it.
#[derive(Deserialize)]
struct SqlRow {
    key: String,
    p: String,
    n: String,
    ap: String,
    an: String,
    changed_at: i64,
    state: i64,
}

impl SqlRow {
    fn decode(self) -> Result<(CounterKey, Row), StoreError> {
        let damaged = |why| StoreError::Damaged {
            key: self.key.clone(),
            why,
        };
        let key = CounterKey::from_storage_key(&self.key).map_err(|_| damaged("bad key"))?;
        let total = |s: &str| s.parse::<u64>().map_err(|_| damaged("bad total"));
        let row = Row {
            own: SlotTotals {
                p: total(&self.p)?,
                n: total(&self.n)?,
            },
            acked: SlotTotals {
                p: total(&self.ap)?,
                n: total(&self.an)?,
            },
            changed_at: Timestamp::from_unix_ms(self.changed_at),
            state: SyncState::from_code(self.state).ok_or_else(|| damaged("bad state"))?,
        };
        Ok((key, row))
    }
}

/// The object's tables.
pub struct Store {
    sql: SqlStorage,
}

/// Meta entries.
pub mod meta {
    /// The incarnation id.
    pub const REPLICA: &str = "replica";
    /// The region the object serves.
    pub const REGION: &str = "region";
    /// The anti-entropy sweep's position: the last key sent (absent: at the start).
    pub const SWEEP_CURSOR: &str = "sweep_cursor";
    /// When the sweep's next page is due (kept so an evicted object wakes up for it).
    pub const SWEEP_DUE: &str = "sweep_due";
}

const COLUMNS: &str = "key, p, n, ap, an, changed_at, state";

impl Store {
    /// Opens the tables, creating them on first use.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn open(sql: SqlStorage) -> Result<Store, StoreError> {
        sql.exec(SCHEMA, None)?;
        Ok(Store { sql })
    }

    /// A meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        #[derive(Deserialize)]
        struct Value {
            value: String,
        }
        let rows: Vec<Value> = self
            .sql
            .exec("SELECT value FROM meta WHERE name = ?", vec![name.into()])?
            .to_array()?;
        Ok(rows.into_iter().next().map(|v| v.value))
    }

    /// Sets a meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.sql.exec(
            "INSERT INTO meta (name, value) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            vec![name.into(), value.into()],
        )?;
        Ok(())
    }

    /// Removes a meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn clear_meta(&self, name: &str) -> Result<(), StoreError> {
        self.sql
            .exec("DELETE FROM meta WHERE name = ?", vec![name.into()])?;
        Ok(())
    }

    /// The row of `key`, if this object ever counted it.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn row(&self, key: &CounterKey) -> Result<Option<Row>, StoreError> {
        let rows: Vec<SqlRow> = self
            .sql
            .exec(
                &format!("SELECT {COLUMNS} FROM counters WHERE key = ?"),
                vec![key.storage_key().into()],
            )?
            .to_array()?;
        rows.into_iter()
            .next()
            .map(|r| r.decode().map(|(_, row)| row))
            .transpose()
    }

    /// Writes the row of `key` (one statement: insert or update in place).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn put(&self, key: &CounterKey, row: &Row) -> Result<(), StoreError> {
        let text = |v: u64| SqlStorageValue::from(v.to_string());
        self.sql.exec(
            "INSERT INTO counters (key, p, n, ap, an, changed_at, state) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET p = excluded.p, n = excluded.n, ap = excluded.ap, \
             an = excluded.an, changed_at = excluded.changed_at, state = excluded.state",
            vec![
                key.storage_key().into(),
                text(row.own.p),
                text(row.own.n),
                text(row.acked.p),
                text(row.acked.n),
                row.changed_at.unix_ms().into(),
                row.state.code().into(),
            ],
        )?;
        Ok(())
    }

    /// Up to `limit` dirty rows after `after` (exclusive), in key order: one page of a sync
    /// pass, found through the index over dirty rows.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn dirty_after(
        &self,
        after: Option<&CounterKey>,
        limit: usize,
    ) -> Result<Vec<(CounterKey, Row)>, StoreError> {
        self.page("WHERE state = 1 AND key > ?", after, limit)
    }

    /// Up to `limit` rows of any state after `after` (exclusive), in key order: one page of
    /// the anti-entropy sweep.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn rows_after(
        &self,
        after: Option<&CounterKey>,
        limit: usize,
    ) -> Result<Vec<(CounterKey, Row)>, StoreError> {
        self.page("WHERE key > ?", after, limit)
    }

    fn page(
        &self,
        filter: &str,
        after: Option<&CounterKey>,
        limit: usize,
    ) -> Result<Vec<(CounterKey, Row)>, StoreError> {
        let after = after.map(CounterKey::storage_key).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<SqlRow> = self
            .sql
            .exec(
                &format!("SELECT {COLUMNS} FROM counters {filter} ORDER BY key LIMIT ?"),
                vec![after.into(), limit.into()],
            )?
            .to_array()?;
        rows.into_iter().map(SqlRow::decode).collect()
    }

    /// Whether any row is dirty (one probe of the dirty index).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn any_dirty(&self) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct One {
            #[allow(dead_code, reason = "only its presence matters")]
            one: i64,
        }
        let rows: Vec<One> = self
            .sql
            .exec(
                "SELECT 1 AS one FROM counters WHERE state = 1 LIMIT 1",
                None,
            )?
            .to_array()?;
        Ok(!rows.is_empty())
    }
}
