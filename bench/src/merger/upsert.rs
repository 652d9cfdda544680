//! P15's baseline: SQLite's own batched upsert of the merger's slot rows, in-process — no HTTP,
//! no JSON, no merge in memory, no async driver — the limit of the store the merger writes to.
//!
//! The database is one the merger created (its migrations: the same schema and indexes), opened
//! with the merger's settings (WAL, `synchronous=FULL` as `--durability full`, its page cache,
//! mmap and temp store). One writer, as the merger's commit task, commits transactions of
//! `rows_per_commit` slot upserts — the merger's mean slot rows per commit in the same run — in
//! key order, each the merger's growth upsert of one slot (`INSERT … ON CONFLICT … DO UPDATE …
//! WHERE` grown), prepared once and run through SQLite's C API (`rusqlite`), every one growing
//! its slot. The slots are those of the load: `counters` counters, `replicas` replicas each
//! sending windows of `per_sync` of them. (Driven through sqlx instead, one statement per row
//! costs a round trip to sqlx's worker thread each: about 21,500 rows/s here, a fifth of the
//! merger, which sends its batch as one statement.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, per_second};

/// What the baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct UpsertRun {
    /// Slot rows upserted, every one committed and durable.
    pub rows: u64,
    /// Transactions committed.
    pub commits: u64,
    /// The run's duration.
    pub seconds: f64,
}

impl UpsertRun {
    /// Durable slot upserts per second.
    pub fn rows_per_second(&self) -> f64 {
        per_second(self.rows, self.seconds)
    }

    /// The figure as the report shows it: rows/s, and the transactions behind it.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} ({} transactions in {:.1} s)",
            self.rows_per_second(),
            self.commits,
            self.seconds
        )
    }
}

/// The load's shape: how many counters and replicas, and how many counters one sync carries.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub counters: u32,
    pub replicas: u32,
    pub per_sync: u32,
}

impl Shape {
    /// The counters one sync's window holds: `per_sync`, at most all, at least one.
    fn window(self) -> usize {
        usize::try_from(self.per_sync.min(self.counters))
            .unwrap_or(1)
            .max(1)
    }
}

/// The rows of commit `round`, as `(counter, replica)` indexes: syncs of consecutive replicas
/// (of `replicas`), each a window of `per_sync` counters (of `counters`), `rows` of them at
/// most, in key order as the merger writes them.
fn commit_rows(
    round: usize,
    rows: usize,
    per_sync: usize,
    counters: usize,
    replicas: usize,
) -> Vec<(usize, usize)> {
    let syncs = rows.div_ceil(per_sync).max(1);
    let mut batch: Vec<(usize, usize)> = Vec::with_capacity(syncs * per_sync);
    for s in 0..syncs {
        let replica = (round * syncs + s) % replicas;
        let offset = (round * 7919 + s * 104_729) % counters;
        for k in 0..per_sync {
            batch.push(((offset + k) % counters, replica));
        }
    }
    batch.truncate(rows.max(1));
    batch.sort_unstable();
    batch.dedup();
    batch
}

/// Runs the baseline for `seconds` on `db`, a database the merger has created and closed.
pub async fn sqlite(
    db: &Path,
    shape: Shape,
    rows_per_commit: usize,
    seconds: u64,
) -> Result<UpsertRun, Error> {
    let db: PathBuf = db.to_owned();
    tokio::task::spawn_blocking(move || run(&db, shape, rows_per_commit, seconds))
        .await
        .map_err(|e| Error::from(format!("the upsert baseline panicked: {e}")))?
        .map_err(|e| Error::from(format!("SQLite: {e}")))
}

fn run(
    db: &Path,
    shape: Shape,
    rows_per_commit: usize,
    seconds: u64,
) -> rusqlite::Result<UpsertRun> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536; \
         PRAGMA mmap_size = 268435456; PRAGMA temp_store = memory;",
    )?;
    let tx = conn.transaction()?;
    let mut counters = Vec::new();
    for i in 0..shape.counters {
        let id: i64 = tx.query_row(
            "INSERT INTO counters (kind, name) VALUES ('g', ?1) RETURNING id",
            [format!("c{i}")],
            |row| row.get(0),
        )?;
        counters.push(id);
    }
    let mut replicas = Vec::new();
    for i in 0..shape.replicas {
        let id: i64 = tx.query_row(
            "INSERT INTO replicas (replica, region, first_sync, last_sync) \
             VALUES (?1, 'eu', 0, 0) RETURNING id",
            [format!("{:032x}", u128::from(i) + 1)],
            |row| row.get(0),
        )?;
        replicas.push(id);
    }
    tx.commit()?;

    let upsert = "INSERT INTO slots (counter, replica, p, n, updated_at) \
                  VALUES (?1, ?2, ?3, ?4, ?5) \
                  ON CONFLICT (counter, replica) DO UPDATE SET \
                  p = max(slots.p, excluded.p), n = max(slots.n, excluded.n), \
                  updated_at = max(slots.updated_at, excluded.updated_at) \
                  WHERE excluded.p > slots.p OR excluded.n > slots.n";
    let per_sync = shape.window();
    let mut totals = vec![0u64; counters.len() * replicas.len()];
    let zero = format!("{:020}", 0);
    let (mut rows, mut commits, mut round) = (0u64, 0u64, 0usize);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let batch = commit_rows(
            round,
            rows_per_commit,
            per_sync,
            counters.len(),
            replicas.len(),
        );
        let at = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let tx = conn.transaction()?;
        {
            let mut statement = tx.prepare_cached(upsert)?;
            for &(counter, replica) in &batch {
                let slot = &mut totals[counter * replicas.len() + replica];
                *slot += 1;
                let p = format!("{:020}", *slot);
                statement.execute(rusqlite::params![
                    counters[counter],
                    replicas[replica],
                    p,
                    zero,
                    at
                ])?;
            }
        }
        tx.commit()?;
        rows += u64::try_from(batch.len()).unwrap_or(u64::MAX);
        commits += 1;
        round += 1;
    }
    Ok(UpsertRun {
        rows,
        commits,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// P16's baseline: Postgres's own batched upsert of the merger's slot rows, in-process, on
/// `url` (a database the merger created: its schema and indexes, on the same server and
/// settings, `synchronous_commit=on`). `writers` connections, as many as the mergers, each
/// upserting the slots of its share of the replicas in transactions of `rows_per_commit` rows:
/// one `INSERT … SELECT FROM UNNEST(…) ORDER BY … ON CONFLICT … DO UPDATE … WHERE` grown, as
/// the merger's, by the rows' ids (no names to join, no carries to consult).
pub async fn postgres(
    url: &str,
    shape: Shape,
    rows_per_commit: usize,
    writers: usize,
    seconds: u64,
) -> Result<UpsertRun, Error> {
    use std::str::FromStr;

    let options =
        sqlx::postgres::PgConnectOptions::from_str(url)?.options([("synchronous_commit", "on")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(writers + 1).unwrap_or(u32::MAX))
        .connect_with(options)
        .await?;
    let counters: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO counters (kind, name) SELECT 'g', 'c' || i FROM generate_series(0, $1 - 1) i \
         RETURNING id",
    )
    .bind(i64::from(shape.counters))
    .fetch_all(&pool)
    .await?;
    let replicas: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO replicas (replica, region, first_sync, last_sync) \
         SELECT lpad(to_hex(i), 32, '0'), 'eu', 0, 0 FROM generate_series(1, $1) i RETURNING id",
    )
    .bind(i64::from(shape.replicas))
    .fetch_all(&pool)
    .await?;
    let upsert = "INSERT INTO slots AS s (counter, replica, p, n, updated_at) \
                  SELECT u.counter, u.replica, u.p::numeric, u.n::numeric, u.at \
                  FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int8[]) \
                      AS u(counter, replica, p, n, at) \
                  ORDER BY 1, 2 \
                  ON CONFLICT (counter, replica) DO UPDATE SET \
                      p = GREATEST(s.p, excluded.p), n = GREATEST(s.n, excluded.n), \
                      updated_at = GREATEST(s.updated_at, excluded.updated_at) \
                  WHERE excluded.p > s.p OR excluded.n > s.n";
    let per_sync = shape.window();
    let writers = writers.max(1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mine: Vec<i64> = replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| i % writers == w)
            .map(|(_, id)| *id)
            .collect();
        let (pool, counters) = (pool.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            let mut totals = vec![0u64; counters.len() * mine.len()];
            let (mut rows, mut commits, mut round) = (0u64, 0u64, 0usize);
            while Instant::now() < deadline && !mine.is_empty() {
                let batch =
                    commit_rows(round, rows_per_commit, per_sync, counters.len(), mine.len());
                let at = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
                let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for &(counter, replica) in &batch {
                    let slot = &mut totals[counter * mine.len() + replica];
                    *slot += 1;
                    columns.0.push(counters[counter]);
                    columns.1.push(mine[replica]);
                    columns.2.push(slot.to_string());
                    columns.3.push("0".to_owned());
                    columns.4.push(at);
                }
                let mut tx = pool.begin().await?;
                sqlx::query(upsert)
                    .bind(columns.0)
                    .bind(columns.1)
                    .bind(columns.2)
                    .bind(columns.3)
                    .bind(columns.4)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows += u64::try_from(batch.len()).unwrap_or(u64::MAX);
                commits += 1;
                round += 1;
            }
            Ok::<_, sqlx::Error>((rows, commits))
        }));
    }
    let (mut rows, mut commits) = (0, 0);
    for task in tasks {
        let (r, c) = task
            .await
            .map_err(|e| Error::from(format!("a writer panicked: {e}")))??;
        rows += r;
        commits += c;
    }
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(UpsertRun {
        rows,
        commits,
        seconds,
    })
}
