//! The group commit of syncs (`src/commit.rs`): no sync is answered, and nothing of it shown,
//! before its own batch's commit returned; a batch is answered from memory holding it and the
//! batches before, never a later one; a failed batch fails only its own syncs, and a batch
//! queued behind it commits.
//!
//! The seam: the test holds SQLite's write lock from a connection of its own
//! ([`hold_write_lock`]), so the merger's commit waits on it (its busy timeout is 5 s, the test holds it
//! well under one) while the test sends the next sync and looks at what is answered and shown;
//! a trigger that refuses one counter makes a batch fail. (`kill -9` cannot show this: the page
//! cache survives it.)

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use axum::http::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;

/// Sends a sync in a task of its own.
fn sync_in_background(t: &Arc<TestMerger>, body: Value) -> JoinHandle<(StatusCode, Value)> {
    let t = Arc::clone(t);
    tokio::spawn(async move { t.sync(&body).await })
}

/// Holds the write lock and sends `first`, then, once it waits in its commit, `second`: the
/// next batch comes while batch N is written. Answers the lock (for the test to release) and
/// the two syncs under way.
async fn two_syncs_under_the_lock(
    t: &Arc<TestMerger>,
    first: Value,
    second: Value,
) -> (
    sqlx::SqliteConnection,
    JoinHandle<(StatusCode, Value)>,
    JoinHandle<(StatusCode, Value)>,
) {
    let lock = hold_write_lock(t.dir.path()).await;
    let first = sync_in_background(t, first);
    tokio::time::sleep(SETTLE).await;
    let second = sync_in_background(t, second);
    tokio::time::sleep(SETTLE).await;
    (lock, first, second)
}

/// The global count a sync answer gives for its `n`-th counter.
fn global_p(answer: &Value, n: usize) -> u64 {
    answer["counters"][n]["global"]["p"]
        .as_u64()
        .unwrap_or_else(|| panic!("an answer with a global count: {answer}"))
}

/// Time for work sent to the merger to reach its commit (only to make the overlap likely; the
/// checks hold whatever the timing).
const SETTLE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn no_sync_is_answered_or_shown_before_its_own_batch_commits() {
    let t = Arc::new(TestMerger::new().await);
    assert_eq!(
        t.sync(&sync_body(1, "eu", &[("x", "g", 1, 0)])).await.0,
        StatusCode::OK
    );
    // Batch N waits on the lock; the next sync (x again, and y, which must be loaded) comes
    // while it is written.
    let (lock, first, second) = two_syncs_under_the_lock(
        &t,
        sync_body(1, "eu", &[("x", "g", 5, 0)]),
        sync_body(2, "us", &[("x", "g", 7, 0), ("y", "g", 3, 0)]),
    )
    .await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "nothing is answered while its batch is not durable"
    );
    assert_eq!(t.get("/v1/counters/x").await.1["count"], 1, "nothing shown");
    assert_eq!(t.get("/v1/counters/y").await.1["count"], 0, "nothing shown");
    release_write_lock(lock).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.0, second.0), (StatusCode::OK, StatusCode::OK));
    // N was answered from memory holding N only; the next batch from memory holding both.
    assert_eq!(global_p(&first.1, 0), 5, "{}", first.1);
    assert_eq!(global_p(&second.1, 0), 12, "{}", second.1);
    assert_eq!(global_p(&second.1, 1), 3, "{}", second.1);
    assert_eq!(t.get("/v1/counters/x").await.1["count"], 12);
    assert_eq!(t.get("/v1/counters/y").await.1["count"], 3);
    assert_eq!(
        t.metric(r#"tally_commits_total{purpose="sync"}"#).await,
        3.0,
        "one transaction per batch"
    );
}

#[tokio::test]
async fn a_failed_batch_fails_only_its_own_syncs_and_the_next_batch_commits() {
    let t = Arc::new(TestMerger::new().await);
    refuse_poison(&t, "counters", true).await;
    // Batch N holds a counter the database refuses: it fails whole, x included. The next
    // sync comes while N is written, and does not depend on it.
    let poisoned = sync_body(1, "eu", &[("poison", "g", 4, 0), ("x", "g", 2, 0)]);
    let (lock, first, second) = two_syncs_under_the_lock(
        &t,
        poisoned.clone(),
        sync_body(2, "us", &[("x", "g", 3, 0)]),
    )
    .await;
    release_write_lock(lock).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_error(
        &first,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    );
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    assert_eq!(
        global_p(&second.1, 0),
        3,
        "nothing of the failed batch: {}",
        second.1
    );
    assert_eq!(t.get("/v1/counters/x").await.1["count"], 3);
    assert_eq!(t.get("/v1/counters/poison").await.1["count"], 0);
    assert_eq!(t.metric("tally_commit_failures_total").await, 1.0);
    // The edge retries: with the fault gone, the same sync commits.
    refuse_poison(&t, "counters", false).await;
    assert_eq!(t.sync(&poisoned).await.0, StatusCode::OK);
    assert_eq!(t.get("/v1/counters/x").await.1["count"], 5);
    assert_eq!(t.get("/v1/counters/poison").await.1["count"], 4);
}

#[tokio::test]
async fn a_sync_taken_in_while_a_batch_decides_a_milestone_carries_its_news() {
    // A batch's rows are chosen once the batch before it is durable, with that one's
    // milestone news posted: a repeated sync of the counter (no slot grows) is still
    // committed, so that its answer tells the winner. Fails if the rows are chosen before.
    let t = Arc::new(TestMerger::new().await);
    assert_eq!(
        t.sync(&sync_body(2, "eu", &[("x", "g", 3, 0)])).await.0,
        StatusCode::OK
    );
    // Registered through another merger on the same database: this one's board has none.
    let other = tally_merger::store::open(
        &database_url(t.dir.path()),
        tally_merger::config::Durability::Full,
    )
    .await
    .unwrap();
    other
        .add_milestone("x", 5, None, tally_merger::clock::now())
        .await
        .unwrap();
    // Batch N: replica 1 brings the 4th and 5th hits; its commit decides the milestone.
    // Taken in while N is written: replica 2 again, unchanged (its answer was lost, say).
    let (lock, first, second) = two_syncs_under_the_lock(
        &t,
        sync_body(1, "eu", &[("x", "g", 2, 0)]),
        sync_body(2, "eu", &[("x", "g", 3, 0)]),
    )
    .await;
    release_write_lock(lock).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.0, second.0), (StatusCode::OK, StatusCode::OK));
    for answer in [&first.1, &second.1] {
        let won = &answer["counters"][0]["milestones"]["won"][0];
        assert_eq!(
            (won["n"].as_u64(), won["unit"].as_u64()),
            (Some(5), Some(2)),
            "{answer}"
        );
    }
    assert_eq!(global_p(&second.1, 0), 5, "{}", second.1);
}
