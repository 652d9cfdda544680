//! Changes other mergers commit, for a store several mergers share (Postgres).
//!
//! The store's [`watch`](crate::store::Store::watch) yields batches of counters other
//! processes changed (a notification as a hint, a periodic catch-up of the store's change log
//! as the guarantee); this task reloads the ones this merger holds and merges them into its
//! cache. Counters not held need nothing: their next read loads them whole. When the feed
//! says changes were lost ([`Changes::All`]), every held counter is reloaded.

use std::sync::Arc;

use tally_crdt::CounterKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::state::Db;
use crate::store::{Changes, Store};

/// Starts the task; it ends when the store's change feed ends (at shutdown).
pub fn spawn(
    store: Arc<dyn Store>,
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    mut changes: mpsc::Receiver<Changes>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(first) = changes.recv().await {
            // Take every batch waiting: one query for all of them.
            let mut all = false;
            let mut keys = Vec::new();
            let mut next = Some(first);
            while let Some(batch) = next {
                match batch {
                    Changes::Counters(more) => keys.extend(more),
                    Changes::All => all = true,
                }
                next = changes.try_recv().ok();
            }
            let held = if all {
                metrics.peer_full_reloads.inc();
                db.held_all()
            } else {
                keys.sort_unstable();
                keys.dedup();
                db.held_among(keys)
            };
            for chunk in held.chunks(RELOAD_CHUNK) {
                reload(store.as_ref(), &db, &metrics, chunk).await;
            }
        }
        info!("peer change task stopped");
    })
}

/// Counters reloaded per query.
const RELOAD_CHUNK: usize = tally_crdt::MAX_COUNTERS_PER_SYNC;

/// Reloads `held` and merges them into the cache.
async fn reload(store: &dyn Store, db: &Db, metrics: &Metrics, held: &[CounterKey]) {
    match store.load(held).await {
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
            db.forget(held);
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_crdt::{CounterKind, ReplicaId, SlotTotals, Timestamp};

    use super::*;
    use crate::config::Durability;
    use crate::state::CacheStats;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ReplicaRow, SlotRow};

    fn slot(key: &CounterKey, p: u64) -> SlotRow {
        SlotRow {
            key: key.clone(),
            replica: ReplicaId::from_u128(7),
            totals: SlotTotals { p, n: 0 },
            at: Timestamp::from_unix_ms(1),
            visits: Vec::new(),
            carry: None,
        }
    }

    fn held_total(db: &Db, key: &CounterKey) -> Option<u128> {
        db.read(std::slice::from_ref(key), |held| {
            held.counter(key).totals().p
        })
        .ok()
    }

    /// `Changes::All` (the store's change log lost rows this merger never read) reloads every
    /// held counter, and forgets which ids were known to be absent.
    #[tokio::test]
    async fn changes_lost_reload_every_held_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("tally.db").display());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&url, Durability::Full)
                .await
                .expect("open"),
        );
        let [x, y, z] = ["x", "y", "z"].map(|id| CounterKey::new(CounterKind::G, id).expect("id"));
        let replica = ReplicaRow {
            replica: ReplicaId::from_u128(7),
            region: "eu".into(),
            at: Timestamp::from_unix_ms(1),
        };
        store
            .commit(std::slice::from_ref(&replica), &[slot(&x, 1), slot(&y, 1)])
            .await
            .expect("commit");
        let db = Arc::new(Db::new(10, CacheStats::default()));
        let all = [x.clone(), y.clone(), z.clone()];
        let loaded = store.load(&all).await.expect("load");
        db.fill(&all, &all, loaded, |_| ()).expect("filled");
        assert_eq!(held_total(&db, &x), Some(1));
        // Another merger counts behind this one's back, and counts z for the first time.
        store
            .commit(
                std::slice::from_ref(&replica),
                &[slot(&x, 5), slot(&y, 6), slot(&z, 2)],
            )
            .await
            .expect("commit");
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(4);
        let task = spawn(
            Arc::clone(&store),
            Arc::clone(&db),
            Arc::clone(&metrics),
            rx,
        );
        tx.send(Changes::All).await.expect("send");
        drop(tx);
        task.await.expect("the task ends with its feed");
        assert_eq!(held_total(&db, &x), Some(5));
        assert_eq!(held_total(&db, &y), Some(6));
        // z was absent: no longer taken for absent, its next read loads it.
        assert_eq!(db.read(std::slice::from_ref(&z), |_| ()), Err(vec![z]));
        assert_eq!(metrics.peer_full_reloads.get(), 1);
        assert_eq!(metrics.peer_refreshes.get(), 2);
    }
}
