//! What a backend is to the transactions both backends share: its pool, how its SQL differs
//! (a few fragments), and the statements it writes its own way (batches travel as JSON on
//! SQLite, as arrays on Postgres; Postgres locks rows and tells the other mergers what
//! changed, SQLite holds one write lock and has no other merger). Every store trait is
//! implemented once, for any [`Backend`], in the module of its concern.

use std::fmt;
use std::ops::DerefMut;

use async_trait::async_trait;
use tally_crdt::{CounterKey, SketchKey, Timestamp};

use super::sketches::SketchColumns;
use super::sql::Conn;
use super::{SnapshotRow, StoreError, StoredCounter};
use crate::presence::PresenceRow;

/// A database the store runs on.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Its connection, as the shared transactions run statements on it.
    type Conn: Conn + ?Sized;
    /// A transaction on it.
    type Tx: DerefMut<Target = Self::Conn> + Send;
    /// A connection of its pool.
    type Pooled: DerefMut<Target = Self::Conn> + Send;

    /// `sqlite` or `postgres`, for logs and metrics.
    const NAME: &'static str;

    /// What follows a decimal-text parameter to make it a total's column type (`::numeric` on
    /// Postgres; SQLite stores totals as fixed-width text, [`super::encode_u64`]).
    const NUMERIC: &'static str;

    /// What follows a total's column to read it as decimal text.
    const TEXT: &'static str;

    /// What ends a query whose rows the transaction then changes, to lock them (Postgres;
    /// a SQLite transaction that has written holds the database's one write lock).
    const FOR_UPDATE: &'static str;

    /// What ends a query that claims rows for work, so that mergers claiming at once take
    /// different rows (Postgres; on SQLite there is one merger).
    const SKIP_LOCKED: &'static str;

    /// Begins a transaction.
    async fn begin(&self) -> Result<Self::Tx, StoreError>;

    /// Commits `tx`.
    async fn commit(tx: Self::Tx) -> Result<(), StoreError>;

    /// A connection of its pool, for a statement or a read outside a transaction.
    async fn acquire(&self) -> Result<Self::Pooled, StoreError>;

    /// Takes the lock that registering a milestone of counter `id` holds against commits:
    /// no commit of the counter comes between the count read after it and the registration.
    async fn lock_milestones(&self, conn: &mut Self::Conn, id: &str) -> Result<(), StoreError>;

    /// The counters asked for that have a slot, a carry, a base or a cut, each whole, each
    /// once, read on `conn` (a transaction's, to read what it wrote).
    async fn load_in(
        &self,
        conn: &mut Self::Conn,
        keys: &[CounterKey],
    ) -> Result<Vec<StoredCounter>, StoreError>;

    /// Writes history points ([`HistoryStore::write_history`](super::HistoryStore::write_history)),
    /// at least one, in one statement.
    async fn upsert_history(&self, rows: &[SnapshotRow]) -> Result<(), StoreError>;

    /// Stores presence rows ([`crate::presence::presence_rows`]), at least one, in one
    /// statement: each replaces the stored one of its id and reporter if its `seq` is higher.
    async fn upsert_presence(&self, rows: &[PresenceRow<'_>]) -> Result<(), StoreError>;

    /// The presence reports of `ids` not expired at `now`: columns `name`, `reporter`,
    /// `count` (decimal text) and `at`.
    async fn fresh_presence(
        &self,
        conn: &mut Self::Conn,
        ids: &[String],
        now: Timestamp,
    ) -> Result<Vec<Row<Self>>, StoreError>;

    /// Creates the sketches of `keys` that are missing, empty, in key order.
    async fn create_sketches(
        &self,
        conn: &mut Self::Conn,
        keys: &[SketchColumns],
    ) -> Result<(), StoreError>;

    /// The stored sketches of `keys` (columns `name`, `day`, `sketch`, `updated_at`), locked
    /// in key order for the rest of the transaction if `lock`.
    async fn sketch_rows(
        &self,
        conn: &mut Self::Conn,
        keys: &[SketchColumns],
        lock: bool,
    ) -> Result<Vec<Row<Self>>, StoreError>;

    /// Writes merged sketches (their wire form), grown at `at`.
    async fn write_sketches(
        &self,
        conn: &mut Self::Conn,
        writes: &[(SketchKey, Vec<u8>)],
        at: Timestamp,
    ) -> Result<(), StoreError>;
}

/// A row a backend's connection answers.
pub type Row<B> = <<B as Backend>::Conn as Conn>::Row;
