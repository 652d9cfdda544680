//! A unique object's storage (SQLite through the SQL API): one row per sketch.
//!
//! `sketches`: the key (`id` or `id@YYYY-MM-DD`), the object's own sketch and the part of it
//! the merger acknowledged (both in the sketch's compact wire form, as BLOBs), whether it
//! grew since (`dirty`, indexed so a sync finds what to send with a bounded query), and the
//! day of a daily sketch (so synced sketches of past days are deleted).

use serde::Deserialize;
use tally_crdt::{Day, HyperLogLog, SketchKey, Timestamp};
use worker::{SqlStorage, SqlStorageValue};

use crate::object::{META_TABLE, StoreError, get_meta, set_meta};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sketches (
    key TEXT PRIMARY KEY,
    own BLOB NOT NULL,
    acked BLOB NOT NULL,
    dirty INTEGER NOT NULL,
    day INTEGER,
    changed_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sketches_dirty ON sketches (key) WHERE dirty = 1;
CREATE INDEX IF NOT EXISTS sketches_by_day ON sketches (day) WHERE day IS NOT NULL;
";

/// Meta entries.
pub mod meta {
    /// The region the object serves.
    pub const REGION: &str = "region";
}

/// One sketch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Everything this object counted.
    pub own: HyperLogLog,
    /// What the merger acknowledged of it.
    pub acked: HyperLogLog,
    /// Whether `own` grew past `acked`.
    pub dirty: bool,
    /// When `own` last grew.
    pub changed_at: Timestamp,
}

#[derive(Deserialize)]
struct SqlRow {
    key: String,
    #[serde(deserialize_with = "blob")]
    own: Vec<u8>,
    #[serde(deserialize_with = "blob")]
    acked: Vec<u8>,
    dirty: i64,
    changed_at: i64,
}

/// A BLOB column: the SQL API hands it over as an `ArrayBuffer`, which the deserializer reads
/// as bytes only when asked for bytes (a `Vec<u8>` asks for a sequence).
fn blob<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl serde::de::Visitor<'_> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a BLOB")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    deserializer.deserialize_byte_buf(Bytes)
}

impl SqlRow {
    fn decode(self) -> Result<(SketchKey, Row), StoreError> {
        let damaged = |why| StoreError::Damaged {
            key: self.key.clone(),
            why,
        };
        let key = SketchKey::from_storage_key(&self.key).map_err(|_| damaged("bad key"))?;
        let own = HyperLogLog::from_bytes(&self.own).map_err(|_| damaged("bad sketch"))?;
        let acked = HyperLogLog::from_bytes(&self.acked).map_err(|_| damaged("bad sketch"))?;
        Ok((
            key,
            Row {
                own,
                acked,
                dirty: self.dirty != 0,
                changed_at: Timestamp::from_unix_ms(self.changed_at),
            },
        ))
    }
}

/// A unique object's tables.
pub struct SketchStore {
    sql: SqlStorage,
}

impl SketchStore {
    /// Opens the tables, creating them on first use.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn open(sql: SqlStorage) -> Result<SketchStore, StoreError> {
        sql.exec(META_TABLE, None)?;
        sql.exec(SCHEMA, None)?;
        Ok(SketchStore { sql })
    }

    /// A meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        get_meta(&self.sql, name)
    }

    /// Sets a meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        set_meta(&self.sql, name, value)
    }

    /// The row of `key`, if this object counted it.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn row(&self, key: &SketchKey) -> Result<Option<Row>, StoreError> {
        let rows: Vec<SqlRow> = self
            .sql
            .exec(
                "SELECT key, own, acked, dirty, changed_at FROM sketches WHERE key = ?",
                vec![key.to_string().into()],
            )?
            .to_array()?;
        rows.into_iter()
            .next()
            .map(|r| r.decode().map(|(_, row)| row))
            .transpose()
    }

    /// Writes the row of `key` (one statement, in place).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn put(&self, key: &SketchKey, row: &Row) -> Result<(), StoreError> {
        let day = key
            .day()
            .map_or(SqlStorageValue::Null, |d| d.days_since_epoch().into());
        self.sql.exec(
            "INSERT INTO sketches (key, own, acked, dirty, day, changed_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET own = excluded.own, acked = excluded.acked, \
             dirty = excluded.dirty, changed_at = excluded.changed_at",
            vec![
                key.to_string().into(),
                SqlStorageValue::Blob(row.own.to_bytes()),
                SqlStorageValue::Blob(row.acked.to_bytes()),
                i64::from(row.dirty).into(),
                day,
                row.changed_at.unix_ms().into(),
            ],
        )?;
        Ok(())
    }

    /// Up to `limit` dirty rows after `after` (exclusive), in key order.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn dirty_after(
        &self,
        after: Option<&SketchKey>,
        limit: usize,
    ) -> Result<Vec<(SketchKey, Row)>, StoreError> {
        let after = after.map(ToString::to_string).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<SqlRow> = self
            .sql
            .exec(
                "SELECT key, own, acked, dirty, changed_at FROM sketches \
                 WHERE dirty = 1 AND key > ? ORDER BY key LIMIT ?",
                vec![after.into(), limit.into()],
            )?
            .to_array()?;
        rows.into_iter().map(SqlRow::decode).collect()
    }

    /// Whether any row is dirty.
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
                "SELECT 1 AS one FROM sketches WHERE dirty = 1 LIMIT 1",
                None,
            )?
            .to_array()?;
        Ok(!rows.is_empty())
    }

    /// Deletes the synced daily sketches of days before `day`: the merger holds them.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn forget_days_before(&self, day: Day) -> Result<(), StoreError> {
        self.sql.exec(
            "DELETE FROM sketches WHERE day IS NOT NULL AND day < ? AND dirty = 0",
            vec![day.days_since_epoch().into()],
        )?;
        Ok(())
    }
}
