//! The history task: writes a point (the counter's totals now) for every counter this merger
//! changed since its last point, every snapshot interval, off the commit path.
//!
//! It runs on its own task and its own connection, in chunks of [`CHUNK`] counters per
//! transaction, so a sync never waits for it: with SQLite the commit task may wait for one
//! short chunk's lock at most. Totals come from the cache; a counter evicted since it changed
//! is loaded from the store. A chunk that fails goes back to the due set for the next tick.

use std::sync::Arc;
use std::time::Duration;

use tally_crdt::{CounterKey, GlobalTotals};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::commit::now;
use crate::metrics::{Metrics, Purpose};
use crate::state::Db;
use crate::store::{SnapshotRow, Store, StoreError};

/// Counters per history transaction.
pub const CHUNK: usize = 1000;

/// Starts the history task: a pass every `every`, and a last one when `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => pass(&*store, &db, &metrics).await,
                _ = stop.changed() => break,
            }
        }
        pass(&*store, &db, &metrics).await;
        info!("history task stopped");
    })
}

/// Writes a point for every counter due, chunk by chunk.
pub async fn pass(store: &dyn Store, db: &Db, metrics: &Metrics) {
    let at = now();
    loop {
        let due = db.take_snapshot_due(CHUNK);
        if due.is_empty() {
            return;
        }
        let keys: Vec<CounterKey> = due.iter().map(|(k, _)| k.clone()).collect();
        match chunk(store, due, at).await {
            Ok(written) => {
                metrics.committed(Purpose::SNAPSHOT);
                metrics
                    .snapshots_written
                    .inc_by(u64::try_from(written).unwrap_or(u64::MAX));
            }
            Err(e) => {
                warn!(error = %e, counters = keys.len(), "history write failed; retried at the next interval");
                db.snapshot_failed(keys);
                return;
            }
        }
    }
}

async fn chunk(
    store: &dyn Store,
    due: Vec<(CounterKey, Option<GlobalTotals>)>,
    at: tally_crdt::Timestamp,
) -> Result<usize, StoreError> {
    let evicted: Vec<CounterKey> = due
        .iter()
        .filter(|(_, totals)| totals.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    let mut rows: Vec<SnapshotRow> = due
        .into_iter()
        .filter_map(|(key, totals)| totals.map(|totals| SnapshotRow { key, at, totals }))
        .collect();
    for counter in store.load(&evicted).await? {
        rows.push(SnapshotRow {
            totals: counter.totals(),
            key: counter.key,
            at,
        });
    }
    store.write_history(&rows).await?;
    Ok(rows.len())
}
