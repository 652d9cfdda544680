//! The pruning task, the merger's pruning of what only grows otherwise: every
//! `--presence-prune-interval`, a chunk at a time, it deletes the presence reports that
//! expired more than [`PRESENCE_GRACE_MS`] ago; the daily unique-visitor sketches of UTC days
//! more than `--sketch-days` ago, so that the sketches (about 3 KiB per id and day) stay
//! bounded by the ids counted in that window; and the rows of replica incarnations retired
//! more than `--retired-replica-days` ago, so that the `replicas` table stays bounded by the
//! incarnations alive and those retired in that window, however many rotations there were;
//! and it nets what rebased carries reclaimed against their counters' cuts `--reclaim-days`
//! after the rebase ([`CounterStore::reclaim_carries`](crate::store::CounterStore::reclaim_carries)),
//! once no edge object re-sends it: a counter deleted with nothing counted since then keeps
//! its row and its cuts, not a carry per object that ever counted it.
//!
//! Reads never count an expired report (they filter by expiry), so pruning only bounds the
//! table: it holds a row per presence id and edge object that reported within the lease and
//! the grace period. The grace keeps a superseded report's `seq` around while a late,
//! older report could still arrive, so that one cannot come back.
//!
//! A retired incarnation's row is not needed to count right once its slots are in its
//! object's carries: a late sync of it writes nothing, with its row or without (then it is
//! registered retired again, and refused as before). Rows retired into region bases before
//! carries stay, as does any row a slot still names
//! ([`CounterStore::prune_replicas`](crate::store::CounterStore::prune_replicas)).
//!
//! With several mergers on one database each prunes; the deletes are idempotent.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::metrics::Metrics;
use crate::presence::PRESENCE_GRACE_MS;
use crate::store::{Store, StoreError};

/// Rows deleted per statement.
const CHUNK: u32 = 1000;

/// What the task keeps, in days (0: forever).
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// UTC days of daily sketches (`--sketch-days`).
    pub sketch_days: u32,
    /// Days a replica incarnation's row is kept after its retirement
    /// (`--retired-replica-days`).
    pub retired_replica_days: u32,
    /// Days what a rebased carry reclaimed is kept in it (`--reclaim-days`).
    pub reclaim_days: u32,
}

/// Starts the task; it ends when `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    every: Duration,
    keep: Keep,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = crate::clock::now();
                    counted(prune(&*store).await, &metrics.presence_pruned, "presence prune");
                    if keep.sketch_days > 0 {
                        let pass = prune_sketches(&*store, now, keep.sketch_days).await;
                        counted(pass, &metrics.sketches_pruned, "sketch prune");
                    }
                    if keep.retired_replica_days > 0 {
                        let pass = prune_replicas(&*store, now, keep.retired_replica_days).await;
                        counted(pass, &metrics.replicas_pruned, "replica prune");
                    }
                    if keep.reclaim_days > 0 {
                        let pass = reclaim_carries(&*store, now, keep.reclaim_days).await;
                        counted(pass, &metrics.carries_reclaimed, "carry reclaim");
                    }
                }
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    break;
                },
            }
        }
    })
}

/// Counts what a pass of `what` deleted or netted in `total`, or says it failed (the next
/// interval tries again).
fn counted(pass: Result<u64, StoreError>, total: &Counter, what: &str) {
    match pass {
        Ok(done) => {
            total.inc_by(done);
        }
        Err(e) => warn!(error = %e, "{what} failed; retried at the next interval"),
    }
}

/// One pass: every report expired before now minus the grace, in chunks.
pub async fn prune(store: &dyn Store) -> Result<u64, StoreError> {
    let grace = i64::try_from(PRESENCE_GRACE_MS).unwrap_or(i64::MAX);
    let before =
        tally_crdt::Timestamp::from_unix_ms(crate::clock::now().unix_ms().saturating_sub(grace));
    in_chunks(|limit| store.prune_presence(before, limit)).await
}

/// One pass over the daily sketches: every day before the last `days` UTC days up to `now`'s
/// (today counts as one), in chunks.
pub async fn prune_sketches(
    store: &dyn Store,
    now: tally_crdt::Timestamp,
    days: u32,
) -> Result<u64, StoreError> {
    let first_kept = now
        .day()
        .start()
        .minus_ms(u64::from(days.saturating_sub(1)) * 86_400_000)
        .day()
        .to_string();
    in_chunks(|limit| store.prune_sketches(&first_kept, limit)).await
}

/// One pass over the retired replicas: the rows of those retired more than `days` days before
/// `now` that may go
/// ([`CounterStore::prune_replicas`](crate::store::CounterStore::prune_replicas)), in chunks.
pub async fn prune_replicas(
    store: &dyn Store,
    now: tally_crdt::Timestamp,
    days: u32,
) -> Result<u64, StoreError> {
    let before = days_before(now, days);
    in_chunks(|limit| store.prune_replicas(before, limit)).await
}

/// One pass over the rebased carries: those last grown more than `days` days before `now`
/// are netted against their counters' cuts
/// ([`CounterStore::reclaim_carries`](crate::store::CounterStore::reclaim_carries)), in chunks.
pub async fn reclaim_carries(
    store: &dyn Store,
    now: tally_crdt::Timestamp,
    days: u32,
) -> Result<u64, StoreError> {
    let before = days_before(now, days);
    in_chunks(|limit| store.reclaim_carries(before, limit)).await
}

/// `days` days before `now`.
fn days_before(now: tally_crdt::Timestamp, days: u32) -> tally_crdt::Timestamp {
    now.minus_ms(u64::from(days) * 86_400_000)
}

/// Runs `chunk` (one delete of at most its argument's rows) until a chunk deletes fewer than
/// [`CHUNK`]; answers how many rows went.
async fn in_chunks<F, Fut>(mut chunk: F) -> Result<u64, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut deleted = 0;
    loop {
        let done = chunk(CHUNK).await?;
        deleted += done;
        if done < u64::from(CHUNK) {
            return Ok(deleted);
        }
    }
}
