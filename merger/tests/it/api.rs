//! The HTTP API, in-process: every endpoint, and the error table with stored state checked
//! unchanged after each refusal.

use std::time::Duration;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

#[tokio::test]
async fn a_sync_is_answered_with_global_totals_and_the_recorded_slot() {
    let t = TestMerger::new().await;
    let (status, body) = t
        .sync(&sync_body(
            1,
            "eu",
            &[("home", "g", 715, 0), ("viewers", "pn", 10, 3)],
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut body = body;
    for answer in body["counters"].as_array_mut().unwrap() {
        let updated_at = answer.as_object_mut().unwrap().remove("updated_at");
        assert_timestamp(&updated_at.unwrap_or_default());
    }
    assert_eq!(
        body,
        json!({"version": 2, "counters": [
            {"id": "home", "kind": "g", "global": {"p": 715}, "recorded": {"p": 715}},
            {"id": "viewers", "kind": "pn", "global": {"p": 10, "n": 3}, "recorded": {"p": 10, "n": 3}},
        ]})
    );
    let (_, body) = t.sync(&sync_body(2, "us", &[("home", "g", 5, 0)])).await;
    assert_eq!(body["counters"][0]["global"], json!({"p": 720}));
    assert_eq!(body["counters"][0]["recorded"], json!({"p": 5}));
}

#[tokio::test]
async fn a_sync_answers_a_counter_still_at_zero_with_no_updated_at() {
    let t = TestMerger::new().await;
    let (status, body) = t.sync(&sync_body(1, "eu", &[("zero", "g", 0, 0)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["counters"][0],
        json!({"id": "zero", "kind": "g", "global": {"p": 0}, "recorded": {"p": 0}})
    );
}

#[tokio::test]
async fn reading_a_counter_gives_count_regions_and_replicas() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 700, 0)])).await;
    t.sync(&sync_body(2, "eu", &[("home", "g", 10, 0)])).await;
    t.sync(&sync_body(3, "us", &[("home", "g", 5, 0)])).await;
    let (status, body) = t.get("/v1/counters/home").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "home");
    assert_eq!(body["count"], 715);
    assert_eq!(body["replicas"], 3);
    assert_eq!(body["regions"]["eu"]["count"], 710);
    assert_eq!(body["regions"]["us"]["count"], 5);
    assert_timestamp(&body["updated_at"]);
    assert_timestamp(&body["regions"]["eu"]["last_sync"]);
}

#[tokio::test]
async fn reading_a_counter_nobody_has_hit_answers_zero_and_no_time() {
    let t = TestMerger::new().await;
    for (ns, id) in [("counters", "never-hit"), ("gauges", "never-hit")] {
        let (status, body) = t.get(&format!("/v1/{ns}/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"id": id, "count": 0, "epoch": 0, "updated_at": null, "regions": {}, "replicas": 0})
        );
    }
}

#[tokio::test]
async fn reading_a_counter_nobody_has_hit_creates_nothing() {
    let t = TestMerger::new().await;
    t.get("/v1/counters/never-hit").await;
    t.get("/v1/counters/never-hit/history").await;
    assert_eq!(
        t.get("/v1/counters").await.1,
        json!({"items": [], "next_cursor": null})
    );
    assert_eq!(
        t.metric(r#"tally_commits_total{purpose="sync"}"#).await,
        0.0
    );
}

#[tokio::test]
async fn the_history_of_a_counter_nobody_has_hit_is_empty() {
    let t = TestMerger::new().await;
    let (status, body) = t.get("/v1/gauges/never-hit/history").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"id": "never-hit", "points": [], "next_from": null})
    );
}

#[tokio::test]
async fn counters_and_gauges_are_separate_namespaces_and_gauges_go_negative() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("x", "g", 4, 0), ("x", "pn", 1, 6)]))
        .await;
    assert_eq!(t.get("/v1/counters/x").await.1["count"], 4);
    assert_eq!(t.get("/v1/gauges/x").await.1["count"], -5);
    t.sync(&sync_body(1, "eu", &[("only-gauge", "pn", 1, 0)]))
        .await;
    let (status, as_counter) = t.get("/v1/counters/only-gauge").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(as_counter["count"], 0);
    assert_eq!(as_counter["updated_at"], Value::Null);
}

#[tokio::test]
async fn counts_beyond_2_pow_53_are_exact_strings() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(1, "eu", &[("big", "g", u64::MAX, 0)]))
        .await;
    t.sync(&sync_body(2, "eu", &[("big", "g", u64::MAX, 0)]))
        .await;
    let (_, body) = t.get("/v1/counters/big").await;
    assert_eq!(body["count"], "36893488147419103230");
    t.sync(&sync_body(1, "eu", &[("small", "g", (1 << 53) - 1, 0)]))
        .await;
    assert_eq!(
        t.get("/v1/counters/small").await.1["count"],
        9_007_199_254_740_991_u64
    );
}

#[tokio::test]
async fn listing_pages_through_a_prefix_with_a_cursor() {
    let t = TestMerger::new().await;
    let ids: Vec<String> = (0..25).map(|i| format!("page:{i:02}")).collect();
    let mut counters: Vec<(&str, &str, u64, u64)> =
        ids.iter().map(|id| (id.as_str(), "g", 1, 0)).collect();
    counters.push(("other", "g", 1, 0));
    t.sync(&sync_body(1, "eu", &counters)).await;

    let mut seen = Vec::new();
    let mut uri = "/v1/counters?prefix=page:&limit=10".to_owned();
    loop {
        let (status, page) = t.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["count"], 1);
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/counters?prefix=page:&limit=10&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (_, all) = t.get("/v1/counters").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 26);
    assert_eq!(
        t.get("/v1/gauges").await.1,
        json!({"items": [], "next_cursor": null})
    );
}

#[tokio::test]
async fn history_holds_the_totals_of_each_snapshot() {
    let t = TestMerger::with(|c| c.snapshot_interval = Duration::from_millis(50)).await;
    let mut counts = Vec::new();
    for total in [3, 8, 20] {
        t.sync(&sync_body(1, "eu", &[("h", "g", total, 0)])).await;
        counts.push(total);
        // Wait for a snapshot that holds this total.
        tally_e2e::wait_until(
            Duration::from_secs(4),
            "a snapshot holds the total",
            || async {
                let (_, h) = t.get("/v1/counters/h/history").await;
                h["points"]
                    .as_array()
                    .unwrap()
                    .last()
                    .is_some_and(|p| p["count"] == total)
            },
        )
        .await;
    }
    let (status, h) = t.get("/v1/counters/h/history").await;
    assert_eq!(status, StatusCode::OK, "{h}");
    let got: Vec<u64> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .collect();
    assert_eq!(got, counts, "one snapshot per change, none while unchanged");

    for point in h["points"].as_array().unwrap() {
        assert_timestamp(&point["at"]);
    }

    // A range and a limit; `next_from` is exactly the time of the next point.
    let first_at = h["points"][0]["at"].as_str().unwrap().to_owned();
    let (_, page) = t
        .get(&format!("/v1/counters/h/history?from={first_at}&limit=1"))
        .await;
    assert_eq!(page["points"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_from"], h["points"][1]["at"]);
    let (_, rest) = t
        .get(&format!(
            "/v1/counters/h/history?from={}",
            page["next_from"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest["points"][0], h["points"][1]);
    let (_, none) = t
        .get("/v1/counters/h/history?to=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(none["points"], json!([]));
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let t = TestMerger::new().await;
    assert_eq!(
        t.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        t.get("/readyz").await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    t.sync(&sync_body(1, "eu", &[("m", "g", 1, 0), ("m", "pn", 0, 1)]))
        .await;
    t.sync(&json!({"version": 9})).await;
    let text = t.metrics().await;
    for expected in [
        r#"tally_syncs_total{outcome="ok"} 1"#,
        r#"tally_syncs_total{outcome="unsupported_version"} 1"#,
        r#"tally_errors_total{code="unsupported_version"} 1"#,
        "tally_slots_received_total 2",
        "tally_slots_merged_total 2",
        "tally_commit_batch_syncs_count 1",
        "tally_commit_seconds_count 1",
        r#"tally_commits_total{purpose="sync"} 1"#,
        r#"tally_commits_total{purpose="snapshot"} 0"#,
        r#"tally_reads_total{outcome="ok"} 0"#,
        "tally_counters_read_total 0",
        r#"tally_counters{kind="g"} 1"#,
        r#"tally_counters{kind="pn"} 1"#,
        "tally_replicas 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[tokio::test]
async fn the_dashboard_page_reads_the_json_api() {
    let t = TestMerger::new().await;
    let response = tower::ServiceExt::oneshot(
        t.app.clone(),
        Request::get("/").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let html = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let html = String::from_utf8(html.to_vec()).unwrap();
    assert!(
        html.contains("/v1/${namespace}?limit=100"),
        "the page lists through the API"
    );
}

/// Each bad request: the answer, and the stored state before and after, identical.
async fn refused(t: &TestMerger, request: Request<Body>, status: StatusCode, code: &str) {
    let before = t.everything().await;
    let answer = t.send(request).await;
    assert_error(&answer, status, code);
    assert_eq!(
        t.everything().await,
        before,
        "a refused request changes nothing"
    );
}

fn post_sync(headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post("/v1/sync");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.into()).unwrap()
}

#[tokio::test]
async fn the_error_table() {
    let t = TestMerger::with(|c| c.max_body_bytes = 64 * 1024).await;
    t.sync(&sync_body(
        1,
        "eu",
        &[("seed", "g", 5, 0), ("seed", "pn", 5, 2)],
    ))
    .await;
    let good = sync_body(1, "eu", &[("seed", "g", 99, 0)]).to_string();
    let json_ct = ("content-type", "application/json");
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("authorization", bearer.as_str());

    // Authentication.
    refused(
        &t,
        post_sync(&[json_ct], good.clone()),
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
    refused(
        &t,
        post_sync(&[json_ct, ("authorization", "Bearer nope")], good.clone()),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    refused(
        &t,
        post_sync(
            &[json_ct, ("authorization", &format!("Basic {TOKEN}"))],
            good.clone(),
        ),
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
    let prefix_token = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    refused(
        &t,
        post_sync(&[json_ct, ("authorization", &prefix_token)], good.clone()),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    // Content type.
    refused(
        &t,
        post_sync(&[auth], good.clone()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    refused(
        &t,
        post_sync(&[auth, ("content-type", "text/plain")], good.clone()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    // Bodies.
    let bad_bodies: Vec<(String, StatusCode, &str)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, "malformed_body"),
        ("".into(), StatusCode::BAD_REQUEST, "malformed_body"),
        (json!({"version": 1, "replica": replica(1), "region": "eu", "counters": [{"id": "seed", "kind": "g", "p": -1}]}).to_string(), StatusCode::BAD_REQUEST, "malformed_body"),
        (json!({"version": 1, "replica": replica(1), "region": "eu", "counters": [{"id": "seed", "kind": "g", "p": "9"}]}).to_string(), StatusCode::BAD_REQUEST, "malformed_body"),
        (json!({"version": 7, "replica": replica(1), "region": "eu", "counters": []}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "unsupported_version"),
        (json!({"version": 0, "replica": replica(1), "region": "eu", "counters": []}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "unsupported_version"),
        (sync_body(1, "eu", &[(&"a".repeat(129), "g", 1, 0)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "id_too_long"),
        (sync_body(1, "eu", &[("a b", "g", 1, 0)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "id_bad_char"),
        (sync_body(1, "eu", &[("", "g", 1, 0)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "empty_id"),
        (sync_body(1, "e u", &[("seed", "g", 99, 0)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_region"),
        (sync_body(0, "eu", &[("seed", "g", 99, 0)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "nil_replica"),
        // Version 1 has no per-counter answer: a counter that breaks a rule refuses the sync.
        (sync_body_v1(1, "eu", &[("seed", "g", 99, 0), ("seed", "pn", 99, 2), ("x", "g", 99, 1)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "decrement_on_counter"),
        (sync_body(1, "eu", &[("seed", "g", 99, 0), ("seed", "g", 98, 0)]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "duplicate_counter"),
    ];
    for (body, status, code) in bad_bodies {
        refused(&t, post_sync(&[auth, json_ct], body), status, code).await;
    }
    // A valid counter before a bad one: the whole sync is refused, the valid part too.
    let ids: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let too_many: Vec<(&str, &str, u64, u64)> =
        ids.iter().map(|id| (id.as_str(), "g", 1, 0)).collect();
    refused(
        &t,
        post_sync(&[auth, json_ct], sync_body(1, "eu", &too_many).to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_counters",
    )
    .await;

    // Size: declared too large, and streamed too large without a declared length.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let mut declared = post_sync(&[auth, json_ct], huge.clone());
    declared
        .headers_mut()
        .insert(header::CONTENT_LENGTH, huge.len().into());
    refused(
        &t,
        declared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;
    let chunks = vec![Ok::<_, std::io::Error>(huge.into_bytes())];
    let streamed = post_sync(&[auth, json_ct], Body::from_stream(futures_stream(chunks)));
    refused(
        &t,
        streamed,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;

    // Routes, methods, paths, queries.
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    refused(
        &t,
        get("/v1/widgets/seed"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    refused(&t, get("/nope"), StatusCode::NOT_FOUND, "not_found").await;
    refused(
        &t,
        get("/v1/sync"),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    refused(
        &t,
        Request::delete("/v1/counters/seed")
            .body(Body::empty())
            .unwrap(),
        StatusCode::FORBIDDEN,
        "admin_disabled",
    )
    .await;
    refused(
        &t,
        Request::delete("/v1/counters").body(Body::empty()).unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    refused(
        &t,
        Request::put("/v1/counters/seed")
            .body(Body::empty())
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    refused(
        &t,
        get("/v1/counters/bad%20id"),
        StatusCode::BAD_REQUEST,
        "id_bad_char",
    )
    .await;
    refused(
        &t,
        get("/v1/counters/..%2Fetc"),
        StatusCode::BAD_REQUEST,
        "id_bad_char",
    )
    .await;
    refused(
        &t,
        get(&format!("/v1/counters/{}", "a".repeat(129))),
        StatusCode::BAD_REQUEST,
        "id_too_long",
    )
    .await;
    refused(
        &t,
        get("/v1/counters?limit=0"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &t,
        get("/v1/counters?limit=1001"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &t,
        get("/v1/counters?limit=ten"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &t,
        get("/v1/counters?colour=red"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &t,
        get("/v1/counters?cursor=a%20b"),
        StatusCode::BAD_REQUEST,
        "id_bad_char",
    )
    .await;
    refused(
        &t,
        get("/v1/counters/seed/history?from=yesterday"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &t,
        get("/v1/counters/seed/history?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;

    // The scheme is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    let answer = t
        .send(post_sync(
            &[json_ct, ("authorization", &lower)],
            good.clone(),
        ))
        .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);

    // And the good sync still goes through afterwards.
    assert_eq!(
        t.sync(&serde_json::from_str::<Value>(&good).unwrap())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(t.get("/v1/counters/seed").await.1["count"], 99);
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn a_restarted_merger_reads_the_same_state_u64_extremes_included() {
    let t = TestMerger::new().await;
    t.sync(&sync_body(
        1,
        "eu",
        &[("x", "g", u64::MAX, 0), ("y", "pn", u64::MAX - 1, u64::MAX)],
    ))
    .await;
    t.sync(&sync_body(
        2,
        "us",
        &[("x", "g", u64::MAX, 0), ("y", "pn", 1 << 53, 0)],
    ))
    .await;
    let before = t.everything().await;
    assert_eq!(before["counters/x"]["count"], "36893488147419103230");
    let t = t.reopen().await;
    assert_eq!(t.everything().await, before);
    // The recorded slots survived exactly too.
    let (_, answer) = t.sync(&sync_body(1, "eu", &[("y", "pn", 0, 0)])).await;
    assert_eq!(
        answer["counters"][0]["recorded"],
        json!({"p": u64::MAX - 1, "n": u64::MAX})
    );
}

mod read_token {
    //! `--read-token`: what enumerates counters needs it; single reads stay public unless
    //! `--private-reads`.
    use super::*;

    const READ_TOKEN: &str = "read-token-0123456789";

    async fn guarded(private: bool) -> TestMerger {
        let t = TestMerger::with(|c| {
            c.read_token = Some(READ_TOKEN.into());
            c.private_reads = private;
        })
        .await;
        let (status, _) = t.sync(&sync_body(1, "eu", &[("seen", "g", 3, 0)])).await;
        assert_eq!(status, StatusCode::OK);
        t
    }

    fn get_with(uri: &str, token: Option<&str>) -> Request<Body> {
        let mut r = Request::get(uri);
        if let Some(token) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        r.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn lists_history_and_metrics_need_the_read_token() {
        let t = guarded(false).await;
        for uri in [
            "/v1/counters",
            "/v1/gauges?prefix=s",
            "/v1/counters/seen/history",
            "/metrics",
        ] {
            let answer = t.send(get_with(uri, None)).await;
            assert_error(&answer, StatusCode::UNAUTHORIZED, "missing_token");
            assert!(
                answer.1["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("read token"),
                "{uri}: {}",
                answer.1
            );
            let answer = t.send(get_with(uri, Some(TOKEN))).await;
            assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
            let (status, _) = t.send(get_with(uri, Some(READ_TOKEN))).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
        let (_, page) = t.send(get_with("/v1/counters", Some(READ_TOKEN))).await;
        assert_eq!(page["items"][0]["id"], "seen");
    }

    #[tokio::test]
    async fn single_counter_reads_and_the_page_shell_stay_public() {
        let t = guarded(false).await;
        let (status, view) = t.get("/v1/counters/seen").await;
        assert_eq!((status, &view["count"]), (StatusCode::OK, &json!(3)));
        let response = tower::ServiceExt::oneshot(t.app.clone(), get_with("/", None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(t.get("/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn private_reads_guard_single_counters_too() {
        let t = guarded(true).await;
        let answer = t.get("/v1/counters/seen").await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "missing_token");
        let (status, view) = t
            .send(get_with("/v1/counters/seen", Some(READ_TOKEN)))
            .await;
        assert_eq!((status, &view["count"]), (StatusCode::OK, &json!(3)));
    }

    #[tokio::test]
    async fn a_short_read_token_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tally_merger::Config::new(database_url(dir.path()), TOKEN);
        config.read_token = Some("short".into());
        let err = tally_merger::Merger::open(config).await.unwrap_err();
        assert!(err.to_string().contains("read token"), "{err}");
    }
}
