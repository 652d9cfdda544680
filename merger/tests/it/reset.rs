//! Reset and delete (`POST /v1/{ns}/{id}/reset`, `DELETE /v1/{ns}/{id}`): a counter starts a
//! new epoch at zero, and no sync, retry or replay of anything counted before brings the old
//! count back, across restarts too. Only the admin token may do it.

use std::time::Duration;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;

fn admin_request(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    r.body(Body::empty()).unwrap()
}

async fn reset(t: &TestMerger, uri: &str) -> Value {
    let (status, body) = t.send(admin_request("POST", uri, Some(ADMIN))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn view(t: &TestMerger, path: &str) -> Value {
    let (status, body) = t.get(path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn count(t: &TestMerger, path: &str) -> (i64, u64) {
    let body = view(t, path).await;
    (
        body["count"].as_i64().expect("a count"),
        body["epoch"].as_u64().expect("an epoch"),
    )
}

#[tokio::test]
async fn a_reset_counts_from_zero_and_nothing_from_before_comes_back() {
    let t = admin_merger().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0), ("v", "pn", 4, 1)]))
        .await;
    t.sync(&sync_body(2, "us", &[("a", "g", 3, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (8, 0));

    let done = reset(&t, "/v1/counters/a/reset").await;
    assert_eq!(done["epoch"], 1);
    assert_eq!(done["count"], 0);
    assert_eq!(done["removed"], 8);
    assert_eq!(done["deleted"], false);
    assert_timestamp(&done["updated_at"]);
    let read = view(&t, "/v1/counters/a").await;
    assert_eq!(
        (read["count"].as_i64(), read["epoch"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(read["regions"]["eu"]["count"], 0);
    assert_eq!(read["updated_at"], done["updated_at"]);

    // Replays and retries of what was counted before change nothing, and the sync answer
    // tells the edge the new epoch.
    let (status, answer) = t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["counters"][0]["global"]["p"], 0);
    assert_eq!(answer["counters"][0]["epoch"], 1);
    t.sync(&sync_body(2, "us", &[("a", "g", 2, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (0, 1));
    // What a replica counts past what the merger had at the reset counts once.
    t.sync(&sync_body(1, "eu", &[("a", "g", 7, 0)])).await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 7, 0)])).await;
    t.sync(&sync_body(3, "ap", &[("a", "g", 1, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (3, 1));
    let (_, read) = t.read(&read_body(Some(1), &[("a", "g")])).await;
    assert_eq!(read["counters"][0]["global"]["p"], 3);
    assert_eq!(read["counters"][0]["recorded"]["p"], 7);
    assert_eq!(read["counters"][0]["epoch"], 1);

    // A conditional reset for an epoch that has ended (a retry of the reset above) is
    // refused, and changes nothing; for the current epoch it is done.
    let before = t.everything().await;
    let answer = t
        .send(admin_request(
            "POST",
            "/v1/counters/a/reset?epoch=0",
            Some(ADMIN),
        ))
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "epoch_changed");
    assert_eq!(t.everything().await, before);
    let done = reset(&t, "/v1/counters/a/reset?epoch=1").await;
    assert_eq!(
        (done["epoch"].as_u64(), done["removed"].as_i64()),
        (Some(2), Some(3))
    );

    // A gauge: both halves are cut.
    let done = reset(&t, "/v1/gauges/v/reset").await;
    assert_eq!(done["removed"], 3);
    t.sync(&sync_body(1, "eu", &[("v", "pn", 4, 3)])).await;
    assert_eq!(count(&t, "/v1/gauges/v").await, (-2, 1));

    // The cut is durable: after a restart, the same replays still change nothing.
    let t = t.reopen().await;
    assert_eq!(count(&t, "/v1/counters/a").await, (0, 2));
    assert_eq!(count(&t, "/v1/gauges/v").await, (-2, 1));
    t.sync(&sync_body(1, "eu", &[("a", "g", 7, 0), ("v", "pn", 4, 3)]))
        .await;
    t.sync(&sync_body(2, "us", &[("a", "g", 3, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (0, 2));
    t.sync(&sync_body(2, "us", &[("a", "g", 4, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (1, 2));
}

#[tokio::test]
async fn a_retirement_after_a_reset_keeps_the_count() {
    let t = admin_merger().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    t.sync(&sync_body(2, "eu", &[("a", "g", 2, 0)])).await;
    reset(&t, "/v1/counters/a/reset").await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 9, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (4, 1));
    let (status, body) = t
        .send(retire_request(
            serde_json::json!({"version": 2, "replica": replica(1)}).to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(count(&t, "/v1/counters/a").await, (4, 1));
    let t = t.reopen().await;
    assert_eq!(count(&t, "/v1/counters/a").await, (4, 1));
}

async fn points(t: &TestMerger) -> Vec<Value> {
    let (_, history) = t.get("/v1/counters/gone/history").await;
    history["points"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_delete_hides_the_counter_and_its_history_until_it_counts_again() {
    let t = admin_merger().await;
    t.sync(&sync_body(
        1,
        "eu",
        &[("gone", "g", 5, 0), ("kept", "g", 1, 0)],
    ))
    .await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while points(&t).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a history point is written");

    let (status, done) = t
        .send(admin_request("DELETE", "/v1/counters/gone", Some(ADMIN)))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        (done["deleted"].as_bool(), done["removed"].as_i64()),
        (Some(true), Some(5))
    );
    let listed = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed(&view(&t, "/v1/counters").await), ["kept"]);
    // A page of one that scanned the deleted counter still leads to the next one.
    let page = view(&t, "/v1/counters?limit=1").await;
    assert_eq!(listed(&page), Vec::<String>::new());
    assert_eq!(page["next_cursor"], "gone");
    assert_eq!(
        listed(&view(&t, "/v1/counters?limit=1&cursor=gone").await),
        ["kept"]
    );
    assert_eq!(count(&t, "/v1/counters/gone").await, (0, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(points(&t).await.is_empty(), "the history went with it");

    // Old syncs keep it deleted; a new hit brings it back, from zero.
    t.sync(&sync_body(1, "eu", &[("gone", "g", 5, 0)])).await;
    assert_eq!(listed(&view(&t, "/v1/counters").await), ["kept"]);
    t.sync(&sync_body(1, "eu", &[("gone", "g", 6, 0)])).await;
    let page = view(&t, "/v1/counters").await;
    assert_eq!(listed(&page), ["gone", "kept"]);
    assert_eq!(page["items"][0]["count"], 1);
    assert_eq!(page["items"][0]["epoch"], 1);
    tokio::time::timeout(Duration::from_secs(10), async {
        while points(&t).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a new history point is written");
    for point in points(&t).await {
        assert_eq!(
            (point["count"].as_i64(), point["epoch"].as_u64()),
            (Some(1), Some(1))
        );
    }
}

#[tokio::test]
async fn only_the_admin_token_resets_and_bad_requests_change_nothing() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    let before = t.everything().await;
    for (method, uri) in [
        ("POST", "/v1/counters/a/reset"),
        ("DELETE", "/v1/counters/a"),
    ] {
        let answer = t.send(admin_request(method, uri, Some(ADMIN))).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "admin_disabled");
    }
    assert_eq!(t.everything().await, before);

    let t = TestMerger::with(|c| {
        c.admin_token = Some(ADMIN.into());
        c.read_token = Some("read-token-for-tests-0123".into());
    })
    .await;
    t.sync(&sync_body(1, "eu", &[("a", "g", 5, 0)])).await;
    let before = t.get("/v1/counters/a").await;
    for (request, status, code) in [
        (
            admin_request("POST", "/v1/counters/a/reset", None),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            admin_request("DELETE", "/v1/counters/a", Some("not-the-admin-token")),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            admin_request("POST", "/v1/counters/a/reset", Some(TOKEN)),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            admin_request(
                "POST",
                "/v1/counters/a/reset",
                Some("read-token-for-tests-0123"),
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            admin_request("POST", "/v1/counters/a/reset?epoch=x", Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            admin_request("POST", "/v1/counters/a/reset?when=now", Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            admin_request("POST", "/v1/counters/a/reset?epoch=7", Some(ADMIN)),
            StatusCode::CONFLICT,
            "epoch_changed",
        ),
        (
            admin_request("POST", "/v1/counters/bad%20id/reset", Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "id_bad_char",
        ),
        (
            admin_request("POST", "/v1/widgets/a/reset", Some(ADMIN)),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            admin_request("GET", "/v1/counters/a/reset", Some(ADMIN)),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ] {
        let answer = t.send(request).await;
        assert_error(&answer, status, code);
        assert_eq!(
            t.get("/v1/counters/a").await,
            before,
            "a refused request changes nothing"
        );
    }
    assert_eq!(before.1["count"], 5);

    // A counter nobody has hit: nothing to reset, no epoch.
    let done = reset(&t, "/v1/counters/never-hit/reset").await;
    assert_eq!(
        (done["epoch"].as_u64(), done["removed"].as_i64()),
        (Some(0), Some(0))
    );
    let answer = t
        .send(admin_request(
            "POST",
            "/v1/counters/never-hit/reset?epoch=1",
            Some(ADMIN),
        ))
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "epoch_changed");
}

/// A sync of `g:a` in version 6 from object `object` (generation 0, `region`): its slot `p`,
/// and the cut it holds, if any.
fn v6_sync(object: u128, region: &str, p: u64, cut: Option<&Value>) -> Value {
    let mut counter = serde_json::json!({"kind": "g", "id": "a", "p": p});
    if let Some(cut) = cut {
        counter["cut"] = cut.clone();
    }
    serde_json::json!({
        "version": 6,
        "replica": incarnation(object, 0).to_string(),
        "region": region,
        "counters": [counter],
    })
}

/// Syncs; answers the counter's answer.
async fn synced(t: &TestMerger, body: &Value) -> Value {
    let (status, answer) = t.sync(body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["counters"][0].clone()
}

#[tokio::test]
async fn a_merger_restored_from_before_a_delete_takes_it_up_from_the_objects_cuts() {
    let t = admin_merger().await;
    // Object 1 (eu) counts 7 and object 2 (us) 4; the backup is taken.
    synced(&t, &v6_sync(1, "eu", 7, None)).await;
    let answer = synced(&t, &v6_sync(2, "us", 4, None)).await;
    assert!(answer.get("cut").is_none(), "never reset: {answer}");
    t.merger.close().await;
    let backup = tempfile::tempdir().expect("a temp dir");
    for entry in std::fs::read_dir(t.dir.path()).expect("the database dir") {
        let path = entry.expect("an entry").path();
        std::fs::copy(&path, backup.path().join(path.file_name().unwrap())).expect("copied");
    }
    let t = TestMerger::open_in(t.dir, |c| c.admin_token = Some(ADMIN.into())).await;
    // Object 1 counts 3 more, then the counter is deleted: each object is told its share
    // of the cut at its next sync, and sends it back from then on.
    synced(&t, &v6_sync(1, "eu", 10, None)).await;
    let (status, body) = t
        .send(admin_request("DELETE", "/v1/counters/a", Some(ADMIN)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let one = synced(&t, &v6_sync(1, "eu", 10, None)).await;
    let cut_1 = one["cut"].clone();
    assert_eq!(
        (&cut_1["epoch"], &cut_1["deleted"], &cut_1["totals"]["p"]),
        (&Value::from(1), &Value::Bool(true), &Value::from(10)),
        "{one}"
    );
    let cut_2 = synced(&t, &v6_sync(2, "us", 4, None)).await["cut"].clone();
    assert_eq!(cut_2["totals"]["p"], 4, "{cut_2}");
    // Counted again: object 1 3 more, object 3 (new) 5, told it had counted nothing.
    let answer = synced(&t, &v6_sync(1, "eu", 13, Some(&cut_1))).await;
    assert!(answer.get("cut").is_none(), "it holds its share: {answer}");
    let three = synced(&t, &v6_sync(3, "eu", 5, None)).await;
    let cut_3 = three["cut"].clone();
    assert!(cut_3.get("totals").is_none(), "a share of zero: {three}");
    assert_eq!(count(&t, "/v1/counters/a").await, (8, 1));
    // The merger is restored from the backup: the old epoch, and its old count.
    t.merger.close().await;
    let t = TestMerger::open_in(backup, |_| {}).await;
    assert_eq!(count(&t, "/v1/counters/a").await, (11, 0));
    // The objects re-send their slots with their cuts: the delete comes back, and the count
    // is what was counted since, exactly.
    let answer = synced(&t, &v6_sync(1, "eu", 13, Some(&cut_1))).await;
    assert_eq!(
        (&answer["global"]["p"], &answer["epoch"]),
        (&Value::from(3), &Value::from(1))
    );
    assert!(answer.get("cut").is_none(), "{answer}");
    synced(&t, &v6_sync(3, "eu", 5, Some(&cut_3))).await;
    let answer = synced(&t, &v6_sync(2, "us", 4, Some(&cut_2))).await;
    assert_eq!(answer["global"]["p"], 8, "{answer}");
    assert_eq!(count(&t, "/v1/counters/a").await, (8, 1));
    // An object that had not heard of the delete is told its share as the merger took it up.
    let answer = synced(&t, &v6_sync(2, "us", 4, None)).await;
    assert_eq!(answer["cut"], cut_2, "{answer}");
    // A version-5 sync gets no cut; one carrying a cut is refused whole.
    let mut v5 = v6_sync(1, "eu", 13, None);
    v5["version"] = Value::from(5);
    assert!(synced(&t, &v5).await.get("cut").is_none());
    v5["counters"][0]["cut"] = cut_1.clone();
    assert_error(
        &t.sync(&v5).await,
        StatusCode::BAD_REQUEST,
        "malformed_body",
    );
    // The same after a restart, from the store.
    let t = t.reopen().await;
    assert_eq!(count(&t, "/v1/counters/a").await, (8, 1));
}
