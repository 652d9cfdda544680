//! The merger holding a million counters: filled through its sync API (as edge replicas
//! would: syncs of 1000 new counters each, from several clients at once; never by writing
//! its schema, which would skip the product), then read at random.
//!
//! The merger loads nothing at start and keeps a bounded cache (`--cache-counters`): its start
//! time and memory must not grow with the counters it stores, and its memory must stop
//! growing once the cache is full, however many counters are read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tally_crdt::{
    CounterKey, CounterKind, MAX_COUNTERS_PER_SYNC, PROTOCOL_VERSION, ReplicaId, SlotTotals,
    SlotUpdate, SyncRequest,
};

use crate::sync_load::{check_response, read_counter};
use crate::{Error, per_second};

/// Failures described in full (the rest are only counted).
const SHOWN: usize = 5;

/// The id of counter `i` of the million.
fn counter_id(i: u64) -> String {
    format!("m{i:07}")
}

/// What a fill or a batch of reads did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests that succeeded and were right.
    pub ok: u64,
    /// Requests that failed or answered wrong.
    pub failed: u64,
    /// The first failures, described.
    pub shown: Vec<String>,
    /// Seconds it took.
    pub seconds: f64,
}

impl Outcome {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.shown.len() < SHOWN {
            self.shown.push(why);
        }
    }

    fn absorb(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.failed += other.failed;
        let room = SHOWN.saturating_sub(self.shown.len());
        self.shown.extend(other.shown.into_iter().take(room));
    }

    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        per_second(self.ok + self.failed, self.seconds)
    }
}

/// Fills the merger at `url` with `counters` G-counters of count 1, in syncs of
/// [`MAX_COUNTERS_PER_SYNC`] new counters, from `clients` replicas at once (one each). `ok`
/// counts the syncs acknowledged with a right answer.
pub async fn fill(url: &str, counters: u64, clients: u32) -> Result<Outcome, Error> {
    let http = client()?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, next, url) = (http.clone(), Arc::clone(&next), url.to_owned());
            tokio::spawn(async move { fill_client(&http, &url, &next, counters).await })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.absorb(task.await??);
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

async fn fill_client(
    http: &reqwest::Client,
    url: &str,
    next: &AtomicU64,
    counters: u64,
) -> Result<Outcome, Error> {
    let per_sync = u64::try_from(MAX_COUNTERS_PER_SYNC)?;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let replica = loop {
        let id = ReplicaId::from_bytes(rng.random());
        if !id.is_nil() {
            break id;
        }
    };
    let bearer = format!("Bearer {}", tally_e2e::TOKEN);
    let mut outcome = Outcome::default();
    loop {
        let first = next.fetch_add(1, Ordering::Relaxed) * per_sync;
        if first >= counters {
            return Ok(outcome);
        }
        let request = SyncRequest {
            version: PROTOCOL_VERSION,
            replica,
            region: "fill".to_owned(),
            counters: (first..counters.min(first + per_sync))
                .map(|i| {
                    let key = CounterKey::new(CounterKind::G, counter_id(i))
                        .expect("m<7 digits> is a valid counter id");
                    SlotUpdate {
                        key,
                        totals: SlotTotals { p: 1, n: 0 },
                        visits: Vec::new(),
                        carried: SlotTotals::default(),
                        frame: None,
                        cut: None,
                    }
                })
                .collect(),
        };
        let body = serde_json::to_vec(&request).expect("a SyncRequest always serialises");
        let sent = http
            .post(format!("{url}/v1/sync"))
            .header(AUTHORIZATION, &bearer)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((status, body)) if status.is_success() => match check_response(&request, &body) {
                Ok(()) => outcome.ok += 1,
                Err(why) => outcome.fail(format!("sync of m{first:07}..: {why}")),
            },
            Ok((status, body)) => outcome.fail(format!(
                "sync of m{first:07}..: {status} {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )),
            Err(e) => outcome.fail(format!("sync of m{first:07}..: {e}")),
        }
    }
}

/// Reads `reads` counters of the `counters` filled, chosen at random (with repetition),
/// `clients` at a time; each must answer count 1 from one replica. `ok` counts right answers.
pub async fn read_random(
    url: &str,
    counters: u64,
    reads: u64,
    clients: u32,
) -> Result<Outcome, Error> {
    let http = client()?;
    let left = Arc::new(AtomicU64::new(reads));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, left, url) = (http.clone(), Arc::clone(&left), url.to_owned());
            tokio::spawn(async move {
                let mut rng = SmallRng::from_rng(&mut rand::rng());
                let mut outcome = Outcome::default();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let id = counter_id(rng.random_range(0..counters));
                    match read_one(&http, &url, &id).await {
                        Ok(()) => outcome.ok += 1,
                        Err(why) => outcome.fail(format!("{id}: {why}")),
                    }
                }
                outcome
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.absorb(task.await?);
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

async fn read_one(http: &reqwest::Client, url: &str, id: &str) -> Result<(), String> {
    let response = http
        .get(format!("{url}/v1/counters/{id}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status} {}", String::from_utf8_lossy(&body)));
    }
    match read_counter(&body) {
        Ok((1, 1)) => Ok(()),
        Ok((count, replicas)) => Err(format!(
            "count {count} from {replicas} replicas, synced count 1 from 1"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn client() -> Result<reqwest::Client, Error> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_fill_order_and_are_valid() {
        assert_eq!(counter_id(0), "m0000000");
        assert_eq!(counter_id(999_999), "m0999999");
        assert!(counter_id(41) < counter_id(1000));
        assert!(CounterKey::new(CounterKind::G, counter_id(999_999)).is_ok());
    }

    #[test]
    fn outcomes_add_up_and_keep_the_first_failures() {
        let mut a = Outcome {
            ok: 3,
            ..Outcome::default()
        };
        for i in 0..7 {
            a.fail(format!("a{i}"));
        }
        let mut b = Outcome {
            ok: 2,
            ..Outcome::default()
        };
        b.fail("b".into());
        a.absorb(b);
        assert_eq!((a.ok, a.failed), (5, 8));
        assert_eq!(a.shown.len(), SHOWN);
        a.seconds = 2.0;
        assert!((a.per_second() - 6.5).abs() < 1e-9);
    }
}
