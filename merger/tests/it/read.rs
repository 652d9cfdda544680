//! `POST /v1/read`, the edge's batch read: what it answers, that it changes nothing (no
//! commit, no replica registered, no counter created), and how it refuses bad requests.

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

/// A merger holding `home` (g) from replicas 1 (eu, 700) and 2 (us, 15), and `viewers` (pn)
/// from replica 1 (p 10, n 3).
async fn seeded() -> TestMerger {
    let t = TestMerger::new().await;
    let (status, body) = t
        .sync(&sync_body(
            1,
            "eu",
            &[("home", "g", 700, 0), ("viewers", "pn", 10, 3)],
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t.sync(&sync_body(2, "us", &[("home", "g", 15, 0)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    t
}

#[tokio::test]
async fn a_read_answers_global_totals_and_the_callers_recorded_slot() {
    let t = seeded().await;
    let (status, body) = t
        .read(&read_body(Some(1), &[("home", "g"), ("viewers", "pn")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    let home = &body["counters"][0];
    assert_eq!(
        (
            &home["id"],
            &home["kind"],
            &home["global"],
            &home["recorded"]
        ),
        (
            &json!("home"),
            &json!("g"),
            &json!({"p": 715}),
            &json!({"p": 700})
        )
    );
    assert_timestamp(&home["updated_at"]);
    let viewers = &body["counters"][1];
    assert_eq!(viewers["global"], json!({"p": 10, "n": 3}));
    assert_eq!(viewers["recorded"], json!({"p": 10, "n": 3}));
}

#[tokio::test]
async fn a_read_answers_the_same_updated_at_as_the_sync_did() {
    let t = TestMerger::new().await;
    let (_, synced) = t.sync(&sync_body(1, "eu", &[("home", "g", 7, 0)])).await;
    let (_, read) = t.read(&read_body(None, &[("home", "g")])).await;
    assert_eq!(
        read["counters"][0]["updated_at"],
        synced["counters"][0]["updated_at"]
    );
}

#[tokio::test]
async fn a_read_without_a_replica_answers_zero_recorded_slots() {
    let t = seeded().await;
    let (status, body) = t.read(&read_body(None, &[("home", "g")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["counters"][0]["global"], json!({"p": 715}));
    assert_eq!(body["counters"][0]["recorded"], json!({"p": 0}));
}

#[tokio::test]
async fn a_read_by_a_replica_that_never_synced_answers_zero_recorded_slots() {
    let t = seeded().await;
    let (_, body) = t.read(&read_body(Some(99), &[("home", "g")])).await;
    assert_eq!(body["counters"][0]["global"], json!({"p": 715}));
    assert_eq!(body["counters"][0]["recorded"], json!({"p": 0}));
}

#[tokio::test]
async fn a_read_of_unknown_counters_answers_zero_totals_and_no_updated_at() {
    let t = seeded().await;
    let (status, body) = t
        .read(&read_body(
            Some(1),
            &[("never-hit", "g"), ("never-hit", "pn"), ("home", "pn")],
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"version": 2, "counters": [
            {"id": "never-hit", "kind": "g", "global": {"p": 0}, "recorded": {"p": 0}},
            {"id": "never-hit", "kind": "pn", "global": {"p": 0}, "recorded": {"p": 0}},
            {"id": "home", "kind": "pn", "global": {"p": 0}, "recorded": {"p": 0}},
        ]})
    );
}

#[tokio::test]
async fn a_read_answers_in_request_order_each_naming_its_counter() {
    let t = seeded().await;
    let asked = [
        ("viewers", "pn"),
        ("zzz", "g"),
        ("home", "g"),
        ("aaa", "pn"),
        ("home", "pn"),
    ];
    let (_, body) = t.read(&read_body(Some(2), &asked)).await;
    let answered: Vec<(&str, &str)> = body["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(answered, asked);
    assert_eq!(body["counters"][2]["recorded"], json!({"p": 15}));
}

#[tokio::test]
async fn a_read_of_no_counters_answers_none() {
    let t = seeded().await;
    let answer = t.read(&read_body(Some(1), &[])).await;
    assert_eq!(
        answer,
        (StatusCode::OK, json!({"version": 2, "counters": []}))
    );
}

#[tokio::test]
async fn a_read_of_a_thousand_counters_is_answered_whole() {
    let t = seeded().await;
    let ids: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let asked: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "g")).collect();
    let (status, body) = t.read(&read_body(Some(1), &asked)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["counters"].as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn a_read_commits_no_transaction() {
    let t = seeded().await;
    let commits = r#"tally_commits_total{purpose="sync"}"#;
    let before = t.metric(commits).await;
    assert_eq!(before, 2.0, "the two seeding syncs");
    for replica in [Some(1), Some(42), None] {
        t.read(&read_body(
            replica,
            &[("home", "g"), ("never-hit", "g"), ("never-hit", "pn")],
        ))
        .await;
    }
    assert_eq!(t.metric(commits).await, before);
}

#[tokio::test]
async fn a_read_registers_no_replica() {
    let t = seeded().await;
    assert_eq!(t.metric("tally_replicas").await, 2.0);
    t.read(&read_body(Some(42), &[("home", "g"), ("fresh", "g")]))
        .await;
    assert_eq!(t.metric("tally_replicas").await, 2.0);
    assert_eq!(t.get("/v1/counters/home").await.1["replicas"], 2);
}

#[tokio::test]
async fn a_read_changes_no_view_and_creates_no_counter() {
    let t = seeded().await;
    let before = t.everything().await;
    t.read(&read_body(
        Some(42),
        &[("home", "g"), ("fresh", "g"), ("fresh", "pn")],
    ))
    .await;
    assert_eq!(t.everything().await, before);
    assert_eq!(
        t.get("/v1/counters?prefix=fresh").await.1["items"],
        json!([])
    );
}

#[tokio::test]
async fn a_replica_that_read_first_syncs_as_if_it_had_not() {
    // Replica 42 reads as from "eu", then syncs from "us": its region is that of its first
    // sync, and its sync is answered as a first sync.
    let t = seeded().await;
    t.read(&read_body(Some(42), &[("home", "g")])).await;
    let (status, body) = t.sync(&sync_body(42, "us", &[("home", "g", 5, 0)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["counters"][0]["global"], json!({"p": 720}));
    assert_eq!(body["counters"][0]["recorded"], json!({"p": 5}));
    let (_, view) = t.get("/v1/counters/home").await;
    assert_eq!(view["regions"]["us"]["count"], 20);
    assert_eq!(view["replicas"], 3);
    assert_eq!(t.metric("tally_replicas").await, 3.0);
}

#[tokio::test]
async fn reads_are_counted_in_their_metrics() {
    let t = seeded().await;
    t.read(&read_body(Some(1), &[("home", "g"), ("never-hit", "g")]))
        .await;
    t.read(&read_body(None, &[("viewers", "pn")])).await;
    t.read(&json!({"version": 1, "counters": []})).await;
    let text = t.metrics().await;
    assert_eq!(
        metric_value(&text, r#"tally_reads_total{outcome="ok"}"#),
        2.0
    );
    assert_eq!(
        metric_value(&text, r#"tally_reads_total{outcome="unsupported_version"}"#),
        1.0
    );
    assert_eq!(metric_value(&text, "tally_counters_read_total"), 3.0);
}

fn post_read(headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post("/v1/read");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.into()).unwrap()
}

/// Each bad request: the answer, and the stored state and commit count before and after,
/// identical.
async fn refused(t: &TestMerger, request: Request<Body>, status: StatusCode, code: &str) {
    let before = (t.everything().await, t.metric("tally_replicas").await);
    let answer = t.send(request).await;
    assert_error(&answer, status, code);
    let after = (t.everything().await, t.metric("tally_replicas").await);
    assert_eq!(after, before, "a refused read changes nothing");
}

#[tokio::test]
async fn a_read_requires_the_sync_token() {
    let t = seeded().await;
    let body = read_body(Some(1), &[("home", "g")]).to_string();
    let json_ct = ("content-type", "application/json");
    refused(
        &t,
        post_read(&[json_ct], body.clone()),
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
    refused(
        &t,
        post_read(&[json_ct, ("authorization", "Bearer nope")], body.clone()),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let response = tower::ServiceExt::oneshot(t.app.clone(), post_read(&[json_ct], body))
        .await
        .unwrap();
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(
        t.metric(r#"tally_reads_total{outcome="missing_token"}"#)
            .await,
        2.0,
        "counted as read outcomes"
    );
}

#[tokio::test]
async fn a_read_requires_a_json_content_type() {
    let t = seeded().await;
    let body = read_body(Some(1), &[("home", "g")]).to_string();
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("authorization", bearer.as_str());
    refused(
        &t,
        post_read(&[auth], body.clone()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    refused(
        &t,
        post_read(&[auth, ("content-type", "text/plain")], body),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn bad_read_bodies_get_their_json_error() {
    let t = TestMerger::with(|c| c.max_body_bytes = 64 * 1024).await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 5, 0)])).await;
    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let home = json!({"id": "home", "kind": "g"});
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("c{i}"), "kind": "g"}))
        .collect();
    let table: Vec<(String, StatusCode, &str)> = vec![
        (
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        ("".into(), StatusCode::BAD_REQUEST, "malformed_body"),
        ("[]".into(), StatusCode::BAD_REQUEST, "malformed_body"),
        (
            json!({"version": 2}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "counters": {}}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "counters": [home], "extra": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "counters": [{"id": "home"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "counters": [{"id": "home", "kind": "gauge"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "counters": [{"id": "home", "kind": "g", "p": 1}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 2, "replica": "abc", "counters": [home]}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": "2", "counters": [home]}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            json!({"version": 1, "counters": [home]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_version",
        ),
        (
            json!({"version": 7, "counters": [home]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_version",
        ),
        (
            json!({"version": 7, "shape": "new"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_version",
        ),
        (
            json!({"version": 2, "counters": too_many}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_counters",
        ),
        (
            json!({"version": 2, "counters": [home, {"kind": "g", "id": "home"}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate_counter",
        ),
        (
            json!({"version": 2, "replica": replica(0), "counters": [home]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nil_replica",
        ),
    ];
    for (body, status, code) in table {
        refused(&t, post_read(&headers, body), status, code).await;
    }
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    refused(
        &t,
        post_read(&headers, huge),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;
}

#[tokio::test]
async fn a_read_with_an_invalid_id_is_refused_and_names_the_rule() {
    let t = seeded().await;
    let (status, body) = t
        .read(&json!({"version": 2, "counters": [{"id": "a b", "kind": "g"}]}))
        .await;
    assert!(status.is_client_error(), "{status}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("disallowed character"), "{body}");
}

#[tokio::test]
async fn the_read_route_takes_only_post() {
    let t = seeded().await;
    for method in ["GET", "PUT", "DELETE"] {
        let request = Request::builder()
            .method(method)
            .uri("/v1/read")
            .body(Body::empty())
            .unwrap();
        assert_error(
            &t.send(request).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
}
