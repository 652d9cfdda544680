//! Group commit: one task owns every write, so concurrent syncs share one transaction.
//!
//! Handlers send their validated sync on a channel with a reply slot. The commit task takes
//! every sync waiting (up to a bound), merges them in memory into the rows that actually raise
//! a slot, writes those rows in **one** transaction, and only after the commit applies them
//! to the in-memory state and answers every caller. A failed commit answers every caller of
//! the batch with an error and leaves memory untouched, so nothing unacknowledged is shown and
//! nothing acknowledged is missing.
//!
//! The commit is pipelined, one batch deep: while batch N's transaction runs (in a task of its
//! own), the syncs that arrive are taken into batch N+1 and its counters loaded; when N's
//! transaction returns, N+1's rows are chosen and its transaction starts, and only then is N
//! applied to memory and answered. So the store is kept busy while the merger does its own
//! part, and still has one writer: N+1's transaction begins after N's has ended. Nothing of
//! N+1 is shown or answered before N has landed: batches land in order, each after its own
//! transaction returned. N+1's rows are chosen from memory that does not hold N yet (and with
//! N's milestone news posted): that can only add a row N made redundant, which the store's
//! merge leaves as it is; and if N failed, N+1's rows never counted on it. Work of another
//! kind, and a sync that tells a cut, waits until the batch in flight has landed.
//!
//! Memory is a bounded cache ([`Db`]): before merging, the task pins the batch's counters and
//! loads those not held from the store (one query), so every answer is computed from complete
//! counters. History points are written by their own task ([`crate::history`]), never here.
//!
//! The same task and queue take the other writes of the edge protocol, so the store has one
//! writer: retirements (each alone, between batches), presence reports and sketch syncs. Work
//! is taken in queue order, and a batch holds consecutive work of one kind: the syncs queued
//! behind a sync go into its transaction up to the first work of another kind, likewise the
//! presence reports behind a report (one statement:
//! [`PresenceStore::report_presence_batch`](crate::store::PresenceStore::report_presence_batch))
//! and the sketch syncs behind a sketch sync (one transaction:
//! [`SketchStore::merge_sketches_batch`](crate::store::SketchStore::merge_sketches_batch)). Each
//! caller is answered once its own batch is durable; a failed batch answers every caller in
//! it with [`CommitError::Database`] and stores nothing of it. After a batch of reports or
//! sketch syncs commits, the public views of its ids are dropped ([`Views`]) before anyone is
//! answered, so this merger's own writes show at once.
//!
//! The queue is bounded: when it is full a sync, retirement, report or sketch sync is refused
//! at once with 503 and `Retry-After` ([`CommitError::Overloaded`]) instead of waiting, so
//! memory stays bounded however many edges sync, and the edge backs off.
//!
//! A version-2 sync may carry counters that break a per-counter rule
//! ([`SyncRequest::counter_error`]): those are left out of the rows and answered as
//! [`SyncAnswer::Rejected`], and the sync's other counters are committed as usual. (A
//! version-1 sync with such a counter never gets here: it is refused whole when decoded.)
//!
//! Reads (`POST /v1/read`, the `GET`s) never come through here: they take the state's read
//! lock, or ask the store, and write nothing. A presence report's answer (the sums of its ids)
//! is such a read, made by its handler after its batch is durable.

use foldhash::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tally_crdt::{
    CounterKey, CounterKind, Cut, ErrorBody, PresenceReport, Rejection, ReplicaId, RetireRequest,
    RetireResponse, SketchSync, SketchTotal, SketchUpdate, SlotTotals, SyncAnswer, SyncRequest,
    SyncResponse, Timestamp, Visit,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::clock::now;
use crate::metrics::{Code, Metrics, Purpose};
use crate::state::Db;
use crate::store::{ReplicaRow, SlotRow, Store, sent_carry};
use crate::views::ViewCache;

/// A batch stops taking syncs once it holds this many slot totals.
const MAX_BATCH_SLOTS: usize = 50_000;

/// A batch stops taking presence reports once they hold this many ids (a report holds at
/// most 1000).
const MAX_BATCH_PRESENCE_IDS: usize = 50_000;

/// A batch stops taking sketch syncs once they hold this many sketches (a sync holds at most
/// 100, each at most a few KiB).
const MAX_BATCH_SKETCHES: usize = 1_000;

/// Why a sync was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The merger is shutting down and takes no new syncs.
    #[error("the merger is shutting down; retry later")]
    ShuttingDown,
    /// The database refused the commit (logged with its cause).
    #[error("the database could not commit the sync; retry later")]
    Database,
    /// The commit queue is full: the merger takes syncs more slowly than they arrive.
    #[error("the merger is overloaded; retry later")]
    Overloaded,
    /// The sync names a retired replica incarnation: nothing of it was written. An honest
    /// edge never sends one (only late copies of old syncs do), so it is an error, not a
    /// silent success the edge would take as an acknowledgement.
    #[error("this replica incarnation is retired; its slots are final")]
    Retired,
}

/// What the commit task is asked to do.
#[derive(Debug)]
enum Work {
    /// Commit a sync (batched with the syncs waiting behind it).
    Sync(Job),
    /// Retire a replica incarnation (alone, between batches).
    Retire(RetireJob),
    /// Store a presence report (batched with the reports waiting behind it).
    Presence(ReportJob),
    /// Merge a sketch sync (batched with the sketch syncs waiting behind it).
    Sketches(SketchJob),
}

impl Work {
    fn into_sync(self) -> Result<Job, Work> {
        match self {
            Work::Sync(job) => Ok(job),
            other => Err(other),
        }
    }

    fn into_report(self) -> Result<ReportJob, Work> {
        match self {
            Work::Presence(job) => Ok(job),
            other => Err(other),
        }
    }

    fn into_sketches(self) -> Result<SketchJob, Work> {
        match self {
            Work::Sketches(job) => Ok(job),
            other => Err(other),
        }
    }
}

/// A presence report waiting for the commit task; answered with the time it was received at
/// (its batch's), at which its answer's sums are read.
struct ReportJob {
    report: PresenceReport,
    reply: oneshot::Sender<Result<Timestamp, CommitError>>,
}

impl std::fmt::Debug for ReportJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportJob")
            .field("reporter", &self.report.reporter)
            .field("seq", &self.report.seq)
            .finish_non_exhaustive()
    }
}

/// A sketch sync waiting for the commit task; answered with the merged sketch of each of its
/// keys, in order.
struct SketchJob {
    sync: SketchSync,
    reply: oneshot::Sender<Result<Vec<SketchTotal>, CommitError>>,
}

impl std::fmt::Debug for SketchJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SketchJob")
            .field("replica", &self.sync.replica)
            .field("sketches", &self.sync.sketches.len())
            .finish_non_exhaustive()
    }
}

/// A cache of public answers that a commit can make stale.
pub trait Invalidate: Send + Sync {
    /// Notes that `key`'s state changed: an answer of it asked before now is stale.
    fn changed(&self, key: &str);
}

impl<V: Clone + Send> Invalidate for ViewCache<V> {
    fn changed(&self, key: &str) {
        ViewCache::changed(self, key);
    }
}

/// The view caches that commits make stale: each key a committed batch wrote is dropped from
/// them before its callers are answered.
#[derive(Clone)]
pub struct Views {
    /// The public reads of viewers now, by presence id.
    pub presence: Arc<dyn Invalidate>,
    /// The public reads of unique visitors, by sketch key (its text form).
    pub unique: Arc<dyn Invalidate>,
    /// The public milestone lists, by counter id: a sync batch that decides one drops its
    /// counter's.
    pub milestones: Arc<dyn Invalidate>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

/// A retirement waiting for the commit task.
#[derive(Debug)]
struct RetireJob {
    request: RetireRequest,
    reply: oneshot::Sender<Result<RetireResponse, CommitError>>,
}

struct Job {
    request: SyncRequest,
    /// Per counter of the request, in its order: why it is rejected alone, if it is.
    refusals: Vec<Option<tally_crdt::Error>>,
    reply: oneshot::Sender<Result<SyncResponse, CommitError>>,
}

impl Job {
    /// Its size in a batch: the slot totals it holds.
    fn size(&self) -> usize {
        self.request.counters.len()
    }

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
    jobs: mpsc::Sender<Work>,
    metrics: Arc<Metrics>,
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
        let job = Job {
            request,
            refusals,
            reply,
        };
        self.enqueue(Work::Sync(job))?;
        answer.await.unwrap_or(Err(CommitError::ShuttingDown))
    }
}

impl Committer {
    /// Retires a replica incarnation; answers once the folds are durable.
    pub async fn retire(&self, request: RetireRequest) -> Result<RetireResponse, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Work::Retire(RetireJob { request, reply }))?;
        answer.await.unwrap_or(Err(CommitError::ShuttingDown))
    }

    /// Stores a validated presence report; answers once it is durable, with the time it was
    /// received at (its batch's): its answer's sums are read at that time.
    pub async fn report(&self, report: PresenceReport) -> Result<Timestamp, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Work::Presence(ReportJob { report, reply }))?;
        answer.await.unwrap_or(Err(CommitError::ShuttingDown))
    }

    /// Merges a validated sketch sync; answers once it is durable, with the merged sketch of
    /// each of its keys, in the sync's order.
    pub async fn merge_sketches(&self, sync: SketchSync) -> Result<Vec<SketchTotal>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Work::Sketches(SketchJob { sync, reply }))?;
        answer.await.unwrap_or(Err(CommitError::ShuttingDown))
    }

    /// Queues `work` for the commit task. Never waits for room: a full queue is an answer
    /// (503, retry later), not a backlog.
    fn enqueue(&self, work: Work) -> Result<(), CommitError> {
        self.jobs.try_send(work).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => CommitError::ShuttingDown,
        })?;
        self.metrics.queue_depth.set(self.depth());
        Ok(())
    }

    /// Work waiting in the queue now.
    fn depth(&self) -> i64 {
        let waiting = self.jobs.max_capacity() - self.jobs.capacity();
        i64::try_from(waiting).unwrap_or(i64::MAX)
    }
}

/// Starts the commit task with a queue of at most `queue` syncs, retirements, presence
/// reports and sketch syncs. It runs until `stop` turns true, then commits all the work
/// already queued and ends.
pub fn spawn(
    store: Arc<dyn Store>,
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    views: Views,
    queue: usize,
    stop: watch::Receiver<bool>,
) -> (Committer, JoinHandle<()>) {
    let (jobs, queue) = mpsc::channel(queue.max(1));
    let task = CommitTask {
        store,
        db,
        metrics: Arc::clone(&metrics),
        views,
    };
    let handle = tokio::spawn(task.run(queue, stop));
    (Committer { jobs, metrics }, handle)
}

struct CommitTask {
    store: Arc<dyn Store>,
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    views: Views,
}

impl CommitTask {
    async fn run(self, mut queue: mpsc::Receiver<Work>, mut stop: watch::Receiver<bool>) {
        // The batch of syncs whose transaction runs now, if one does.
        let mut flight: Option<Flight> = None;
        let mut stopping = false;
        loop {
            let work = tokio::select! {
                biased;
                written = Flight::written(&mut flight) => {
                    let done = flight.take().expect("a batch was in flight");
                    self.land(done, written).await;
                    continue;
                }
                work = queue.recv() => work,
                // Sent once, at shutdown (an error means the sender is gone: stop as well).
                _ = stop.changed(), if !stopping => {
                    // Take no new work, but commit all that is already queued.
                    queue.close();
                    stopping = true;
                    continue;
                }
            };
            match work {
                Some(work) => self.work(work, &mut queue, &mut flight).await,
                None => break,
            }
        }
        self.land_flight(&mut flight).await;
        info!("commit task stopped");
    }

    /// Does `work`; a sync, report or sketch sync takes the work of its kind queued behind it
    /// into its batch, up to work of another kind, which runs right after the batch (and a
    /// batch of its own kind starts there). Work other than syncs waits until the batch of
    /// syncs in flight has landed, and runs alone.
    async fn work(
        &self,
        work: Work,
        queue: &mut mpsc::Receiver<Work>,
        flight: &mut Option<Flight>,
    ) {
        let mut next = Some(work);
        while let Some(work) = next.take() {
            if !matches!(work, Work::Sync(_)) {
                self.land_flight(flight).await;
            }
            next = match work {
                Work::Sync(job) => self.commit_batch(job, queue, flight).await,
                Work::Retire(job) => {
                    self.retire(job).await;
                    None
                }
                Work::Presence(job) => self.report_batch(job, queue).await,
                Work::Sketches(job) => self.merge_batch(job, queue).await,
            };
        }
    }

    /// Takes from `queue`, without waiting, the jobs `same` accepts queued behind `first`,
    /// until their `size` reaches `bound` or work of another kind comes (returned, to run
    /// after the batch).
    fn gather<J>(
        &self,
        first: J,
        queue: &mut mpsc::Receiver<Work>,
        bound: usize,
        size: impl Fn(&J) -> usize,
        same: impl Fn(Work) -> Result<J, Work>,
    ) -> (Vec<J>, Option<Work>) {
        let mut held = size(&first);
        let mut batch = vec![first];
        let mut after = None;
        while held < bound {
            match queue.try_recv().map(&same) {
                Ok(Ok(job)) => {
                    held = held.saturating_add(size(&job));
                    batch.push(job);
                }
                Ok(Err(other)) => {
                    after = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.metrics
            .queue_depth
            .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
        (batch, after)
    }

    /// Stores `first` with the presence reports queued behind it, in one statement; answers
    /// each with the batch's time once it is durable, or every one with an error.
    async fn report_batch(
        &self,
        first: ReportJob,
        queue: &mut mpsc::Receiver<Work>,
    ) -> Option<Work> {
        let (batch, after) = self.gather(
            first,
            queue,
            MAX_BATCH_PRESENCE_IDS,
            |job| job.report.counts.len().max(1),
            Work::into_report,
        );
        let (reports, replies): (Vec<PresenceReport>, Vec<_>) =
            batch.into_iter().map(|job| (job.report, job.reply)).unzip();
        let received = now();
        let answer = match self.store.report_presence_batch(&reports, received).await {
            Ok(()) => {
                self.metrics.committed(Purpose::PRESENCE);
                self.metrics.batch_reports.observe(count_f64(reports.len()));
                for count in reports.iter().flat_map(|r| &r.counts) {
                    self.views.presence.changed(&count.id);
                }
                Ok(received)
            }
            Err(e) => {
                error!(error = %e, reports = reports.len(), "presence reports not stored; the edge retries them");
                self.metrics.commit_failures.inc();
                Err(CommitError::Database)
            }
        };
        for reply in replies {
            let _ = reply.send(answer);
        }
        after
    }

    /// Merges `first` with the sketch syncs queued behind it, in one transaction; answers
    /// each with its merged sketches once it is durable, or every one with an error.
    async fn merge_batch(
        &self,
        first: SketchJob,
        queue: &mut mpsc::Receiver<Work>,
    ) -> Option<Work> {
        let (batch, after) = self.gather(
            first,
            queue,
            MAX_BATCH_SKETCHES,
            |job| job.sync.sketches.len().max(1),
            Work::into_sketches,
        );
        let syncs: Vec<&[SketchUpdate]> = batch
            .iter()
            .map(|job| job.sync.sketches.as_slice())
            .collect();
        let merged = self.store.merge_sketches_batch(&syncs, now()).await;
        match merged {
            Ok(totals) => {
                self.metrics.committed(Purpose::UNIQUE);
                self.metrics
                    .batch_sketch_syncs
                    .observe(count_f64(batch.len()));
                for update in batch.iter().flat_map(|job| &job.sync.sketches) {
                    self.views.unique.changed(&update.key.to_string());
                }
                for (job, totals) in batch.into_iter().zip(totals) {
                    let _ = job.reply.send(Ok(totals));
                }
            }
            Err(e) => {
                error!(error = %e, syncs = batch.len(), "sketch syncs not merged; the edge retries them");
                self.metrics.commit_failures.inc();
                for job in batch {
                    let _ = job.reply.send(Err(CommitError::Database));
                }
            }
        }
        after
    }

    async fn retire(&self, job: RetireJob) {
        let replica = job.request.replica;
        let answer = match self.store.retire(replica, now()).await {
            Ok(retired) => {
                self.db.apply_retire(replica, &retired);
                let folded = retired.folded;
                self.metrics.retirements.inc();
                self.metrics.slots_folded.inc_by(folded);
                self.count_replicas().await;
                info!(%replica, folded, "replica retired");
                Ok(RetireResponse {
                    version: job.request.version,
                    replica,
                    folded,
                })
            }
            Err(e) => {
                error!(error = %e, %replica, "retirement failed; the edge retries it");
                self.metrics.commit_failures.inc();
                Err(CommitError::Database)
            }
        };
        let _ = job.reply.send(answer);
    }

    /// Commits `first` with the syncs queued behind it, pipelined with the batch in flight:
    /// while that one's transaction runs, this batch takes in the syncs that arrive and
    /// loads its counters; once that one is durable (or failed), this one's rows are chosen
    /// and its transaction starts, and only then is that one applied to memory and answered.
    /// Returns the work of another kind that ended the batch, if some did.
    async fn commit_batch(
        &self,
        first: Job,
        queue: &mut mpsc::Receiver<Work>,
        flight: &mut Option<Flight>,
    ) -> Option<Work> {
        let mut batch = Batch::default();
        let (jobs, mut after) = self.gather_syncs(first, queue, MAX_BATCH_SLOTS);
        self.take_in(&mut batch, jobs).await;
        let mut landing = match flight.take() {
            None => None,
            Some(mut before) => {
                let written = loop {
                    if after.is_some() || batch.slots >= MAX_BATCH_SLOTS {
                        break before.wait().await;
                    }
                    tokio::select! {
                        biased;
                        written = before.wait() => break written,
                        work = queue.recv() => match work.map(Work::into_sync) {
                            Some(Ok(job)) => {
                                let (jobs, next) =
                                    self.gather_syncs(job, queue, MAX_BATCH_SLOTS - batch.slots);
                                after = next;
                                self.take_in(&mut batch, jobs).await;
                            }
                            Some(Err(other)) => after = Some(other),
                            // Closed and empty: nothing more will come.
                            None => break before.wait().await,
                        },
                    }
                };
                Some((before, written))
            }
        };
        // The batch before is durable: its milestone news counts in choosing this one's rows
        // (a counter with news is written, so that its answer carries it).
        if let Some((before, written)) = &mut landing
            && let Ok(committed) = &written.result
            && !committed.news.is_empty()
        {
            self.db.post_news(before.at, &committed.news);
            written.news_posted = true;
        }
        // Told cuts change memory and the store outside a batch: the batch before lands first.
        let told = self.told_cuts(&batch.jobs);
        let landing = if told.is_empty() {
            landing
        } else {
            if let Some((before, written)) = landing {
                self.land(before, written).await;
            }
            if let Err(e) = self.apply_told_cuts(told).await {
                self.refuse(batch.jobs, &batch.keys, &e, "commit failed");
                return after;
            }
            None
        };
        if !batch.jobs.is_empty() {
            *flight = Some(self.launch(batch));
        }
        if let Some((before, written)) = landing {
            self.land(before, written).await;
        }
        after
    }

    /// Takes the syncs queued behind `first` while their slot totals stay under `bound`.
    fn gather_syncs(
        &self,
        first: Job,
        queue: &mut mpsc::Receiver<Work>,
        bound: usize,
    ) -> (Vec<Job>, Option<Work>) {
        self.gather(first, queue, bound, Job::size, Work::into_sync)
    }

    /// Pins the counters of `jobs`, loads those not held, and adds them to `batch`; if the
    /// load fails, answers them with an error instead.
    async fn take_in(&self, batch: &mut Batch, jobs: Vec<Job>) {
        let mut keys: Vec<CounterKey> = jobs
            .iter()
            .flat_map(|job| job.accepted().map(|c| c.key.clone()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let missing = self.db.pin(&keys);
        if !missing.is_empty() {
            match self.store.load(&missing).await {
                Ok(loaded) => self.db.insert_pinned(&missing, loaded),
                Err(e) => {
                    self.refuse(jobs, &keys, &e, "counters not loaded");
                    return;
                }
            }
        }
        batch.slots += jobs.iter().map(Job::size).sum::<usize>();
        batch.keys.extend(keys);
        batch.jobs.extend(jobs);
    }

    /// Chooses the batch's rows and starts its transaction in a task of its own.
    fn launch(&self, batch: Batch) -> Flight {
        let at = now();
        let (replicas, slots) = self.rows_to_write(&batch.jobs, at);
        let store = Arc::clone(&self.store);
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let result = store.commit(&replicas, &slots).await;
            Written {
                slots,
                result: result.map_err(|e| e.to_string()),
                seconds: started.elapsed().as_secs_f64(),
                news_posted: false,
            }
        });
        Flight {
            jobs: batch.jobs,
            keys: batch.keys,
            at,
            handle,
        }
    }

    /// Lands the batch in flight, if one is, once its transaction has ended.
    async fn land_flight(&self, flight: &mut Option<Flight>) {
        if let Some(mut done) = flight.take() {
            let written = done.wait().await;
            self.land(done, written).await;
        }
    }

    /// Answers every sync of `jobs` with an error, stores nothing of them and unpins `keys`,
    /// their counters: `what` failed, with `error`.
    fn refuse(
        &self,
        jobs: Vec<Job>,
        keys: &[CounterKey],
        error: &dyn std::fmt::Display,
        what: &str,
    ) {
        error!(%error, syncs = jobs.len(), "{what}; the syncs are refused and will be retried by the edge");
        self.metrics.commit_failures.inc();
        self.db.unpin(keys);
        for job in jobs {
            let _ = job.reply.send(Err(CommitError::Database));
        }
    }

    /// Lands a batch whose transaction ended: if it committed, applies it to memory and
    /// answers each caller from it; if not, answers each with an error. Either way its
    /// counters are unpinned.
    async fn land(&self, done: Flight, written: Written) {
        self.metrics.commit_seconds.observe(written.seconds);
        let Written {
            slots,
            result,
            news_posted,
            ..
        } = written;
        let batch = done.jobs;
        let committed = match result {
            Ok(committed) => committed,
            Err(e) => {
                self.refuse(batch, &done.keys, &e, "commit failed");
                return;
            }
        };
        for (id, _) in &committed.decided {
            self.views.milestones.changed(id);
        }
        if !news_posted && !committed.news.is_empty() {
            self.db.post_news(done.at, &committed.news);
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
        let regions: HashMap<ReplicaId, Arc<str>> = committed
            .regions
            .into_iter()
            .map(|(replica, region)| (replica, Arc::from(region)))
            .collect();
        for job in &batch {
            let r = &job.request;
            if let Some(region) = regions
                .get(&r.replica)
                .filter(|region| ***region != *r.region)
            {
                warn!(replica = %r.replica, registered = %region, claimed = %r.region, "replica synced from another region; it keeps its first one");
            }
        }
        let region_of = |replica| {
            regions
                .get(&replica)
                .cloned()
                .unwrap_or_else(|| Arc::from(""))
        };
        // A retired replica's slots were not written: memory must not show them either.
        let slots: Vec<SlotRow> = if committed.retired.is_empty() {
            slots
        } else {
            slots
                .into_iter()
                .filter(|s| !committed.retired.contains(&s.replica))
                .collect()
        };
        let answers: Vec<_> = self.db.apply_commit(&done.keys, &slots, region_of, |held| {
            batch
                .iter()
                .map(|job| {
                    let replica = Some(job.request.replica);
                    job.request
                        .counters
                        .iter()
                        .zip(&job.refusals)
                        .map(|(c, refusal)| match refusal {
                            Some(e) => SyncAnswer::Rejected(Rejection {
                                key: c.key.clone(),
                                error: ErrorBody::from(e),
                            }),
                            None => {
                                let counter = held.counter(&c.key);
                                let mut merged = counter.merged(&c.key, replica);
                                if c.key.kind() == CounterKind::G {
                                    merged.milestones = committed.news.get(c.key.id()).cloned();
                                }
                                // An object that sent an earlier frame than the merger holds
                                // (it forgot a rebased row) takes the later one up again.
                                if job.request.version >= 5 {
                                    let sent = c.frame.map_or(0, |f| f.epoch);
                                    merged.frame = counter
                                        .frame_of(job.request.replica)
                                        .filter(|f| f.epoch > sent);
                                }
                                // An object that does not hold its share of the last reset
                                // is told it, to send back.
                                if job.request.version >= 6 {
                                    merged.cut =
                                        counter.cut_for(job.request.replica, c.cut.as_ref());
                                }
                                SyncAnswer::Merged(merged)
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        // Before the answers, so that whoever hears "committed" also sees the new replica.
        if committed.new_replicas {
            self.count_replicas().await;
        }
        for (job, counters) in batch.into_iter().zip(answers) {
            if committed.retired.contains(&job.request.replica) {
                let _ = job.reply.send(Err(CommitError::Retired));
                continue;
            }
            // The request's version: an edge one version behind reads a shape it knows (a
            // version-1 sync has no rejections, and old decoders ignore `updated_at`).
            let _ = job.reply.send(Ok(SyncResponse {
                version: job.request.version,
                counters,
            }));
        }
        self.metrics.cached_counters.set(gauge(self.db.len()));
    }

    /// Sets the live-replica gauge from the store.
    async fn count_replicas(&self) {
        match self.store.replica_count().await {
            Ok(n) => {
                self.metrics.replicas.set(gauge_u64(n));
            }
            Err(e) => warn!(error = %e, "cannot count replicas"),
        }
    }

    /// The cuts the syncs of `batch` tell that change what is held (rare: a merger restored
    /// from a backup older than a reset hears of it from the objects).
    fn told_cuts<'a>(&self, batch: &'a [Job]) -> Vec<ToldCut<'a>> {
        self.db.with_held(|held| {
            batch
                .iter()
                .flat_map(|job| {
                    let r = &job.request;
                    job.accepted().filter_map(move |c| {
                        let cut = c.cut.as_ref()?;
                        held.counter(&c.key)
                            .cut_grows(r.replica, cut)
                            .then_some(ToldCut {
                                key: &c.key,
                                replica: r.replica,
                                region: r.region.as_str(),
                                cut,
                            })
                    })
                })
                .collect()
        })
    }

    /// Applies told cuts, each in its own transaction before the batch's, so that the slots
    /// they came with count in the epoch they were counted in
    /// ([`CounterStore::tell_cut`](crate::store::CounterStore::tell_cut)).
    async fn apply_told_cuts(
        &self,
        told: Vec<ToldCut<'_>>,
    ) -> Result<(), crate::store::StoreError> {
        for ToldCut {
            key,
            replica,
            region,
            cut,
        } in told
        {
            if let Some(stored) = self
                .store
                .tell_cut(key, replica.object(), region, cut)
                .await?
            {
                info!(counter = %key, epoch = cut.epoch, object = %replica.object(), "an object told a cut this merger did not hold");
                self.db.apply_reset(stored);
            }
        }
        Ok(())
    }

    /// The rows a batch must write: every replica that synced, and each accepted slot that
    /// raises what is held, by its total or by the carry it brings (the max over the batch,
    /// for a slot sent more than once). Every counter of the batch is held and complete
    /// (pinned), and what is held is never above what the store has, so a total (or a carry)
    /// the cache already dominates is safe to skip, and so is the total of a slot the held
    /// counter's carries hold (it is final). What is held may still lack the batch in flight
    /// (its rows are chosen before it lands): that only writes a row it made redundant, which
    /// the store's merge leaves as it is.
    fn rows_to_write(&self, batch: &[Job], at: Timestamp) -> (Vec<ReplicaRow>, Vec<SlotRow>) {
        // The region each sync claims, made once per sync rather than once per slot.
        let regions: Vec<Arc<str>> = batch
            .iter()
            .map(|job| Arc::from(job.request.region.as_str()))
            .collect();
        // Every replica that synced, with the region of its first sync in the batch.
        let mut replicas: Vec<ReplicaRow> = batch
            .iter()
            .map(|job| ReplicaRow {
                replica: job.request.replica,
                region: job.request.region.to_string(),
                at,
            })
            .collect();
        replicas.sort_by_key(|r| r.replica);
        replicas.dedup_by_key(|r| r.replica);
        // Every accepted slot in key order (SQLite walks its B-tree forward instead of jumping
        // around it, and Postgres mergers lock rows in one order, so no deadlocks between
        // them), a slot sent more than once in the order of its syncs.
        let mut sent: Vec<(&CounterKey, ReplicaId, usize, &tally_crdt::SlotUpdate)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, job)| {
                job.accepted()
                    .map(move |c| (&c.key, job.request.replica, i, c))
            })
            .collect();
        sent.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let slots = self.db.with_held(|held| {
            // A counter with milestone news has every sync committed, a repeated one too, so
            // that its answer carries the news (an edge object waiting to tell a winner may
            // hear of it only there).
            let news = held.news(at);
            let mut rows = Vec::with_capacity(sent.len());
            let mut counter: Option<(&CounterKey, &crate::state::Counter, bool)> = None;
            for run in sent.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
                let (key, replica, first, _) = run[0];
                // The slots of one counter are together: it is looked up once.
                let (held_counter, watched) = match counter {
                    Some((k, c, w)) if k == key => (c, w),
                    _ => {
                        let watched = key.kind() == CounterKind::G && news.has(key.id());
                        let c = held.counter(key);
                        counter = Some((key, c, watched));
                        (c, watched)
                    }
                };
                let best = Best::of(replica, run.iter().map(|(_, _, _, c)| *c));
                let mut row = SlotRow {
                    key: key.clone(),
                    replica,
                    totals: best.totals,
                    at,
                    visits: best.visits,
                    carry: best.carry,
                };
                // The region the sync claims: its replica's of record, unless it moved.
                // A carry held already is not written again (an object re-sends its carry
                // with every sync), nor is a slot the held carries hold.
                let carry_grows = row
                    .carry(&regions[first])
                    .is_some_and(|(object, carry)| held_counter.carry_grows(object, &carry));
                if !carry_grows {
                    row.carry = None;
                }
                if held_counter.is_retired(replica) {
                    row.totals = SlotTotals::default();
                }
                let slot_grows = !held_counter.slot(replica).dominates(row.totals);
                if slot_grows || carry_grows || watched {
                    rows.push(row);
                }
            }
            rows
        });
        (replicas, slots)
    }
}

/// One slot of a batch, the max over the syncs that sent it.
#[derive(Debug, Default)]
struct Best {
    totals: SlotTotals,
    /// The carries the syncs brought, joined.
    carry: Option<tally_crdt::Carry>,
    visits: Vec<Visit>,
}

impl Best {
    /// The join of what the syncs of `replica` sent for one slot.
    fn of<'a>(replica: ReplicaId, sent: impl Iterator<Item = &'a tally_crdt::SlotUpdate>) -> Best {
        let mut best = Best::default();
        for c in sent {
            best.totals = best.totals.join(c.totals);
            match (&mut best.carry, sent_carry(replica, c.carried, c.frame)) {
                (Some(carry), Some(sent)) => {
                    carry.join(&sent);
                }
                (None, sent) => best.carry = sent,
                (Some(_), None) => {}
            }
            for v in &c.visits {
                if !best.visits.iter().any(|have| have.end == v.end) {
                    best.visits.push(v.clone());
                }
            }
        }
        best
    }
}

/// A cut a sync tells that changes what is held.
struct ToldCut<'a> {
    key: &'a CounterKey,
    replica: ReplicaId,
    region: &'a str,
    cut: &'a Cut,
}

/// Syncs gathered for one transaction, their counters pinned and held.
#[derive(Debug, Default)]
struct Batch {
    jobs: Vec<Job>,
    /// The counters the batch pinned (each once).
    keys: Vec<CounterKey>,
    /// Slot totals the syncs hold (the batch's size, bounded by [`MAX_BATCH_SLOTS`]).
    slots: usize,
}

/// A batch whose transaction runs in a task of its own: nobody is answered and memory shows
/// nothing of it until it has landed ([`CommitTask::land`]).
struct Flight {
    jobs: Vec<Job>,
    keys: Vec<CounterKey>,
    /// The time its rows carry.
    at: Timestamp,
    handle: JoinHandle<Written>,
}

/// How a batch's transaction ended.
struct Written {
    /// The rows it wrote.
    slots: Vec<SlotRow>,
    result: Result<crate::store::Committed, String>,
    /// Seconds from its transaction's begin to durable (or failed).
    seconds: f64,
    /// Whether its milestone news is posted already (before the next batch's rows).
    news_posted: bool,
}

impl Flight {
    /// Waits for the transaction to end (cancel-safe: the transaction goes on).
    async fn wait(&mut self) -> Written {
        (&mut self.handle).await.unwrap_or_else(|e| Written {
            slots: Vec::new(),
            result: Err(format!("the commit's task ended: {e}")),
            seconds: 0.0,
            news_posted: false,
        })
    }

    /// Waits for the transaction of the batch in flight to end; never, if none is.
    async fn written(flight: &mut Option<Flight>) -> Written {
        match flight {
            Some(flight) => flight.wait().await,
            None => std::future::pending().await,
        }
    }
}

fn count_f64(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

fn gauge_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
