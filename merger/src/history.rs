//! The history task: writes a point (the counter's totals now) for every counter this merger
//! changed since its last point, every snapshot interval, off the commit path.
//!
//! It runs on its own task and its own connection, in chunks of [`CHUNK`] counters per
//! transaction, so a sync never waits for it: with SQLite the commit task may wait for one
//! short chunk's lock at most. Totals come from the cache, or were kept when a due counter was
//! evicted (up to the cache's capacity; beyond, the point is dropped and counted in
//! `tally_history_points_dropped_total`): writing history never loads a counter, and the
//! last pass at shutdown writes at most twice the cache's worth of points. A chunk that fails
//! goes back to the due set for the next tick.
//!
//! The same task keeps the history's size bounded ([`Pruner`]): every prune interval it
//! downsamples each tier of the retention policy (`--history-retention`, e.g. every point
//! for a day, one per hour for 90 days) and deletes what is older than the last tier, in
//! chunks of [`CHUNK`] points per statement. Each prune only walks the points that crossed
//! a tier boundary since the previous one (all of them once, after a start).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use tally_crdt::{CounterKey, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::now;
use crate::config::Retention;
use crate::metrics::{Metrics, Purpose};
use crate::state::{Db, Point};
use crate::store::{SnapshotRow, Store, StoreError};

/// Counters per history transaction.
pub const CHUNK: usize = 1000;

/// Starts the history task: a pass every `every`, a prune every `prune_every` (the first
/// one at once), and a last pass when `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut pruner: Pruner,
    prune_every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(prune_every);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => pass(&*store, &db, &metrics).await,
                _ = prune.tick() => match pruner.prune(&*store, now()).await {
                    Ok(deleted) => {
                        metrics.history_pruned.inc_by(deleted);
                    }
                    Err(e) => warn!(error = %e, "history prune failed; retried at the next interval"),
                },
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
        match chunk(store, &due, at).await {
            Ok(written) => {
                metrics.committed(Purpose::SNAPSHOT);
                metrics
                    .snapshots_written
                    .inc_by(u64::try_from(written).unwrap_or(u64::MAX));
            }
            Err(e) => {
                warn!(error = %e, counters = due.len(), "history write failed; retried at the next interval");
                db.snapshot_failed(due);
                return;
            }
        }
    }
}

async fn chunk(
    store: &dyn Store,
    due: &[(CounterKey, Point)],
    at: tally_crdt::Timestamp,
) -> Result<usize, StoreError> {
    let rows: Vec<SnapshotRow> = due
        .iter()
        .map(|(key, (totals, epoch))| SnapshotRow {
            key: key.clone(),
            at,
            totals: *totals,
            epoch: *epoch,
        })
        .collect();
    store.write_history(&rows).await?;
    Ok(rows.len())
}

/// Applies the retention policy, incrementally.
#[derive(Debug)]
pub struct Pruner {
    retention: Retention,
    /// When the last prune that completed ran; `None` before the first.
    last: Option<Timestamp>,
}

impl Pruner {
    /// A pruner for `retention` that has not run yet.
    pub fn new(retention: Retention) -> Pruner {
        Pruner {
            retention,
            last: None,
        }
    }

    /// Brings the history to the policy as of `now`. Returns the points deleted.
    ///
    /// A tier of resolution `r` covering ages `[younger, age)` downsamples the points that
    /// entered it since the last prune, `[last - younger - r, now - younger)` (the extra `r`
    /// reaches back to the start of their buckets); the points that left the last tier are
    /// deleted.
    pub async fn prune(&mut self, store: &dyn Store, now: Timestamp) -> Result<u64, StoreError> {
        let before = |t: Timestamp, d: Duration| {
            Timestamp::from_unix_ms(
                t.unix_ms()
                    .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            )
        };
        let since = |d: Duration| self.last.map_or(Timestamp::MIN, |last| before(last, d));
        let mut deleted = 0;
        let mut younger = Duration::ZERO;
        for tier in &self.retention.0 {
            if let Some(r) = tier.resolution {
                let bucket = NonZeroU64::new(u64::try_from(r.as_millis()).unwrap_or(u64::MAX))
                    .expect("resolutions are longer than zero (checked when parsed)");
                deleted += drain(
                    store,
                    since(younger + r),
                    before(now, younger),
                    Some(bucket),
                )
                .await?;
            }
            younger = tier.age;
        }
        deleted += drain(store, since(younger), before(now, younger), None).await?;
        self.last = Some(now);
        Ok(deleted)
    }
}

/// Prunes `from..to` chunk by chunk until nothing is left to prune.
async fn drain(
    store: &dyn Store,
    from: Timestamp,
    to: Timestamp,
    bucket: Option<NonZeroU64>,
) -> Result<u64, StoreError> {
    let chunk = u32::try_from(CHUNK).expect("CHUNK fits a u32");
    let mut total = 0;
    if from >= to {
        return Ok(0);
    }
    loop {
        let n = store.prune_history(from, to, bucket, chunk).await?;
        total += n;
        if n < u64::from(chunk) {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{CounterStore, HistoryStore, ReplicaRow, SlotRow};
    use tally_crdt::{CounterKind, GlobalTotals, ReplicaId, SlotTotals};

    fn key() -> CounterKey {
        CounterKey::new(CounterKind::G, "h").unwrap()
    }

    async fn store_with_points(
        dir: &tempfile::TempDir,
        times: impl Iterator<Item = i64>,
    ) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store = SqliteStore::open(&url, Durability::Normal).await.unwrap();
        let replica = ReplicaId::from_u128(1);
        let at = Timestamp::from_unix_ms(0);
        store
            .commit(
                &[ReplicaRow {
                    replica,
                    region: "eu".into(),
                    at,
                }],
                &[SlotRow {
                    key: key(),
                    replica,
                    totals: SlotTotals { p: 1, n: 0 },
                    at,
                    visits: Vec::new(),
                    carry: None,
                }],
            )
            .await
            .unwrap();
        add_points(&store, times).await;
        store
    }

    async fn add_points(store: &SqliteStore, times: impl Iterator<Item = i64>) {
        let rows: Vec<SnapshotRow> = times
            .map(|t| SnapshotRow {
                key: key(),
                at: Timestamp::from_unix_ms(t),
                totals: GlobalTotals {
                    p: u128::try_from(t).unwrap(),
                    n: 0,
                },
                epoch: 0,
            })
            .collect();
        store.write_history(&rows).await.unwrap();
    }

    async fn kept(store: &SqliteStore) -> Vec<i64> {
        store
            .history(&key(), Timestamp::MIN, Timestamp::MAX, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.at.unix_ms())
            .collect()
    }

    /// What the policy below leaves of points every 50 ms up to `now`: every point of the
    /// last second, the last of each 200 ms bucket of the 4 s before, the last of each
    /// second of the 5 s before that, nothing older.
    fn expected(now: i64) -> Vec<i64> {
        let mut out: Vec<i64> = (now - 10_000..now - 5_000)
            .step_by(1000)
            .map(|b| b + 950)
            .collect();
        out.extend((now - 5_000..now - 1_000).step_by(200).map(|b| b + 150));
        out.extend((now - 1_000..=now).step_by(50));
        out
    }

    #[tokio::test]
    async fn retention_downsamples_each_tier_and_deletes_the_oldest_incrementally() {
        let retention: Retention = "raw:1s,200ms:5s,1s:10s".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_points(&dir, (0..=20_000).step_by(50)).await;
        let mut pruner = Pruner::new(retention);
        let deleted = pruner
            .prune(&store, Timestamp::from_unix_ms(20_000))
            .await
            .unwrap();
        assert_eq!(kept(&store).await, expected(20_000));
        assert_eq!(deleted, 401 - expected(20_000).len() as u64);
        // Two seconds later, with the points of those two seconds: only what crossed a
        // boundary is walked, and the result is what a prune from scratch gives.
        add_points(&store, (20_050..=22_000).step_by(50)).await;
        pruner
            .prune(&store, Timestamp::from_unix_ms(22_000))
            .await
            .unwrap();
        assert_eq!(kept(&store).await, expected(22_000));
    }

    #[test]
    fn retention_policies_parse_and_refuse_what_cannot_hold() {
        let r: Retention = "raw:1d,1h:90d".parse().unwrap();
        assert_eq!(r.0.len(), 2);
        assert_eq!(r.0[0].resolution, None);
        assert_eq!(r.0[1].resolution, Some(Duration::from_secs(3600)));
        assert_eq!(r.0[1].age, Duration::from_secs(90 * 86_400));
        for bad in [
            "",
            "1h",
            "raw:1d,raw:2d",
            "1h:1d,1m:90d",
            "raw:2d,1h:1d",
            "0s:1d",
            "raw:banana",
        ] {
            assert!(bad.parse::<Retention>().is_err(), "{bad:?} parsed");
        }
    }
}
