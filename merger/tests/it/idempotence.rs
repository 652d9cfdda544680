//! Retries, duplicates and reordering change nothing: the global count is exactly the sum of
//! each replica's newest totals, whatever the delivery.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::*;
use axum::http::StatusCode;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Counts, replicas and per-region counts of everything: what a duplicate must not change
/// (the `last_sync` times do move: a duplicate is still a sync).
async fn counts(t: &TestMerger) -> Value {
    let mut all = t.everything().await;
    for view in all.as_object_mut().unwrap().values_mut() {
        let view = view.as_object_mut().unwrap();
        view.remove("updated_at");
        for region in view["regions"].as_object_mut().unwrap().values_mut() {
            region.as_object_mut().unwrap().remove("last_sync");
        }
    }
    all
}

#[tokio::test]
async fn the_same_sync_twice_changes_nothing() {
    let t = TestMerger::new().await;
    let sync = sync_body(1, "eu", &[("a", "g", 10, 0), ("b", "pn", 7, 2)]);
    let first = t.sync(&sync).await;
    assert_eq!(first.0, StatusCode::OK);
    let after_first = counts(&t).await;
    let second = t.sync(&sync).await;
    assert_eq!(second, first, "a retry gets the same answer");
    assert_eq!(counts(&t).await, after_first);
    assert_eq!(t.get("/v1/counters/a").await.1["count"], 10);
    assert_eq!(t.get("/v1/gauges/b").await.1["count"], 5);
}

#[tokio::test]
async fn an_older_sync_after_a_newer_one_changes_nothing() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 10, 0), ("b", "pn", 7, 2)]))
        .await;
    let newer = counts(&t).await;
    let (status, answer) = t
        .sync(&sync_body(1, "eu", &[("a", "g", 4, 0), ("b", "pn", 3, 1)]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts(&t).await, newer);
    // The answer tells the replica what the merger holds of its slot: the newer totals.
    assert_eq!(answer["counters"][0]["recorded"]["p"], 10);
    assert_eq!(
        answer["counters"][1]["recorded"],
        serde_json::json!({"p": 7, "n": 2})
    );
}

#[tokio::test]
async fn a_sync_raising_one_half_of_a_gauge_keeps_the_other() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("g", "pn", 10, 2)])).await;
    t.sync(&sync_body(1, "eu", &[("g", "pn", 8, 5)])).await;
    assert_eq!(
        t.get("/v1/gauges/g").await.1["count"],
        5,
        "max per half: p 10, n 5"
    );
}

/// 24 replicas in 3 regions each send 20 successive totals for 6 counters and 6 gauges; every
/// sync is delivered, plus a third again as duplicates, in a random order, by 16 concurrent
/// clients. The merger must end with exactly each replica's newest totals.
#[tokio::test]
async fn interleaved_duplicated_reordered_syncs_from_many_replicas_count_exactly() {
    let t = Arc::new(TestMerger::new().await);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11);
    let regions = ["eu", "us", "ap"];
    let mut syncs = Vec::new();
    // Expected per (namespace, id): total count, and per region.
    let mut expected: BTreeMap<String, (i128, BTreeMap<&str, i128>)> = BTreeMap::new();
    for r in 1..=24u64 {
        let region = regions[usize::try_from(r).unwrap() % 3];
        let mut totals = [(0u64, 0u64); 12];
        for _step in 0..20 {
            let mut counters = Vec::new();
            for (i, (p, n)) in totals.iter_mut().enumerate() {
                *p += rng.random_range(0..50);
                if i >= 6 {
                    *n += rng.random_range(0..50);
                }
                let (id, kind) = (format!("c{}", i % 6), if i < 6 { "g" } else { "pn" });
                counters.push((id, kind, *p, *n));
            }
            let refs: Vec<(&str, &str, u64, u64)> = counters
                .iter()
                .map(|(id, k, p, n)| (id.as_str(), *k, *p, *n))
                .collect();
            syncs.push(sync_body(r, region, &refs));
        }
        for (i, (p, n)) in totals.iter().enumerate() {
            let ns = if i < 6 { "counters" } else { "gauges" };
            let value = i128::from(*p) - i128::from(*n);
            let entry = expected.entry(format!("{ns}/c{}", i % 6)).or_default();
            entry.0 += value;
            *entry.1.entry(region).or_default() += value;
        }
    }
    let duplicates: Vec<Value> = syncs.iter().step_by(3).cloned().collect();
    syncs.extend(duplicates);
    syncs.shuffle(&mut rng);

    let queue = Arc::new(std::sync::Mutex::new(syncs));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (t, queue) = (Arc::clone(&t), Arc::clone(&queue));
            tokio::spawn(async move {
                loop {
                    let Some(sync) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let (status, body) = t.sync(&sync).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }

    let all = t.everything().await;
    assert_eq!(all.as_object().unwrap().len(), expected.len());
    for (key, (total, by_region)) in &expected {
        let view = &all[key];
        assert_eq!(
            view["count"].as_i64().map(i128::from),
            Some(*total),
            "{key}: {view}"
        );
        assert_eq!(view["replicas"], 24, "{key}");
        for (region, count) in by_region {
            assert_eq!(
                view["regions"][region]["count"].as_i64().map(i128::from),
                Some(*count),
                "{key} in {region}"
            );
        }
    }
}
