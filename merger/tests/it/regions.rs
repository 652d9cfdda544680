//! `GET /v1/regions`: each edge region's last sync and live replicas, as this merger process
//! committed them (the dashboard's freshness view).

use std::time::Duration;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tally_crdt::Timestamp;

const READ_TOKEN: &str = "read-token-0123456789";

async fn regions(t: &TestMerger) -> Value {
    let (status, body) = t.get("/v1/regions").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The item of `region`, panicking with the whole answer when it is missing.
#[track_caller]
fn item<'a>(answer: &'a Value, region: &str) -> &'a Value {
    answer["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["region"] == region))
        .unwrap_or_else(|| panic!("no region {region:?} in {answer}"))
}

fn time(value: &Value) -> Timestamp {
    assert_timestamp(value);
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn each_region_answers_its_last_sync_and_live_replicas_in_name_order() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    t.sync(&sync_body(2, "eu", &[("a", "g", 3, 0), ("v", "pn", 1, 2)]))
        .await;
    t.sync(&sync_body(3, "us", &[("b", "g", 1, 0)])).await;
    let answer = regions(&t).await;
    let names: Vec<&Value> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["region"])
        .collect();
    assert_eq!(names, [&json!("eu"), &json!("us")], "{answer}");
    assert_eq!(item(&answer, "eu")["replicas"], 2);
    assert_eq!(item(&answer, "us")["replicas"], 1);
    let now = time(&answer["now"]);
    let eu = time(&item(&answer, "eu")["last_sync"]);
    let us = time(&item(&answer, "us")["last_sync"]);
    assert!(eu <= us && us <= now, "{answer}");
    // The region's last sync is the latest of its replicas', as a counter's view says.
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!(
        view["regions"]["eu"]["last_sync"],
        item(&answer, "eu")["last_sync"]
    );
}

#[tokio::test]
async fn a_sync_that_raises_nothing_leaves_last_sync_and_a_higher_total_moves_it() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    let first = item(&regions(&t).await, "eu")["last_sync"].clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    assert_eq!(item(&regions(&t).await, "eu")["last_sync"], first);
    t.sync(&sync_body(1, "eu", &[("a", "g", 6, 0)])).await;
    let later = item(&regions(&t).await, "eu")["last_sync"].clone();
    assert!(time(&later) > time(&first), "{first} then {later}");
}

#[tokio::test]
async fn a_retired_replica_leaves_its_regions_count_and_the_last_sync_stays() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    t.sync(&sync_body(2, "eu", &[("a", "g", 7, 0)])).await;
    let before = regions(&t).await;
    let retire = retire_request(json!({"version": 2, "replica": replica(1)}).to_string());
    let (status, body) = t.send(retire).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = regions(&t).await;
    assert_eq!(item(&after, "eu")["replicas"], 1, "{after}");
    assert_eq!(
        item(&after, "eu")["last_sync"],
        item(&before, "eu")["last_sync"]
    );
}

#[tokio::test]
async fn regions_live_in_memory_a_new_process_starts_with_none() {
    let t = TestMerger::new().await;
    let answer = regions(&t).await;
    assert_eq!(answer["items"], json!([]), "{answer}");
    assert_timestamp(&answer["now"]);
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    assert_eq!(regions(&t).await["items"].as_array().unwrap().len(), 1);
    let t = t.reopen().await;
    assert_eq!(regions(&t).await["items"], json!([]));
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!(view["count"], 5, "the counts themselves are stored");
}

#[tokio::test]
async fn regions_need_the_read_token_when_one_is_set() {
    let t = TestMerger::with(|c| c.read_token = Some(READ_TOKEN.into())).await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    let answer = t.get("/v1/regions").await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "missing_token");
    let with = |token: &str| {
        Request::get("/v1/regions")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let answer = t.send(with(TOKEN)).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, body) = t.send(with(READ_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(item(&body, "eu")["replicas"], 1);
}

/// Issue 28: each sync's `Tally-Unsynced-Age` (its object's oldest unacknowledged hit, in ms)
/// becomes, when the merger cannot commit that sync, the object's unsynced age, and 0 once one
/// is committed; per region the largest recent one is `tally_edge_unsynced_age_seconds`, so a
/// stuck region (syncs that arrive and fail) shows apart from a healthy or quiet one. A value
/// that is not a whole number of milliseconds is refused with 400 `invalid_header`, and
/// nothing of that sync is committed.
#[tokio::test]
async fn each_regions_oldest_uncommitted_hit_is_exported_and_a_bad_age_is_refused() {
    let t = TestMerger::new().await;
    let with_age = |body: &Value, age: &str| {
        let mut request = sync_request(body.to_string());
        request
            .headers_mut()
            .insert("Tally-Unsynced-Age", age.parse().unwrap());
        request
    };
    let eu = r#"tally_edge_unsynced_age_seconds{region="eu"}"#;
    let us = r#"tally_edge_unsynced_age_seconds{region="us"}"#;
    let (status, body) = t
        .send(with_age(&sync_body(1, "eu", &[("a", "g", 5, 0)]), "2100"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A region whose syncs say nothing of it (an edge of the release before) is not listed.
    t.sync(&sync_body(4, "ap", &[("c", "g", 1, 0)])).await;
    let text = t.metrics().await;
    assert!(text.contains(&format!("{eu} 0")), "committed: 0\n{text}");
    assert!(!text.contains(r#"{region="ap"}"#), "{text}");
    // The store refuses what two objects send: their hits stay at the edge.
    refuse_poison(&t, "counters", true).await;
    for (replica, age) in [(2, "180500"), (3, "90000")] {
        let (status, body) = t
            .send(with_age(
                &sync_body(replica, "eu", &[("poison", "g", 1, 0)]),
                age,
            ))
            .await;
        assert!(status.is_server_error(), "{status} {body}");
    }
    t.send(with_age(
        &sync_body(5, "us", &[("poison", "g", 1, 0)]),
        "300",
    ))
    .await;
    let text = t.metrics().await;
    assert_eq!(
        metric_value(&text, eu),
        180.5,
        "the largest of the region's objects"
    );
    assert_eq!(metric_value(&text, us), 0.3);
    // One object's sync goes through: its age is 0, the other's stays.
    refuse_poison(&t, "counters", false).await;
    let (status, body) = t
        .send(with_age(
            &sync_body(2, "eu", &[("poison", "g", 1, 0)]),
            "181000",
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(t.metric(eu).await, 90.0);
    for bad in [
        "-1",
        "1.5",
        "soon",
        "",
        "315360000001",
        "99999999999999999999999",
    ] {
        let answer = t
            .send(with_age(&sync_body(6, "eu", &[("bad", "g", 7, 0)]), bad))
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_header");
    }
    let (status, body) = t.get("/v1/counters/bad").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 0, "nothing of a refused sync is committed");
}
