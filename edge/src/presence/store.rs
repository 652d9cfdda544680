//! A presence object's storage (SQLite through the SQL API): its leases and its meta.
//!
//! - `leases`: one row per (id, session) with the lease's end, indexed by that end, so the
//!   sweep finds the expired ones with a range scan. Bounded by `PRESENCE_MAX_SESSIONS`.
//! - `meta`: the reporter id (one per storage lifetime), the last report's sequence number,
//!   the region.
//!
//! Sockets are not stored: the runtime keeps hibernated sockets and their attachments.

use serde::Deserialize;
use tally_crdt::Timestamp;
use worker::SqlStorage;

use crate::object::{META_TABLE, StoreError, get_meta, set_meta};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    id TEXT NOT NULL,
    session TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (id, session)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_by_end ON leases (expires_at);
";

/// Meta entries.
pub mod meta {
    /// The reporter id the merger knows this object's reports by.
    pub const REPORTER: &str = "reporter";
    /// The sequence number of the last report sent.
    pub const SEQ: &str = "seq";
    /// The region the object serves.
    pub const REGION: &str = "region";
}

/// A presence object's tables.
pub struct LeaseStore {
    sql: SqlStorage,
}

#[derive(Deserialize)]
struct IdCount {
    id: String,
    n: i64,
}

impl LeaseStore {
    /// Opens the tables, creating them on first use.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn open(sql: SqlStorage) -> Result<LeaseStore, StoreError> {
        sql.exec(META_TABLE, None)?;
        sql.exec(SCHEMA, None)?;
        Ok(LeaseStore { sql })
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

    /// Whether `session` of `id` holds a lease that has not ended by `now`.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn is_live(&self, id: &str, session: &str, now: Timestamp) -> Result<bool, StoreError> {
        let rows: Vec<IdCount> = self
            .sql
            .exec(
                "SELECT id, 1 AS n FROM leases WHERE id = ? AND session = ? AND expires_at > ?",
                vec![id.into(), session.into(), now.unix_ms().into()],
            )?
            .to_array()?;
        Ok(!rows.is_empty())
    }

    /// Sets the lease of `session` of `id` to end at `until` (a join or a renewal).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn renew(&self, id: &str, session: &str, until: Timestamp) -> Result<(), StoreError> {
        self.sql.exec(
            "INSERT INTO leases (id, session, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (id, session) DO UPDATE SET expires_at = excluded.expires_at",
            vec![id.into(), session.into(), until.unix_ms().into()],
        )?;
        Ok(())
    }

    /// Ends the lease of `session` of `id`; whether it was live at `now`.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn leave(&self, id: &str, session: &str, now: Timestamp) -> Result<bool, StoreError> {
        let live = self.is_live(id, session, now)?;
        self.sql.exec(
            "DELETE FROM leases WHERE id = ? AND session = ?",
            vec![id.into(), session.into()],
        )?;
        Ok(live)
    }

    /// Deletes the leases that ended by `now`, at most `limit` (oldest first); how many.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn expire(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ended: Vec<IdCount> = self
            .sql
            .exec(
                "SELECT '' AS id, count(*) AS n FROM \
                 (SELECT 1 FROM leases WHERE expires_at <= ? LIMIT ?)",
                vec![now.unix_ms().into(), limit.into()],
            )?
            .to_array()?;
        let n = ended
            .first()
            .map_or(0, |r| usize::try_from(r.n).unwrap_or(0));
        if n > 0 {
            self.sql.exec(
                "DELETE FROM leases WHERE (id, session) IN \
                 (SELECT id, session FROM leases WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                vec![now.unix_ms().into(), limit.into()],
            )?;
        }
        Ok(n)
    }

    /// The live leases per id at `now` (bounded by the sessions an object may hold).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn live_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<IdCount> = self
            .sql
            .exec(
                "SELECT id, count(*) AS n FROM leases WHERE expires_at > ? GROUP BY id",
                vec![now.unix_ms().into()],
            )?
            .to_array()?;
        Ok(rows
            .into_iter()
            .map(|r| (r.id, u64::try_from(r.n).unwrap_or(0)))
            .collect())
    }
}
