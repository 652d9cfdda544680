//! `naive`: the anti-pattern the merger replaces, one SQLite row updated per hit.
//!
//! A table `counters(id TEXT PRIMARY KEY, value INTEGER)` in WAL mode with `synchronous=FULL`
//! (the merger's `--durability full`: a commit is on disk before it is acknowledged), and
//! `clients` tasks, each on its own connection, running one autocommitted
//! `UPDATE counters SET value = value + 1 WHERE id = ?` per hit over `counters` rows. Every
//! hit is a commit with its own fsync, and the commits queue for SQLite's single write lock.
//! At the end the table's sum must equal the hits counted, or the run fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::{Error, Verdict, per_second};

/// How long a writer waits for SQLite's write lock before its hit fails: long enough that
/// contention shows as waiting, never as lost hits.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `tally-bench naive`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SQLite database file (created if missing; its `counters` table is dropped and recreated).
    #[arg(long, env = "TALLY_BENCH_NAIVE_DB")]
    db: PathBuf,
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

/// Runs the benchmark and prints its summary.
pub async fn run(args: Args) -> Result<Verdict, Error> {
    let options = SqliteConnectOptions::new()
        .filename(&args.db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(args.clients)
        .min_connections(args.clients)
        .connect_with(options)
        .await?;
    let ids = create_table(&pool, args.counters).await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let clients: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client(pool.clone(), Arc::clone(&ids), deadline)))
        .collect();
    let mut hits = 0u64;
    for client in clients {
        hits += client.await??;
    }
    let seconds = started.elapsed().as_secs_f64();

    let (sum,): (i64,) = sqlx::query_as("SELECT COALESCE(SUM(value), 0) FROM counters")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    let rate = per_second(hits, seconds);
    println!(
        "naive_sqlite hits={hits} seconds={seconds:.3} per_sec={rate:.0} clients={} counters={} table_sum={sum}",
        args.clients, args.counters
    );
    println!(
        "naive SQLite (one autocommitted UPDATE per hit, WAL, synchronous=FULL): {rate:.0} hits/s \
         from {} clients over {} rows",
        args.clients, args.counters
    );
    if u64::try_from(sum) != Ok(hits) {
        eprintln!("FAIL: the table sums to {sum}, but {hits} hits were acknowledged");
        return Ok(Verdict::Fail);
    }
    Ok(Verdict::Pass)
}

/// (Re)creates the table with `counters` rows at 0, and returns their ids.
async fn create_table(pool: &SqlitePool, counters: u32) -> Result<Arc<[String]>, Error> {
    sqlx::query("DROP TABLE IF EXISTS counters")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE counters (id TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        .execute(pool)
        .await?;
    let ids: Arc<[String]> = (0..counters).map(|i| format!("c{i}")).collect();
    let mut tx = pool.begin().await?;
    for id in ids.iter() {
        sqlx::query("INSERT INTO counters (id, value) VALUES (?, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(ids)
}

/// One client: a hit (one autocommitted UPDATE) after another until `deadline`; returns
/// how many succeeded. A failed hit ends the run with its error.
async fn client(pool: SqlitePool, ids: Arc<[String]>, deadline: Instant) -> Result<u64, Error> {
    let mut conn = pool.acquire().await?;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut hits = 0u64;
    while Instant::now() < deadline {
        let id = &ids[rng.random_range(0..ids.len())];
        let done = sqlx::query("UPDATE counters SET value = value + 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() != 1 {
            return Err(format!("UPDATE of {id} changed {} rows", done.rows_affected()).into());
        }
        hits += 1;
    }
    Ok(hits)
}
