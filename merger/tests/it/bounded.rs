//! Bounded state: the merger's memory is a cache of `--cache-counters` counters over the
//! store, it starts without loading anything, and a full commit queue answers 503 with
//! `Retry-After` instead of queueing without bound.

use std::sync::Arc;

use crate::common::*;
use axum::http::StatusCode;
use serde_json::json;

const COUNTERS: u64 = 60;

fn id(i: u64) -> String {
    format!("c{i:03}")
}

/// Replica 1 (eu) counts `i + 1` in counter `c{i}`, replica 2 (us) `2 * (i + 1)`.
async fn fill(t: &TestMerger) {
    for (replica, region, factor) in [(1, "eu", 1), (2, "us", 2)] {
        let ids: Vec<String> = (0..COUNTERS).map(id).collect();
        let counters: Vec<(&str, &str, u64, u64)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), "g", factor * (i as u64 + 1), 0))
            .collect();
        let (status, body) = t.sync(&sync_body(replica, region, &counters)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn a_small_cache_answers_every_counter_exactly_and_holds_at_most_its_capacity() {
    let t = TestMerger::with(|c| c.cache_counters = 5).await;
    fill(&t).await;
    assert!(t.metric("tally_cache_counters").await <= 5.0);
    for round in 0..2 {
        for i in 0..COUNTERS {
            let (status, view) = t.get(&format!("/v1/counters/{}", id(i))).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(view["count"], 3 * (i + 1), "round {round}, {}", id(i));
            assert_eq!(view["replicas"], 2);
            assert_eq!(view["regions"]["us"]["count"], 2 * (i + 1));
        }
    }
    assert!(t.metric("tally_cache_counters").await <= 5.0);
    assert!(t.metric("tally_cache_evictions_total").await >= (2 * COUNTERS - 5) as f64);
    // The edge's batch read of every counter at once: more than the cache holds.
    let asked: Vec<(String, &str)> = (0..COUNTERS).map(|i| (id(i), "g")).collect();
    let asked: Vec<(&str, &str)> = asked.iter().map(|(i, k)| (i.as_str(), *k)).collect();
    let (status, body) = t.read(&read_body(Some(2), &asked)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (i, answer) in body["counters"].as_array().unwrap().iter().enumerate() {
        let i = i as u64;
        assert_eq!(answer["global"], json!({"p": 3 * (i + 1)}));
        assert_eq!(answer["recorded"], json!({"p": 2 * (i + 1)}));
    }
}

#[tokio::test]
async fn a_sync_of_evicted_counters_is_answered_from_their_stored_slots() {
    let t = TestMerger::with(|c| c.cache_counters = 3).await;
    fill(&t).await;
    // Replica 1 resends old totals of every counter (a retry after the cache moved on) and
    // raises one: every answer still holds both replicas' slots.
    let ids: Vec<String> = (0..COUNTERS).map(id).collect();
    let mut counters: Vec<(&str, &str, u64, u64)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), "g", i as u64 + 1, 0))
        .collect();
    counters[7].2 += 100;
    let (status, body) = t.sync(&sync_body(1, "eu", &counters)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (i, answer) in body["counters"].as_array().unwrap().iter().enumerate() {
        let i = i as u64;
        let extra = if i == 7 { 100 } else { 0 };
        assert_eq!(answer["global"], json!({"p": 3 * (i + 1) + extra}), "{i}");
        assert_eq!(answer["recorded"], json!({"p": i + 1 + extra}), "{i}");
    }
    assert_eq!(
        t.metric("tally_slots_merged_total").await,
        (2 * COUNTERS + 1) as f64
    );
}

#[tokio::test]
async fn a_restarted_merger_loads_nothing_until_asked() {
    let t = TestMerger::new().await;
    fill(&t).await;
    let t = t.reopen().await;
    assert_eq!(t.metric("tally_cache_counters").await, 0.0);
    assert_eq!(
        t.metric(r#"tally_counters{kind="g"}"#).await,
        COUNTERS as f64
    );
    assert_eq!(t.metric("tally_replicas").await, 2.0);
    let (_, view) = t.get("/v1/counters/c009").await;
    assert_eq!(view["count"], 30);
    assert_eq!(t.metric("tally_cache_misses_total").await, 1.0);
}

#[tokio::test]
async fn a_full_commit_queue_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let t = Arc::new(TestMerger::with(|c| c.commit_queue = 1).await);
    // Many edges at once: each sync its own replica and counter.
    let tasks: Vec<_> = (0..200u64)
        .map(|n| {
            let t = Arc::clone(&t);
            tokio::spawn(async move {
                let counter = format!("q{n}");
                let response = t
                    .send(sync_request(
                        sync_body(100 + n, "eu", &[(counter.as_str(), "g", n + 1, 0)]).to_string(),
                    ))
                    .await;
                (n, response)
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (n, (status, body)) = task.await.unwrap();
        match status {
            StatusCode::OK => acknowledged.push(n),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "200 syncs at once fit a queue of 1");
    assert!(!acknowledged.is_empty());
    for n in acknowledged {
        let (_, view) = t.get(&format!("/v1/counters/q{n}")).await;
        assert_eq!(view["count"], n + 1, "acknowledged sync q{n}");
    }
    assert_eq!(
        t.metric(r#"tally_errors_total{code="overloaded"}"#).await,
        f64::from(refused)
    );
}

#[tokio::test]
async fn an_overloaded_answer_carries_retry_after() {
    let t = Arc::new(TestMerger::with(|c| c.commit_queue = 1).await);
    let tasks: Vec<_> = (0..100u64)
        .map(|n| {
            let t = Arc::clone(&t);
            tokio::spawn(async move {
                let request = sync_request(sync_body(n + 1, "eu", &[("r", "g", 1, 0)]).to_string());
                tower::ServiceExt::oneshot(t.app.clone(), request)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = false;
    for task in tasks {
        let response = task.await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["retry-after"], "1");
            seen = true;
        }
    }
    assert!(seen, "100 syncs at once fit a queue of 1");
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_with_retry_after_and_the_rest_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let dir = tempfile::tempdir().unwrap();
    let mut config = tally_merger::Config::new(database_url(dir.path()), TOKEN);
    config.max_connections = 2;
    let merger = tally_merger::Merger::open(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(merger.serve(listener, async {
        let _ = stopped.await;
    }));
    let get = |path: &'static str| async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        answer
    };
    // Two idle connections hold both places (nothing sent yet).
    let idle: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let refused = get("/healthz").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert!(refused.contains(r#""code":"overloaded""#), "{refused}");
    drop(idle);
    // Places free again: served.
    let mut served = String::new();
    for _ in 0..50 {
        served = get("/healthz").await;
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    let _ = stop.send(());
    server.await.unwrap();
}
