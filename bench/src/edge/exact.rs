//! The `exact` phase's client and arithmetic: hits on one counter from a few clients, each
//! hit's latency and `Tally-Milestone` header kept, so that the hits near a milestone (the
//! exact path, `docs/milestones.md`) can be told from the others and timed against them.
//!
//! Each client is one task with its own HTTP client (one keep-alive connection: requests go
//! one after the other), every request with a timeout, and sends at most one hit per `pace`:
//! the same offered load on either path, below what one object takes, so that the latencies
//! compare the paths and not the queues a saturating client would build. A run is bounded
//! twice: by a deadline and by a number of hits shared by its clients, so that a near counter
//! never runs past the last milestone registered for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Error;

/// Longest wait for one answer: far above the exact path's longest wait (`EXACT_WAIT_MS`),
/// so a hung edge is reported rather than waited on forever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Failures described in full (the rest are only counted).
const SHOWN: usize = 8;
/// The exact path's verdict header (`edge/src/lib.rs`).
pub const MILESTONE: &str = "tally-milestone";

/// One hit that was answered 2xx.
#[derive(Debug, Clone)]
pub struct Answered {
    /// When it was sent.
    pub sent: Instant,
    /// Sent to last byte of the answer, milliseconds.
    pub ms: f64,
    /// `Tally-Milestone`: `won`, `lost` or `pending` on the exact path; `None` off it.
    pub verdict: Option<String>,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct ExactRun {
    /// The hits answered 2xx (acknowledged), in no particular order.
    pub hits: Vec<Answered>,
    /// First request sent to last answer received, seconds.
    pub seconds: f64,
    /// Answers that were not 2xx, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Hits without an answer (connection lost, timeout) or answered 5xx: they may or may
    /// not have counted.
    pub unknown: u64,
    /// The first failures, described.
    pub shown: Vec<String>,
}

impl ExactRun {
    /// Hits acknowledged.
    pub fn acked(&self) -> u64 {
        u64::try_from(self.hits.len()).unwrap_or(u64::MAX)
    }

    /// Whether every hit was answered 2xx.
    pub fn clean(&self) -> bool {
        self.statuses.is_empty() && self.unknown == 0
    }

    /// Hits acknowledged per second.
    pub fn per_second(&self) -> f64 {
        crate::per_second(self.acked(), self.seconds)
    }

    /// The latencies of the hits `keep` selects, milliseconds.
    pub fn latencies(&self, keep: impl Fn(&Answered) -> bool) -> Vec<f64> {
        self.hits.iter().filter(|h| keep(h)).map(|h| h.ms).collect()
    }

    /// The hits' verdicts, counted.
    pub fn verdicts(&self) -> Verdicts {
        let mut v = Verdicts::default();
        for hit in &self.hits {
            match hit.verdict.as_deref() {
                Some("won") => v.won += 1,
                Some("lost") => v.lost += 1,
                Some("pending") => v.pending += 1,
                Some(_) => v.other += 1,
                None => v.none += 1,
            }
        }
        v
    }

    fn fail(&mut self, what: String) {
        if self.shown.len() < SHOWN {
            self.shown.push(what);
        }
    }

    fn absorb(&mut self, other: ExactRun) {
        self.hits.extend(other.hits);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.unknown += other.unknown;
        for shown in other.shown {
            self.fail(shown);
        }
    }
}

/// `Tally-Milestone` headers of a run's hits, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdicts {
    /// `won`.
    pub won: u64,
    /// `lost`.
    pub lost: u64,
    /// `pending`.
    pub pending: u64,
    /// Any other value (the API has none).
    pub other: u64,
    /// No header: the hit was off the exact path.
    pub none: u64,
}

impl Verdicts {
    /// Hits that carried the header: they took the exact path.
    pub fn told(&self) -> u64 {
        self.won + self.lost + self.pending + self.other
    }
}

impl std::fmt::Display for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} carried Tally-Milestone (won {}, lost {}, pending {}",
            self.told(),
            self.told() + self.none,
            self.won,
            self.lost,
            self.pending
        )?;
        if self.other > 0 {
            write!(f, ", other {}", self.other)?;
        }
        write!(f, ")")
    }
}

/// How a run's clients send.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Clients, each with its own connection.
    pub clients: u32,
    /// At most one hit per client per this long (a slower answer delays the next send).
    pub pace: Duration,
    /// Hits sent at most, by all clients together.
    pub max_hits: u64,
}

/// Runs `load` hitting `/<id>/counter` at `base` with the write key `key` until `deadline` or
/// until `load.max_hits` hits have been sent, whichever comes first.
pub async fn run(
    base: &str,
    id: &str,
    key: &str,
    load: Load,
    deadline: Instant,
) -> Result<ExactRun, Error> {
    let Load {
        clients,
        pace,
        max_hits,
    } = load;
    let url = format!("{base}/{id}/counter");
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let http = reqwest::Client::builder()
            .timeout(ANSWER_TIMEOUT)
            .pool_idle_timeout(tally_e2e::IDLE_CONNECTION)
            .pool_max_idle_per_host(1)
            .build()?;
        let (url, sent, bearer) = (url.clone(), Arc::clone(&sent), format!("Bearer {key}"));
        tasks.push(tokio::spawn(async move {
            let mut run = ExactRun::default();
            let mut last = Instant::now();
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < max_hits {
                let at = Instant::now();
                let next = tokio::time::Instant::from_std(at + pace);
                let answer = http.put(&url).header("Authorization", &bearer).send().await;
                let answer = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        last = Instant::now();
                        run.unknown += 1;
                        run.fail(format!("PUT {url}: {e}"));
                        tokio::time::sleep_until(next).await;
                        continue;
                    }
                };
                let status = answer.status();
                let verdict = answer
                    .headers()
                    .get(MILESTONE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = answer.bytes().await;
                last = Instant::now();
                match body {
                    Ok(_) if status.is_success() => run.hits.push(Answered {
                        sent: at,
                        ms: (last - at).as_secs_f64() * 1000.0,
                        verdict,
                    }),
                    Ok(body) => {
                        *run.statuses.entry(status.as_u16()).or_default() += 1;
                        if status.is_server_error() {
                            run.unknown += 1;
                        }
                        run.fail(format!(
                            "PUT {url} answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    Err(e) => {
                        run.unknown += 1;
                        run.fail(format!("PUT {url}: reading the answer: {e}"));
                    }
                }
                tokio::time::sleep_until(next).await;
            }
            (run, last)
        }));
    }
    let mut run = ExactRun::default();
    let mut last = started;
    for task in tasks {
        let (client, finished) = task.await.map_err(|e| format!("a client died: {e}"))?;
        run.absorb(client);
        last = last.max(finished);
    }
    run.seconds = (last - started).as_secs_f64();
    Ok(run)
}

/// The `pct`-th percentile of `values` (nearest rank); NaN when there are none.
pub fn percentile(values: &[f64], pct: u32) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // The smallest value with at least pct% of the values at or below it.
    let rank = (n * usize::try_from(pct.min(100)).unwrap_or(100)).div_ceil(100);
    sorted[rank.clamp(1, n) - 1]
}

/// How the hits of a run with the merger stopped at `stopped` waited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waits {
    /// Hits answered later than the threshold.
    pub waited: u64,
    /// Hits answered later than `full`: the whole exact-path budget.
    pub waited_full: u64,
    /// Hits sent once a first window had passed since the stop, answered later than the
    /// threshold.
    pub waited_later: u64,
    /// Windows from the end of the first to the last hit sent (a partial one counts).
    pub later_windows: u64,
}

impl Waits {
    /// Counts the hits that waited longer than `threshold_ms` (and longer than `full_ms`),
    /// and those of them sent after the first `window` since `stopped`.
    pub fn count(
        hits: &[Answered],
        stopped: Instant,
        window: Duration,
        threshold_ms: f64,
        full_ms: f64,
    ) -> Waits {
        let later_from = stopped + window;
        let waited = |h: &&Answered| h.ms > threshold_ms;
        let last_sent = hits.iter().map(|h| h.sent).max().unwrap_or(stopped);
        let span = last_sent.saturating_duration_since(later_from);
        let window_ms = window.as_millis().max(1);
        Waits {
            waited: count(hits.iter().filter(waited)),
            waited_full: count(hits.iter().filter(|h| h.ms > full_ms)),
            waited_later: count(hits.iter().filter(waited).filter(|h| h.sent >= later_from)),
            later_windows: u64::try_from(span.as_millis().div_ceil(window_ms)).unwrap_or(u64::MAX),
        }
    }
}

fn count<T>(items: impl Iterator<Item = T>) -> u64 {
    u64::try_from(items.count()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_ranks() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50), 50.0);
        assert_eq!(percentile(&values, 99), 99.0);
        assert_eq!(percentile(&values, 100), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50), 2.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99), 3.0);
        assert_eq!(percentile(&[7.0], 0), 7.0);
        assert!(percentile(&[], 50).is_nan());
    }

    fn hit(sent: Instant, ms: f64, verdict: Option<&str>) -> Answered {
        Answered {
            sent,
            ms,
            verdict: verdict.map(str::to_owned),
        }
    }

    #[test]
    fn verdicts_are_counted_by_header() {
        let now = Instant::now();
        let run = ExactRun {
            hits: vec![
                hit(now, 1.0, Some("won")),
                hit(now, 1.0, Some("lost")),
                hit(now, 1.0, Some("lost")),
                hit(now, 1.0, Some("pending")),
                hit(now, 1.0, None),
            ],
            ..ExactRun::default()
        };
        let v = run.verdicts();
        assert_eq!(
            (v.won, v.lost, v.pending, v.none, v.told()),
            (1, 2, 1, 1, 4)
        );
        assert_eq!(
            v.to_string(),
            "4 of 5 carried Tally-Milestone (won 1, lost 2, pending 1)"
        );
        assert_eq!(run.latencies(|h| h.verdict.is_none()), vec![1.0]);
    }

    #[test]
    fn waits_after_the_first_window_are_counted_per_window() {
        let stopped = Instant::now();
        let s = |secs: f64| stopped + Duration::from_secs_f64(secs);
        let hits = [
            // The first window: every hit waits until the merger counts as away.
            hit(s(0.0), 2000.0, Some("pending")),
            hit(s(1.0), 2000.0, Some("pending")),
            hit(s(3.0), 3.0, Some("pending")),
            // Then one probe per window, the others at once.
            hit(s(5.5), 700.0, Some("pending")),
            hit(s(6.0), 2.0, Some("pending")),
            hit(s(11.0), 700.0, Some("pending")),
            hit(s(14.0), 2.0, Some("pending")),
        ];
        let w = Waits::count(&hits, stopped, Duration::from_secs(5), 500.0, 1900.0);
        assert_eq!(
            w,
            Waits {
                waited: 4,
                waited_full: 2,
                waited_later: 2,
                later_windows: 2,
            }
        );
        let none = Waits::count(&[], stopped, Duration::from_secs(5), 500.0, 1900.0);
        assert_eq!((none.waited, none.later_windows), (0, 0));
    }
}
