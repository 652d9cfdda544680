//! History that keeps up: points are written on their own schedule while syncs keep the
//! commit task busy, and the history stays within its retention policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::http::StatusCode;

#[tokio::test]
async fn history_points_are_written_while_syncs_never_stop() {
    let t = Arc::new(TestMerger::with(|c| c.snapshot_interval = Duration::from_millis(50)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicU64::new(0));
    // Eight edges syncing back to back: the commit queue is never empty for long.
    let load: Vec<_> = (0..8u64)
        .map(|edge| {
            let (t, stop, synced) = (Arc::clone(&t), Arc::clone(&stop), Arc::clone(&synced));
            tokio::spawn(async move {
                let mut total = 0;
                while !stop.load(Ordering::Relaxed) {
                    total += 1;
                    let (status, body) = t
                        .sync(&sync_body(edge + 1, "eu", &[("busy", "g", total, 0)]))
                        .await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    synced.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // While the load runs, the history grows.
    let started = Instant::now();
    let bound = Duration::from_secs(30);
    let mut points = 0;
    while started.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, history) = t.get("/v1/counters/busy/history").await;
        points = history["points"].as_array().map_or(0, Vec::len);
        if points >= 3 && synced.load(Ordering::Relaxed) > 100 {
            tally_e2e::record_timing(
                "merger: three history points under a busy commit task",
                started.elapsed(),
                bound,
            );
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        points >= 3,
        "{points} history points while {} syncs kept the commit task busy",
        synced.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn the_history_is_pruned_to_the_retention_policy() {
    // Keep every point for 300 ms, then nothing: the history never holds more than a few.
    let t = TestMerger::with(|c| {
        c.snapshot_interval = Duration::from_millis(20);
        c.history_retention = "raw:300ms".parse().unwrap();
        c.history_prune_interval = Duration::from_millis(50);
    })
    .await;
    for total in 1..=60u64 {
        t.sync(&sync_body(1, "eu", &[("pruned", "g", total, 0)]))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, history) = t.get("/v1/counters/pruned/history").await;
    let points = history["points"].as_array().unwrap().len();
    assert!(
        points <= 16,
        "{points} points younger than 300 ms at most one per 20 ms"
    );
    assert!(t.metric("tally_history_pruned_total").await > 0.0);
}
