//! `tally-bench`: load generators and baselines for the benchmarks.
//!
//! `scripts/bench-merger.sh` and `scripts/bench-edge.sh` install the tools and build;
//! `compare merger` and `compare edge` supervise every process and run every benchmark of
//! `docs/benchmarks.md` side by side, and compute and print the figures and ratios. Each subcommand prints one machine-readable summary line
//! (`name key=value ...`) and lines for people.
//!
//! - `naive` (`naive.rs`): the anti-pattern the merger replaces. A table `counters(id, value)`
//!   in SQLite (WAL, `synchronous=FULL`) or Postgres (`synchronous_commit=on`), and one
//!   autocommitted `UPDATE counters SET value = value + 1` per hit from concurrent clients.
//!   Measures durable hits/s; every hit costs a commit.
//! - `sync-load` (`sync_load.rs`): simulated edge replicas `POST /v1/sync` their slot totals
//!   to running mergers. Measures durable slot-updates/s (one counter entry of an
//!   acknowledged sync), syncs/s and sync latency, then checks that the merger's counts equal
//!   the sums of the totals it acknowledged, exactly.
//! - `hello` (`hello.rs`): a hello-world axum server, served like the merger; the baseline
//!   for the merger's read throughput under `wrk`.
//! - `compare merger` (`merger/`): every merger benchmark in one run (`scripts/bench-merger.sh`):
//!   it starts the release merger on SQLite and on a throwaway Postgres cluster, Redis and the
//!   hello server, drives them with `sync-load`, `naive`, `wrk` and `redis-benchmark`, fills
//!   a database with a million counters, and prints the figures and ratios (P2, P3, P4, P13).
//! - `compare edge` (`edge/`): every edge benchmark in one run (`scripts/bench-edge.sh`): it starts
//!   the merger, the JavaScript Durable Object baseline and the tally worker under
//!   `wrangler dev` through the end-to-end harness, drives them with `wrk` and its own
//!   checking client, and prints the figures and ratios.
//!
//! Shared by the two runs: `report.rs` (figures, ratios against targets, checks), `wrk.rs`
//! (`wrk` as a child process, its report parsed), `memory.rs` (resident memory from `/proc`).
//!
//! The exit code is non-zero when a run saw an error or a wrong count, so the script stops;
//! a missed target is reported, not an error.

mod edge;
mod hello;
mod memory;
mod merger;
mod naive;
mod report;
mod sync_load;
mod wrk;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Errors of a benchmark run: reported once, then the process exits non-zero. A binary's
/// error, never matched on, so a boxed error is enough.
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Load generators and baselines for the tally benchmarks.
#[derive(Debug, Parser)]
#[command(name = "tally-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One autocommitted SQLite `UPDATE ... SET value = value + 1` per hit (the anti-pattern).
    Naive(naive::Args),
    /// Simulated edge replicas syncing to a running merger; checks the counts at the end.
    SyncLoad(sync_load::Args),
    /// A hello-world HTTP server (the baseline of the merger's reads).
    Hello(hello::Args),
    /// Every benchmark of one part against its baselines, side by side in one run: starts
    /// and stops every process itself and computes the ratios.
    #[command(subcommand)]
    Compare(Compare),
}

#[derive(Debug, Subcommand)]
enum Compare {
    /// The merger benchmarks (P2, P3, P4, P13, a million counters).
    Merger(merger::Args),
    /// The edge benchmarks (P5, P6, P11, P12, the big object, crossings).
    Edge(edge::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Naive(args) => naive::run(args).await,
        Command::SyncLoad(args) => sync_load::run(args).await,
        Command::Hello(args) => hello::run(args).await,
        Command::Compare(Compare::Merger(args)) => merger::run(args).await,
        Command::Compare(Compare::Edge(args)) => edge::run(args).await,
    };
    match outcome {
        Ok(Verdict::Pass) => ExitCode::SUCCESS,
        Ok(Verdict::Fail) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a run that completed met its own checks (errors and wrong counts are failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
}

/// `n` per second over `seconds`, for the summary lines.
fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        to_f64(n) / seconds
    } else {
        0.0
    }
}

/// `n` as a float without an `as` cast (exact below 2^53, far beyond any count a run reaches).
fn to_f64(n: u64) -> f64 {
    let (high, low) = (n >> 32, n & 0xffff_ffff);
    let half = |v: u64| f64::from(u32::try_from(v).expect("a 32-bit half fits a u32"));
    half(high) * 4_294_967_296.0 + half(low)
}
