//! `edge`: the edge benchmarks of `docs/benchmarks.md` (P5, P6, P11, P12, the exact path, the
//! 100,000-counter object, crossings per hit), side by side in one run, with their
//! correctness checks.
//!
//! Everything runs on loopback with free ports, in a temp dir, through the end-to-end harness
//! (`tally-e2e`): the merger binary (release, `--durability full`), and under wrangler's dev
//! server (`tests/wrangler-dev.mjs`: `wrangler dev` without its DevTools inspector, as the
//! tests serve it) the frozen JavaScript baseline and copies of the built tally worker (see
//! [`setup`]; the worker is copied once and never rebuilt during the run). `--phase` runs
//! parts alone.
//!
//! - **P5** (`wrk`, `bench/wrk/put.lua`): hits/s of tally with `PARTITIONS=1 SPREAD=1` (one
//!   object, like the baseline) and with the deployed defaults, ÷ the JavaScript Durable
//!   Object counter; the three alternate for several rounds and the medians are compared.
//! - **P6** ([`load`]): over `--ids` counters with Zipf popularity, after `--warm-passes`
//!   batch reads of every counter (a steady state, not a cold start), hits/s of a hits-only
//!   phase, then reads/s of a phase of reads with hits interleaved; every client checks its
//!   reads against its session token and counts `Tally-Cache` (the isolate cache's hit
//!   rate); afterwards the merger must hold exactly the acknowledged hits and the edge's
//!   reads must converge to the merger's counts.
//! - **P9** ([`p9`]), during P6's mixed phase: a hit every 0.5 s on a counter of its own,
//!   then how long until the merger holds it and until an edge read in another region shows it.
//! - **P12**: merger commits during reads of known and never-hit counters (none expected).
//! - **P11** (`wrk`, `bench/wrk/fresh.lua`): p99 of hits on new counters with the merger
//!   stopped (SIGSTOP) ÷ with it up, alternating for `--rounds`; medians compared.
//! - **exact** ([`exact`]): on one object (`PARTITIONS=1 SPREAD=1`), p99 of hits inside a
//!   milestone's margin (they take the exact path and wait for the merger's commit) ÷ p99 of
//!   hits on counters with no milestone, merger up, alternating for `--rounds`; then hits
//!   inside the margin with the merger stopped (SIGSTOP): how many waited, how many answered
//!   `pending` at once.
//! - **crossings**: the counting copy of the worker ([`crossings`]) under `wrk`: JS <-> Wasm
//!   calls and storage calls per hit, per read, per preflight.
//! - **the big object**: one object holding `--big-counters` counters against one holding
//!   two: the first answer after `wrangler dev` restarts on the same storage, workerd's
//!   memory, the storage's size.
//!
//! Checks (failures exit non-zero): every request answered 2xx, no read below what its
//! client was shown, the merger's counts equal to the acknowledged hits (wrk phases: within
//! the requests still in flight when wrk stopped, at most one per connection), reads of
//! never-hit counters answering 0, hits near a milestone on the exact path and the others
//! off it, and convergence within bounded waits.

mod crossings;
mod exact;
mod load;
mod p9;
mod setup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_e2e::{Edge, EdgeOptions, MergerProcess, WRITE_KEY};

use crate::edge::crossings::Crossings;
use crate::edge::exact::{ExactRun, Waits, percentile};
use crate::edge::load::{LoadReport, Target as LoadTarget, Workload, Zipf};
use crate::edge::setup::Workers;
use crate::memory;
use crate::report::{Report, Target, median, ratio, step};
use crate::wrk::{Wrk, WrkRun};
use crate::{Error, Verdict, to_f64};

/// Longest wait for the merger (or the edge) to show what was acknowledged. Failed syncs
/// back off up to `MAX_BACKOFF_MS`; after P11's stop they retry within ~16 s.
const SETTLE: Duration = Duration::from_secs(120);
/// Ids per batch read at the edge (its limit).
const BATCH: usize = 100;
/// The merger's admin token (milestones are registered through the admin API).
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// `SYNC_TIMEOUT_MS` of every edge: the worker's default (the harness shortens it for tests).
const SYNC_TIMEOUT_MS: u64 = 5000;
/// `EXACT_WAIT_MS` of the exact phase's edge: the worker's default, set explicitly so that
/// the thresholds below are the edge's.
const EXACT_WAIT_MS: u64 = 2000;
/// Clients of the exact phase, each sending at most one hit per [`EXACT_PACE`].
const EXACT_CLIENTS: u32 = 8;
/// At most 8 × 20 = 160 hits/s offered: below one object's rate (P5), so the latencies are
/// those of the path, not of a queue.
const EXACT_PACE: Duration = Duration::from_millis(50);
/// Milestones registered per near counter: the merger's cap of pending ones per counter.
const MILESTONES: u64 = 100;
/// Hits between two milestones: the edge's smallest margin (`edge/src/milestone.rs`,
/// `MIN_MARGIN`), so every hit is within the margin of the next, whatever rate the object
/// has measured.
const MILESTONE_SPACING: u64 = 32;
/// Hits on a near counter before its milestones, so that its object hears of them (an
/// object learns a counter's milestones from the answer to a sync of it).
const WARM_HITS: u64 = 4;
/// A hit that took longer than this waited for the merger: a quarter of `EXACT_WAIT_MS`,
/// below one exact sync attempt (a third of it), so that a probe of a stopped merger counts
/// as a wait.
const WAITED_MS: u64 = EXACT_WAIT_MS / 4;

/// Options of `tally-bench compare edge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The built worker (`scripts/build-edge.sh` writes `edge/build`); copied before use.
    #[arg(long, default_value = "edge/build")]
    worker_build: PathBuf,
    /// The merger binary (`cargo build --release -p tally-merger`).
    #[arg(long, default_value = "target/release/tally-merger")]
    merger: PathBuf,
    /// Seconds of each measured phase (wrk runs and load phases).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Connections of wrk, and clients of the load phases.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// wrk threads (at most one per connection: [`Wrk::thread_count`]).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// P5 rounds: the baseline and both tally configurations alternate this many times.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// P6: counters read and hit.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    ids: u32,
    /// P6: Zipf exponent of their popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// P6: share of hits among the requests of the mixed phase, percent (reads outnumber
    /// writes about 10:1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    write_percent: u32,
    /// P6: passes of batch reads over every counter before the measured phases, so that
    /// the objects a read may reach have heard of it (steady state, not a cold start).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=100))]
    warm_passes: u32,
    /// Counters of the big object (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    big_counters: u64,
    /// Restarts of each object measured (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    restarts: u32,
    /// Run only these parts (repeat the option; default: all).
    #[arg(long, value_enum)]
    phase: Vec<Phase>,
    /// Keep the temp dir (wrangler logs, storage) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// The parts of the run, for `--phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// P5: hits/s against the JavaScript baseline.
    P5,
    /// P6 and P12: reads and hits over many counters; merger commits during reads.
    P6,
    /// P11: hit latency with the merger stopped.
    P11,
    /// The exact path: hit latency inside a milestone's margin against ordinary hits (merger
    /// up), and near hits with the merger stopped (waits and `pending`).
    Exact,
    /// JS <-> Wasm crossings and storage calls per request.
    Crossings,
    /// The object holding `--big-counters` counters.
    Big,
}

/// Runs every edge benchmark and prints the results.
pub async fn run(args: Args) -> Result<Verdict, Error> {
    let root = tally_e2e::root();
    let temp = tempfile::Builder::new()
        .prefix("tally-bench-edge.")
        .tempdir()?;
    let work = temp.path().to_path_buf();
    let workers = setup::prepare(&root, &root.join(&args.worker_build), &work)?;
    let merger_bin = root.join(&args.merger);
    if !merger_bin.is_file() {
        return Err(format!(
            "{} is missing: cargo build --release -p tally-merger",
            merger_bin.display()
        )
        .into());
    }
    std::fs::create_dir_all(work.join("merger"))?;
    std::fs::create_dir_all(work.join("logs"))?;
    step("starting the merger (release, --durability full)");
    let merger = MergerProcess::start_binary(
        &merger_bin,
        &work.join("merger"),
        0,
        &["--durability", "full", "--admin-token", ADMIN_TOKEN],
    )
    .await;
    let mut bench = Bench {
        wrk: Wrk {
            threads: args.threads,
            connections: args.connections,
            seconds: args.seconds,
        },
        args,
        root,
        work,
        workers,
        merger,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(tally_e2e::IDLE_CONNECTION)
            .build()?,
        report: Report::default(),
    };
    let outcome = bench.phases().await;
    if let Err(e) = &outcome {
        bench.report.check(false, format!("the run stopped: {e}"));
    }
    let heading = format!(
        "edge benchmarks: one run, wrk -t{} -c{} -d{}s and {} load clients, wrangler's dev server (inspector off, tests/wrangler-dev.mjs) on loopback",
        bench.wrk.thread_count(),
        bench.args.connections,
        bench.args.seconds,
        bench.args.connections
    );
    Ok(bench.report.finish(
        &heading,
        "edge",
        temp,
        bench.args.keep,
        "logs and storage (wrangler logs under logs/)",
    ))
}

/// Everything a run shares.
struct Bench {
    args: Args,
    root: PathBuf,
    work: PathBuf,
    workers: Workers,
    merger: MergerProcess,
    http: reqwest::Client,
    wrk: Wrk,
    report: Report,
}

impl Bench {
    async fn phases(&mut self) -> Result<(), Error> {
        self.wasm_size().await;
        let (partitions, spread) = (self.default_var("PARTITIONS")?, self.default_var("SPREAD")?);
        let default = if [Phase::P5, Phase::P6, Phase::P11]
            .iter()
            .any(|p| self.wants(*p))
        {
            step(
                "starting the tally worker with the deployed settings under wrangler's dev server",
            );
            let options =
                self.options("default", &self.workers.tally.clone(), partitions, spread)?;
            Some(Edge::start(&options).await)
        } else {
            None
        };
        if let Some(default) = &default {
            if self.wants(Phase::P5) {
                step("starting the JavaScript baseline and tally with one object");
                let mut js = self.options("js", &self.workers.js.clone(), 1, 1)?;
                // The baseline answers 200 to any path (every path is a counter).
                js.probe_status = 200;
                let js = Edge::start(&js).await;
                let one =
                    Edge::start(&self.options("one", &self.workers.tally.clone(), 1, 1)?).await;
                let defaults = format!("PARTITIONS={partitions} SPREAD={spread}");
                self.p5(&js, &one, default, &defaults).await?;
                js.stop().await;
                one.stop().await;
            }
            if self.wants(Phase::P6) {
                self.p6_p12(default).await?;
            }
            if self.wants(Phase::P11) {
                self.p11(default).await?;
            }
        }
        if let Some(default) = default {
            default.stop().await;
        }
        if self.wants(Phase::Exact) {
            self.exact().await?;
        }
        if self.wants(Phase::Crossings) {
            self.crossings().await?;
        }
        if self.wants(Phase::Big) && self.args.big_counters > 0 {
            self.big_object().await?;
        }
        Ok(())
    }

    fn wants(&self, phase: Phase) -> bool {
        self.args.phase.is_empty() || self.args.phase.contains(&phase)
    }

    /// A deployed default from `wrangler.toml`'s `[vars]`.
    fn default_var<T: std::str::FromStr>(&self, name: &str) -> Result<T, Error> {
        self.workers
            .vars
            .get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("wrangler.toml [vars] has no usable {name}").into())
    }

    /// Options of an edge named `name` serving `config`: the deployed settings except the
    /// partitions and spread given (the harness's test settings are put back to production).
    fn options(
        &self,
        name: &str,
        config: &Path,
        partitions: u32,
        spread: u32,
    ) -> Result<EdgeOptions, Error> {
        let mut options = EdgeOptions::new(&self.merger.url, &self.work.join(format!("do-{name}")));
        options.partitions = partitions;
        options.spread = spread;
        options.sync_interval_ms = self.default_var("SYNC_INTERVAL_MS")?;
        options.anti_entropy_ms = self.default_var("ANTI_ENTROPY_MS")?;
        // edge/src/config.rs defaults; the harness shortens both for tests.
        options.max_backoff_ms = 60_000;
        options.sync_timeout_ms = SYNC_TIMEOUT_MS;
        options.config = Some(config.to_path_buf());
        options.log = Some(self.work.join(format!("logs/{name}.log")));
        Ok(options)
    }

    fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.default_var("SYNC_INTERVAL_MS").unwrap_or(2000))
    }

    async fn metric(&self, series: &str) -> f64 {
        tally_e2e::metric(&self.http, &self.merger.url, series).await
    }

    /// One request that must answer 2xx (set-up steps between measurements).
    async fn expect_ok(&self, method: reqwest::Method, url: &str) -> Result<Value, Error> {
        let response = self
            .http
            .request(method.clone(), url)
            .header("Authorization", format!("Bearer {WRITE_KEY}"))
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{method} {url} answered {status}: {body}").into());
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// The hit combiner's counts in the edge's isolate (`GET /_tally/combine`, allowed under
    /// `wrangler dev`): hits queued and object calls made.
    async fn combine_stats(&self, url: &str) -> Result<(u64, u64), Error> {
        let stats = self.expect_ok(reqwest::Method::GET, url).await?;
        let field = |name: &str| {
            stats[name]
                .as_u64()
                .ok_or_else(|| format!("GET {url}: no `{name}` in {stats}"))
        };
        Ok((field("hits")?, field("calls")?))
    }

    /// The merger's counts of the counters whose id starts with `prefix`.
    async fn merger_counts(&self, prefix: &str) -> Result<BTreeMap<String, i128>, Error> {
        let mut counts = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/counters?prefix={prefix}&limit=1000", self.merger.url);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.expect_ok(reqwest::Method::GET, &url).await?;
            let items = page
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{url}: no items in {page}"))?;
            for item in items {
                let id = item.get("id").and_then(Value::as_str);
                let count = item.get("count").and_then(tally_e2e::count_of);
                match (id, count) {
                    (Some(id), Some(count)) => counts.insert(id.to_owned(), count),
                    _ => return Err(format!("{url}: unreadable item {item}").into()),
                };
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(counts),
            }
        }
    }

    /// Waits until the merger's counts of `prefix` are what `expected` allows, per id
    /// (`(low, high)`; absent ids count 0). Returns the seconds it took, or `None` (with the
    /// first differences) after [`SETTLE`].
    async fn settle_merger(
        &self,
        prefix: &str,
        expected: &BTreeMap<String, (u64, u64)>,
    ) -> Result<Result<f64, String>, Error> {
        let start = Instant::now();
        loop {
            let counts = self.merger_counts(prefix).await?;
            let wrong: Vec<String> = expected
                .iter()
                .filter_map(|(id, &(low, high))| {
                    let count = counts.get(id).copied().unwrap_or(0);
                    (count < i128::from(low) || count > i128::from(high))
                        .then(|| format!("{id}: {count}, expected {low}..={high}"))
                })
                .chain(
                    counts
                        .iter()
                        .filter(|(id, _)| !expected.contains_key(*id))
                        .map(|(id, c)| format!("{id}: {c}, never hit")),
                )
                .collect();
            if wrong.is_empty() {
                return Ok(Ok(start.elapsed().as_secs_f64()));
            }
            if start.elapsed() > SETTLE {
                return Ok(Err(wrong
                    .into_iter()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("; ")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// P7 for context: the Wasm module as deployed, raw and gzipped.
    async fn wasm_size(&mut self) {
        let wasm = self.work.join("tally/build/index_bg.wasm");
        let gzip = tokio::process::Command::new("gzip")
            .arg("-9c")
            .arg(&wasm)
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout.len());
        let raw = self.workers.wasm_bytes;
        let value = match gzip {
            Some(gz) => format!(
                "{raw} B raw, {gz} B gzip -9 ({:.1} KiB)",
                to_f64(u64::try_from(gz).unwrap_or(u64::MAX)) / 1024.0
            ),
            None => format!("{raw} B raw (gzip unavailable)"),
        };
        self.report.figure("P7 Wasm module", value);
    }

    /// P5: hits/s against the JavaScript baseline, alternating rounds.
    async fn p5(
        &mut self,
        js: &Edge,
        one: &Edge,
        default: &Edge,
        defaults: &str,
    ) -> Result<(), Error> {
        step("P5: PUT hits/s, the JavaScript counter and tally alternating");
        let put = self.root.join("bench/wrk/put.lua");
        let edges = [("js", js), ("one", one), ("default", default)];
        let mut rps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut calls_per_hit: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut expected = Vec::new();
        for round in 0..self.args.rounds {
            for (label, edge) in edges {
                let id = format!("p5-{label}-{round:02}");
                let url = format!("{}/{id}/counter", edge.url);
                // One hit first, as in a warm system: the object is up and the counter known.
                self.expect_ok(reqwest::Method::PUT, &url).await?;
                let stats = format!("{}/_tally/combine", edge.url);
                let before = if label == "js" {
                    None
                } else {
                    Some(self.combine_stats(&stats).await?)
                };
                let run = self.wrk.run(&url, Some(&put), &[], &[]).await?;
                eprintln!("[bench]   round {round} {label}: {:.0} hits/s", run.rps);
                if let Some((hits, calls)) = before {
                    let (hits_after, calls_after) = self.combine_stats(&stats).await?;
                    let per_hit = ratio((calls_after - calls) as f64, (hits_after - hits) as f64);
                    eprintln!("[bench]   round {round} {label}: {per_hit:.3} object requests/hit");
                    calls_per_hit.entry(label).or_default().push(per_hit);
                }
                self.wrk_clean(&format!("P5 {label} round {round}"), &run);
                rps.entry(label).or_default().push(run.rps);
                expected.push((label, edge.url.clone(), id, run.ok() + 1));
            }
        }
        let series = |label: &str| rps.get(label).cloned().unwrap_or_default();
        let shown = |values: &[f64]| {
            let each: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
            format!(
                "{:.0} hits/s (median of {})",
                median(values),
                each.join(" / ")
            )
        };
        let (js_rps, one_rps, default_rps) = (series("js"), series("one"), series("default"));
        self.report
            .figure("P5 JavaScript Durable Object counter, PUT", shown(&js_rps));
        self.report
            .figure("P5 tally PARTITIONS=1 SPREAD=1, PUT", shown(&one_rps));
        self.report.figure(
            format!("P5 tally defaults ({defaults}), PUT"),
            shown(&default_rps),
        );

        // Context: a cached read of one hot counter, and the Worker alone (no object).
        let hot = format!("{}/p5-one-00/counter", one.url);
        let get_one = self.wrk.run(&hot, None, &[], &[]).await?;
        self.wrk_clean("GET one hot counter (one object)", &get_one);
        let hot = format!("{}/p5-default-00/counter", default.url);
        let get_default = self.wrk.run(&hot, None, &[], &[]).await?;
        self.wrk_clean("GET one hot counter (defaults)", &get_default);
        let options = self.root.join("bench/wrk/options.lua");
        let ceiling = self.wrk.run(&hot, Some(&options), &[], &[]).await?;
        self.wrk_clean("OPTIONS (the Worker alone)", &ceiling);
        self.report.figure(
            "GET one hot counter, PARTITIONS=1 SPREAD=1 / defaults",
            format!("{:.0} / {:.0} reads/s", get_one.rps, get_default.rps),
        );
        self.report.figure(
            "OPTIONS answered by the Worker alone (the dev server's ceiling)",
            format!("{:.0} req/s", ceiling.rps),
        );

        // Object requests per hit, from the Worker's hit combiner (edge/src/combine.rs): what
        // one isolate under this load saw; production isolates see less of each counter.
        let connections = self.args.connections;
        for (label, what) in [("one", "one object"), ("default", "defaults")] {
            let values = calls_per_hit.get(label).cloned().unwrap_or_default();
            self.report.ratio(
                &format!("p5_object_requests_{label}"),
                format!("P5 object requests per hit ({what}, {connections} connections)"),
                median(&values),
                Target::AtMost(0.25),
            );
        }
        let (js_m, one_m, default_m) = (median(&js_rps), median(&one_rps), median(&default_rps));
        let range = |values: &[f64]| {
            let r: Vec<f64> = values
                .iter()
                .zip(&js_rps)
                .map(|(v, j)| ratio(*v, *j))
                .collect();
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(0.0, f64::max);
            format!("rounds {lo:.2}-{hi:.2}")
        };
        // Issue 29: 1.5 with 32 connections (combining helps), 1.0 with one (the per-hit cost
        // alone).
        let goal = if self.args.connections > 1 { 1.5 } else { 1.0 };
        let one_range = range(&one_rps);
        let default_range = range(&default_rps);
        self.report.ratio(
            "p5_one",
            format!("P5 tally (one object) / JS counter, {one_range}"),
            ratio(one_m, js_m),
            Target::AtLeast(goal),
        );
        self.report.ratio(
            "p5_default",
            format!("P5 tally (defaults) / JS counter, {default_range}"),
            ratio(default_m, js_m),
            Target::AtLeast(goal),
        );
        self.report.ratio(
            "hot_get_put",
            "hot counter GET / PUT (one object; the old P6)",
            ratio(get_one.rps, one_m),
            Target::None,
        );

        // Every hit counted once: the JavaScript counter holds its own count; tally's
        // reach the merger.
        let slack = u64::from(self.args.connections);
        for (label, url, id, acked) in expected {
            let allowed = (acked, acked + slack);
            if label == "js" {
                let body = self
                    .expect_ok(reqwest::Method::GET, &format!("{url}/{id}/counter"))
                    .await?;
                let count = body
                    .get("count")
                    .and_then(tally_e2e::count_of)
                    .unwrap_or(-1);
                let ok = (i128::from(allowed.0)..=i128::from(allowed.1)).contains(&count);
                self.report.check(
                    ok,
                    format!(
                        "P5 {id}: JS counter {count}, acknowledged {acked} (+ <= {slack} in flight)"
                    ),
                );
            } else {
                let expected = BTreeMap::from([(id.clone(), allowed)]);
                let outcome = self.settle_merger(&id, &expected).await?;
                self.report.check(
                    outcome.is_ok(),
                    format!(
                        "P5 {id}: the merger holds the {acked} acknowledged hits (+ <= {slack} in flight){}",
                        outcome.err().map(|e| format!(": {e}")).unwrap_or_default()
                    ),
                );
            }
        }
        Ok(())
    }

    fn wrk_clean(&mut self, what: &str, run: &WrkRun) {
        if !run.clean() {
            self.report.check(
                false,
                format!(
                    "{what}: {} requests, {} non-2xx, {} socket errors",
                    run.requests, run.non_2xx, run.socket_errors
                ),
            );
        }
    }

    fn load_clean(&mut self, what: &str, load: &LoadReport) {
        self.report.check(
            load.clean(),
            format!(
                "{what}: {} reads and {} hits answered 2xx; no read below what its client was shown{}",
                load.reads,
                load.writes,
                if load.clean() {
                    String::new()
                } else {
                    format!(" — {}", load.problems())
                }
            ),
        );
        for failure in &load.shown {
            self.report.note(format!("{what}: {failure}"));
        }
    }

    /// P6 and P12 on the edge with the deployed defaults.
    async fn p6_p12(&mut self, edge: &Edge) -> Result<(), Error> {
        let target = LoadTarget::new(&edge.url)?;
        let n = usize::try_from(self.args.ids).map_err(|_| "--ids does not fit")?;
        let ids: Arc<Vec<String>> = Arc::new((0..n).map(|k| format!("p6-{k}")).collect());
        let zipf = Arc::new(Zipf::new(n, self.args.zipf));
        let seconds = Duration::from_secs(self.args.seconds);
        let clients = self.args.connections;
        let zipf_load = |write_percent| Workload::Zipf {
            ids: Arc::clone(&ids),
            zipf: Arc::clone(&zipf),
            write_percent,
        };

        step(&format!(
            "P6: warming the objects: {} passes of batch reads over {n} counters",
            self.args.warm_passes
        ));
        // Steady state, not a cold start: each object a read may land on (a batch read goes
        // to one of each counter's SPREAD objects at random) has heard of the counter.
        let started = Instant::now();
        for _ in 0..self.args.warm_passes {
            self.batch_pass(edge, &ids).await?;
        }
        self.report.figure(
            "P6 warm-up (batch reads of every counter, not measured)",
            format!(
                "{} pass(es) in {:.1} s",
                self.args.warm_passes,
                started.elapsed().as_secs_f64()
            ),
        );
        step(&format!(
            "P6: hits, then reads with {}% hits interleaved, over {n} counters (Zipf s={})",
            self.args.write_percent, self.args.zipf
        ));
        let slots_series = "tally_slots_received_total";
        let slots_before = self.metric(slots_series).await;
        let hits = load::run(
            &target,
            &zipf_load(100),
            clients,
            Instant::now() + seconds,
            WRITE_KEY,
        )
        .await;
        self.load_clean("P6 hits", &hits);
        let read_series = "tally_counters_read_total";
        let before = (
            self.metric(read_series).await,
            self.metric("tally_reads_total{outcome=\"ok\"}").await,
        );
        // P9 alongside: probes of how long a hit takes to be seen ([`p9`]).
        let until = Instant::now() + seconds;
        let probes = {
            let (http, edge_url, merger) =
                (self.http.clone(), edge.url.clone(), self.merger.url.clone());
            tokio::spawn(async move { p9::run(&http, &edge_url, &merger, until).await })
        };
        let mixed = load::run(
            &target,
            &zipf_load(self.args.write_percent),
            clients,
            until,
            WRITE_KEY,
        )
        .await;
        let seen = probes.await.map_err(|e| format!("the P9 probes: {e}"))?;
        let after = (
            self.metric(read_series).await,
            self.metric("tally_reads_total{outcome=\"ok\"}").await,
        );
        self.load_clean("P6 reads with hits", &mixed);
        let counters_read = after.0 - before.0;
        let merger_reads = after.1 - before.1;
        let reads = to_f64(mixed.reads);
        let top100: f64 = (0..n.min(100)).map(|k| zipf.probability(k)).sum();
        self.report.figure(
            format!("P6 popularity (Zipf s={})", self.args.zipf),
            format!(
                "the most read counter takes {:.1}% of requests, the top 100 {:.1}%",
                100.0 * zipf.probability(0),
                100.0 * top100
            ),
        );
        self.report.figure(
            format!("P6 hits only, {n} counters (Zipf), PUT"),
            format!("{:.0} hits/s", hits.writes_per_second()),
        );
        self.report.figure(
            format!(
                "P6 reads with {}% hits interleaved",
                self.args.write_percent
            ),
            format!(
                "{:.0} reads/s (+ {:.0} hits/s)",
                mixed.reads_per_second(),
                mixed.writes_per_second()
            ),
        );
        self.report.figure(
            "P6 merger batch reads / counters asked, per edge read",
            format!(
                "{:.4} / {:.4} ({merger_reads:.0} POST /v1/read for {counters_read:.0} counters)",
                ratio(merger_reads, reads),
                ratio(counters_read, reads)
            ),
        );
        let misses = to_f64(mixed.isolate_misses);
        self.report.figure(
            "P6 reads answered by the Worker's isolate cache (Tally-Cache: hit)",
            match mixed.isolate_hit_rate() {
                Some(rate) => format!(
                    "{:.1}% ({} of {})",
                    100.0 * rate,
                    mixed.isolate_hits,
                    mixed.isolate_hits + mixed.isolate_misses
                ),
                None => "no answer said (no Tally-Cache header)".to_owned(),
            },
        );
        self.report.figure(
            "P6 counters asked of the merger per read that reached an object",
            format!(
                "{:.2} (background refreshes of entries older than READ_TTL_MS, and first reads, which wait)",
                ratio(counters_read, misses)
            ),
        );
        self.report.ratio(
            "p6",
            "P6 edge reads/s (with hits) / edge hits/s",
            ratio(mixed.reads_per_second(), hits.writes_per_second()),
            Target::AtLeast(3.0),
        );
        self.p9(&seen);

        // The merger holds every acknowledged hit exactly; then the edge's reads converge.
        let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for load in [&hits, &mixed] {
            for (id, n) in &load.acked {
                let e = expected.entry(id.clone()).or_default();
                e.0 += n;
                e.1 += n;
            }
            for (id, n) in &load.unknown {
                expected.entry(id.clone()).or_default().1 += n;
            }
        }
        let acked: u64 = expected.values().map(|e| e.0).sum();
        let outcome = self.settle_merger("p6-", &expected).await?;
        self.report.check(
            outcome.is_ok(),
            format!(
                "P6 the merger holds exactly the {acked} acknowledged hits on {} counters{}",
                expected.len(),
                match &outcome {
                    Ok(s) => format!(" ({s:.1} s after the load)"),
                    Err(e) => format!(": {e}"),
                }
            ),
        );
        // Hits of one counter at one object between two syncs travel as one slot total.
        let slots = self.metric(slots_series).await - slots_before;
        self.report.figure(
            "P6 slot totals the merger received per acknowledged hit",
            format!(
                "{:.3} ({slots:.0} for {acked} hits; SYNC_INTERVAL_MS={})",
                ratio(slots, to_f64(acked)),
                self.sync_interval().as_millis()
            ),
        );
        let converged = self.converge(edge, &ids).await?;
        self.report.check(
            converged.is_ok(),
            match &converged {
                Ok((s, passes)) => format!(
                    "P6 edge reads of all {n} counters equal the merger's after {s:.1} s ({passes} passes of batch reads)"
                ),
                Err(e) => format!("P6 edge reads did not converge to the merger's counts: {e}"),
            },
        );

        self.p12(&target, &zipf_load(0)).await
    }

    /// P9's figures: p50 and p99 of a hit until the merger holds it (goal: p99 within
    /// `SYNC_INTERVAL_MS` + 1 s) and until a reader in another region sees it.
    fn p9(&mut self, seen: &p9::Seen) {
        let interval = self.sync_interval().as_secs_f64();
        let probes = seen.to_merger.len() + seen.merger_missed;
        self.report.figure(
            "P9 probes during the mixed phase (one hit each, every 0.5 s)",
            format!(
                "{probes} answered ({} failed); not seen within {} s: {} by the merger, {} by \
                 another region",
                seen.failed,
                p9::LIMIT.as_secs(),
                seen.merger_missed,
                seen.region_missed
            ),
        );
        for (what, values) in [
            ("the merger holds it", &seen.to_merger),
            (
                "an edge read in another region shows it",
                &seen.to_other_region,
            ),
        ] {
            self.report.figure(
                format!("P9 hit answered -> {what}"),
                format!(
                    "p50 {:.2} s, p99 {:.2} s (polled every {} ms)",
                    percentile(values, 50),
                    percentile(values, 99),
                    p9::POLL.as_millis()
                ),
            );
        }
        // A hit the merger never held counts as not within the goal.
        let p99 = if seen.merger_missed > 0 {
            f64::INFINITY
        } else {
            percentile(&seen.to_merger, 99)
        };
        self.report.ratio(
            "p9_merger_p99",
            format!(
                "P9 p99 hit -> merger, s (goal SYNC_INTERVAL_MS + 1 s = {:.1})",
                interval + 1.0
            ),
            p99,
            Target::AtMost(interval + 1.0),
        );
        self.report.ratio(
            "p9_region_p99",
            "P9 p99 hit -> a reader in another region, s",
            percentile(&seen.to_other_region, 99),
            Target::None,
        );
    }

    /// Batch reads of every id at the edge until each equals the merger's count.
    async fn converge(
        &self,
        edge: &Edge,
        ids: &Arc<Vec<String>>,
    ) -> Result<Result<(f64, u32), String>, Error> {
        let merger = self.merger_counts("p6-").await?;
        let start = Instant::now();
        let mut passes = 0;
        loop {
            passes += 1;
            let wrong: Vec<String> = self
                .batch_pass(edge, ids)
                .await?
                .into_iter()
                .filter_map(|(id, count)| {
                    let want = merger.get(&id).copied().unwrap_or(0);
                    (count != Some(want)).then(|| format!("{id}: edge {count:?}, merger {want}"))
                })
                .collect();
            if wrong.is_empty() {
                return Ok(Ok((start.elapsed().as_secs_f64(), passes)));
            }
            if start.elapsed() > SETTLE {
                return Ok(Err(wrong
                    .into_iter()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("; ")));
            }
            tokio::time::sleep(self.sync_interval() / 2).await;
        }
    }

    /// One pass of batch reads (`GET /counter?ids=`, [`BATCH`] ids each) over `ids`, a few
    /// batches at a time: every id with the count the edge answered.
    async fn batch_pass(
        &self,
        edge: &Edge,
        ids: &Arc<Vec<String>>,
    ) -> Result<Vec<(String, Option<i128>)>, Error> {
        const PARALLEL: usize = 8;
        let batches = ids.len().div_ceil(BATCH);
        let mut tasks = tokio::task::JoinSet::new();
        for first in 0..PARALLEL.min(batches) {
            let (http, base, ids) = (self.http.clone(), edge.url.clone(), Arc::clone(ids));
            tasks.spawn(async move {
                let mut counts = Vec::new();
                for batch in ids.chunks(BATCH).skip(first).step_by(PARALLEL) {
                    let url = format!("{base}/counter?ids={}", batch.join(","));
                    let response = http
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| format!("{url}: {e}"))?;
                    let status = response.status();
                    let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
                    let items = body
                        .get("items")
                        .and_then(Value::as_array)
                        .filter(|_| status.is_success())
                        .ok_or_else(|| format!("{url} answered {status}: {body}"))?;
                    for item in items {
                        let id = item.get("id").and_then(Value::as_str).unwrap_or("?");
                        counts.push((
                            id.to_owned(),
                            item.get("count").and_then(tally_e2e::count_of),
                        ));
                    }
                }
                Ok::<_, String>(counts)
            });
        }
        let mut all = Vec::with_capacity(ids.len());
        while let Some(done) = tasks.join_next().await {
            all.extend(done.map_err(|e| format!("a batch reader died: {e}"))??);
        }
        Ok(all)
    }

    /// P12: merger commits during reads of known and never-hit counters.
    async fn p12(&mut self, target: &LoadTarget, known: &Workload) -> Result<(), Error> {
        step("P12: merger commits during reads only (known counters, then never-hit ones)");
        let commits = "tally_commits_total{purpose=\"sync\"}";
        // Quiet first: the hits of P6 are synced once commits stop moving.
        let start = Instant::now();
        let mut last = self.metric(commits).await;
        loop {
            tokio::time::sleep(self.sync_interval() * 2).await;
            let now = self.metric(commits).await;
            if now == last || start.elapsed() > SETTLE {
                break;
            }
            last = now;
        }
        let before = (
            self.metric(commits).await,
            self.metric("tally_reads_total{outcome=\"ok\"}").await,
        );
        let half = Duration::from_secs(self.args.seconds.div_ceil(2));
        let clients = self.args.connections;
        let known_reads = load::run(target, known, clients, Instant::now() + half, WRITE_KEY).await;
        let unknown = Workload::Unknown {
            prefix: "p12-never".into(),
        };
        let unknown_reads =
            load::run(target, &unknown, clients, Instant::now() + half, WRITE_KEY).await;
        // A commit caused by a read would come with the next sync pass.
        tokio::time::sleep(self.sync_interval() + Duration::from_secs(1)).await;
        let after = (
            self.metric(commits).await,
            self.metric("tally_reads_total{outcome=\"ok\"}").await,
        );
        self.load_clean("P12 reads of known counters", &known_reads);
        self.load_clean(
            "P12 reads of never-hit counters (each answered 0, updated_at null)",
            &unknown_reads,
        );
        let reads = to_f64(known_reads.reads + unknown_reads.reads);
        self.report.figure(
            "P12 reads of known / never-hit counters",
            format!(
                "{} / {} reads ({:.0} / {:.0} reads/s); merger commits {:.0} -> {:.0}; {:.0} POST /v1/read",
                known_reads.reads,
                unknown_reads.reads,
                known_reads.reads_per_second(),
                unknown_reads.reads_per_second(),
                before.0,
                after.0,
                after.1 - before.1
            ),
        );
        self.report.ratio(
            "p12",
            "P12 merger commits per edge read",
            ratio(after.0 - before.0, reads),
            Target::Zero,
        );
        Ok(())
    }

    /// P11: p99 of hits on new counters, merger stopped ÷ merger up.
    async fn p11(&mut self, edge: &Edge) -> Result<(), Error> {
        step("P11: PUT latency on new counters, merger up then stopped (SIGSTOP), alternating");
        let fresh = self.root.join("bench/wrk/fresh.lua");
        let key = vec![format!("Authorization: Bearer {WRITE_KEY}")];
        let mut p99: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut p50: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for round in 0..self.args.rounds {
            let up_prefix = format!("p11up{round:02}");
            let up = self
                .wrk
                .run(&edge.url, Some(&fresh), &key, &[&up_prefix])
                .await?;
            self.wrk_clean("P11 merger up", &up);
            self.merger.signal("-STOP");
            let down_prefix = format!("p11down{round:02}");
            let down = self
                .wrk
                .run(&edge.url, Some(&fresh), &key, &[&down_prefix])
                .await;
            // Resumed before anything else, whatever wrk did.
            self.merger.signal("-CONT");
            let down = down?;
            self.wrk_clean("P11 merger stopped", &down);
            for (label, run) in [("up", &up), ("stopped", &down)] {
                eprintln!(
                    "[bench]   round {round}, merger {label}: p50 {:.1} ms, p99 {:.1} ms, {:.0} hits/s",
                    run.p50_ms.unwrap_or(f64::NAN),
                    run.p99_ms.unwrap_or(f64::NAN),
                    run.rps
                );
                p99.entry(label)
                    .or_default()
                    .push(run.p99_ms.unwrap_or(f64::INFINITY));
                p50.entry(label)
                    .or_default()
                    .push(run.p50_ms.unwrap_or(f64::INFINITY));
            }
            // Every hit reaches the merger, and the objects are back in sync (no backoff
            // left) before the next round measures "merger up".
            for (prefix, run) in [(up_prefix, &up), (down_prefix, &down)] {
                self.p11_settled(&format!("{prefix}-"), run).await?;
            }
        }
        for label in ["up", "stopped"] {
            let (p50s, p99s) = (
                p50.get(label).cloned().unwrap_or_default(),
                p99.get(label).cloned().unwrap_or_default(),
            );
            self.report.figure(
                format!(
                    "P11 PUT on new counters, merger {label} (median of {})",
                    self.args.rounds
                ),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms (p99 of each round: {} ms)",
                    median(&p50s),
                    median(&p99s),
                    per_round(&p99s)
                ),
            );
        }
        let series = |label: &str| p99.get(label).cloned().unwrap_or_default();
        self.report.ratio(
            "p11",
            "P11 PUT p99, merger stopped / merger up (medians)",
            ratio(median(&series("stopped")), median(&series("up"))),
            Target::AtMost(1.5),
        );
        Ok(())
    }

    /// Waits until the merger holds the hits of a P11 run (`prefix`: its ids' prefix).
    async fn p11_settled(&mut self, prefix: &str, run: &WrkRun) -> Result<(), Error> {
        let slack = u64::from(self.args.connections);
        let start = Instant::now();
        let total = loop {
            let total: i128 = self.merger_counts(prefix).await?.values().sum();
            if total >= i128::from(run.ok()) || start.elapsed() > SETTLE {
                break total;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let ok = (i128::from(run.ok())..=i128::from(run.ok() + slack)).contains(&total);
        self.report.check(
            ok,
            format!(
                "P11 {prefix}*: the merger holds {total} hits, acknowledged {} (+ <= {slack} in flight), {:.1} s after the load",
                run.ok(),
                start.elapsed().as_secs_f64()
            ),
        );
        Ok(())
    }

    /// The exact path (`docs/milestones.md`) on one object (`PARTITIONS=1 SPREAD=1`): hits
    /// on counters with a milestone every [`MILESTONE_SPACING`] hits (every hit inside the
    /// margin, so on the exact path) against hits on counters with none, merger up,
    /// alternating for `--rounds`; then hits inside the margin with the merger stopped
    /// (SIGSTOP). Afterwards the merger holds every acknowledged hit.
    async fn exact(&mut self) -> Result<(), Error> {
        step("exact: starting the tally worker with PARTITIONS=1 SPREAD=1 (one object)");
        let mut options = self.options("exact", &self.workers.tally.clone(), 1, 1)?;
        options.vars.push(format!("EXACT_WAIT_MS:{EXACT_WAIT_MS}"));
        let edge = Edge::start(&options).await;
        let outcome = self.exact_runs(&edge).await;
        edge.stop().await;
        outcome
    }

    async fn exact_runs(&mut self, edge: &Edge) -> Result<(), Error> {
        let rounds = self.args.rounds;
        let near: Vec<String> = (0..rounds).map(|r| format!("exact-near{r:02}")).collect();
        let stopped_id = "exact-stopped";
        let hit_url = |id: &str| format!("{}/{id}/counter", edge.url);
        step(&format!(
            "exact: {MILESTONES} milestones on each of {} counters, one every {MILESTONE_SPACING} hits after their first {WARM_HITS}",
            rounds + 1
        ));
        // Every hit a client of this phase was acknowledged, per counter: (low, high), the
        // high end counting the hits that got no answer.
        let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for id in near.iter().map(String::as_str).chain([stopped_id]) {
            self.register_milestones(id).await?;
            for _ in 0..WARM_HITS {
                self.expect_ok(reqwest::Method::PUT, &hit_url(id)).await?;
            }
            expected.insert(id.to_owned(), (WARM_HITS, WARM_HITS));
        }
        // Once synced, the sync's answer has told the object of the milestones.
        if let Err(e) = self.settle_merger("exact-", &expected).await? {
            return Err(format!("exact: the near counters' first hits never synced: {e}").into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;

        let load = exact::Load {
            clients: EXACT_CLIENTS,
            pace: EXACT_PACE,
            max_hits: MILESTONES * MILESTONE_SPACING,
        };
        let seconds = Duration::from_secs(self.args.seconds);
        step(&format!(
            "exact: PUT latency inside a milestone's margin and with no milestone, merger up, alternating ({EXACT_CLIENTS} clients, one hit per {} ms each at most)",
            EXACT_PACE.as_millis()
        ));
        let mut runs: Vec<(String, ExactRun)> = Vec::new();
        let mut p50: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut p99: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (round, near_id) in near.iter().enumerate() {
            let plain = format!("exact-plain{round:02}");
            // One hit first, as in P5: the counter is known to its object.
            self.expect_ok(reqwest::Method::PUT, &hit_url(&plain))
                .await?;
            expected.insert(plain.clone(), (1, 1));
            let ordinary =
                exact::run(&edge.url, &plain, WRITE_KEY, load, Instant::now() + seconds).await?;
            let close = exact::run(
                &edge.url,
                near_id,
                WRITE_KEY,
                load,
                Instant::now() + seconds,
            )
            .await?;
            let measured = [
                ("ordinary", ordinary.latencies(|_| true)),
                ("near", close.latencies(|h| h.verdict.is_some())),
            ];
            for (label, ms) in measured {
                let (median_ms, tail_ms) = (percentile(&ms, 50), percentile(&ms, 99));
                eprintln!(
                    "[bench]   round {round}, {label}: p50 {median_ms:.1} ms, p99 {tail_ms:.1} ms over {} hits",
                    ms.len()
                );
                // No hit measured is the worst case, not a missing one.
                let or_worst = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
                p50.entry(label).or_default().push(or_worst(median_ms));
                p99.entry(label).or_default().push(or_worst(tail_ms));
            }
            eprintln!(
                "[bench]   round {round}, near: {}; {:.0} / {:.0} hits/s (ordinary / near)",
                close.verdicts(),
                ordinary.per_second(),
                close.per_second()
            );
            runs.push((plain, ordinary));
            runs.push((near_id.clone(), close));
        }

        let span = seconds.max(Duration::from_millis(4 * SYNC_TIMEOUT_MS));
        step(&format!(
            "exact: PUT inside a milestone's margin with the merger stopped (SIGSTOP), {} s",
            span.as_secs()
        ));
        self.merger.signal("-STOP");
        let stopped_at = Instant::now();
        let down = exact::run(&edge.url, stopped_id, WRITE_KEY, load, stopped_at + span).await;
        // Resumed before anything else, whatever the run did.
        self.merger.signal("-CONT");
        let resumed = Instant::now();
        let down = down?;

        let series = |map: &BTreeMap<&str, Vec<f64>>, label: &str| {
            map.get(label).cloned().unwrap_or_default()
        };
        let verdicts = |of: &str| {
            let mut all = ExactRun::default();
            for (_, run) in runs.iter().filter(|(id, _)| id.starts_with(of)) {
                all.hits.extend(run.hits.iter().cloned());
            }
            all.verdicts()
        };
        let (ordinary_verdicts, near_verdicts) = (verdicts("exact-plain"), verdicts("exact-near"));
        for (label, what, verdicts) in [
            ("ordinary", "PUT with no milestone", ordinary_verdicts),
            ("near", "PUT inside a milestone's margin", near_verdicts),
        ] {
            let over = if label == "near" {
                " over the hits on the exact path"
            } else {
                ""
            };
            self.report.figure(
                format!("exact: {what}, merger up, 1 object (median of {rounds})"),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms{over} (p99 of each round: {} ms); {verdicts}",
                    median(&series(&p50, label)),
                    median(&series(&p99, label)),
                    per_round(&series(&p99, label)),
                ),
            );
        }
        self.report.ratio(
            "exact",
            "exact path: PUT p99 inside a milestone's margin / ordinary hits (medians)",
            ratio(
                median(&series(&p99, "near")),
                median(&series(&p99, "ordinary")),
            ),
            Target::AtMost(2.0),
        );

        let all_ms = down.latencies(|_| true);
        let waited_ms = to_f64(WAITED_MS);
        let full_ms = to_f64(EXACT_WAIT_MS) * 0.95;
        let window = Duration::from_millis(SYNC_TIMEOUT_MS);
        let waits = Waits::count(&down.hits, stopped_at, window, waited_ms, full_ms);
        let first_at_once = down
            .hits
            .iter()
            .filter(|h| h.ms <= waited_ms)
            .map(|h| h.sent.saturating_duration_since(stopped_at))
            .min()
            .map_or("none answered".to_owned(), |d| {
                format!("the first sent {:.1} s after the stop", d.as_secs_f64())
            });
        self.report.figure(
            format!(
                "exact: PUT inside a milestone's margin, merger stopped (SIGSTOP, {} s), 1 object",
                span.as_secs()
            ),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms; {}",
                percentile(&all_ms, 50),
                percentile(&all_ms, 99),
                down.verdicts()
            ),
        );
        self.report.figure(
            format!(
                "exact, merger stopped: hits answered within {WAITED_MS} ms (a quarter of EXACT_WAIT_MS={EXACT_WAIT_MS}) / later"
            ),
            format!(
                "{} ({first_at_once}) / {} waited, {} of them {full_ms:.0} ms or more",
                down.acked() - waits.waited,
                waits.waited,
                waits.waited_full
            ),
        );
        self.report.figure(
            format!(
                "exact, merger stopped: hits that waited, sent once SYNC_TIMEOUT_MS={SYNC_TIMEOUT_MS} had passed"
            ),
            format!(
                "{} in {} window(s) of {SYNC_TIMEOUT_MS} ms, 1 object",
                waits.waited_later, waits.later_windows
            ),
        );
        self.report.ratio(
            "exact_stopped_waits",
            format!(
                "exact path, merger stopped: hits waiting > {WAITED_MS} ms per object per SYNC_TIMEOUT_MS, after the first"
            ),
            if waits.later_windows == 0 {
                f64::NAN
            } else {
                ratio(to_f64(waits.waited_later), to_f64(waits.later_windows))
            },
            Target::AtMost(1.0),
        );
        runs.push((stopped_id.to_owned(), down));

        // Every hit answered, the paths taken as the milestones say; then the merger holds
        // exactly what was acknowledged.
        let unclean: Vec<String> = runs
            .iter()
            .filter(|(_, run)| !run.clean())
            .map(|(id, run)| {
                format!(
                    "{id}: non-2xx {:?}, {} hit(s) with no answer",
                    run.statuses, run.unknown
                )
            })
            .collect();
        let answered: u64 = runs.iter().map(|(_, run)| run.acked()).sum();
        self.report.check(
            unclean.is_empty(),
            format!(
                "exact: {answered} hits in {} runs answered 2xx{}",
                runs.len(),
                if unclean.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", unclean.join("; "))
                }
            ),
        );
        for (id, run) in &runs {
            for failure in &run.shown {
                self.report.note(format!("exact {id}: {failure}"));
            }
            let e = expected.entry(id.clone()).or_default();
            e.0 += run.acked();
            e.1 += run.acked() + run.unknown;
        }
        self.report.check(
            ordinary_verdicts.told() == 0,
            format!(
                "exact: hits on counters with no milestone are off the exact path ({ordinary_verdicts})"
            ),
        );
        self.report.check(
            near_verdicts.told() * 2 >= near_verdicts.told() + near_verdicts.none
                && near_verdicts.told() > 0,
            format!(
                "exact: hits inside a milestone's margin, merger up, take the exact path ({near_verdicts})"
            ),
        );
        let acked: u64 = expected.values().map(|e| e.0).sum();
        let outcome = self.settle_merger("exact-", &expected).await?;
        self.report.check(
            outcome.is_ok(),
            format!(
                "exact: the merger holds exactly the {acked} acknowledged hits on {} counters{}",
                expected.len(),
                match &outcome {
                    Ok(_) => format!(
                        " ({:.1} s after the merger resumed)",
                        resumed.elapsed().as_secs_f64()
                    ),
                    Err(e) => format!(": {e}"),
                }
            ),
        );
        Ok(())
    }

    /// Registers [`MILESTONES`] milestones on `id` at the merger, one every
    /// [`MILESTONE_SPACING`] hits after its first [`WARM_HITS`].
    async fn register_milestones(&self, id: &str) -> Result<(), Error> {
        let url = format!("{}/v1/counters/{id}/milestones", self.merger.url);
        for k in 1..=MILESTONES {
            let n = WARM_HITS + k * MILESTONE_SPACING;
            let body = serde_json::json!({"n": n, "label": format!("bench {n}")});
            let response = self
                .http
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let status = response.status();
            if status != reqwest::StatusCode::CREATED {
                let text = response.text().await.unwrap_or_default();
                return Err(format!("POST {url} (n {n}) answered {status}: {text}").into());
            }
        }
        Ok(())
    }

    /// JS <-> Wasm crossings and storage calls per request, on the counting copy of the
    /// worker with one object (the P5 shape): hits, reads of a hot counter and preflights
    /// with the deployed settings (reads answered by the isolate cache), then reads with the
    /// isolate cache off (`EDGE_CACHE_MS=0`: every read reaches the object).
    async fn crossings(&mut self) -> Result<(), Error> {
        step(
            "crossings: JS <-> Wasm calls and storage calls per request (counting copy, one object)",
        );
        let put = self.root.join("bench/wrk/put.lua");
        let options = self.root.join("bench/wrk/options.lua");
        let deployed = [
            ("hit (PUT)", Some(put)),
            ("read of a hot counter (GET; isolate cache)", None),
            ("preflight (OPTIONS, no object)", Some(options)),
        ];
        self.count_crossings("counting", &[], &deployed).await?;
        let uncached = [("read (GET) with EDGE_CACHE_MS=0 (object)", None)];
        self.count_crossings("counting-uncached", &["EDGE_CACHE_MS:0"], &uncached)
            .await?;
        self.report.figure(
            "per hit, JavaScript baseline (bench/js-counter, by reading it)",
            "0 crossings; 2 storage calls (get, put)",
        );
        Ok(())
    }

    /// Runs `runs` (label, wrk script) in turn against one counting edge with `vars`, and
    /// reports the counts per request of each.
    async fn count_crossings(
        &mut self,
        name: &str,
        vars: &[&str],
        runs: &[(&str, Option<PathBuf>)],
    ) -> Result<(), Error> {
        let mut options = self.options(name, &self.workers.counting.clone(), 1, 1)?;
        options.vars.extend(vars.iter().map(|v| (*v).to_owned()));
        let edge = Edge::start(&options).await;
        let url = format!("{}/x-hot/counter", edge.url);
        for _ in 0..3 {
            self.expect_ok(reqwest::Method::PUT, &url).await?;
        }
        self.expect_ok(reqwest::Method::GET, &url).await?;
        // The first hits' refresh and sync are not part of the steady state measured.
        tokio::time::sleep(self.sync_interval() + Duration::from_secs(1)).await;
        let reset = format!("{}/_crossings?reset", edge.url);
        self.expect_ok(reqwest::Method::GET, &reset).await?;
        let short = Wrk {
            seconds: self.args.seconds.div_ceil(2),
            ..self.wrk.clone()
        };
        for (label, script) in runs {
            let before = self.merger_calls().await;
            let run = short.run(&url, script.as_deref(), &[], &[]).await?;
            self.wrk_clean(&format!("crossings {label}"), &run);
            // The requests in flight when wrk stopped finish first: each is counted whole.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let body = self.expect_ok(reqwest::Method::GET, &reset).await?;
            let after = self.merger_calls().await;
            let counted = Crossings::from_json(&body)
                .ok_or_else(|| format!("unreadable /_crossings answer: {body}"))?;
            self.report.figure(
                format!("per {label}"),
                format!(
                    "{}; {:.3} merger calls",
                    counted.summary(),
                    ratio(after - before, to_f64(counted.requests()))
                ),
            );
            for line in counted.detail(12) {
                self.report.note(format!("per {label}: {line}"));
            }
        }
        edge.stop().await;
        Ok(())
    }

    /// Calls the edges made to the merger so far (syncs and batch reads).
    async fn merger_calls(&self) -> f64 {
        self.metric("tally_syncs_total{outcome=\"ok\"}").await
            + self.metric("tally_reads_total{outcome=\"ok\"}").await
    }

    /// One object holding `--big-counters` counters against a near-empty one (2 counters):
    /// the first answer after `wrangler dev` restarts on the same storage, workerd's memory,
    /// the storage on disk.
    async fn big_object(&mut self) -> Result<(), Error> {
        let n = self.args.big_counters;
        step(&format!(
            "the big object: filling one object with {n} counters"
        ));
        let big = self.options("big", &self.workers.tally.clone(), 1, 1)?;
        let small = self.options("small", &self.workers.tally.clone(), 1, 1)?;
        let held_series = "tally_counters{kind=\"g\"}";
        let held_before = self.metric(held_series).await;
        let edge = Edge::start(&big).await;
        let fill = Workload::Fill {
            prefix: "big".into(),
            next: Arc::new(AtomicU64::new(0)),
            total: n,
        };
        // Generous: the fill runs at one object's hit rate, a few hundred per second here.
        let deadline = Instant::now() + Duration::from_secs(600 + n / 20);
        let target = LoadTarget::new(&edge.url)?;
        let filled = load::run(&target, &fill, self.args.connections, deadline, WRITE_KEY).await;
        self.load_clean("big object fill", &filled);
        self.report.check(
            filled.writes == n,
            format!(
                "big object: {} of {n} new counters acknowledged",
                filled.writes
            ),
        );
        self.report.figure(
            format!("filling one object with {n} counters (a hit on each, write key)"),
            format!(
                "{:.1} s, {:.0} hits/s",
                filled.seconds,
                filled.writes_per_second()
            ),
        );
        let near_empty = Edge::start(&small).await;
        for i in 0..2 {
            let url = format!("{}/small-{i}/counter", near_empty.url);
            self.expect_ok(reqwest::Method::PUT, &url).await?;
        }
        // Synced before the restarts, so neither restart has dirty rows to send.
        let want = held_before + to_f64(n) + 2.0;
        let start = Instant::now();
        while self.metric(held_series).await < want && start.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let held = self.metric(held_series).await;
        self.report.check(
            held >= want,
            format!("big object: the merger holds its {n} counters ({held:.0} counters in all)"),
        );
        tokio::time::sleep(self.sync_interval()).await;
        edge.stop().await;
        near_empty.stop().await;

        step("the big object: restarts of wrangler dev on the same storage");
        let objects = [("2 counters", &small, "small"), ("big", &big, "big")];
        let mut measured: BTreeMap<&str, Vec<Restart>> = BTreeMap::new();
        for round in 0..self.args.restarts {
            for (label, options, prefix) in objects {
                let restart = self.restart(options, prefix).await?;
                eprintln!(
                    "[bench]   restart {round}, {label}: first answer {:.1} ms, a second counter {:.1} ms; workerd {:.1} -> {:.1} MiB",
                    restart.first_ms,
                    restart.second_ms,
                    restart.rss_before_mib,
                    restart.rss_after_mib
                );
                measured.entry(label).or_default().push(restart);
            }
        }
        let pick = |label: &str, f: fn(&Restart) -> f64| {
            median(
                &measured
                    .get(label)
                    .map(|v| v.iter().map(f).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
        };
        for (label, options, _) in objects {
            let name = if label == "big" {
                format!("{n} counters")
            } else {
                label.to_owned()
            };
            self.report.figure(
                format!(
                    "object with {name}: first answer after a restart; then a second counter (median of {})",
                    self.args.restarts
                ),
                format!("{:.1} ms; {:.1} ms", pick(label, |m| m.first_ms), pick(label, |m| m.second_ms)),
            );
            self.report.figure(
                format!("object with {name}: workerd RSS before / after its first answer"),
                format!(
                    "{:.1} / {:.1} MiB",
                    pick(label, |m| m.rss_before_mib),
                    pick(label, |m| m.rss_after_mib)
                ),
            );
            self.report.figure(
                format!("object with {name}: its storage on disk"),
                format!("{} B", memory::object_storage_bytes(&options.persist_dir)),
            );
        }
        self.report.ratio(
            "big_first_answer",
            format!("first answer after a restart, {n} counters / 2 counters"),
            ratio(
                pick("big", |m| m.first_ms),
                pick("2 counters", |m| m.first_ms),
            ),
            Target::None,
        );
        self.report.ratio(
            "big_rss",
            format!("workerd RSS after the first answer, {n} counters / 2 counters"),
            ratio(
                pick("big", |m| m.rss_after_mib),
                pick("2 counters", |m| m.rss_after_mib),
            ),
            Target::None,
        );
        Ok(())
    }

    /// Starts an edge on stored objects and times its first answer (`GET` of
    /// `/<prefix>-0/counter` on a new connection: the object loads), then a read of
    /// `<prefix>-1` (the loaded object reads a row it has not cached; not the isolate cache,
    /// which now holds `<prefix>-0`).
    async fn restart(&mut self, options: &EdgeOptions, prefix: &str) -> Result<Restart, Error> {
        let edge = Edge::start(options).await;
        let target = LoadTarget::new(&edge.url)?;
        let rss_before = memory::workerd_rss_kib(edge.process_group());
        let (first, status) = load::first_answer(&target, &format!("/{prefix}-0/counter")).await?;
        let (second, second_status) =
            load::first_answer(&target, &format!("/{prefix}-1/counter")).await?;
        let rss_after = memory::workerd_rss_kib(edge.process_group());
        edge.stop().await;
        self.report.check(
            status == 200 && second_status == 200,
            format!("restart of the object {prefix}-*: reads answered {status}, {second_status}"),
        );
        Ok(Restart {
            first_ms: first.as_secs_f64() * 1000.0,
            second_ms: second.as_secs_f64() * 1000.0,
            rss_before_mib: to_f64(rss_before) / 1024.0,
            rss_after_mib: to_f64(rss_after) / 1024.0,
        })
    }
}

/// One restart of an edge on stored objects.
#[derive(Debug, Clone, Copy)]
struct Restart {
    first_ms: f64,
    second_ms: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

/// Each round's figure, in milliseconds to a tenth, `/`-separated.
fn per_round(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
