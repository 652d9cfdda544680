//! Group commit: one task owns every write, so concurrent syncs share one transaction.
//!
//! Handlers send their validated sync on a channel with a reply slot. The commit task takes
//! every sync waiting (up to a bound), merges them in memory into the rows that actually raise
//! a slot, writes those rows in **one** transaction, and only after the commit applies them
//! to the in-memory state and answers every caller. A failed commit answers every caller of
//! the batch with an error and leaves memory untouched, so nothing unacknowledged is shown and
//! nothing acknowledged is missing. The same task writes the periodic snapshots, so SQLite
//! never sees two writers.
//!
//! A version-2 sync may carry counters that break a per-counter rule
//! ([`SyncRequest::counter_error`]): those are left out of the rows and answered as
//! [`SyncAnswer::Rejected`], and the sync's other counters are committed as usual. (A
//! version-1 sync with such a counter never gets here: it is refused whole when decoded.)
//!
//! Reads (`POST /v1/read`, the `GET`s) never come through here: they take the state's read
//! lock and write nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tally_crdt::{
    CounterKey, CounterKind, ErrorBody, Rejection, ReplicaId, SlotTotals, SyncAnswer, SyncRequest,
    SyncResponse, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::metrics::{Code, Kind, Metrics, Purpose};
use crate::state::Merged;
use crate::store::{ReplicaRow, SlotRow, Store};

/// Syncs waiting at most, before senders wait for room.
const QUEUE: usize = 4096;
/// A batch stops taking syncs once it holds this many slot totals.
const MAX_BATCH_SLOTS: usize = 50_000;

/// Why a sync was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The merger is shutting down and takes no new syncs.
    #[error("the merger is shutting down")]
    ShuttingDown,
    /// The database refused the commit (logged with its cause).
    #[error("the database could not commit the sync")]
    Database,
}

struct Job {
    request: SyncRequest,
    /// Per counter of the request, in its order: why it is rejected alone, if it is.
    refusals: Vec<Option<tally_crdt::Error>>,
    reply: oneshot::Sender<Result<SyncResponse, CommitError>>,
}

impl Job {
    /// The counters to merge: those not rejected.
    fn accepted(&self) -> impl Iterator<Item = &tally_crdt::SlotUpdate> {
        self.request
            .counters
            .iter()
            .zip(&self.refusals)
            .filter_map(|(c, refusal)| refusal.is_none().then_some(c))
    }
}

/// The handle handlers use to commit a sync.
#[derive(Debug, Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("replica", &self.request.replica)
            .finish_non_exhaustive()
    }
}

impl Committer {
    /// Commits a validated sync; answers once it is durable, with one answer per counter in
    /// the request's order and the request's version.
    pub async fn commit(&self, request: SyncRequest) -> Result<SyncResponse, CommitError> {
        let refusals = request
            .counters
            .iter()
            .map(SyncRequest::counter_error)
            .collect();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                request,
                refusals,
                reply,
            })
            .await
            .map_err(|_| CommitError::ShuttingDown)?;
        answer.await.unwrap_or(Err(CommitError::ShuttingDown))
    }
}

/// Starts the commit task. It runs until `stop` turns true, then commits every sync already
/// queued, writes a last snapshot, and ends.
pub fn spawn(
    store: Store,
    merged: Arc<RwLock<Merged>>,
    metrics: Arc<Metrics>,
    snapshot_interval: Duration,
    stop: watch::Receiver<bool>,
) -> (Committer, JoinHandle<()>) {
    let (jobs, queue) = mpsc::channel(QUEUE);
    let task = CommitTask {
        store,
        merged,
        metrics,
    };
    let handle = tokio::spawn(task.run(queue, snapshot_interval, stop));
    (Committer { jobs }, handle)
}

struct CommitTask {
    store: Store,
    merged: Arc<RwLock<Merged>>,
    metrics: Arc<Metrics>,
}

impl CommitTask {
    async fn run(
        self,
        mut queue: mpsc::Receiver<Job>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                job = queue.recv() => match job {
                    Some(job) => self.commit_batch(job, &mut queue).await,
                    None => break,
                },
                _ = tick.tick() => self.snapshot().await,
                // Sent once, at shutdown (an error means the sender is gone: stop as well).
                _ = stop.changed() => {
                    // Take no new syncs, but commit every one already queued.
                    queue.close();
                    while let Some(job) = queue.recv().await {
                        self.commit_batch(job, &mut queue).await;
                    }
                    break;
                }
            }
        }
        self.snapshot().await;
        info!("commit task stopped");
    }

    async fn commit_batch(&self, first: Job, queue: &mut mpsc::Receiver<Job>) {
        let mut slots_in_batch = first.request.counters.len();
        let mut batch = vec![first];
        while slots_in_batch < MAX_BATCH_SLOTS {
            let Ok(job) = queue.try_recv() else { break };
            slots_in_batch += job.request.counters.len();
            batch.push(job);
        }

        let at = now();
        let (replicas, slots) = self.rows_to_write(&batch, at);
        let started = Instant::now();
        let committed = self.store.commit(&replicas, &slots, &[]).await;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = committed {
            error!(error = %e, syncs = batch.len(), "commit failed; the syncs are refused and will be retried by the edge");
            self.metrics.commit_failures.inc();
            for job in batch {
                let _ = job.reply.send(Err(CommitError::Database));
            }
            return;
        }
        self.metrics.committed(Purpose::SYNC);
        self.metrics.batch_syncs.observe(count_f64(batch.len()));
        self.metrics.batch_slots.observe(count_f64(slots.len()));
        self.metrics
            .slots_merged
            .inc_by(u64::try_from(slots.len()).unwrap_or(u64::MAX));
        let received: usize = batch.iter().map(|job| job.accepted().count()).sum();
        self.metrics
            .slots_received
            .inc_by(u64::try_from(received).unwrap_or(u64::MAX));
        for refusal in batch.iter().flat_map(|job| job.refusals.iter().flatten()) {
            self.metrics
                .counters_rejected
                .get_or_create(&Code {
                    code: refusal.code(),
                })
                .inc();
        }

        // Durable: now memory may show it, and the callers may hear it.
        let mut merged = self
            .merged
            .write()
            .expect("no thread panics while holding the state lock");
        for r in &replicas {
            merged.touch_replica(r.replica, &r.region, r.at);
        }
        for s in &slots {
            merged.apply_slot(s);
        }
        for job in batch {
            let replica = Some(job.request.replica);
            let counters = job
                .request
                .counters
                .iter()
                .zip(&job.refusals)
                .map(|(c, refusal)| match refusal {
                    Some(e) => SyncAnswer::Rejected(Rejection {
                        key: c.key.clone(),
                        error: ErrorBody::from(e),
                    }),
                    None => SyncAnswer::Merged(merged.merged_counter(&c.key, replica)),
                })
                .collect();
            // The request's version: an edge one version behind reads a shape it knows (a
            // version-1 sync has no rejections, and old decoders ignore `updated_at`).
            let _ = job.reply.send(Ok(SyncResponse {
                version: job.request.version,
                counters,
            }));
        }
        self.metrics
            .counters
            .get_or_create(&Kind { kind: "g" })
            .set(gauge(merged.len(CounterKind::G)));
        self.metrics
            .counters
            .get_or_create(&Kind { kind: "pn" })
            .set(gauge(merged.len(CounterKind::Pn)));
        self.metrics.replicas.set(gauge(merged.replica_count()));
    }

    /// The rows a batch must write: every replica that synced, and each accepted slot total
    /// that raises what is held (the max over the batch, for a slot sent more than once).
    fn rows_to_write(&self, batch: &[Job], at: Timestamp) -> (Vec<ReplicaRow>, Vec<SlotRow>) {
        let merged = self
            .merged
            .read()
            .expect("no thread panics while holding the state lock");
        let mut replicas: HashMap<ReplicaId, ReplicaRow> = HashMap::new();
        let mut best: HashMap<(&CounterKey, ReplicaId), SlotTotals> = HashMap::new();
        for job in batch {
            let r = &job.request;
            replicas.entry(r.replica).or_insert_with(|| {
                let region = merged.region_of(r.replica, &r.region);
                if region != r.region {
                    warn!(replica = %r.replica, registered = region, claimed = %r.region, "replica synced from another region; it keeps its first one");
                }
                ReplicaRow { replica: r.replica, region: region.to_owned(), at }
            });
            for c in job.accepted() {
                let slot = best.entry((&c.key, r.replica)).or_default();
                *slot = slot.join(c.totals);
            }
        }
        let mut slots: Vec<SlotRow> = best
            .into_iter()
            .filter_map(|((key, replica), totals)| {
                let held = merged.slot(key, replica);
                (!held.dominates(totals)).then(|| SlotRow {
                    key: key.clone(),
                    replica,
                    totals,
                    at,
                })
            })
            .collect();
        // In primary-key order, so SQLite walks its B-tree forward instead of jumping around
        // it: keys order by kind (`g` before `pn`, as the text does) then id, and a replica
        // id's hex text sorts like its number.
        slots.sort_unstable_by(|a, b| (&a.key, a.replica).cmp(&(&b.key, b.replica)));
        (replicas.into_values().collect(), slots)
    }

    async fn snapshot(&self) {
        let rows = self
            .merged
            .read()
            .expect("no thread panics while holding the state lock")
            .pending_snapshots(now());
        if rows.is_empty() {
            return;
        }
        match self.store.commit(&[], &[], &rows).await {
            Ok(()) => {
                self.metrics.committed(Purpose::SNAPSHOT);
                self.metrics
                    .snapshots_written
                    .inc_by(u64::try_from(rows.len()).unwrap_or(u64::MAX));
                self.merged
                    .write()
                    .expect("no thread panics while holding the state lock")
                    .snapshots_written(&rows);
            }
            Err(e) => warn!(error = %e, "snapshot failed; it is retried at the next interval"),
        }
    }
}

/// Now (a clock before 1970 reads as the epoch).
pub fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix_ms(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

fn count_f64(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
