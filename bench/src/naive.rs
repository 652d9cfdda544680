//! `naive`: the anti-pattern the merger replaces, one row updated per hit.
//!
//! A table `counters(id TEXT PRIMARY KEY, value)` and `clients` tasks, each on its own
//! connection, running one autocommitted `UPDATE counters SET value = value + 1 WHERE id = ?`
//! per hit over `counters` rows, chosen at random. Every hit is a commit that is durable
//! before it returns:
//!
//! - SQLite ([`sqlite`], P2): WAL mode with `synchronous=FULL` (the merger's
//!   `--durability full`); the commits queue for SQLite's single write lock, each with its own
//!   fsync.
//! - Postgres ([`postgres`], P13): `synchronous_commit=on` (the merger's `--durability full`
//!   on Postgres); a commit returns once its WAL is flushed. Rows are locked one at a time, and
//!   concurrent commits may share a WAL flush (Postgres' group commit), so more clients help
//!   up to a point.
//!
//! At the end the table's sum must equal the hits counted, or the run fails.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Database, Pool, Postgres, Sqlite};

use crate::{Error, Verdict, per_second};

/// How long a writer waits for SQLite's write lock before its hit fails: long enough that
/// contention shows as waiting, never as lost hits.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `tally-bench naive`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SQLite database file (created if missing; its `counters` table is dropped and recreated).
    #[arg(
        long,
        env = "TALLY_BENCH_NAIVE_DB",
        required_unless_present = "postgres"
    )]
    db: Option<PathBuf>,
    /// A Postgres database (`postgres://USER@HOST:PORT/DB`) instead of SQLite; its `counters`
    /// table is dropped and recreated.
    #[arg(long, conflicts_with = "db")]
    postgres: Option<String>,
    /// How long to count hits, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Rows the hits are spread over, uniformly at random.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    counters: u32,
}

/// What a naive run measured.
#[derive(Debug, Clone, Copy)]
pub struct NaiveRun {
    /// Hits acknowledged (each a committed `UPDATE`).
    pub hits: u64,
    /// The run's duration.
    pub seconds: f64,
    /// The table's sum at the end.
    pub table_sum: i64,
    /// Clients.
    pub clients: u32,
}

impl NaiveRun {
    /// Durable hits per second.
    pub fn hits_per_second(&self) -> f64 {
        per_second(self.hits, self.seconds)
    }

    /// Whether the table holds every hit, exactly.
    pub fn exact(&self) -> bool {
        u64::try_from(self.table_sum) == Ok(self.hits)
    }
}

/// Runs the benchmark and prints its summary.
pub async fn run(args: Args) -> Result<Verdict, Error> {
    let (backend, run) = match (&args.postgres, &args.db) {
        (Some(url), _) => (
            "postgres",
            postgres(url, args.seconds, args.clients, args.counters).await?,
        ),
        (None, Some(db)) => (
            "sqlite",
            sqlite(db, args.seconds, args.clients, args.counters).await?,
        ),
        (None, None) => return Err("--db or --postgres is required".into()),
    };
    let rate = run.hits_per_second();
    println!(
        "naive_{backend} hits={} seconds={:.3} per_sec={rate:.0} clients={} counters={} table_sum={}",
        run.hits, run.seconds, args.clients, args.counters, run.table_sum
    );
    println!(
        "naive {backend} (one autocommitted UPDATE per hit, durable commits): {rate:.0} hits/s \
         from {} clients over {} rows",
        args.clients, args.counters
    );
    if !run.exact() {
        eprintln!(
            "FAIL: the table sums to {}, but {} hits were acknowledged",
            run.table_sum, run.hits
        );
        return Ok(Verdict::Fail);
    }
    Ok(Verdict::Pass)
}

/// Hits on a SQLite file in WAL mode with `synchronous=FULL`.
pub async fn sqlite(
    db: &std::path::Path,
    seconds: u64,
    clients: u32,
    counters: u32,
) -> Result<NaiveRun, Error> {
    let options = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(clients)
        .min_connections(clients)
        .connect_with(options)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS counters")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE counters (id TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    let ids = fill::<Sqlite>(
        &pool,
        counters,
        "INSERT INTO counters (id, value) VALUES (?, 0)",
    )
    .await?;
    let update = "UPDATE counters SET value = value + 1 WHERE id = ?";
    measure(&pool, ids, update, seconds, clients).await
}

/// Hits on a Postgres database, every connection with `synchronous_commit=on`.
pub async fn postgres(
    url: &str,
    seconds: u64,
    clients: u32,
    counters: u32,
) -> Result<NaiveRun, Error> {
    let options = PgConnectOptions::from_str(url)?.options([("synchronous_commit", "on")]);
    let pool = PgPoolOptions::new()
        .max_connections(clients)
        .min_connections(clients)
        .connect_with(options)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS counters")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE counters (id TEXT PRIMARY KEY, value BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    let ids = fill::<Postgres>(
        &pool,
        counters,
        "INSERT INTO counters (id, value) VALUES ($1, 0)",
    )
    .await?;
    let update = "UPDATE counters SET value = value + 1 WHERE id = $1";
    measure(&pool, ids, update, seconds, clients).await
}

/// Inserts `counters` rows at 0 with `insert` (one text bind), and returns their ids.
async fn fill<DB>(pool: &Pool<DB>, counters: u32, insert: &str) -> Result<Arc<[String]>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let ids: Arc<[String]> = (0..counters).map(|i| format!("c{i}")).collect();
    let mut tx = pool.begin().await?;
    for id in ids.iter() {
        sqlx::query::<DB>(insert)
            .bind(id.clone())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(ids)
}

/// `clients` tasks running `update` (one text bind) until `seconds` have passed, then the
/// table's sum.
async fn measure<DB>(
    pool: &Pool<DB>,
    ids: Arc<[String]>,
    update: &'static str,
    seconds: u64,
    clients: u32,
) -> Result<NaiveRun, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    DB::QueryResult: RowsAffected,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(pool.clone(), Arc::clone(&ids), update, deadline)))
        .collect();
    let mut hits = 0u64;
    for task in tasks {
        hits += task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    // CAST: Postgres' SUM of BIGINT is NUMERIC; SQLite's is an integer either way.
    let (table_sum,): (i64,) =
        sqlx::query_as("SELECT CAST(COALESCE(SUM(value), 0) AS BIGINT) FROM counters")
            .fetch_one(pool)
            .await?;
    pool.close().await;
    Ok(NaiveRun {
        hits,
        seconds,
        table_sum,
        clients,
    })
}

/// One client: a hit (one autocommitted UPDATE) after another until `deadline`; returns
/// how many succeeded. A failed hit ends the run with its error.
async fn client<DB>(
    pool: Pool<DB>,
    ids: Arc<[String]>,
    update: &'static str,
    deadline: Instant,
) -> Result<u64, Error>
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let mut conn = pool.acquire().await?;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut hits = 0u64;
    while Instant::now() < deadline {
        let id = &ids[rng.random_range(0..ids.len())];
        let done = sqlx::query::<DB>(update)
            .bind(id.clone())
            .execute(&mut *conn)
            .await?;
        let changed = done.rows();
        if changed != 1 {
            return Err(format!("UPDATE of {id} changed {changed} rows").into());
        }
        hits += 1;
    }
    Ok(hits)
}

/// Rows a statement changed, whatever the database (sqlx has no trait for it).
trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}
