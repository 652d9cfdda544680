//! `sync-load`: simulated edge replicas syncing to running mergers, then a check of the counts.
//!
//! [`run_load`] is the load itself, also called by `tally-bench compare merger` (P2, P3, P13); the
//! `sync-load` subcommand ([`run`]) prints its summary.
//!
//! `clients` tasks each play `replicas-per-client` replica incarnations (random
//! [`ReplicaId`]s), one sync in flight per task, taking turns. Each replica owns a slot in
//! `counters-per-sync` counters: a window, at a random offset, of `counters` shared counters
//! (one in four a PN gauge), so every counter has the slots of several replicas and the final
//! check compares real sums. Per sync a replica raises every one of its slot totals by a random
//! amount and sends them all in one `POST /v1/sync`, as a Durable Object alarm does.
//!
//! Measured over `seconds`: durable slot-updates/s (a slot-update is one counter entry of a
//! sync the merger acknowledged with a 2xx, which it sends only after committing), syncs/s
//! and sync latency (request sent to response body read). Every acknowledged response is
//! checked: one answer per counter, naming it, merged (none rejected), recording exactly the
//! totals sent.
//!
//! Then: a replica whose last sync was not acknowledged retries it (as the edge would), and a
//! sample of counters is read back with `GET /v1/{counters,gauges}/{id}`; each count must equal
//! the sum over replicas of the last totals the merger acknowledged, and `replicas` the number
//! of replicas that sent it. Counter ids carry a random run tag, so several runs can share a
//! database. Any non-2xx answer, transport error, wrong response or wrong count fails the run.
//!
//! Several mergers on one database (`--url` repeated): clients are dealt out to them in turn
//! (each client's replicas always sync to the same merger), and every counter of the sample
//! is read back from every merger, which must show the totals the others acknowledged too
//! (within `--settle-seconds`: a merger hears another's commits within about a second).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tally_crdt::{
    Count, CounterKey, CounterKind, MAX_COUNTERS_PER_SYNC, PROTOCOL_VERSION, ReplicaId, SlotTotals,
    SlotUpdate, SyncAnswer, SyncRequest, SyncResponse,
};

use crate::{Error, Verdict, per_second};

/// Longest wait for one answer; the merger's own request timeout is shorter (10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest growth of one slot total per sync (each half of a gauge).
const MAX_GROWTH: u64 = 10;
/// After the timed run, how often a replica retries a sync that was not acknowledged.
const FLUSH_ATTEMPTS: u32 = 5;
/// Failures described in full on stderr (the rest are only counted).
const SHOWN_FAILURES: usize = 10;

/// Options of `tally-bench sync-load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of the merger; repeat it for several mergers on one database (clients are
    /// dealt out to them in turn, and the check reads back from every one).
    #[arg(long, env = "TALLY_MERGER_URL", required = true)]
    url: Vec<String>,
    /// The merger's sync token.
    #[arg(long, env = "TALLY_SYNC_TOKEN", hide_env_values = true)]
    token: String,
    /// How long to sync, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Concurrent clients (connections, and syncs in flight).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// Replica incarnations each client plays, taking turns.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    replicas_per_client: u32,
    /// Counters per sync: each replica's slots, all raised and sent in every sync
    /// (at most 1000, the protocol's limit).
    #[arg(long, default_value_t = 500)]
    counters_per_sync: usize,
    /// Distinct counters shared by all replicas (at least `counters-per-sync`).
    #[arg(long, default_value_t = 2000)]
    counters: usize,
    /// Counters read back and checked at the end (0: all of them).
    #[arg(long, default_value_t = 200)]
    check_sample: usize,
    /// With several mergers: how long, in seconds, the check waits for each to show what
    /// the others committed.
    #[arg(long, default_value_t = 15)]
    settle_seconds: u64,
}

impl Args {
    /// The load these options describe.
    fn load(&self) -> Load {
        Load {
            urls: self.url.clone(),
            token: self.token.clone(),
            seconds: self.seconds,
            clients: self.clients,
            replicas_per_client: self.replicas_per_client,
            counters_per_sync: self.counters_per_sync,
            counters: self.counters,
            check_sample: self.check_sample,
            settle: Duration::from_secs(self.settle_seconds),
        }
    }
}

/// A sync load: what `tally-bench sync-load` runs, and `tally-bench compare merger` for P2, P3, P13.
#[derive(Debug, Clone)]
pub struct Load {
    /// Base URLs of the mergers (one database): client `i` syncs to `urls[i % len]`.
    pub urls: Vec<String>,
    /// The sync token.
    pub token: String,
    /// Seconds of syncing.
    pub seconds: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Replica incarnations per client.
    pub replicas_per_client: u32,
    /// Counters in each sync.
    pub counters_per_sync: usize,
    /// Distinct counters shared by all replicas.
    pub counters: usize,
    /// Counters read back at the end (0: all).
    pub check_sample: usize,
    /// How long the check waits for every merger to show the acknowledged totals.
    pub settle: Duration,
}

impl Load {
    /// The load of the merger benchmarks' earlier runs: 32 clients x 2 replicas, 500 of
    /// 2000 counters per sync, 200 read back.
    pub fn new(urls: Vec<String>, token: &str, seconds: u64) -> Load {
        Load {
            urls,
            token: token.to_owned(),
            seconds,
            clients: 32,
            replicas_per_client: 2,
            counters_per_sync: 500,
            counters: 2000,
            check_sample: 200,
            settle: Duration::from_secs(15),
        }
    }
}

/// What a sync load measured and checked.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Counter entries of acknowledged syncs in the timed run.
    pub slot_updates: u64,
    /// Acknowledged syncs in the timed run.
    pub syncs: u64,
    /// The timed run, from the first sync sent to the last answer.
    pub seconds: f64,
    /// Sync latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest sync.
    pub max_ms: f64,
    /// Answers other than 2xx, by status.
    pub non_2xx: Vec<(StatusCode, u64)>,
    /// Syncs that got no answer.
    pub transport_errors: u64,
    /// 2xx answers that were wrong.
    pub bad_responses: u64,
    /// Syncs sent after the timed run to deliver unacknowledged totals.
    pub retry_syncs: u64,
    /// Counter reads compared (counters x mergers).
    pub checked: usize,
    /// Reads that did not show the acknowledged totals, described.
    pub mismatches: Vec<String>,
    /// The first failures, described.
    pub failures: Vec<String>,
}

impl LoadReport {
    /// Durable slot-updates per second.
    pub fn updates_per_second(&self) -> f64 {
        per_second(self.slot_updates, self.seconds)
    }

    /// Acknowledged syncs per second.
    pub fn syncs_per_second(&self) -> f64 {
        per_second(self.syncs, self.seconds)
    }

    /// Answers other than 2xx, all statuses.
    pub fn non_2xx_total(&self) -> u64 {
        self.non_2xx.iter().map(|(_, n)| n).sum()
    }

    /// Whether every sync was acknowledged and answered well, and every count read back
    /// was exact.
    pub fn passed(&self) -> bool {
        self.non_2xx_total() == 0
            && self.transport_errors == 0
            && self.bad_responses == 0
            && self.syncs > 0
            && self.mismatches.is_empty()
    }

    /// `"; non-2xx: 503 x4"` and the like, or nothing.
    pub fn statuses(&self) -> String {
        describe_statuses(&self.non_2xx)
    }

    /// The failures and mismatches, on stderr (the first few of each).
    pub fn show_failures(&self) {
        for failure in &self.failures {
            eprintln!("failure: {failure}");
        }
        for mismatch in self.mismatches.iter().take(SHOWN_FAILURES) {
            eprintln!("mismatch: {mismatch}");
        }
    }
}

/// Runs the load, checks the counts and prints the summary.
pub async fn run(args: Args) -> Result<Verdict, Error> {
    let load = args.load();
    let report = run_load(&load).await?;
    report.show_failures();
    let (rate, syncs_rate) = (report.updates_per_second(), report.syncs_per_second());
    println!(
        "sync_load slot_updates={} syncs={} seconds={:.3} slot_updates_per_sec={rate:.0} \
         syncs_per_sec={syncs_rate:.1} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} non_2xx={} \
         transport_errors={} bad_responses={} retry_syncs={} checked={} mismatches={} clients={} \
         replicas={} counters_per_sync={} counters={} mergers={}",
        report.slot_updates,
        report.syncs,
        report.seconds,
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.non_2xx_total(),
        report.transport_errors,
        report.bad_responses,
        report.retry_syncs,
        report.checked,
        report.mismatches.len(),
        load.clients,
        load.clients * load.replicas_per_client,
        load.counters_per_sync,
        load.counters,
        load.urls.len(),
    );
    println!(
        "merger: {rate:.0} durable slot-updates/s ({syncs_rate:.1} syncs/s of {} counters), \
         sync latency p50 {:.1} ms, p99 {:.1} ms; {} counters read back, {} wrong{}",
        load.counters_per_sync,
        report.p50_ms,
        report.p99_ms,
        report.checked,
        report.mismatches.len(),
        report.statuses(),
    );
    Ok(if report.passed() {
        Verdict::Pass
    } else {
        Verdict::Fail
    })
}

/// Runs `load` against its mergers: syncs for `load.seconds`, delivers what was not
/// acknowledged, and reads a sample of counters back from every merger. Errors only when the
/// run cannot start (bad options, a merger that does not answer `/healthz`); failed syncs and
/// wrong counts are in the report.
pub async fn run_load(load: &Load) -> Result<LoadReport, Error> {
    if !(1..=MAX_COUNTERS_PER_SYNC).contains(&load.counters_per_sync) {
        return Err(format!("--counters-per-sync must be 1..={MAX_COUNTERS_PER_SYNC}").into());
    }
    if load.counters < load.counters_per_sync {
        return Err("--counters must be at least --counters-per-sync".into());
    }
    if load.urls.is_empty() {
        return Err("no merger URL".into());
    }
    let targets: Vec<Arc<Target>> = load
        .urls
        .iter()
        .map(|url| Arc::new(Target::new(url, &load.token)))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()?;
    for target in &targets {
        let health = http.get(format!("{}/healthz", target.base)).send().await?;
        if !health.status().is_success() {
            return Err(format!("{}/healthz answered {}", target.base, health.status()).into());
        }
    }

    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let universe = Arc::new(Universe::new(&mut rng, load.counters));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(load.seconds);
    let mut tasks = Vec::new();
    for (client, target) in (0..load.clients).zip(targets.iter().cycle()) {
        let replicas = (0..load.replicas_per_client)
            .map(|_| {
                Replica::new(
                    &mut rng,
                    format!("bench-{}", client % 4),
                    &universe,
                    load.counters_per_sync,
                )
            })
            .collect();
        tasks.push(tokio::spawn(run_client(
            http.clone(),
            Arc::clone(target),
            Arc::clone(&universe),
            replicas,
            deadline,
            SmallRng::from_rng(&mut rng),
        )));
    }
    let mut replicas = Vec::new();
    let mut tally = Tally::default();
    let mut last_sync = started;
    for task in tasks {
        let (client_replicas, client_tally, finished) = task.await?;
        replicas.extend(client_replicas);
        tally.absorb(client_tally);
        last_sync = last_sync.max(finished);
    }
    let seconds = (last_sync - started).as_secs_f64();

    let check = check_counts(
        &http,
        &targets,
        &universe,
        &replicas,
        load.check_sample,
        load.settle,
    )
    .await?;
    tally.latencies.sort_unstable();
    let ms = |permille| percentile(&tally.latencies, permille).as_secs_f64() * 1000.0;
    Ok(LoadReport {
        slot_updates: tally.slot_updates,
        syncs: tally.syncs,
        seconds,
        p50_ms: ms(500),
        p99_ms: ms(990),
        max_ms: ms(1000),
        non_2xx: tally.non_2xx,
        transport_errors: tally.transport_errors,
        bad_responses: tally.bad_responses,
        retry_syncs: tally.retry_syncs,
        checked: check.checked,
        mismatches: check.mismatches,
        failures: tally.shown,
    })
}

/// Where the merger is, and how to authenticate.
#[derive(Debug)]
struct Target {
    base: String,
    sync_url: String,
    bearer: String,
}

impl Target {
    fn new(url: &str, token: &str) -> Target {
        let base = url.trim_end_matches('/').to_owned();
        Target {
            sync_url: format!("{base}/v1/sync"),
            bearer: format!("Bearer {token}"),
            base,
        }
    }
}

/// The counters of this run. Ids carry a random run tag.
#[derive(Debug)]
struct Universe {
    counters: Vec<CounterKey>,
}

impl Universe {
    fn new(rng: &mut SmallRng, counters: usize) -> Universe {
        let tag: u32 = rng.random();
        let counters = (0..counters)
            .map(|key| {
                let kind = if key % 4 == 3 {
                    CounterKind::Pn
                } else {
                    CounterKind::G
                };
                CounterKey::new(kind, format!("load-{tag:08x}-{key}"))
                    .expect("load-<8 hex digits>-<number> is a valid counter id")
            })
            .collect();
        Universe { counters }
    }
}

/// One simulated replica incarnation: its slot in each of its counters.
#[derive(Debug)]
struct Replica {
    id: ReplicaId,
    region: String,
    /// The keys (in [`Universe`]) of the counters it counts in.
    keys: Vec<usize>,
    /// Its current slot totals, one per key: what its next sync sends.
    totals: Vec<SlotTotals>,
    /// The totals of its last acknowledged sync (what the merger must hold).
    acked: Vec<SlotTotals>,
    /// Whether `totals` is ahead of `acked`.
    pending: bool,
}

impl Replica {
    fn new(rng: &mut SmallRng, region: String, universe: &Universe, owned: usize) -> Replica {
        let id = loop {
            let id = ReplicaId::from_bytes(rng.random());
            if !id.is_nil() {
                break id;
            }
        };
        let len = universe.counters.len();
        let offset = rng.random_range(0..len);
        Replica {
            id,
            region,
            keys: (0..owned).map(|i| (offset + i) % len).collect(),
            totals: vec![SlotTotals::default(); owned],
            acked: vec![SlotTotals::default(); owned],
            pending: false,
        }
    }

    /// Counts some hits in every one of its counters.
    fn grow(&mut self, rng: &mut SmallRng, universe: &Universe) {
        for (key, totals) in self.keys.iter().zip(&mut self.totals) {
            totals.p = add(totals.p, rng.random_range(1..=MAX_GROWTH));
            if universe.counters[*key].kind() == CounterKind::Pn {
                totals.n = add(totals.n, rng.random_range(0..=MAX_GROWTH));
            }
        }
        self.pending = true;
    }

    /// The sync a Durable Object would send now: all its current totals.
    fn sync_request(&self, universe: &Universe) -> SyncRequest {
        SyncRequest {
            version: PROTOCOL_VERSION,
            replica: self.id,
            region: self.region.clone(),
            counters: self
                .keys
                .iter()
                .zip(&self.totals)
                .map(|(key, totals)| SlotUpdate {
                    key: universe.counters[*key].clone(),
                    totals: *totals,
                    visits: Vec::new(),
                    carried: SlotTotals::default(),
                    frame: None,
                    cut: None,
                })
                .collect(),
        }
    }
}

fn add(total: u64, growth: u64) -> u64 {
    total
        .checked_add(growth)
        .expect("a run cannot grow a u64 total past 2^64 by at most 10 per sync")
}

/// What one sync came to.
#[derive(Debug)]
enum Outcome {
    /// 2xx, and the response was right.
    Acked(Duration),
    /// 2xx, but the response was wrong (the state is committed all the same).
    BadResponse(Duration, String),
    /// The merger answered something other than 2xx.
    Status(StatusCode, String),
    /// No answer: connection or timeout.
    Transport(String),
}

/// Sends `replica`'s current totals; on a 2xx they become its acknowledged totals.
async fn sync(
    http: &reqwest::Client,
    target: &Target,
    universe: &Universe,
    replica: &mut Replica,
) -> Outcome {
    let request = replica.sync_request(universe);
    let body = serde_json::to_vec(&request).expect("a SyncRequest always serialises");
    let started = Instant::now();
    let sent = http
        .post(&target.sync_url)
        .header(AUTHORIZATION, &target.bearer)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Outcome::Transport(e.to_string()),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Outcome::Transport(format!("reading the {status} answer: {e}")),
    };
    let latency = started.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Outcome::Status(status, text.chars().take(300).collect());
    }
    replica.acked.clone_from(&replica.totals);
    replica.pending = false;
    match check_response(&request, &body) {
        Ok(()) => Outcome::Acked(latency),
        Err(why) => Outcome::BadResponse(latency, format!("replica {}: {why}", request.replica)),
    }
}

/// An acknowledged sync's answer: the request's version, one answer per counter (in order,
/// each naming its counter), none rejected, each recording exactly the totals sent (only this
/// replica writes its slot, and its totals only grow).
pub fn check_response(request: &SyncRequest, body: &[u8]) -> Result<(), String> {
    let response: SyncResponse =
        serde_json::from_slice(body).map_err(|e| format!("unreadable SyncResponse: {e}"))?;
    if response.version != request.version {
        return Err(format!(
            "response version {} to a version {} sync",
            response.version, request.version
        ));
    }
    if response.counters.len() != request.counters.len() {
        return Err(format!(
            "{} counters answered for {} sent",
            response.counters.len(),
            request.counters.len()
        ));
    }
    for (sent, answer) in request.counters.iter().zip(&response.counters) {
        if answer.key() != &sent.key {
            return Err(format!(
                "answer for {} in the place of {}",
                answer.key(),
                sent.key
            ));
        }
        let merged = match answer {
            SyncAnswer::Merged(merged) => merged,
            SyncAnswer::Rejected(r) => {
                return Err(format!(
                    "{}: rejected, {}: {}",
                    sent.key, r.error.code, r.error.message
                ));
            }
        };
        if merged.recorded != sent.totals {
            return Err(format!(
                "{}: recorded {:?} after sending {:?}",
                sent.key, merged.recorded, sent.totals
            ));
        }
        let global = merged.global;
        if global.p < u128::from(sent.totals.p) || global.n < u128::from(sent.totals.n) {
            return Err(format!(
                "{}: global {global:?} below own slot {:?}",
                sent.key, sent.totals
            ));
        }
        if merged.updated_at.is_none() && sent.totals != SlotTotals::default() {
            return Err(format!("{}: no updated_at for a counter hit", sent.key));
        }
    }
    Ok(())
}

/// One client's counts (and, summed, the run's).
#[derive(Debug, Default)]
struct Tally {
    /// Acknowledged syncs in the timed run.
    syncs: u64,
    /// Counter entries of those syncs.
    slot_updates: u64,
    /// Their latencies.
    latencies: Vec<Duration>,
    /// Answers other than 2xx, by status.
    non_2xx: Vec<(StatusCode, u64)>,
    transport_errors: u64,
    bad_responses: u64,
    /// Syncs sent after the timed run to deliver unacknowledged totals.
    retry_syncs: u64,
    /// The first failures, described.
    shown: Vec<String>,
}

impl Tally {
    /// Counts one sync; `timed` when it is part of the measured run.
    fn record(&mut self, outcome: Outcome, counters: usize, timed: bool) {
        if !timed {
            self.retry_syncs += 1;
        }
        match outcome {
            Outcome::Acked(latency) => {
                if timed {
                    self.acked(latency, counters);
                }
            }
            Outcome::BadResponse(latency, why) => {
                if timed {
                    self.acked(latency, counters);
                }
                self.bad_responses += 1;
                self.show(why);
            }
            Outcome::Status(status, body) => {
                self.count_status(status, 1);
                self.show(format!("{status}: {body}"));
            }
            Outcome::Transport(why) => {
                self.transport_errors += 1;
                self.show(why);
            }
        }
    }

    fn acked(&mut self, latency: Duration, counters: usize) {
        self.syncs += 1;
        self.slot_updates += u64::try_from(counters).expect("at most 1000 counters per sync");
        self.latencies.push(latency);
    }

    fn count_status(&mut self, status: StatusCode, n: u64) {
        match self.non_2xx.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += n,
            None => self.non_2xx.push((status, n)),
        }
    }

    fn show(&mut self, failure: String) {
        if self.shown.len() < SHOWN_FAILURES {
            self.shown.push(failure);
        }
    }

    fn absorb(&mut self, other: Tally) {
        self.syncs += other.syncs;
        self.slot_updates += other.slot_updates;
        self.latencies.extend(other.latencies);
        for (status, n) in other.non_2xx {
            self.count_status(status, n);
        }
        self.transport_errors += other.transport_errors;
        self.bad_responses += other.bad_responses;
        self.retry_syncs += other.retry_syncs;
        for failure in other.shown {
            self.show(failure);
        }
    }
}

/// One client: its replicas sync in turn until `deadline`; then each replica whose last sync
/// was not acknowledged retries it. Returns the replicas, the counts, and when the last timed
/// sync ended.
async fn run_client(
    http: reqwest::Client,
    target: Arc<Target>,
    universe: Arc<Universe>,
    mut replicas: Vec<Replica>,
    deadline: Instant,
    mut rng: SmallRng,
) -> (Vec<Replica>, Tally, Instant) {
    let mut tally = Tally::default();
    let mut turns = (0..replicas.len()).cycle();
    while Instant::now() < deadline {
        let turn = turns.next().expect("a client plays at least one replica");
        let replica = &mut replicas[turn];
        replica.grow(&mut rng, &universe);
        let outcome = sync(&http, &target, &universe, replica).await;
        tally.record(outcome, replica.keys.len(), true);
    }
    let finished = Instant::now();
    for replica in &mut replicas {
        for _ in 0..FLUSH_ATTEMPTS {
            if !replica.pending {
                break;
            }
            let outcome = sync(&http, &target, &universe, replica).await;
            tally.record(outcome, replica.keys.len(), false);
            if replica.pending {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    (replicas, tally, finished)
}

/// The result of reading counters back.
#[derive(Debug, Default)]
struct Check {
    checked: usize,
    mismatches: Vec<String>,
}

/// What the merger must hold for one counter: sums over the replicas' acknowledged totals.
#[derive(Debug, Clone, Copy, Default)]
struct Expected {
    p: u128,
    n: u128,
    replicas: u64,
    /// A replica's last sync was never acknowledged: the merger may or may not have it.
    uncertain: bool,
}

/// Reads back `sample` counters (all with 0), spread evenly over the keys, from every
/// merger, and compares. A read that differs is tried again until `settle` has passed (a
/// merger hears what another committed within about a second), then reported.
async fn check_counts(
    http: &reqwest::Client,
    targets: &[Arc<Target>],
    universe: &Universe,
    replicas: &[Replica],
    sample: usize,
    settle: Duration,
) -> Result<Check, Error> {
    let mut expected = vec![Expected::default(); universe.counters.len()];
    for replica in replicas {
        for (key, acked) in replica.keys.iter().zip(&replica.acked) {
            let e = &mut expected[*key];
            e.uncertain |= replica.pending;
            if *acked != SlotTotals::default() {
                e.p += u128::from(acked.p);
                e.n += u128::from(acked.n);
                e.replicas += 1;
            }
        }
    }
    let len = universe.counters.len();
    let keys: Vec<usize> = if sample == 0 || sample >= len {
        (0..len).collect()
    } else {
        (0..sample).map(|i| i * len / sample).collect()
    };
    let mut pending: Vec<(usize, &Target)> = keys
        .iter()
        .flat_map(|key| targets.iter().map(move |target| (*key, target.as_ref())))
        .collect();
    let checked = pending.len();
    let deadline = Instant::now() + settle;
    loop {
        let mut wrong = Vec::new();
        for (key, target) in pending {
            if let Some(mismatch) = check_one(http, target, universe, key, expected[key]).await? {
                wrong.push((key, target, mismatch));
            }
        }
        if wrong.is_empty() || Instant::now() >= deadline {
            return Ok(Check {
                checked,
                mismatches: wrong.into_iter().map(|(_, _, m)| m).collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        pending = wrong
            .into_iter()
            .map(|(key, target, _)| (key, target))
            .collect();
    }
}

/// Reads counter `key` from one merger: `None` when it holds what was acknowledged, else
/// what it holds instead.
async fn check_one(
    http: &reqwest::Client,
    target: &Target,
    universe: &Universe,
    key: usize,
    want: Expected,
) -> Result<Option<String>, Error> {
    let counter = &universe.counters[key];
    let url = format!("{}{}", target.base, counter.merger_path());
    let response = http.get(&url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let want_count = i128::try_from(want.p)? - i128::try_from(want.n)?;
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        return Ok(Some(format!("GET {url}: {status} {text}")));
    }
    // A counter no acknowledged sync reached reads as count 0 from 0 replicas.
    let (count, replicas) = read_counter(&body).map_err(|e| format!("GET {url}: {e}"))?;
    if count == want_count && replicas == want.replicas {
        return Ok(None);
    }
    let mut line = format!(
        "{counter} at {}: merger has count {count} from {replicas} replicas, acknowledged \
         totals sum to count {want_count} from {} replicas",
        target.base, want.replicas,
    );
    if want.uncertain {
        let _ = write!(line, " (a replica's last sync was never acknowledged)");
    }
    Ok(Some(line))
}

/// `count` and `replicas` of a `GET /v1/counters/{id}` answer.
pub fn read_counter(body: &[u8]) -> Result<(i128, u64), Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let Count(count) = serde_json::from_value(value["count"].clone())?;
    let replicas = value["replicas"]
        .as_u64()
        .ok_or("no integer `replicas` in the answer")?;
    Ok((count, replicas))
}

/// The latency at `permille` (nearest rank) of sorted latencies; zero when there are none.
fn percentile(sorted: &[Duration], permille: usize) -> Duration {
    let rank = (sorted.len() * permille).div_ceil(1000).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

/// `""`, or `"; non-2xx: 503 x4, 408 x1"`.
fn describe_statuses(statuses: &[(StatusCode, u64)]) -> String {
    let mut text = String::new();
    for (i, (status, n)) in statuses.iter().enumerate() {
        let _ = write!(
            text,
            "{}{} x{n}",
            if i == 0 { "; non-2xx: " } else { ", " },
            status.as_u16()
        );
    }
    text
}
