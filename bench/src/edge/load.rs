//! The edge benchmark's own load client, for the phases wrk cannot check: every request's
//! answer is read, so acknowledged hits are counted per counter exactly, and every read is
//! checked against what its client has been shown (the `Tally-Session` guarantee).
//!
//! Each simulated client is one task with one keep-alive HTTP/1.1 connection (hyper's
//! low-level client: no pool, nothing between the task and its socket) and one session token,
//! which it sends back with every request, as a browser tab would. A read or hit of a counter
//! that the token sent with it names must answer at least what this client was last shown for
//! it (read-your-writes and monotonic reads); the token that comes back must carry the count
//! answered. Hits present the write key: a benchmark creates thousands of counters from one
//! address, past the public new-id budget.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::Error;

/// Longest wait for one answer: far above any healthy answer, so a hung edge is reported
/// rather than waited on forever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Failures described in full (the rest are only counted).
const SHOWN: usize = 8;
/// The session header (`edge/src/session.rs`).
pub const SESSION: &str = "tally-session";
/// Whether the Worker's isolate cache answered a read (`hit`) or its object did (`miss`).
pub const CACHE: &str = "tally-cache";

/// Where the edge listens.
#[derive(Debug, Clone)]
pub struct Target {
    addr: SocketAddr,
    host: String,
}

impl Target {
    /// The edge at `url` (`http://127.0.0.1:PORT`, as the harness reports it).
    pub fn new(url: &str) -> Result<Target, Error> {
        let host = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("not an http:// URL: {url}"))?
            .trim_end_matches('/')
            .to_owned();
        let addr = host
            .parse()
            .map_err(|e| format!("not an address: {host}: {e}"))?;
        Ok(Target { addr, host })
    }
}

/// Popularity of `n` counters following Zipf's law with exponent `s`: rank `k` (from 1) is
/// drawn with probability proportional to `1 / k^s`.
#[derive(Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n >= 1` ranks.
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        let mut rank = 0.0;
        for _ in 0..n.max(1) {
            rank += 1.0;
            sum += 1.0 / f64::powf(rank, s);
            cdf.push(sum);
        }
        for p in &mut cdf {
            *p /= sum;
        }
        Zipf { cdf }
    }

    /// The rank (from 0, most popular first) that `u` in `[0, 1)` falls on.
    pub fn rank(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&p| p <= u)
            .min(self.cdf.len() - 1)
    }

    /// The probability of rank `k` (from 0).
    pub fn probability(&self, k: usize) -> f64 {
        let below = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - below
    }
}

/// What the clients send.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Reads and hits of `ids` (counter ids) with Zipf popularity; `write_percent` of the
    /// requests are hits, the rest reads.
    Zipf {
        /// The counters, most popular first.
        ids: Arc<Vec<String>>,
        /// Their popularity.
        zipf: Arc<Zipf>,
        /// Share of hits, percent.
        write_percent: u32,
    },
    /// Reads of counters nobody has hit (`/<prefix>-<client>-<n>/counter`): each must
    /// answer `{"count": 0, "updated_at": null}`.
    Unknown {
        /// Id prefix.
        prefix: String,
    },
    /// One hit on each of `/<prefix>-<i>/counter`, `i` in `0..total`, shared by the clients.
    Fill {
        /// Id prefix.
        prefix: String,
        /// The next `i` to hit.
        next: Arc<AtomicU64>,
        /// How many counters.
        total: u64,
    },
}

/// One request a client makes.
struct Op {
    id: String,
    write: bool,
    expect_zero: bool,
}

impl Workload {
    fn next(&self, client: u32, n: u64, rng: &mut SmallRng) -> Option<Op> {
        match self {
            Workload::Zipf {
                ids,
                zipf,
                write_percent,
            } => Some(Op {
                id: ids[zipf.rank(rng.random::<f64>())].clone(),
                write: rng.random_range(0..100) < *write_percent,
                expect_zero: false,
            }),
            Workload::Unknown { prefix } => Some(Op {
                id: format!("{prefix}-{client}-{n}"),
                write: false,
                expect_zero: true,
            }),
            Workload::Fill {
                prefix,
                next,
                total,
            } => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                (i < *total).then(|| Op {
                    id: format!("{prefix}-{i}"),
                    write: true,
                    expect_zero: false,
                })
            }
        }
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Reads answered 2xx.
    pub reads: u64,
    /// Hits answered 2xx: acknowledged.
    pub writes: u64,
    /// First request sent to last answer received, seconds.
    pub seconds: f64,
    /// Answers that were not 2xx, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer (connection lost, timeout).
    pub transport_errors: u64,
    /// Reads the Worker answered from its isolate's cache (`Tally-Cache: hit`).
    pub isolate_hits: u64,
    /// Reads its object answered (`Tally-Cache: miss`).
    pub isolate_misses: u64,
    /// Reads below what their client had been shown for a counter its token named.
    pub stale: u64,
    /// Answers that break the API: unreadable, a token that does not carry the count, an
    /// unknown counter that is not zero.
    pub bad: u64,
    /// Acknowledged hits per counter id.
    pub acked: HashMap<String, u64>,
    /// Hits without an answer per counter id (they may or may not have counted).
    pub unknown: HashMap<String, u64>,
    /// The first failures, described.
    pub shown: Vec<String>,
}

impl LoadReport {
    /// Reads answered per second.
    pub fn reads_per_second(&self) -> f64 {
        crate::per_second(self.reads, self.seconds)
    }

    /// Hits acknowledged per second.
    pub fn writes_per_second(&self) -> f64 {
        crate::per_second(self.writes, self.seconds)
    }

    /// Share of reads the isolate cache answered, of those that said (`Tally-Cache`).
    pub fn isolate_hit_rate(&self) -> Option<f64> {
        let said = self.isolate_hits + self.isolate_misses;
        (said > 0).then(|| crate::to_f64(self.isolate_hits) / crate::to_f64(said))
    }

    /// Whether every request was answered 2xx, correctly.
    pub fn clean(&self) -> bool {
        self.statuses.is_empty() && self.transport_errors == 0 && self.stale == 0 && self.bad == 0
    }

    /// A one-line account of what went wrong, if anything.
    pub fn problems(&self) -> String {
        format!(
            "non-2xx {:?}, transport errors {}, stale reads {}, bad answers {}",
            self.statuses, self.transport_errors, self.stale, self.bad
        )
    }

    fn fail(&mut self, what: String) {
        if self.shown.len() < SHOWN {
            self.shown.push(what);
        }
    }

    fn absorb(&mut self, other: LoadReport) {
        self.reads += other.reads;
        self.writes += other.writes;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.isolate_hits += other.isolate_hits;
        self.isolate_misses += other.isolate_misses;
        self.stale += other.stale;
        self.bad += other.bad;
        for (id, n) in other.acked {
            *self.acked.entry(id).or_default() += n;
        }
        for (id, n) in other.unknown {
            *self.unknown.entry(id).or_default() += n;
        }
        for shown in other.shown {
            self.fail(shown);
        }
    }
}

/// Runs `clients` clients against `target` until `deadline` (or until a `Fill` is done).
pub async fn run(
    target: &Target,
    workload: &Workload,
    clients: u32,
    deadline: Instant,
    write_key: &str,
) -> LoadReport {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut seeds = SmallRng::from_rng(&mut rand::rng());
    for client in 0..clients {
        let (target, workload) = (target.clone(), workload.clone());
        let bearer = format!("Bearer {write_key}");
        let rng = SmallRng::from_rng(&mut seeds);
        tasks.push(tokio::spawn(async move {
            run_client(&target, &workload, client, deadline, &bearer, rng).await
        }));
    }
    let mut report = LoadReport::default();
    let mut last = started;
    for task in tasks {
        match task.await {
            Ok((client_report, finished)) => {
                report.absorb(client_report);
                last = last.max(finished);
            }
            Err(e) => {
                report.bad += 1;
                report.fail(format!("a client task died: {e}"));
            }
        }
    }
    report.seconds = (last - started).as_secs_f64();
    report
}

/// One client: one connection, one session, requests one after the other.
async fn run_client(
    target: &Target,
    workload: &Workload,
    client: u32,
    deadline: Instant,
    bearer: &str,
    mut rng: SmallRng,
) -> (LoadReport, Instant) {
    let mut report = LoadReport::default();
    let mut session = Session::default();
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut finished = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let Some(op) = workload.next(client, n, &mut rng) else {
            break;
        };
        n += 1;
        let mut connection = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(target.addr).await {
                Ok(s) => s,
                Err(e) => {
                    report.transport_errors += 1;
                    report.fail(format!("connecting to the edge: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let sent = session.token.clone();
        let request = request(target, &op, sent.as_deref(), bearer);
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, send(&mut connection, request)).await;
        finished = Instant::now();
        let Answer {
            status,
            token,
            cache,
            body,
        } = match answer {
            Ok(Ok(answer)) => {
                sender = Some(connection);
                answer
            }
            Ok(Err(e)) => {
                lost(&mut report, &op, format!("{}: {e}", op.id));
                continue;
            }
            Err(_) => {
                lost(
                    &mut report,
                    &op,
                    format!("{}: no answer in {ANSWER_TIMEOUT:?}", op.id),
                );
                continue;
            }
        };
        if !(200..300).contains(&status) {
            *report.statuses.entry(status).or_default() += 1;
            report.fail(format!(
                "{} {} answered {status}: {}",
                if op.write { "PUT" } else { "GET" },
                op.id,
                String::from_utf8_lossy(&body)
            ));
            if op.write && status >= 500 {
                *report.unknown.entry(op.id).or_default() += 1;
            }
            continue;
        }
        if op.write {
            report.writes += 1;
            *report.acked.entry(op.id.clone()).or_default() += 1;
        } else {
            report.reads += 1;
            match cache.as_deref() {
                Some("hit") => report.isolate_hits += 1,
                Some("miss") => report.isolate_misses += 1,
                _ => {}
            }
        }
        let Some((count, updated_at)) = count_of(&body) else {
            report.bad += 1;
            report.fail(format!(
                "{}: unreadable answer {}",
                op.id,
                String::from_utf8_lossy(&body)
            ));
            continue;
        };
        if op.expect_zero && (count != 0 || !updated_at.is_null()) {
            report.bad += 1;
            report.fail(format!(
                "{} was never hit, yet answered count {count}, updated_at {updated_at}",
                op.id
            ));
        }
        match session.observe(&op.id, sent.as_deref(), count, token) {
            Ok(()) => {}
            Err(Violation::Stale(what)) => {
                report.stale += 1;
                report.fail(what);
            }
            Err(Violation::Token(what)) => {
                report.bad += 1;
                report.fail(what);
            }
        }
    }
    (report, finished)
}

/// A request sent without an answer: a hit among them may or may not have counted.
fn lost(report: &mut LoadReport, op: &Op, what: String) {
    report.transport_errors += 1;
    report.fail(what);
    if op.write {
        *report.unknown.entry(op.id.clone()).or_default() += 1;
    }
}

fn request(
    target: &Target,
    op: &Op,
    session: Option<&str>,
    bearer: &str,
) -> hyper::Request<Empty<Bytes>> {
    let mut builder = hyper::Request::builder()
        .method(if op.write { "PUT" } else { "GET" })
        .uri(format!("/{}/counter", op.id))
        .header("host", &target.host);
    if op.write {
        builder = builder.header("authorization", bearer);
    }
    if let Some(token) = session {
        builder = builder.header(SESSION, token);
    }
    builder
        .body(Empty::new())
        .expect("a request of a valid id, method and headers builds")
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // Small requests and answers, one at a time: Nagle would add a delay to each.
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// What the edge answered.
struct Answer {
    status: u16,
    /// `Tally-Session`.
    token: Option<String>,
    /// `Tally-Cache`.
    cache: Option<String>,
    body: Bytes,
}

/// Sends one request and reads the whole answer.
async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<Answer, Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (token, cache) = (header(SESSION), header(CACHE));
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        token,
        cache,
        body,
    })
}

/// One `GET` on a new connection, timed from connect to the last byte of the answer: the
/// first answer of an edge that just started. Returns the time and the status.
pub async fn first_answer(target: &Target, path: &str) -> Result<(Duration, u16), Error> {
    let started = Instant::now();
    let mut sender = connect(target.addr).await?;
    let request = hyper::Request::builder()
        .uri(path)
        .header("host", &target.host)
        .body(Empty::new())?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, send(&mut sender, request))
        .await
        .map_err(|_| format!("{path}: no answer in {ANSWER_TIMEOUT:?}"))??;
    Ok((started.elapsed(), answer.status))
}

/// The `count` (either JSON form) and `updated_at` of an answer.
pub fn count_of(body: &[u8]) -> Option<(i128, Value)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let count = tally_e2e::count_of(value.get("count")?)?;
    Some((
        count,
        value.get("updated_at").cloned().unwrap_or(Value::Null),
    ))
}

/// What a client holds: its token and what it has been shown.
#[derive(Debug, Default)]
pub struct Session {
    /// The token to send back (the last one answered).
    pub token: Option<String>,
    seen: HashMap<String, i128>,
}

/// A broken guarantee.
#[derive(Debug, PartialEq, Eq)]
pub enum Violation {
    /// A count below what the client was shown, for a counter its token named.
    Stale(String),
    /// The token answered does not carry the count answered.
    Token(String),
}

impl Session {
    /// Checks an answer of `count` for the counter `id`, given the token `sent` with the
    /// request and the one `returned`, and keeps what the client was shown.
    pub fn observe(
        &mut self,
        id: &str,
        sent: Option<&str>,
        count: i128,
        returned: Option<String>,
    ) -> Result<(), Violation> {
        let named = sent.and_then(|t| token_count(t, id)).is_some();
        let shown = self.seen.insert(id.to_owned(), count);
        let checked = match (named, shown) {
            (true, Some(shown)) if count < shown => Err(Violation::Stale(format!(
                "{id}: answered {count} after this client was shown {shown}"
            ))),
            _ => Ok(()),
        };
        let carried = returned.as_deref().and_then(|t| token_count(t, id));
        if carried != Some(count) {
            return Err(Violation::Token(format!(
                "{id}: answered {count}, but the token answered carries {carried:?}"
            )));
        }
        self.token = returned;
        checked
    }
}

/// The count a session token holds for the counter (kind `g`) `id`
/// ([`tally_e2e::session_entry`]).
pub fn token_count(token: &str, id: &str) -> Option<i128> {
    let (p, n, _) = tally_e2e::session_entry(token, &format!("g:{id}"))?;
    Some(i128::try_from(p).ok()? - i128::try_from(n).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_follow_the_law() {
        let zipf = Zipf::new(10_000, 1.0);
        let total: f64 = (0..10_000).map(|k| zipf.probability(k)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        // p(k) ∝ 1/k: the first rank is twice as likely as the second.
        assert!((zipf.probability(0) / zipf.probability(1) - 2.0).abs() < 1e-9);
        assert_eq!(zipf.rank(0.0), 0);
        assert_eq!(zipf.rank(0.999_999_999), 9_999);
        assert_eq!(zipf.rank(1.0), 9_999, "never past the last rank");
        let mut rng = SmallRng::seed_from_u64(7);
        let draws = 100_000;
        let top = (0..draws)
            .filter(|_| zipf.rank(rng.random::<f64>()) == 0)
            .count();
        let expected = zipf.probability(0) * 100_000.0;
        assert!(
            (f64::from(u32::try_from(top).expect("fits")) - expected).abs() < expected * 0.05,
            "{top} vs {expected}"
        );
    }

    #[test]
    fn token_entries_are_found_by_kind_and_id() {
        let token = "1.0a1b2c3d.AAAAAAAAAAAAAAAAAAAAAA.g:home=715;pn:viewers=90-75,g:a:b=3@2";
        assert_eq!(token_count(token, "home"), Some(715));
        assert_eq!(token_count(token, "a:b"), Some(3));
        assert_eq!(
            token_count(token, "viewers"),
            None,
            "a gauge is not a counter"
        );
        assert_eq!(token_count(token, "nope"), None);
    }

    /// A token of the edge's form (the signature is not checked here).
    fn tok(entries: &str) -> String {
        format!("1.0a1b2c3d.AAAAAAAAAAAAAAAAAAAAAA.{entries};")
    }

    #[test]
    fn a_read_below_what_the_token_names_is_stale() {
        let mut s = Session::default();
        assert_eq!(s.observe("a", None, 5, Some(tok("g:a=5"))), Ok(()));
        let sent = s.token.clone();
        assert!(matches!(
            s.observe("a", sent.as_deref(), 4, Some(tok("g:a=4"))),
            Err(Violation::Stale(_))
        ));
    }

    #[test]
    fn a_counter_the_token_no_longer_names_may_read_lower() {
        let mut s = Session::default();
        assert_eq!(s.observe("a", None, 5, Some(tok("g:a=5"))), Ok(()));
        // The token dropped `a` (it keeps the 32 most recent counters).
        assert_eq!(
            s.observe("a", Some(tok("g:b=1").as_str()), 3, Some(tok("g:a=3"))),
            Ok(())
        );
    }

    #[test]
    fn the_token_answered_must_carry_the_count_answered() {
        let mut s = Session::default();
        assert!(matches!(
            s.observe("a", None, 5, Some(tok("g:a=4"))),
            Err(Violation::Token(_))
        ));
        assert!(matches!(
            s.observe("a", None, 5, None),
            Err(Violation::Token(_))
        ));
    }

    #[test]
    fn counts_are_read_in_both_json_forms() {
        let (count, at) = count_of(br#"{"count":3,"updated_at":null}"#).expect("parses");
        assert_eq!((count, at), (3, Value::Null));
        let (count, _) =
            count_of(br#"{"count":"36893488147419103230","updated_at":"x"}"#).expect("parses");
        assert_eq!(count, 36_893_488_147_419_103_230);
        assert_eq!(count_of(b"not json"), None);
    }

    #[test]
    fn targets_are_loopback_urls() {
        let t = Target::new("http://127.0.0.1:8787").expect("parses");
        assert_eq!(t.host, "127.0.0.1:8787");
        assert!(Target::new("https://example.com").is_err());
    }
}
