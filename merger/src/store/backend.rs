//! What a backend is to the transactions both backends share: its pool, how its SQL differs
//! (a few fragments), and the statements it writes its own way (batches travel as JSON on
//! SQLite, as arrays on Postgres; Postgres locks rows and tells the other mergers what
//! changed, SQLite holds one write lock and has no other merger). Every store trait is
//! implemented once, for any [`Backend`], in the module of its concern.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use tally_crdt::{CounterKey, SketchKey, Timestamp};

use super::sketches::SketchColumns;
use super::sql::Conn;
use super::{
    CarryRow, Committed, Epoch, ReplicaRow, SlotRow, SnapshotRow, StoreError, StoredCounter,
};
use crate::presence::PresenceRow;

/// A database the store runs on.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Its connection, as the shared transactions run statements on it.
    type Conn: Conn + sqlx::Connection<Database = Self::Db>;
    /// sqlx's database.
    type Db: sqlx::Database<Connection = Self::Conn> + Sync;

    /// How its SQL differs.
    const DIALECT: Dialect;

    /// Its pool.
    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// Begins a transaction.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Self::Db>, StoreError> {
        Ok(self.pool().begin().await?)
    }

    /// Commits `tx`.
    async fn commit(tx: sqlx::Transaction<'static, Self::Db>) -> Result<(), StoreError> {
        Ok(tx.commit().await?)
    }

    /// A connection of its pool, for a statement or a read outside a transaction.
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Self::Db>, StoreError> {
        Ok(self.pool().acquire().await?)
    }

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

    /// Writes one batch ([`CounterStore::commit`](super::CounterStore::commit)).
    async fn commit_batch(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
    ) -> Result<Committed, StoreError>;

    /// Merges `carries` into the stored ones (column by column, max) and deletes the slots
    /// the stored carries then hold; answers the counters (kind and id) whose carries changed.
    async fn merge_carries(
        &self,
        conn: &mut Self::Conn,
        carries: &[CarryRow],
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Locks the rows of replicas `first..=last` (an object's incarnations), in id order, for
    /// a retirement.
    async fn lock_generations(
        &self,
        conn: &mut Self::Conn,
        first: &str,
        last: &str,
    ) -> Result<(), StoreError>;

    /// Locks the pending milestones of counters `names` (kind `g`), in key order (so two
    /// transactions never wait on each other in a cycle), and answers them by counter.
    async fn lock_pending(
        &self,
        conn: &mut Self::Conn,
        names: &[&str],
    ) -> Result<BTreeMap<String, Vec<u64>>, StoreError>;

    /// Locks `key`'s counter for the rest of the transaction (its row; on SQLite the write
    /// lock) and answers its id and epoch: created first if `create`, `None` when it does not
    /// exist or, if `counted`, has no slot, carry or base.
    async fn lock_counter(
        &self,
        conn: &mut Self::Conn,
        key: &CounterKey,
        create: bool,
        counted: bool,
    ) -> Result<Option<(i64, Epoch)>, StoreError>;

    /// Locks counter `id` (its store id) as [`Backend::lock_counter`] does.
    async fn lock_counter_id(&self, conn: &mut Self::Conn, id: i64) -> Result<(), StoreError>;

    /// Writes `counter`'s cuts (every region's) and its objects' shares of them, replacing
    /// those held; `id` is its store id.
    async fn write_cuts(
        &self,
        conn: &mut Self::Conn,
        id: i64,
        counter: &StoredCounter,
    ) -> Result<(), StoreError>;

    /// Tells the other mergers that counters `changed` (kind and id) changed, when the
    /// transaction commits (Postgres; SQLite has no other mergers).
    async fn changed(
        &self,
        conn: &mut Self::Conn,
        changed: &[(String, String)],
    ) -> Result<(), StoreError>;

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

/// How a backend's SQL differs from the other's, in the few fragments the shared statements
/// take from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: totals are fixed-width decimal text ([`super::encode_u64`]); a transaction
    /// that has written holds the database's one write lock, and one merger uses the file.
    Sqlite,
    /// Postgres: totals are `NUMERIC`; rows are locked one by one, and several mergers share
    /// the database.
    Postgres,
}

impl Dialect {
    /// `sqlite` or `postgres`, for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// What follows a decimal-text parameter (fixed-width, [`super::encode_u128`]) to make it a
    /// total's column type.
    pub const fn numeric(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "::numeric",
        }
    }

    /// What follows a total's column to read it as decimal text.
    pub const fn text(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "::text",
        }
    }

    /// What ends a query whose rows the transaction then changes, to lock them.
    pub const fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// What ends a query that claims rows for work, so that mergers claiming at once take
    /// different rows.
    pub const fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// What ends a query whose rows of table `alias` the transaction then changes, to lock
    /// them (and them alone).
    pub fn for_update_of(self, alias: &str) -> String {
        match self {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(" FOR UPDATE OF {alias}"),
        }
    }

    /// A flag's false value, as a column holds it.
    pub const fn no(self) -> &'static str {
        match self {
            Dialect::Sqlite => "0",
            Dialect::Postgres => "false",
        }
    }
}
