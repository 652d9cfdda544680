//! Protocol versions on `POST /v1/sync`: version 2 answers per counter (a counter that breaks
//! a per-counter rule is rejected alone, the others commit), and version 1 (an edge one
//! version behind during a rolling deploy) is still accepted and answered in its own shape.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// A version-2 sync of three counters, the middle one a `g` counter with a decrement total.
fn with_a_bad_counter(replica: u64) -> Value {
    sync_body(
        replica,
        "eu",
        &[
            ("home", "g", 7, 0),
            ("likes", "g", 5, 2),
            ("viewers", "pn", 4, 1),
        ],
    )
}

#[tokio::test]
async fn a_v2_sync_is_answered_with_version_2() {
    let t = TestMerger::new().await;
    let (status, body) = t.sync(&sync_body(1, "eu", &[("home", "g", 7, 0)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
}

#[tokio::test]
async fn a_v2_sync_reports_a_rejected_counter_with_its_error() {
    let t = TestMerger::new().await;
    let (status, body) = t.sync(&with_a_bad_counter(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rejected = &body["counters"][1];
    assert_eq!(
        (&rejected["id"], &rejected["kind"]),
        (&json!("likes"), &json!("g"))
    );
    assert_eq!(rejected["error"]["code"], "decrement_on_counter");
    assert!(
        rejected["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("likes")),
        "the message names the counter: {rejected}"
    );
    assert!(
        rejected.get("global").is_none() && rejected.get("recorded").is_none(),
        "a rejection carries no totals: {rejected}"
    );
}

#[tokio::test]
async fn a_v2_sync_with_a_rejected_counter_commits_the_others() {
    let t = TestMerger::new().await;
    let (_, body) = t.sync(&with_a_bad_counter(1)).await;
    assert_eq!(body["counters"][0]["global"], json!({"p": 7}));
    assert_eq!(body["counters"][2]["recorded"], json!({"p": 4, "n": 1}));
    assert_eq!(t.get("/v1/counters/home").await.1["count"], 7);
    assert_eq!(t.get("/v1/gauges/viewers").await.1["count"], 3);
    // And durably: they are there after a restart.
    let t = t.reopen().await;
    assert_eq!(t.get("/v1/counters/home").await.1["count"], 7);
    assert_eq!(t.get("/v1/gauges/viewers").await.1["count"], 3);
}

#[tokio::test]
async fn a_rejected_counter_is_not_committed() {
    let t = TestMerger::new().await;
    t.sync(&with_a_bad_counter(1)).await;
    let (_, likes) = t.get("/v1/counters/likes").await;
    assert_eq!(
        (&likes["count"], &likes["updated_at"], &likes["replicas"]),
        (&json!(0), &Value::Null, &json!(0))
    );
    let t = t.reopen().await;
    assert_eq!(t.get("/v1/counters/likes").await.1["replicas"], 0);
}

#[tokio::test]
async fn a_rejected_counter_leaves_its_earlier_state_alone() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("likes", "g", 3, 0)])).await;
    let (_, body) = t.sync(&sync_body(1, "eu", &[("likes", "g", 50, 1)])).await;
    assert_eq!(body["counters"][0]["error"]["code"], "decrement_on_counter");
    assert_eq!(t.get("/v1/counters/likes").await.1["count"], 3);
}

#[tokio::test]
async fn rejected_counters_are_counted_by_code() {
    let t = TestMerger::new().await;
    t.sync(&with_a_bad_counter(1)).await;
    t.sync(&with_a_bad_counter(2)).await;
    let text = t.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"tally_counters_rejected_total{code="decrement_on_counter"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(&text, r#"tally_syncs_total{outcome="ok"}"#),
        2.0,
        "a sync with a rejected counter is still a successful sync"
    );
    assert_eq!(
        metric_value(&text, "tally_slots_received_total"),
        4.0,
        "rejected counters are not received slots"
    );
}

#[tokio::test]
async fn a_v2_sync_of_only_rejected_counters_is_answered_and_commits_no_slot() {
    let t = TestMerger::new().await;
    let (status, body) = t
        .sync(&sync_body(1, "eu", &[("a", "g", 1, 1), ("b", "g", 2, 2)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["counters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["error"]["code"] == "decrement_on_counter"),
        "{body}"
    );
    assert_eq!(t.metric("tally_slots_merged_total").await, 0.0);
    assert_eq!(t.get("/v1/counters").await.1["items"], json!([]));
}

#[tokio::test]
async fn a_v2_sync_is_still_refused_whole_for_a_rule_of_the_whole_request() {
    let t = TestMerger::new().await;
    let (status, body) = t
        .sync(&sync_body(
            1,
            "eu",
            &[("home", "g", 7, 0), ("home", "g", 8, 0)],
        ))
        .await;
    assert_error(
        &(status, body),
        StatusCode::UNPROCESSABLE_ENTITY,
        "duplicate_counter",
    );
    assert_eq!(t.get("/v1/counters/home").await.1["count"], 0);
}

#[tokio::test]
async fn a_v1_sync_is_accepted_and_answered_with_version_1() {
    let t = TestMerger::new().await;
    let (status, body) = t
        .sync(&sync_body_v1(
            1,
            "eu",
            &[("home", "g", 715, 0), ("viewers", "pn", 10, 3)],
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(t.get("/v1/counters/home").await.1["count"], 715);
    assert_eq!(t.get("/v1/gauges/viewers").await.1["count"], 7);
}

#[tokio::test]
async fn a_v1_answer_has_only_the_fields_of_version_1_plus_updated_at() {
    let t = TestMerger::new().await;
    let (_, body) = t
        .sync(&sync_body_v1(
            1,
            "eu",
            &[("home", "g", 715, 0), ("viewers", "pn", 10, 3)],
        ))
        .await;
    let top: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(top, ["counters", "version"]);
    for answer in body["counters"].as_array().unwrap() {
        let fields: Vec<&String> = answer.as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            ["global", "id", "kind", "recorded", "updated_at"],
            "{answer}"
        );
        assert_timestamp(&answer["updated_at"]);
    }
    assert_eq!(body["counters"][0]["global"], json!({"p": 715}));
    assert_eq!(body["counters"][1]["recorded"], json!({"p": 10, "n": 3}));
}

/// The answer types of version 1, as `tally-crdt` defined them at commit 60051d0 (what an
/// edge one version behind decodes with): unknown fields ignored except inside `recorded`.
mod v1 {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct SyncResponse {
        pub version: u32,
        pub counters: Vec<MergedCounter>,
    }

    #[derive(Debug, Deserialize)]
    pub struct MergedCounter {
        pub id: String,
        pub kind: String,
        pub global: GlobalTotals,
        pub recorded: SlotTotals,
    }

    #[derive(Debug, Deserialize)]
    pub struct GlobalTotals {
        pub p: u128,
        #[serde(default)]
        pub n: u128,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SlotTotals {
        pub p: u64,
        #[serde(default)]
        pub n: u64,
    }
}

#[tokio::test]
async fn a_v1_answer_decodes_with_the_version_1_types_in_request_order() {
    let t = TestMerger::new().await;
    let request = sync_body_v1(
        1,
        "eu",
        &[("viewers", "pn", 10, 3), ("home", "g", u64::MAX, 0)],
    );
    let response = tower::ServiceExt::oneshot(t.app.clone(), sync_request(request.to_string()))
        .await
        .unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let answer: v1::SyncResponse = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer.version, 1);
    // Version 1 matched answers to counters by position.
    let order: Vec<(&str, &str)> = answer
        .counters
        .iter()
        .map(|c| (c.id.as_str(), c.kind.as_str()))
        .collect();
    assert_eq!(order, [("viewers", "pn"), ("home", "g")]);
    assert_eq!(
        (answer.counters[0].recorded.p, answer.counters[0].recorded.n),
        (10, 3)
    );
    assert_eq!(answer.counters[0].global.n, 3);
    assert_eq!(answer.counters[1].global.p, u128::from(u64::MAX));
}

#[tokio::test]
async fn a_v1_sync_with_a_decrement_on_a_counter_is_refused_whole() {
    let t = TestMerger::new().await;
    let answer = t
        .sync(&sync_body_v1(
            1,
            "eu",
            &[("home", "g", 7, 0), ("likes", "g", 5, 2)],
        ))
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "decrement_on_counter",
    );
    assert_eq!(t.get("/v1/counters/home").await.1["count"], 0);
}

#[tokio::test]
async fn v1_and_v2_replicas_merge_into_one_count() {
    // A rolling deploy: some objects already speak version 2, others still version 1.
    let t = TestMerger::new().await;
    let (s1, _) = t
        .sync(&sync_body_v1(1, "eu", &[("home", "g", 700, 0)]))
        .await;
    let (s2, body) = t.sync(&sync_body(2, "us", &[("home", "g", 15, 0)])).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(body["counters"][0]["global"], json!({"p": 715}));
    // The same replica may move from version 1 to 2 (its object was redeployed).
    let (_, body) = t.sync(&sync_body(1, "eu", &[("home", "g", 710, 0)])).await;
    assert_eq!(body["counters"][0]["global"], json!({"p": 725}));
    assert_eq!(body["counters"][0]["recorded"], json!({"p": 710}));
}

#[tokio::test]
async fn versions_outside_1_to_6_are_unsupported() {
    let t = TestMerger::new().await;
    for version in [0, 7, 99] {
        let body =
            json!({"version": version, "replica": replica(1), "region": "eu", "counters": []});
        assert_error(
            &t.sync(&body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_version",
        );
    }
}
