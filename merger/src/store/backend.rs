//! What a backend is to the transactions both backends share: its pool, how its SQL differs
//! ([`Dialect`], a few fragments), and the statements it writes its own way ([`Statements`]:
//! batches travel as JSON on SQLite and as arrays on Postgres; Postgres locks rows and tells
//! the other mergers what changed, SQLite holds one write lock and has no other merger).
//! Every store trait is implemented once, for any [`Backend`], in the module of its concern.

use std::fmt;

use async_trait::async_trait;
use tally_crdt::{CounterKey, SketchKey, Timestamp};
use tokio::sync::{mpsc, watch};

use super::sketches::SketchColumns;
use super::sql::{Conn, query};
use super::{
    CarryRow, Changes, Committed, ReplicaRow, SlotRow, SnapshotRow, Store, StoreError,
    StoredCounter,
};
use crate::milestone::Pending;
use crate::presence::PresenceRow;

/// A database the store runs on.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Its connection, with the statements it writes its own way.
    type Conn: Statements + sqlx::Connection<Database = Self::Db>;
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

    /// Closes every connection ([`Store::close`]); by default closes the pool (on SQLite,
    /// which checkpoints the WAL).
    async fn close_all(&self) {
        self.pool().close().await;
    }

    /// The counters other processes change ([`Store::watch`]). By default none: one process
    /// owns the database (SQLite's file).
    fn changes(&self, _stop: watch::Receiver<bool>) -> Option<mpsc::Receiver<Changes>> {
        None
    }

    /// When a watcher last finished a catch-up round ([`Store::caught_up_at`]); by default
    /// never, as there is no watcher.
    fn caught_up_at(&self) -> Option<std::time::Instant> {
        None
    }

    /// Writes one batch ([`CounterStore::commit`](super::CounterStore::commit)).
    async fn commit_batch(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
    ) -> Result<Committed, StoreError>;

    /// Writes history points ([`HistoryStore::write_history`](super::HistoryStore::write_history)),
    /// at least one, in one statement.
    async fn upsert_history(&self, rows: &[SnapshotRow]) -> Result<(), StoreError>;

    /// Stores presence rows ([`crate::presence::presence_rows`]), at least one, in one
    /// statement: each replaces the stored one of its id and reporter if its `seq` is higher.
    async fn upsert_presence(&self, rows: &[PresenceRow<'_>]) -> Result<(), StoreError>;

    /// Tells the other mergers that counters `changed` changed, when `conn`'s transaction
    /// commits. By default nothing: no other merger shares the database.
    async fn changed(&self, _conn: &mut Self::Conn, _changed: &[KindId]) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl<B: Backend> Store for B {
    fn backend(&self) -> &'static str {
        B::DIALECT.name()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        query("SELECT 1")
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(())
    }

    async fn close(&self) {
        self.close_all().await;
    }

    fn watch(&self, stop: watch::Receiver<bool>) -> Option<mpsc::Receiver<Changes>> {
        self.changes(stop)
    }

    fn caught_up_at(&self) -> Option<std::time::Instant> {
        Backend::caught_up_at(self)
    }
}

/// A counter as a change names it: its kind and id.
pub type KindId = (String, String);

/// `key` as a change names it.
pub fn kind_id(key: &CounterKey) -> KindId {
    (key.kind().as_str().to_owned(), key.id().to_owned())
}

/// The rows a connection answers to a query, or why not.
pub type Fetched<C> = Result<Vec<<C as Conn>::Row>, StoreError>;

/// The statements a backend writes its own way, on its connection (a transaction's, to read
/// what it wrote).
#[async_trait]
pub trait Statements: Conn {
    /// The counters asked for that have a slot, a carry, a base or a cut, each whole, each
    /// once.
    async fn load_in(&mut self, keys: &[CounterKey]) -> Result<Vec<StoredCounter>, StoreError>;

    /// Takes the lock that registering a milestone of counter `id` holds against commits:
    /// no commit of the counter comes between the count read after it and the registration.
    async fn lock_milestones(&mut self, id: &str) -> Result<(), StoreError>;

    /// Locks the pending milestones of counters `names` (kind `g`), in key order (so two
    /// transactions never wait on each other in a cycle), and answers them by counter.
    async fn lock_pending(&mut self, names: &[&str]) -> Result<Pending, StoreError>;

    /// Writes `counter`'s cuts (every region's, replacing those held) and its objects' shares
    /// of them (none is held: [`super::epochs`] deleted them); `id` is its store id.
    async fn write_cuts(&mut self, id: i64, counter: &StoredCounter) -> Result<(), StoreError>;

    /// Merges `carries` into the stored ones (column by column, max) and deletes the slots
    /// the stored carries then hold; answers the counters whose carries changed.
    async fn merge_carries(&mut self, carries: &[CarryRow]) -> Result<Vec<KindId>, StoreError>;

    /// The presence reports of `ids` not expired at `now`: columns `name`, `reporter`,
    /// `count` (decimal text) and `at`.
    async fn presence_in(&mut self, ids: &[String], now: Timestamp) -> Fetched<Self>;

    /// Creates the sketches of `keys` that are missing, empty, in key order.
    async fn create_sketches(&mut self, keys: &[SketchColumns]) -> Result<(), StoreError>;

    /// The stored sketches of `keys` (columns `name`, `day`, `sketch`, `updated_at`), locked
    /// in key order for the rest of the transaction if `lock`.
    async fn sketches_in(&mut self, keys: &[SketchColumns], lock: bool) -> Fetched<Self>;

    /// Writes merged sketches (their wire form), grown at `at`.
    async fn write_sketches(
        &mut self,
        writes: &[(SketchKey, Vec<u8>)],
        at: Timestamp,
    ) -> Result<(), StoreError>;
}

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

    /// Locks the counter of kind `$1` and id `$2` for the rest of the transaction (its row;
    /// on SQLite a write, its epoch set to itself, takes the write lock) if it meets `filter`,
    /// and answers its `id`, `epoch`, `deleted` and `reset_at`.
    pub fn lock_counter(self, filter: &str) -> String {
        match self {
            Dialect::Sqlite => format!(
                "UPDATE counters AS c SET epoch = epoch WHERE kind = $1 AND name = $2 \
                 AND {filter} RETURNING id, epoch, deleted, reset_at"
            ),
            Dialect::Postgres => format!(
                "SELECT id, epoch, deleted, reset_at FROM counters c \
                 WHERE kind = $1 AND name = $2 AND {filter} FOR UPDATE"
            ),
        }
    }

    /// Locks counter `$1` (its store id) for the rest of the transaction, as
    /// [`Dialect::lock_counter`] does.
    pub const fn lock_counter_id(self) -> &'static str {
        match self {
            Dialect::Sqlite => "UPDATE counters SET epoch = epoch WHERE id = $1",
            Dialect::Postgres => "SELECT 1 FROM counters WHERE id = $1 FOR UPDATE",
        }
    }

    /// Locks the rows of replicas `$1..=$2` (an object's incarnations) in id order, for a
    /// retirement; on SQLite the write that follows takes the write lock.
    pub const fn lock_generations(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(
                "SELECT id FROM replicas WHERE replica BETWEEN $1 AND $2 ORDER BY replica FOR UPDATE",
            ),
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
