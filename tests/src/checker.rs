//! A checker in the style of Jepsen Maelstrom's counter workloads.
//!
//! Clients send hits to counters and gauges through the edge, across regions, and record
//! each hit's outcome: **acknowledged** (2xx), **failed** (a definite 4xx: nothing was
//! counted), or **unknown** (no answer, or a 5xx: it may or may not have been counted).
//! After the faults stop and the system settles, every final read at the merger and at the
//! edge must equal the acknowledged sum exactly, or, where unknowns exist, lie within
//! `[acknowledged + unknown decrements, acknowledged + unknown increments]`. Lost hits show
//! up below the range, double-counted ones above it. A reset (or delete) at the merger moves
//! the range down by exactly the count the merger answers it removed ([`Checker::reset`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proxy::Stats;
use crate::{Outcome, count_of, get, put_hit};

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Edge paths to hit, e.g. `/home/counter`, `/viewers/gauge`.
    pub paths: Vec<String>,
    /// Regions to spread hits over (sent as `X-Tally-Region`).
    pub regions: Vec<&'static str>,
    /// Concurrent clients.
    pub clients: usize,
    /// Hits each client sends.
    pub hits_per_client: usize,
    /// Seed of the clients' choices.
    pub seed: u64,
}

impl Workload {
    /// `counters` counters and `gauges` gauges named after `prefix`, three regions.
    pub fn new(prefix: &str, counters: usize, gauges: usize, seed: u64) -> Workload {
        let paths = (0..counters)
            .map(|i| format!("/{prefix}-c{i}/counter"))
            .chain((0..gauges).map(|i| format!("/{prefix}-g{i}/gauge")))
            .collect();
        Workload {
            paths,
            regions: vec!["eu", "us", "ap"],
            clients: 16,
            hits_per_client: 25,
            seed,
        }
    }
}

/// The outcomes recorded for one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Sum of acknowledged deltas.
    pub acked: i128,
    /// Sum of the positive deltas with an unknown outcome.
    pub unknown_up: i128,
    /// Sum of the negative deltas with an unknown outcome (≤ 0).
    pub unknown_down: i128,
    /// Hits acknowledged.
    pub hits_acked: u64,
    /// Hits with an unknown outcome: an answer of 5xx, or none at all.
    pub hits_unknown: u64,
    /// Of those, hits sent that got no answer at all (the connection closed, or the request
    /// timed out).
    pub hits_dropped: u64,
    /// Hits refused with a 4xx, or never sent (no connection).
    pub hits_failed: u64,
    /// Sum of what resets removed, as the merger answered them.
    pub removed: i128,
}

impl Tally {
    /// Whether `value` is what the recorded outcomes allow.
    pub fn allows(&self, value: i128) -> bool {
        (self.low()..=self.high()).contains(&value)
    }

    /// The lowest value allowed.
    pub fn low(&self) -> i128 {
        self.acked + self.unknown_down - self.removed
    }

    /// The highest value allowed.
    pub fn high(&self) -> i128 {
        self.acked + self.unknown_up - self.removed
    }
}

/// Records outcomes and checks final reads.
#[derive(Debug, Default)]
pub struct Checker {
    tallies: Mutex<BTreeMap<String, Tally>>,
    /// Acknowledged deltas per path and region (the merger's per-region breakdown).
    regions: Mutex<BTreeMap<String, BTreeMap<String, i128>>>,
    /// Sum of the positive deltas of every hit sent so far per path, counted before it is
    /// sent, whatever its outcome ([`Checker::sending`]).
    sent_up: Mutex<BTreeMap<String, i128>>,
}

impl Checker {
    /// A checker with nothing recorded.
    pub fn new() -> Arc<Checker> {
        Arc::new(Checker::default())
    }

    /// Records one hit's outcome: 2xx acknowledged; 4xx, or never sent, failed; anything
    /// else (no answer, 5xx) unknown.
    pub fn record(&self, path: &str, delta: i64, outcome: &Outcome) {
        let mut tallies = self
            .tallies
            .lock()
            .expect("the checker lock is never poisoned");
        let t = tallies.entry(path.to_owned()).or_default();
        let delta = i128::from(delta);
        match outcome {
            Outcome::Answered(200..=299, _) => {
                t.acked += delta;
                t.hits_acked += 1;
            }
            Outcome::Answered(400..=499, _) | Outcome::NotSent => t.hits_failed += 1,
            _ => {
                if delta > 0 {
                    t.unknown_up += delta;
                } else {
                    t.unknown_down += delta;
                }
                t.hits_unknown += 1;
                if matches!(outcome, Outcome::NoAnswer(_)) {
                    t.hits_dropped += 1;
                }
            }
        }
    }

    /// Records one hit's outcome in `region` ([`Checker::record`], and the per-region sums
    /// [`Checker::check_regions`] compares).
    pub fn record_in(&self, path: &str, region: &str, delta: i64, outcome: &Outcome) {
        self.record(path, delta, outcome);
        if matches!(outcome, Outcome::Answered(200..=299, _)) {
            let mut regions = self
                .regions
                .lock()
                .expect("the checker lock is never poisoned");
            *regions
                .entry(path.to_owned())
                .or_default()
                .entry(region.to_owned())
                .or_default() += i128::from(delta);
        }
    }

    /// Compares the merger's per-region counts of every path with the acknowledged hits of
    /// each region; meaningful once settled, and when no hit had an unknown outcome and no
    /// reset happened. Returns the mismatches.
    pub async fn check_regions(&self, merger: &str) -> Result<(), String> {
        let client = crate::http_client();
        let regions = self
            .regions
            .lock()
            .expect("the checker lock is never poisoned")
            .clone();
        let mut wrong = String::new();
        for (path, acked) in &regions {
            let (_, view) = get(&client, &format!("{merger}{}", merger_path(path))).await;
            for (region, want) in acked {
                let got = count_of(&view["regions"][region.as_str()]["count"]);
                if got != Some(*want) {
                    wrong.push_str(&format!(
                        "{path} in {region}: merger {got:?}, acknowledged {want}\n"
                    ));
                }
            }
        }
        if wrong.is_empty() { Ok(()) } else { Err(wrong) }
    }

    /// Notes that a hit of `delta` on `path` is about to be sent: whatever its outcome, no
    /// count can include more than the positive deltas sent so far ([`Checker::sent_up`]).
    /// [`Checker::run`] notes its own hits; a test that sends hits of its own notes them too.
    pub fn sending(&self, path: &str, delta: i64) {
        if delta > 0 {
            *self
                .sent_up
                .lock()
                .expect("the checker lock is never poisoned")
                .entry(path.to_owned())
                .or_default() += i128::from(delta);
        }
    }

    /// The sum of the positive deltas sent to `path` so far ([`Checker::sending`]): at any
    /// moment, the most any answer about an increment-only counter may show in its first
    /// epoch, since nothing not sent yet can be counted (and nothing counted twice).
    pub fn sent_up(&self, path: &str) -> i128 {
        self.sent_up
            .lock()
            .expect("the checker lock is never poisoned")
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    /// Hits not acknowledged so far (failed or unknown), over every path.
    pub fn unacknowledged(&self) -> u64 {
        self.tallies()
            .values()
            .map(|t| t.hits_failed + t.hits_unknown)
            .sum()
    }

    /// Hits that got an answer other than 2xx, or could not be sent: what an edge that
    /// answers every hit it receives never causes (a connection dropped without an answer
    /// is not counted here; see [`Checker::dropped`]).
    pub fn refused(&self) -> u64 {
        self.tallies()
            .values()
            .map(|t| t.hits_failed + t.hits_unknown - t.hits_dropped)
            .sum()
    }

    /// Hits sent that got no answer at all.
    pub fn dropped(&self) -> u64 {
        self.tallies().values().map(|t| t.hits_dropped).sum()
    }

    /// Records a reset of `path` at the merger that removed `removed` (its answer's
    /// `removed`): every hit stays counted once, in the epoch that was cut or the new one.
    pub fn reset(&self, path: &str, removed: i128) {
        let mut tallies = self
            .tallies
            .lock()
            .expect("the checker lock is never poisoned");
        tallies.entry(path.to_owned()).or_default().removed += removed;
    }

    /// The outcomes so far.
    pub fn tallies(&self) -> BTreeMap<String, Tally> {
        self.tallies
            .lock()
            .expect("the checker lock is never poisoned")
            .clone()
    }

    /// Runs the workload's clients against `edge` until each has sent its hits. `edge` is
    /// read before every hit, so a test can move the clients to a restarted edge.
    pub async fn run(self: &Arc<Checker>, edge: &Arc<Mutex<String>>, workload: &Workload) {
        let client = crate::http_client();
        let tasks: Vec<_> = (0..workload.clients)
            .map(|c| {
                let (checker, edge, client, w) = (Arc::clone(self), Arc::clone(edge), client.clone(), workload.clone());
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(1000).wrapping_add(c as u64));
                    for _ in 0..w.hits_per_client {
                        let path = &w.paths[rng.random_range(0..w.paths.len())];
                        let region = w.regions[rng.random_range(0..w.regions.len())];
                        let delta: i64 = if path.ends_with("/gauge") {
                            [-2, -1, 1, 3][rng.random_range(0..4)]
                        } else {
                            rng.random_range(1..=3)
                        };
                        checker.sending(path, delta);
                        // A client that cannot connect (the edge is restarting) retries, for up
                        // to 60 s: a refused connection is a definite failure, not an unknown.
                        let mut attempts = 0;
                        let outcome = loop {
                            let url = edge.lock().expect("the edge URL lock is never poisoned").clone();
                            let sent = Instant::now();
                            match put_hit(&client, &url, path, region, delta).await {
                                Outcome::NotSent if attempts < 600 => {
                                    attempts += 1;
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                other => {
                                    if !matches!(&other, Outcome::Answered(200..=299, _)) {
                                        eprintln!("checker: PUT {path} ({region}, {delta:+}) after {:?}: {other:?}", sent.elapsed());
                                    }
                                    break other;
                                }
                            }
                        };
                        checker.record_in(path, region, delta, &outcome);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a client task does not panic");
        }
    }

    /// Waits (up to `timeout`) until every counter's final read at the merger is allowed by
    /// the outcomes and has stopped moving, then reads each at the edge (in every region)
    /// until it equals the merger's. Returns the report; [`Report::ok`] is the verdict.
    pub async fn settle(
        &self,
        merger: &str,
        edge: &str,
        regions: &[&str],
        timeout: Duration,
    ) -> Report {
        let client = crate::http_client();
        let tallies = self.tallies();
        let start = Instant::now();
        let mut merger_reads: BTreeMap<String, Option<i128>> = BTreeMap::new();
        let mut stable_since: Option<Instant> = None;
        loop {
            let mut reads = BTreeMap::new();
            for path in tallies.keys() {
                let (status, view) = get(&client, &format!("{merger}{}", merger_path(path))).await;
                let value = match status {
                    200 => count_of(&view["count"]),
                    404 => Some(0),
                    _ => None,
                };
                reads.insert(path.clone(), value);
            }
            let allowed = tallies
                .iter()
                .all(|(p, t)| reads[p].is_some_and(|v| t.allows(v)));
            if allowed && reads == merger_reads {
                // Allowed, and unchanged since the last look: settled once that held 2 s.
                let since = *stable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(2) {
                    break;
                }
            } else {
                stable_since = None;
            }
            merger_reads = reads;
            if start.elapsed() > timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The edge: every region's replicas answer from their caches; each must reach the
        // merger's value.
        let mut edge_reads: BTreeMap<String, Option<i128>> = BTreeMap::new();
        for path in tallies.keys() {
            let want = merger_reads.get(path).copied().flatten();
            let mut last = None;
            let deadline = Instant::now() + Duration::from_secs(15);
            'regions: for region in regions {
                loop {
                    let response = client
                        .get(format!("{edge}{path}"))
                        .header("X-Tally-Region", *region)
                        .send()
                        .await;
                    last = match response {
                        Ok(r) if r.status().is_success() => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| count_of(&v["count"])),
                        _ => None,
                    };
                    if last == want {
                        continue 'regions;
                    }
                    if Instant::now() > deadline {
                        break 'regions;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            edge_reads.insert(path.clone(), last);
        }
        let rows = tallies
            .iter()
            .map(|(path, t)| {
                let merger = merger_reads.get(path).copied().flatten();
                let edge = edge_reads.get(path).copied().flatten();
                let ok = merger.is_some_and(|v| t.allows(v)) && edge == merger;
                Row {
                    path: path.clone(),
                    tally: *t,
                    merger,
                    edge,
                    ok,
                }
            })
            .collect();
        Report { rows, proxy: None }
    }
}

/// The merger's read path of an edge path: `/x/counter` → `/v1/counters/x`.
pub fn merger_path(path: &str) -> String {
    let (id, kind) = path
        .trim_start_matches('/')
        .split_once('/')
        .expect("edge paths are /{id}/{kind}");
    let namespace = if kind == "counter" {
        "counters"
    } else {
        "gauges"
    };
    format!("/v1/{namespace}/{id}")
}

/// One counter's line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Edge path.
    pub path: String,
    /// Recorded outcomes.
    pub tally: Tally,
    /// Final read at the merger.
    pub merger: Option<i128>,
    /// Final read at the edge.
    pub edge: Option<i128>,
    /// Whether both reads are allowed by the outcomes (and agree).
    pub ok: bool,
}

/// The checker's verdict, printable as a table.
#[derive(Debug, Clone)]
pub struct Report {
    /// One row per counter.
    pub rows: Vec<Row>,
    /// What the fault proxy did, if one was used.
    pub proxy: Option<Stats>,
}

impl Report {
    /// Whether every counter's final reads are allowed by the outcomes.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    /// The report with the proxy's figures.
    pub fn with_proxy(mut self, stats: Stats) -> Report {
        self.proxy = Some(stats);
        self
    }

    /// Hits lost: acknowledged hits missing from the merger's final value (0 when it is
    /// within the allowed range).
    pub fn lost(&self) -> i128 {
        self.rows
            .iter()
            .map(|r| r.merger.map_or(0, |v| (r.tally.low() - v).max(0)))
            .sum()
    }

    /// Hits counted twice: value above what acknowledged and unknown hits allow.
    pub fn doubled(&self) -> i128 {
        self.rows
            .iter()
            .map(|r| r.merger.map_or(0, |v| (v - r.tally.high()).max(0)))
            .sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sum = |g: fn(&Tally) -> u64| self.rows.iter().map(|r| g(&r.tally)).sum::<u64>();
        writeln!(
            f,
            "{:<28} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10}  verdict",
            "counter", "acked", "unknown", "failed", "expected", "merger", "edge"
        )?;
        for r in &self.rows {
            let t = &r.tally;
            let expected = if t.hits_unknown == 0 {
                t.low().to_string()
            } else {
                format!("{}..{}", t.low(), t.high())
            };
            let show = |v: Option<i128>| v.map_or("-".to_owned(), |v| v.to_string());
            writeln!(
                f,
                "{:<28} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10}  {}",
                r.path,
                t.hits_acked,
                t.hits_unknown,
                t.hits_failed,
                expected,
                show(r.merger),
                show(r.edge),
                if r.ok { "ok" } else { "WRONG" }
            )?;
        }
        writeln!(
            f,
            "hits: {} acked, {} unknown, {} failed; lost {}, double-counted {}; verdict: {}",
            sum(|t| t.hits_acked),
            sum(|t| t.hits_unknown),
            sum(|t| t.hits_failed),
            self.lost(),
            self.doubled(),
            if self.ok() { "PASS" } else { "FAIL" }
        )?;
        if let Some(p) = self.proxy {
            writeln!(
                f,
                "syncs through the proxy: {} sent, {} dropped, {} answers dropped, {} duplicated, {} delayed/reordered, {} cut by partitions",
                p.requests, p.dropped, p.responses_dropped, p.duplicated, p.delayed, p.partitioned
            )?;
        }
        Ok(())
    }
}
