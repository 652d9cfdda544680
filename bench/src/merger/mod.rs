//! `merger`: the merger benchmarks of `docs/benchmarks.md` (P2, P3, P4, P13, the million
//! counters), side by side in one run, with their correctness checks
//! (`scripts/bench-merger.sh`).
//!
//! Everything runs on loopback with free ports, in a temp dir: the release merger binary
//! (started by the end-to-end harness, [`tally_e2e::MergerProcess::launch`], one per
//! database, always `--durability full`), and what it is measured against
//! ([`process::Background`]). `--phase` runs parts alone.
//!
//! - **P2** (`--phase p2`): durable slot-updates/s of the merger on SQLite under
//!   [`sync_load`](crate::sync_load) ÷ durable hits/s of one autocommitted SQLite `UPDATE` per
//!   hit ([`crate::naive`], WAL, `synchronous=FULL`).
//! - **P3** (`p3`): the same merger figure ÷ Redis `INCR`, one command per hit, no persistence
//!   (`redis-benchmark`, [`redis`]); beside it, pipelined and `appendfsync always`.
//! - **P4** (`p4`): `wrk` on the merger's `GET /v1/counters/{id}` ÷ `wrk` on the hello-world
//!   server (`tally-bench hello`, another process), alternating rounds, medians compared.
//! - **P13** (`p13`): on a throwaway Postgres cluster (the harness's [`PostgresCluster`]),
//!   slot-updates/s of two mergers sharing one database, the sync load split over both, ÷
//!   hits/s of one autocommitted Postgres `UPDATE` per hit at the client count that suits
//!   it best; both with `synchronous_commit=on` on the same server. One merger alone beside.
//! - **million** (`million`, `million-pg`): a database filled with a million counters through
//!   the sync API ([`million`]); the merger's time from spawn to its first `/readyz` 200 and
//!   its resident memory, against an empty database, then after reading 10,000, 100,000,
//!   200,000 and 300,000 counters at random through a cache of `--cache-counters` (100,000).
//!
//! Checks (failures exit non-zero; a missed target does not): every sync acknowledged with a
//! right answer and every count read back exact; the naive tables' sums equal the hits
//! counted; wrk saw only 2xx answers; the million fill is all stored and reads right; the
//! cache holds at most its bound; every merger exits cleanly on SIGTERM.

mod million;
mod process;
mod redis;
mod upsert;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tally_e2e::postgres::PostgresCluster;
use tally_e2e::{MergerLaunch, MergerProcess};
use tokio::process::Command;

use crate::memory::Rss;
use crate::merger::process::{Background, answers, rss_of};
use crate::merger::redis::Redis;
use crate::naive::{self, NaiveRun};
use crate::report::{Report, Target, median, ratio, step};
use crate::sync_load::{Load, LoadReport, run_load};
use crate::wrk::{Wrk, WrkRun};
use crate::{Error, Verdict, to_f64};

/// The counter P4 reads.
const READ_COUNTER: &str = "bench-read";
/// Longest wait for a merger to exit after SIGTERM: its shutdown timeout (10 s) for open
/// requests, then the queued commits and a last history pass.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// The same after the million fill: the last history pass then writes a point for each of
/// the counters the fill changed, most of them evicted from the cache (loaded again).
const FILLED_STOP_LIMIT: Duration = Duration::from_secs(600);

/// Options of `tally-bench compare merger`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The merger binary (`cargo build --release -p tally-merger`).
    #[arg(long, default_value = "target/release/tally-merger")]
    merger: PathBuf,
    /// Seconds of each sync load and each naive run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Seconds of each wrk run (P4).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    wrk_seconds: u64,
    /// P4 rounds: the merger and the hello server alternate this many times.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    wrk_rounds: u32,
    /// wrk connections (P4).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    wrk_connections: u32,
    /// INCRs per redis-benchmark run (ten times as many when pipelined).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1000..))]
    redis_requests: u64,
    /// Sync-load clients (P2, P3, P13; split over both mergers in P13).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// Replica incarnations per sync-load client.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    replicas_per_client: u32,
    /// Counters in each sync (at most 1000).
    #[arg(long, default_value_t = 500)]
    counters_per_sync: usize,
    /// Naive SQLite clients (P2).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    naive_clients: u32,
    /// Naive Postgres client counts tried (P13); the fastest is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 32, 64])]
    pg_naive_clients: Vec<u32>,
    /// Counters of the million phases.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..))]
    million_counters: u64,
    /// The merger's `--cache-counters` in the million phases (its default).
    #[arg(long, default_value_t = 100_000)]
    cache_counters: u64,
    /// Random reads after which the million phases measure the merger's memory (cumulative,
    /// increasing; past `--cache-counters` distinct counters read the cache is full).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000, 200_000, 300_000])]
    million_reads: Vec<u64>,
    /// Concurrent clients filling and reading the million counters.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    million_clients: u32,
    /// Restarts measured on each database of the million phases (medians reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    restarts: u32,
    /// Run only these parts (comma-separated or repeated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    phase: Vec<Phase>,
    /// Keep the temp dir (databases, logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// The parts of the run, for `--phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// The merger on SQLite ÷ one SQLite UPDATE per hit.
    P2,
    /// The merger on SQLite ÷ Redis INCR.
    P3,
    /// Merger reads ÷ hello world.
    P4,
    /// The merger on SQLite ÷ SQLite's own batched upsert of the same rows, in-process.
    P15,
    /// Two mergers on Postgres ÷ one Postgres UPDATE per hit.
    P13,
    /// A million counters on SQLite: start time and memory.
    Million,
    /// A million counters on Postgres: start time and memory.
    MillionPg,
}

/// The database behind a million phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Runs the merger benchmarks and prints the results.
pub async fn run(args: Args) -> Result<Verdict, Error> {
    let started = Instant::now();
    let root = tally_e2e::root();
    let merger_bin = root.join(&args.merger);
    if !merger_bin.is_file() {
        return Err(format!(
            "{} is missing: cargo build --release -p tally-merger",
            merger_bin.display()
        )
        .into());
    }
    let temp = tempfile::Builder::new()
        .prefix("tally-bench-merger.")
        .tempdir()?;
    let work = temp.path().to_path_buf();
    std::fs::create_dir_all(work.join("logs"))?;
    let mut bench = Bench {
        args,
        work,
        merger_bin,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        postgres: None,
        baselines: Baselines::default(),
        report: Report::default(),
    };
    let outcome = bench.phases().await;
    if let Err(e) = &outcome {
        bench.report.check(false, format!("the run stopped: {e}"));
    }
    // Stops the server and removes its directory.
    drop(bench.postgres.take());
    bench.report.figure(
        "the whole run",
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let heading = format!(
        "merger benchmarks: one run, side by side, on loopback ({cores} cores, shared with the load generators)"
    );
    Ok(bench.report.finish(
        &heading,
        "merger",
        temp,
        bench.args.keep,
        "databases and logs (merger logs under logs/)",
    ))
}

/// Everything a run shares.
struct Bench {
    args: Args,
    work: PathBuf,
    merger_bin: PathBuf,
    http: reqwest::Client,
    /// The throwaway cluster of P13 and million-pg, started on first use.
    postgres: Option<PostgresCluster>,
    /// P2's and P3's baselines, once measured: for their ceilings beside P15.
    baselines: Baselines,
    report: Report,
}

/// The one-write-per-hit baselines of P2 and P3, in hits/s.
#[derive(Debug, Default)]
struct Baselines {
    naive_sqlite: Option<f64>,
    redis_incr: Option<f64>,
}

impl Bench {
    async fn phases(&mut self) -> Result<(), Error> {
        if [Phase::P2, Phase::P3, Phase::P4, Phase::P15]
            .iter()
            .any(|p| self.wants(*p))
        {
            self.sqlite_phases().await?;
        }
        if self.wants(Phase::P13) {
            self.p13().await?;
        }
        if self.wants(Phase::Million) {
            self.million(Backend::Sqlite).await?;
        }
        if self.wants(Phase::MillionPg) {
            self.million(Backend::Postgres).await?;
        }
        Ok(())
    }

    fn wants(&self, phase: Phase) -> bool {
        self.args.phase.is_empty() || self.args.phase.contains(&phase)
    }

    /// A merger (release, `--durability full`, and `extra`) on `database`; its log is
    /// `logs/<name>.log`.
    async fn start_merger(
        &self,
        database: &str,
        name: &str,
        extra: &[String],
    ) -> Result<MergerProcess, Error> {
        let mut launch = MergerLaunch::of(self.merger_bin.clone(), database);
        launch.extra = vec!["--durability".to_owned(), "full".to_owned()];
        launch.extra.extend_from_slice(extra);
        launch.log = Some(self.work.join(format!("logs/{name}.log")));
        // Start times are a figure of P13: polled every 2 ms.
        launch.poll = Duration::from_millis(2);
        Ok(MergerProcess::launch(&launch).await?)
    }

    /// Stops a merger; one that does not exit cleanly within [`STOP_LIMIT`] fails a check.
    async fn stop_merger(&mut self, merger: MergerProcess, name: &str) -> Option<Duration> {
        self.stop_merger_within(merger, name, STOP_LIMIT).await
    }

    /// Stops a merger; one that does not exit cleanly within `limit` fails a check. Answers
    /// how long it took.
    async fn stop_merger_within(
        &mut self,
        merger: MergerProcess,
        name: &str,
        limit: Duration,
    ) -> Option<Duration> {
        match merger.stop(limit).await {
            Ok(took) => Some(took),
            Err(e) => {
                self.report
                    .check(false, format!("{name}: exits 0 on SIGTERM: {e}"));
                None
            }
        }
    }

    /// The sync load of P2, P3 and P13 against `urls`.
    fn load(&self, urls: Vec<String>) -> Load {
        Load {
            clients: self.args.clients,
            replicas_per_client: self.args.replicas_per_client,
            counters_per_sync: self.args.counters_per_sync,
            ..Load::new(urls, tally_e2e::TOKEN, self.args.seconds)
        }
    }

    /// Runs `load`, reports its figure and its check, and answers slot-updates/s.
    async fn sync_load(&mut self, label: &str, load: &Load) -> Result<f64, Error> {
        let run = run_load(load).await?;
        run.show_failures();
        self.report.figure(
            format!(
                "{label}, durable slot-updates/s ({} clients x {} replicas, {} counters/sync)",
                load.clients, load.replicas_per_client, load.counters_per_sync
            ),
            format!(
                "{:.0} (sync p50 {:.1} ms, p99 {:.1} ms; {:.1} syncs/s)",
                run.updates_per_second(),
                run.p50_ms,
                run.p99_ms,
                run.syncs_per_second()
            ),
        );
        self.report.check(run.passed(), describe_load(label, &run));
        Ok(run.updates_per_second())
    }

    /// P2, P3 and P4: one merger on SQLite.
    async fn sqlite_phases(&mut self) -> Result<(), Error> {
        step("starting the merger on SQLite (release, --durability full)");
        let database = sqlite_url(&self.work.join("sqlite/tally.db"));
        let mut merger = self.start_merger(&database, "merger-sqlite", &[]).await?;
        let updates = if self.wants(Phase::P2) || self.wants(Phase::P3) || self.wants(Phase::P15) {
            step(&format!(
                "sync-load against the merger, {} s",
                self.args.seconds
            ));
            let load = self.load(vec![merger.url.clone()]);
            Some(self.sync_load("merger on SQLite", &load).await?)
        } else {
            None
        };
        if let (Some(updates), true) = (updates, self.wants(Phase::P2)) {
            self.p2(updates).await?;
        }
        if let (Some(updates), true) = (updates, self.wants(Phase::P3)) {
            self.p3(updates).await?;
        }
        if self.wants(Phase::P4) {
            self.p4(&merger).await?;
        }
        // The merger's mean slot rows per commit in this run: P15's transaction size.
        let per_commit = if updates.is_some() {
            let metric = |series| tally_e2e::metric(&self.http, &merger.url, series);
            let (sum, count) = (
                metric("tally_commit_batch_slots_sum").await,
                metric("tally_commit_batch_slots_count").await,
            );
            (count > 0.0).then(|| sum / count)
        } else {
            None
        };
        self.report.check(
            merger.running(),
            "the SQLite merger ran through P2-P4".to_owned(),
        );
        self.stop_merger(merger, "the SQLite merger").await;
        if let (Some(updates), Some(per_commit), true) =
            (updates, per_commit, self.wants(Phase::P15))
        {
            self.p15(updates, per_commit).await?;
        }
        Ok(())
    }

    /// The slots the sync load writes, for the upsert baselines.
    fn upsert_shape(&self) -> upsert::Shape {
        let load = self.load(Vec::new());
        upsert::Shape {
            counters: u32::try_from(load.counters).unwrap_or(u32::MAX),
            replicas: load.clients.saturating_mul(load.replicas_per_client),
            per_sync: u32::try_from(load.counters_per_sync).unwrap_or(u32::MAX),
        }
    }

    /// Has a merger create its schema in `database` (started, then stopped), for the upsert
    /// baseline of `phase`: the baselines write through the merger's own tables and indexes.
    async fn schema_by_merger(&mut self, database: &str, phase: &str) -> Result<(), Error> {
        let name = format!("merger-{}-schema", phase.to_lowercase());
        let merger = self.start_merger(database, &name, &[]).await?;
        self.stop_merger(merger, &format!("the merger that made {phase}'s schema"))
            .await;
        Ok(())
    }

    /// P15: the merger's durable slot-updates/s ÷ SQLite's own batched upsert of the same rows
    /// in transactions of the merger's mean rows per commit ([`upsert::sqlite`]), on a
    /// database the merger created (its schema) with its settings.
    async fn p15(&mut self, updates: f64, per_commit: f64) -> Result<(), Error> {
        let file = self.work.join("upsert/tally.db");
        self.schema_by_merger(&sqlite_url(&file), "P15").await?;
        let rows = whole_rows(per_commit);
        step(&format!(
            "SQLite's own batched upsert: {rows} slot rows per transaction, one writer, {} s",
            self.args.seconds
        ));
        let run = upsert::sqlite(&file, self.upsert_shape(), rows, self.args.seconds).await?;
        self.report.figure(
            format!(
                "SQLite's own batched upsert of the merger's slot rows, in-process, slot \
                 upserts/s ({rows} rows per transaction, WAL, synchronous=FULL)"
            ),
            run.summary(),
        );
        self.report.ratio(
            "p15",
            "P15 merger / SQLite's own batched upsert of the same rows",
            ratio(updates, run.rows_per_second()),
            Target::AtLeast(0.5),
        );
        // What P2 and P3 would be if the merger took every row its store can: no design that
        // writes through this SQLite with this durability passes these.
        let ceilings = [
            (
                "p2_ceiling",
                "P2",
                "one SQLite UPDATE per hit",
                self.baselines.naive_sqlite,
            ),
            (
                "p3_ceiling",
                "P3",
                "Redis INCR, one per hit",
                self.baselines.redis_incr,
            ),
        ];
        for (key, name, baseline, hits) in ceilings {
            if let Some(hits) = hits {
                self.report.ratio(
                    key,
                    format!("{name}'s ceiling: SQLite's own batched upsert / {baseline}"),
                    ratio(run.rows_per_second(), hits),
                    Target::None,
                );
            }
        }
        Ok(())
    }

    /// P2's baseline and ratio.
    async fn p2(&mut self, updates: f64) -> Result<(), Error> {
        let clients = self.args.naive_clients;
        step(&format!(
            "naive SQLite: {clients} clients, one autocommitted UPDATE per hit, {} s",
            self.args.seconds
        ));
        let naive =
            naive::sqlite(&self.work.join("naive.db"), self.args.seconds, clients, 100).await?;
        self.naive_figure("naive SQLite", "WAL, synchronous=FULL", &naive);
        self.report.ratio(
            "p2",
            "P2 merger / one SQLite UPDATE per hit (moonshot 60)",
            ratio(updates, naive.hits_per_second()),
            Target::AtLeast(40.0),
        );
        self.baselines.naive_sqlite = Some(naive.hits_per_second());
        Ok(())
    }

    fn naive_figure(&mut self, label: &str, settings: &str, naive: &NaiveRun) {
        self.report.figure(
            format!(
                "{label}, one autocommitted UPDATE per hit, hits/s ({} clients, {settings})",
                naive.clients
            ),
            format!("{:.0}", naive.hits_per_second()),
        );
        self.report.check(
            naive.exact(),
            format!(
                "{label} ({} clients): the table sums to {}, {} hits acknowledged",
                naive.clients, naive.table_sum, naive.hits
            ),
        );
    }

    /// P3's baseline and ratio: Redis without persistence, then with `appendfsync always`.
    async fn p3(&mut self, updates: f64) -> Result<(), Error> {
        let n = self.args.redis_requests;
        step(&format!(
            "redis-benchmark INCR, 50 clients: {n} requests, {} pipelined",
            n * 10
        ));
        let mut figures = Vec::new();
        for (fsync_always, name) in [(false, "redis"), (true, "redis-aof")] {
            let redis = Redis::start(&self.work.join(name), fsync_always).await?;
            let one = redis.incr_per_second(n, 1).await?;
            let pipelined = redis.incr_per_second(n * 10, 16).await?;
            redis.stop().await?;
            figures.push((fsync_always, one, pipelined));
        }
        for (fsync_always, one, pipelined) in &figures {
            let persistence = if *fsync_always {
                "appendfsync always"
            } else {
                "no persistence"
            };
            self.report.figure(
                format!("Redis INCR/s, one command per hit, {persistence} (-c 50)"),
                format!("{one:.0}"),
            );
            self.report.figure(
                format!("Redis INCR/s, pipelined -P 16, {persistence} (-c 50)"),
                format!("{pipelined:.0}"),
            );
        }
        let plain = figures.first().map_or(0.0, |f| f.1);
        self.report.ratio(
            "p3",
            "P3 merger / Redis INCR, one per hit, no persistence",
            ratio(updates, plain),
            Target::AtLeast(2.5),
        );
        self.baselines.redis_incr = Some(plain);
        Ok(())
    }

    /// P4: wrk on the merger's read of one counter and on the hello server, in turn.
    async fn p4(&mut self, merger: &MergerProcess) -> Result<(), Error> {
        let sync = serde_json::json!({
            "version": 1,
            "replica": "0000000000000000000000000000b00c",
            "region": "bench",
            "counters": [{"id": READ_COUNTER, "kind": "g", "p": 715}],
        });
        let answer = self
            .http
            .post(format!("{}/v1/sync", merger.url))
            .bearer_auth(tally_e2e::TOKEN)
            .json(&sync)
            .send()
            .await?;
        if !answer.status().is_success() {
            return Err(format!("the sync of {READ_COUNTER} answered {}", answer.status()).into());
        }
        let read_url = format!("{}/v1/counters/{READ_COUNTER}", merger.url);
        let body = self.http.get(&read_url).send().await?.bytes().await?;
        let read = crate::sync_load::read_counter(&body);
        self.report.check(
            matches!(read, Ok((715, 1))),
            format!(
                "P4's counter reads 715 from 1 replica: {}",
                String::from_utf8_lossy(&body)
            ),
        );

        let port = tally_e2e::free_port();
        let hello_url = format!("http://127.0.0.1:{port}/");
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["hello", "--listen", &format!("127.0.0.1:{port}")]);
        let mut hello = Background::start(
            command,
            "tally-bench hello",
            &self.work.join("logs/hello.log"),
        )?;
        let http = self.http.clone();
        hello.wait_ready(|| answers(&http, &hello_url)).await?;

        let wrk = Wrk {
            threads: 2,
            connections: self.args.wrk_connections,
            seconds: self.args.wrk_seconds,
        };
        step(&format!(
            "P4: wrk -t2 -c{} -d{}s, {} rounds: the merger's GET /v1/counters/{{id}} and tally-bench hello, in turn",
            wrk.connections, wrk.seconds, self.args.wrk_rounds
        ));
        let (mut reads, mut hellos) = (Vec::new(), Vec::new());
        let mut unclean = Vec::new();
        for round in 0..self.args.wrk_rounds {
            for (name, url, runs) in [
                ("merger", read_url.as_str(), &mut reads),
                ("hello", hello_url.as_str(), &mut hellos),
            ] {
                let run = wrk.run(url, None, &[], &[]).await?;
                eprintln!(
                    "[bench]   round {round}, {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    run.rps,
                    run.p50_ms.unwrap_or(f64::NAN),
                    run.p99_ms.unwrap_or(f64::NAN)
                );
                if !run.clean() {
                    unclean.push(describe_wrk(name, &run));
                }
                runs.push(run.rps);
            }
        }
        hello.stop().await?;
        self.report.check(
            unclean.is_empty(),
            format!(
                "P4: every wrk request answered 2xx, no socket errors{}",
                if unclean.is_empty() {
                    String::new()
                } else {
                    format!(": {}", unclean.join("; "))
                }
            ),
        );
        let (read_median, hello_median) = (median(&reads), median(&hellos));
        self.report.figure(
            format!(
                "merger GET /v1/counters/{{id}}, req/s (wrk -t2 -c{} -d{}s, median of {})",
                wrk.connections,
                wrk.seconds,
                each(&reads)
            ),
            format!("{read_median:.0}"),
        );
        self.report.figure(
            format!(
                "hello-world axum, req/s (same wrk, median of {})",
                each(&hellos)
            ),
            format!("{hello_median:.0}"),
        );
        self.report.ratio(
            "p4",
            "P4 merger reads / hello world (medians)",
            ratio(read_median, hello_median),
            Target::AtLeast(0.9),
        );
        Ok(())
    }

    /// The Postgres cluster, started on first use.
    async fn postgres(&mut self) -> &PostgresCluster {
        if self.postgres.is_none() {
            step("starting a throwaway Postgres cluster (the harness's PostgresCluster)");
            self.postgres = Some(PostgresCluster::start().await);
        }
        self.postgres.as_ref().expect("started just above")
    }

    /// P13: two mergers on one Postgres database ÷ one Postgres UPDATE per hit.
    async fn p13(&mut self) -> Result<(), Error> {
        let pg = self.postgres().await;
        let show = |setting: &'static str| async move {
            let value = pg.psql("postgres", &format!("SHOW {setting}")).await;
            format!("{setting}={value}")
        };
        let settings = [
            show("server_version").await,
            show("fsync").await,
            show("synchronous_commit").await,
            show("wal_sync_method").await,
            show("shared_buffers").await,
        ];
        let one_db = pg.create_database("p13_one").await;
        let two_db = pg.create_database("p13_two").await;
        let naive_db = pg.create_database("p13_naive").await;
        self.report.figure(
            "Postgres server (throwaway cluster, same for both sides)",
            settings.join(", "),
        );

        step(&format!(
            "P13: sync-load against one merger on Postgres, {} s",
            self.args.seconds
        ));
        let one = self.start_merger(&one_db, "merger-pg-one", &[]).await?;
        let load = self.load(vec![one.url.clone()]);
        let alone = self.sync_load("one merger on Postgres", &load).await?;
        self.stop_merger(one, "the Postgres merger").await;

        step(&format!(
            "P13: sync-load split over two mergers on one Postgres database, {} s",
            self.args.seconds
        ));
        let a = self.start_merger(&two_db, "merger-pg-a", &[]).await?;
        let b = self.start_merger(&two_db, "merger-pg-b", &[]).await?;
        let load = self.load(vec![a.url.clone(), b.url.clone()]);
        let two = self
            .sync_load("two mergers on Postgres (clients split)", &load)
            .await?;
        // The mergers' mean slot rows per commit in this run: P16's transaction size.
        let (mut sum, mut count) = (0.0, 0.0);
        for merger in [&a, &b] {
            sum += tally_e2e::metric(&self.http, &merger.url, "tally_commit_batch_slots_sum").await;
            count +=
                tally_e2e::metric(&self.http, &merger.url, "tally_commit_batch_slots_count").await;
        }
        self.stop_merger(a, "Postgres merger a").await;
        self.stop_merger(b, "Postgres merger b").await;
        // Issue 27's goal for Postgres in place: slot updates that are HOT (no new index
        // entries), at least 0.9 of them. Read after the mergers stopped, so their backends
        // have flushed their statistics.
        let stats = self
            .postgres()
            .await
            .psql(
                &two_db,
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'slots'",
            )
            .await;
        let (updates, hot) = stats
            .split_once('|')
            .and_then(|(u, h)| Some((u.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)))
            .ok_or_else(|| format!("pg_stat_user_tables answered {stats:?} for slots"))?;
        self.report.figure(
            "two mergers on Postgres: slot updates in place (HOT) / all slot updates",
            format!("{hot} / {updates}"),
        );
        self.report.ratio(
            "p13_hot",
            "slot updates that were HOT (goal of issue 27: >= 0.9)",
            ratio(to_f64(hot), to_f64(updates)),
            Target::None,
        );

        let mut best: Option<NaiveRun> = None;
        for clients in self.args.pg_naive_clients.clone() {
            step(&format!(
                "P13: naive Postgres, {clients} clients, one autocommitted UPDATE per hit, {} s",
                self.args.seconds
            ));
            let naive = naive::postgres(&naive_db, self.args.seconds, clients, 100).await?;
            self.naive_figure("naive Postgres", "synchronous_commit=on", &naive);
            if best.is_none_or(|b| naive.hits_per_second() > b.hits_per_second()) {
                best = Some(naive);
            }
        }
        let Some(best) = best else {
            return Err("--pg-naive-clients names no client count".into());
        };
        self.report.ratio(
            "p13",
            format!(
                "P13 two mergers on Postgres / one Postgres UPDATE per hit ({} clients, its best; moonshot 30)",
                best.clients
            ),
            ratio(two, best.hits_per_second()),
            Target::AtLeast(10.0),
        );
        self.report.ratio(
            "p13_one",
            "one merger on Postgres / one Postgres UPDATE per hit (same baseline)",
            ratio(alone, best.hits_per_second()),
            Target::None,
        );
        if count > 0.0 {
            let upserts = self.p16(two, sum / count).await?;
            self.report.ratio(
                "p13_ceiling",
                "P13's ceiling: Postgres's own batched upsert / one Postgres UPDATE per hit",
                ratio(upserts, best.hits_per_second()),
                Target::None,
            );
        }
        Ok(())
    }

    /// P16: two mergers' durable slot-updates/s ÷ Postgres's own batched upsert of the same
    /// rows by two writers, in transactions of the mergers' mean rows per commit
    /// ([`upsert::postgres`]), on a database a merger created. Answers the baseline's rows/s.
    async fn p16(&mut self, two: f64, per_commit: f64) -> Result<f64, Error> {
        let database = self.postgres().await.create_database("p16_upsert").await;
        self.schema_by_merger(&database, "P16").await?;
        let rows = whole_rows(per_commit);
        step(&format!(
            "P16: Postgres's own batched upsert, two writers, {rows} slot rows per transaction, {} s",
            self.args.seconds
        ));
        let shape = self.upsert_shape();
        let run = upsert::postgres(&database, shape, rows, 2, self.args.seconds).await?;
        self.report.figure(
            format!(
                "Postgres's own batched upsert of the mergers' slot rows, in-process, slot \
                 upserts/s (2 writers, {rows} rows per transaction, synchronous_commit=on)"
            ),
            run.summary(),
        );
        self.report.ratio(
            "p16",
            "P16 two mergers on Postgres / Postgres's own batched upsert of the same rows",
            ratio(two, run.rows_per_second()),
            Target::AtLeast(0.5),
        );
        Ok(run.rows_per_second())
    }

    /// A million counters: fill through the sync API, then start time and memory against an
    /// empty database, and memory as random reads go through the bounded cache.
    async fn million(&mut self, backend: Backend) -> Result<(), Error> {
        let n = self.args.million_counters;
        let (name, database) = match backend {
            Backend::Sqlite => ("SQLite", sqlite_url(&self.work.join("million/tally.db"))),
            Backend::Postgres => (
                "Postgres",
                self.postgres().await.create_database("million").await,
            ),
        };
        let tag = name.to_lowercase();
        let extra = vec![
            "--cache-counters".to_owned(),
            self.args.cache_counters.to_string(),
        ];
        step(&format!(
            "million ({name}): a new database, then restarts on it empty"
        ));
        let log = format!("million-{tag}");
        let first = self.start_merger(&database, &log, &extra).await?;
        self.stop_merger(first, "the million merger").await;
        let empty = self.restarts(&database, &log, &extra).await?;

        step(&format!(
            "million ({name}): filling {n} counters through POST /v1/sync, 1000 per sync, {} clients",
            self.args.million_clients
        ));
        let merger = self.start_merger(&database, &log, &extra).await?;
        let filled = million::fill(&merger.url, n, self.args.million_clients).await?;
        let syncs = n.div_ceil(1000);
        for why in &filled.shown {
            eprintln!("failure: {why}");
        }
        self.report.check(
            filled.ok == syncs && filled.failed == 0,
            format!(
                "million ({name}): {} of {syncs} fill syncs acknowledged with a right answer, {} failed",
                filled.ok, filled.failed
            ),
        );
        self.report.figure(
            format!(
                "million ({name}): filling {n} counters (syncs of 1000, {} clients)",
                self.args.million_clients
            ),
            format!(
                "{:.1} s, {:.0} counters/s",
                filled.seconds,
                to_f64(n) / filled.seconds.max(f64::EPSILON)
            ),
        );
        let stored = tally_e2e::metric(&self.http, &merger.url, "tally_counters{kind=\"g\"}").await;
        self.report.check(
            stored == to_f64(n),
            format!("million ({name}): the merger stores {stored:.0} counters, {n} synced"),
        );
        let rss_filled = rss_of(&merger)?;
        step(&format!(
            "million ({name}): stopping the merger that filled it (a last history pass)"
        ));
        let filled_stop = self
            .stop_merger_within(
                merger,
                "the merger that filled the million",
                FILLED_STOP_LIMIT,
            )
            .await;

        step(&format!("million ({name}): restarts on {n} counters"));
        let full = self.restarts(&database, &log, &extra).await?;
        let merger = self.start_merger(&database, &log, &extra).await?;
        let rss_start = rss_of(&merger)?;
        let mut points = Vec::new();
        let mut done = 0;
        for reads in self.args.million_reads.clone() {
            if reads <= done {
                return Err("--million-reads must increase".into());
            }
            let outcome =
                million::read_random(&merger.url, n, reads - done, self.args.million_clients)
                    .await?;
            done = reads;
            for why in &outcome.shown {
                eprintln!("failure: {why}");
            }
            // The merger's own gauge (`tally_cache_counters`) is set by commits only, and
            // this merger only reads: every counter it holds was loaded (a miss) and not yet
            // evicted.
            let loaded =
                tally_e2e::metric(&self.http, &merger.url, "tally_cache_misses_total").await;
            let evicted =
                tally_e2e::metric(&self.http, &merger.url, "tally_cache_evictions_total").await;
            let cached = loaded - evicted;
            let rss = rss_of(&merger)?;
            eprintln!(
                "[bench]   after {reads} random reads: RSS {}, {cached:.0} counters cached, {:.0} reads/s",
                describe_rss(rss),
                outcome.per_second()
            );
            self.report.check(
                outcome.failed == 0,
                format!(
                    "million ({name}): {} random reads answered count 1 from 1 replica, {} wrong",
                    outcome.ok, outcome.failed
                ),
            );
            self.report.check(
                cached <= to_f64(self.args.cache_counters),
                format!(
                    "million ({name}): after {reads} reads the cache holds {cached:.0} counters (loaded - evicted; at most {})",
                    self.args.cache_counters
                ),
            );
            points.push((reads, rss, cached, outcome.per_second()));
        }
        self.stop_merger(merger, "the million merger").await;

        self.report.figure(
            format!(
                "million ({name}): spawn to /readyz 200, empty / {n} counters (median of {})",
                self.args.restarts
            ),
            format!(
                "{:.1} / {:.1} ms (each: {} / {} ms; its `listening on` line: {:.1} / {:.1} ms)",
                median(&empty.ready_ms),
                median(&full.ready_ms),
                each(&empty.ready_ms),
                each(&full.ready_ms),
                median(&empty.listening_ms),
                median(&full.listening_ms)
            ),
        );
        self.report.figure(
            format!("million ({name}): RSS right after start, empty / {n} counters (medians)"),
            format!(
                "{} / {}",
                describe_rss(empty.median_rss()),
                describe_rss(full.median_rss())
            ),
        );
        self.report.figure(
            format!("million ({name}): RSS of the merger that filled it, at the end of the fill"),
            describe_rss(rss_filled),
        );
        self.report.figure(
            format!("million ({name}): SIGTERM to exit, the merger that filled it"),
            filled_stop.map_or_else(
                || format!("more than {FILLED_STOP_LIMIT:?} (killed)"),
                |took| format!("{:.1} s", took.as_secs_f64()),
            ),
        );
        let mut trail = vec![format!("{} at start", describe_rss(rss_start))];
        trail.extend(points.iter().map(|(reads, rss, cached, rate)| {
            format!(
                "{} after {reads} ({cached:.0} cached, {rate:.0} reads/s)",
                describe_rss(*rss)
            )
        }));
        self.report.figure(
            format!(
                "million ({name}): RSS with --cache-counters {}, random reads",
                self.args.cache_counters
            ),
            trail.join(", "),
        );
        self.report.ratio(
            &format!("{tag}_start"),
            format!("million ({name}): start time, {n} counters / empty"),
            ratio(median(&full.ready_ms), median(&empty.ready_ms)),
            Target::None,
        );
        // The last two points: once the cache is full, more reads must not add memory.
        if let [.., (before, rss_before, _, _), (after, rss_after, _, _)] = points[..] {
            self.report.ratio(
                &format!("{tag}_rss_growth"),
                format!("million ({name}): RSS after {after} reads / after {before}"),
                ratio(mib(rss_after.total), mib(rss_before.total)),
                Target::None,
            );
        }
        Ok(())
    }

    /// `--restarts` starts of a merger on `database`: spawn to `/readyz` 200 and resident
    /// memory right then, each.
    async fn restarts(
        &mut self,
        database: &str,
        log: &str,
        extra: &[String],
    ) -> Result<Restarts, Error> {
        let mut restarts = Restarts::default();
        for _ in 0..self.args.restarts {
            let merger = self.start_merger(database, log, extra).await?;
            restarts
                .ready_ms
                .push(merger.ready_after.as_secs_f64() * 1000.0);
            restarts
                .listening_ms
                .push(merger.listening_after.as_secs_f64() * 1000.0);
            restarts.rss.push(rss_of(&merger)?);
            self.stop_merger(merger, "a restarted merger").await;
        }
        Ok(restarts)
    }
}

/// Starts measured on one database.
#[derive(Debug, Default)]
struct Restarts {
    /// Spawn to the first `/readyz` 200.
    ready_ms: Vec<f64>,
    /// Spawn to its `listening on` line (store open and migrated).
    listening_ms: Vec<f64>,
    /// Resident memory right after `/readyz` answered.
    rss: Vec<Rss>,
}

impl Restarts {
    /// The median of each part of the resident memory (the upper middle value of an even
    /// count), KiB.
    fn median_rss(&self) -> Rss {
        let part = |f: fn(&Rss) -> u64| {
            let mut values: Vec<u64> = self.rss.iter().map(f).collect();
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        Rss {
            total: part(|r| r.total),
            anon: part(|r| r.anon),
            file: part(|r| r.file),
        }
    }
}

/// `"636.5 MiB (anon 490.1, file 146.4)"`.
fn describe_rss(rss: Rss) -> String {
    format!(
        "{:.1} MiB (anon {:.1}, file {:.1})",
        mib(rss.total),
        mib(rss.anon),
        mib(rss.file)
    )
}

/// `sqlite://PATH`.
/// A mean of rows per commit as whole rows, at least one (a float of a few thousand: exact
/// enough).
fn whole_rows(per_commit: f64) -> usize {
    format!("{:.0}", per_commit.max(1.0))
        .parse::<usize>()
        .unwrap_or(1)
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn mib(kib: u64) -> f64 {
    to_f64(kib) / 1024.0
}

/// `"1.0 / 2.5 / 3.1"`: each value of a series, for the figures.
fn each(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The check line of a sync load.
fn describe_load(label: &str, run: &LoadReport) -> String {
    format!(
        "{label}: {} syncs acknowledged with right answers ({} wrong, {} without an answer{}); \
         {} counter reads exact, {} wrong",
        run.syncs,
        run.bad_responses,
        run.transport_errors,
        run.statuses(),
        run.checked - run.mismatches.len(),
        run.mismatches.len()
    )
}

/// What went wrong in a wrk run.
fn describe_wrk(name: &str, run: &WrkRun) -> String {
    format!(
        "{name}: {} requests, {} non-2xx, {} socket errors",
        run.requests, run.non_2xx, run.socket_errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_shown_with_their_precision() {
        assert_eq!(each(&[102_492.4, 99.94, 7.25]), "102492 / 99.9 / 7.2");
        assert_eq!(each(&[]), "");
    }

    #[test]
    fn memory_medians_are_taken_part_by_part() {
        let rss = |total, anon, file| Rss { total, anon, file };
        let restarts = Restarts {
            rss: vec![rss(30, 20, 10), rss(10, 4, 6), rss(20, 12, 8)],
            ..Restarts::default()
        };
        assert_eq!(restarts.median_rss(), rss(20, 12, 8));
        assert_eq!(Restarts::default().median_rss(), rss(0, 0, 0));
        assert_eq!(
            describe_rss(rss(2048, 1536, 512)),
            "2.0 MiB (anon 1.5, file 0.5)"
        );
    }

    #[test]
    fn sqlite_urls_name_the_file() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/x/tally.db")),
            "sqlite:///tmp/x/tally.db"
        );
        assert!((mib(1536) - 1.5).abs() < 1e-9);
    }

    #[test]
    fn a_load_check_counts_the_exact_reads() {
        let run = LoadReport {
            slot_updates: 1000,
            syncs: 2,
            seconds: 1.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
            non_2xx: vec![(reqwest::StatusCode::SERVICE_UNAVAILABLE, 4)],
            transport_errors: 0,
            bad_responses: 0,
            retry_syncs: 1,
            checked: 400,
            mismatches: vec!["x".into()],
            failures: Vec::new(),
        };
        assert!(!run.passed());
        let line = describe_load("merger", &run);
        assert!(line.contains("399 counter reads exact, 1 wrong"), "{line}");
        assert!(line.contains("non-2xx: 503 x4"), "{line}");
    }

    #[test]
    fn phases_parse_from_one_comma_separated_option() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["x", "--phase", "p2,p13,million-pg"]);
        assert_eq!(
            cli.args.phase,
            vec![Phase::P2, Phase::P13, Phase::MillionPg]
        );
        let cli = Cli::parse_from(["x", "--pg-naive-clients", "4,16"]);
        assert_eq!(cli.args.pg_naive_clients, vec![4, 16]);
        assert!(cli.args.phase.is_empty());
    }
}
