//! Replica retirement (`POST /v1/retire`): a retired incarnation's slots (and those of its
//! object's earlier incarnations) are folded into its object's carry of each counter, its
//! later syncs change nothing, and the slots per counter stay bounded by the incarnations
//! alive, however many rotations there were.

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

fn retire_request(body: &Value, token: Option<&str>) -> Request<Body> {
    post_json("/v1/retire", token, body.to_string())
}

async fn retire(t: &TestMerger, replica_n: u64) -> Value {
    let (status, body) = t
        .send(retire_request(
            &json!({"version": 2, "replica": replica(replica_n)}),
            Some(TOKEN),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn view(t: &TestMerger, path: &str) -> Value {
    let (status, body) = t.get(path).await;
    assert_eq!(status, StatusCode::OK);
    body
}

#[tokio::test]
async fn a_retired_replicas_slots_fold_into_its_objects_carry_and_the_count_stays() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0), ("v", "pn", 4, 1)]))
        .await;
    t.sync(&sync_body(2, "us", &[("a", "g", 7, 0)])).await;
    let before = (
        view(&t, "/v1/counters/a").await,
        view(&t, "/v1/gauges/v").await,
    );
    let answer = retire(&t, 1).await;
    assert_eq!(answer["folded"], 2);
    assert_eq!(answer["replica"], replica(1));
    let a = view(&t, "/v1/counters/a").await;
    assert_eq!(a["count"], 12);
    assert_eq!(a["replicas"], 1, "only replica 2 is alive");
    assert_eq!(a["regions"]["eu"]["count"], 5, "the carry keeps its region");
    assert_eq!(view(&t, "/v1/gauges/v").await["count"], before.1["count"]);
    assert_eq!(t.metric("tally_replicas").await, 1.0);
    assert_eq!(t.metric("tally_slots_folded_total").await, 2.0);
    // The same, read from the store after a restart.
    let t = t.reopen().await;
    let a = view(&t, "/v1/counters/a").await;
    assert_eq!((&a["count"], &a["replicas"]), (&json!(12), &json!(1)));
    assert_eq!(view(&t, "/v1/gauges/v").await["count"], 3);
}

#[tokio::test]
async fn a_sync_of_a_retired_replica_changes_nothing_even_with_higher_totals() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    retire(&t, 1).await;
    let before = t.everything().await;
    // A late duplicate, a replay, and a sync no honest edge would send (higher totals):
    // refused, so that no edge could take it for an acknowledgement.
    for p in [5, 3, 50] {
        let answer = t
            .sync(&sync_body(1, "eu", &[("a", "g", p, 0), ("b", "g", p, 0)]))
            .await;
        assert_error(&answer, StatusCode::CONFLICT, "replica_retired");
    }
    assert_eq!(t.everything().await, before);
    let t = t.reopen().await;
    assert_eq!(
        t.everything().await,
        before,
        "nothing of it reached the store either"
    );
}

#[tokio::test]
async fn retiring_twice_or_an_unknown_replica_folds_nothing_and_is_remembered() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    assert_eq!(retire(&t, 1).await["folded"], 1);
    assert_eq!(retire(&t, 1).await["folded"], 0);
    assert_eq!(view(&t, "/v1/counters/a").await["count"], 5);
    // Never synced, retired, then a sync of it shows up: ignored.
    assert_eq!(retire(&t, 9).await["folded"], 0);
    let answer = t.sync(&sync_body(9, "eu", &[("a", "g", 100, 0)])).await;
    assert_error(&answer, StatusCode::CONFLICT, "replica_retired");
    assert_eq!(view(&t, "/v1/counters/a").await["count"], 5);
}

#[tokio::test]
async fn many_rotations_keep_one_slot_per_live_incarnation_and_count_exactly() {
    let t = TestMerger::with(|c| c.cache_counters = 2).await;
    let mut expected = 0u64;
    for incarnation in 1..=30u64 {
        // Each incarnation counts from zero, syncs (twice: a retry), then retires.
        let hits = incarnation % 7 + 1;
        expected += hits;
        for _ in 0..2 {
            t.sync(&sync_body(
                incarnation,
                "eu",
                &[("hot", "g", hits, 0), ("cold", "g", 1, 0)],
            ))
            .await;
        }
        let live = view(&t, "/v1/counters/hot").await;
        assert_eq!(live["count"], expected);
        assert_eq!(live["replicas"], 1);
        retire(&t, incarnation).await;
        // Old syncs replayed after the fold: nothing changes.
        t.sync(&sync_body(incarnation, "eu", &[("hot", "g", hits, 0)]))
            .await;
        let folded = view(&t, "/v1/counters/hot").await;
        assert_eq!(
            (&folded["count"], &folded["replicas"]),
            (&json!(expected), &json!(0))
        );
    }
    assert_eq!(view(&t, "/v1/counters/cold").await["count"], 30);
    assert_eq!(t.metric("tally_replicas").await, 0.0);
}

#[tokio::test]
async fn a_bad_retirement_is_refused_and_changes_nothing() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    let before = t.everything().await;
    let cases = [
        (
            json!({"version": 2, "replica": replica(1)}),
            None,
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            json!({"version": 2}),
            Some(TOKEN),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "replica": "00000000000000000000000000000000"}),
            Some(TOKEN),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nil_replica",
        ),
        (
            json!({"version": 1, "replica": replica(1)}),
            Some(TOKEN),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_version",
        ),
        (
            json!({"version": 2, "replica": replica(1), "extra": true}),
            Some(TOKEN),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
    ];
    for (body, token, status, code) in cases {
        let answer = t.send(retire_request(&body, token)).await;
        assert_error(&answer, status, code);
    }
    assert_eq!(t.everything().await, before);
    assert_eq!(t.metric("tally_replicas").await, 1.0);
}

#[tokio::test]
async fn retiring_an_incarnation_folds_its_objects_earlier_ones_too_and_a_late_slot_stays_out() {
    // Replica numbers as lineage ids: object in the high bits, generation in the low 32.
    let incarnation = |object: u64, generation: u64| object << 32 | generation;
    let t = TestMerger::new().await;
    // Object 1's generation 0 was never retired (its retirement was lost); generation 1
    // counted too. Object 2 is another edge object.
    t.sync(&sync_body(incarnation(1, 0), "eu", &[("a", "g", 5, 0)]))
        .await;
    t.sync(&sync_body(incarnation(1, 1), "eu", &[("a", "g", 3, 0)]))
        .await;
    t.sync(&sync_body(incarnation(2, 0), "us", &[("a", "g", 7, 0)]))
        .await;
    assert_eq!(retire(&t, incarnation(1, 1)).await["folded"], 2);
    let a = view(&t, "/v1/counters/a").await;
    assert_eq!((&a["count"], &a["replicas"]), (&json!(15), &json!(1)));
    assert_eq!(
        a["regions"]["eu"]["count"], 8,
        "the carry keeps its object's region"
    );
    // A late sync of generation 0 (not marked retired, but in its object's carry): its
    // slot is final, the answer counts it once.
    let (status, answer) = t
        .sync(&sync_body(incarnation(1, 0), "eu", &[("a", "g", 9, 0)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["counters"][0]["global"]["p"], 15);
    let t = t.reopen().await;
    let a = view(&t, "/v1/counters/a").await;
    assert_eq!((&a["count"], &a["replicas"]), (&json!(15), &json!(1)));
}
