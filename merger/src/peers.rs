//! Changes other mergers commit, for a store several mergers share (Postgres).
//!
//! The store's [`watch`](crate::store::Store::watch) yields batches of counters other
//! processes changed (a notification as a hint, a periodic catch-up as the guarantee); this
//! task reloads the ones this merger holds and merges them into its cache. Counters not held
//! need nothing: their next read loads them whole.

use std::sync::Arc;

use tally_crdt::CounterKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::state::Db;
use crate::store::Store;

/// Starts the task; it ends when the store's change feed ends (at shutdown).
pub fn spawn(
    store: Arc<dyn Store>,
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    mut changes: mpsc::Receiver<Vec<CounterKey>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(mut keys) = changes.recv().await {
            // Take every batch waiting: one query for all of them.
            while let Ok(more) = changes.try_recv() {
                keys.extend(more);
            }
            keys.sort_unstable();
            keys.dedup();
            let held = db.held_among(keys);
            if held.is_empty() {
                continue;
            }
            match store.load(&held).await {
                Ok(loaded) => {
                    metrics
                        .peer_refreshes
                        .inc_by(u64::try_from(held.len()).unwrap_or(u64::MAX));
                    db.refresh(loaded);
                }
                // Stale in memory, and the feed will not name them again: drop them, so their
                // next read loads them whole.
                Err(e) => {
                    warn!(error = %e, counters = held.len(), "cannot reload counters other mergers changed; dropping them from the cache");
                    db.forget(&held);
                }
            }
        }
        info!("peer change task stopped");
    })
}
