//! Imports (`POST /v1/{ns}/{id}/import` and `tally-merger import`): a starting value from
//! another system becomes a slot of its own, keyed by its import id, so it adds to what the
//! edge counts, re-running it changes nothing, the same id with another value is refused, and
//! it shows in reads, lists and history, across restarts.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

fn import_request(uri: &str, body: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    r.body(Body::from(body.to_owned())).unwrap()
}

async fn import(t: &TestMerger, uri: &str, body: Value) -> (StatusCode, Value) {
    t.send(import_request(uri, &body.to_string(), Some(ADMIN)))
        .await
}

async fn count(t: &TestMerger, path: &str) -> Value {
    let (status, body) = t.get(path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["count"].clone()
}

#[tokio::test]
async fn an_import_adds_once_and_the_same_id_with_another_value_is_refused() {
    let t = admin_merger().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 5, 0)])).await;
    let (status, body) = import(
        &t,
        "/v1/counters/home/import",
        json!({"import": "ga-2025", "count": 1_204_331}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"id": "home", "import": "ga-2025", "imported": 1_204_331, "created": true, "count": 1_204_336})
    );
    // Re-running it changes nothing; the edge keeps counting on top.
    let (status, body) = import(
        &t,
        "/v1/counters/home/import",
        json!({"import": "ga-2025", "count": "1204331"}),
    )
    .await;
    assert_eq!(
        (status, body["created"].clone()),
        (StatusCode::OK, json!(false))
    );
    t.sync(&sync_body(1, "eu", &[("home", "g", 9, 0)])).await;
    assert_eq!(count(&t, "/v1/counters/home").await, 1_204_340);
    let view = t.get("/v1/counters/home").await.1;
    assert_eq!(view["regions"]["import"]["count"], 1_204_331);

    // The same id with another value: refused, nothing changes.
    let before = t.everything().await;
    let answer = import(
        &t,
        "/v1/counters/home/import",
        json!({"import": "ga-2025", "count": 7}),
    )
    .await;
    assert_error(&answer, StatusCode::CONFLICT, "import_conflict");
    assert_eq!(t.everything().await, before);
    // The same id into another counter is its own slot; another id adds again.
    import(
        &t,
        "/v1/counters/about/import",
        json!({"import": "ga-2025", "count": 40}),
    )
    .await;
    import(
        &t,
        "/v1/counters/home/import",
        json!({"import": "sql-2024", "count": 60}),
    )
    .await;
    assert_eq!(count(&t, "/v1/counters/home").await, 1_204_400);
    assert_eq!(count(&t, "/v1/counters/about").await, 40);

    // Gauges take negative values; big values are exact.
    let (status, _) = import(
        &t,
        "/v1/gauges/queue/import",
        json!({"import": "redis", "count": -12}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count(&t, "/v1/gauges/queue").await, -12);
    let big = "18446744073709551615";
    let (status, body) = import(
        &t,
        "/v1/counters/big/import",
        json!({"import": "x", "count": big}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(count(&t, "/v1/counters/big").await, big);

    // A reset cuts an import like any slot; re-running the import does not bring it back.
    let reset = t
        .send(
            Request::post("/v1/counters/about/reset")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reset.1["removed"], 40);
    let (_, body) = import(
        &t,
        "/v1/counters/about/import",
        json!({"import": "ga-2025", "count": 40}),
    )
    .await;
    assert_eq!(
        (body["created"].clone(), body["count"].clone()),
        (json!(false), json!(0))
    );

    // Durable, and in the history.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, history) = t.get("/v1/counters/home/history").await;
            if history["points"].as_array().is_some_and(|p| !p.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("an import is written to the history");
    let t = t.reopen_with(|c| c.admin_token = Some(ADMIN.into())).await;
    assert_eq!(count(&t, "/v1/counters/home").await, 1_204_400);
    assert_eq!(count(&t, "/v1/gauges/queue").await, -12);
    let answer = import(
        &t,
        "/v1/counters/home/import",
        json!({"import": "ga-2025", "count": 8}),
    )
    .await;
    assert_error(&answer, StatusCode::CONFLICT, "import_conflict");
}

#[tokio::test]
async fn bad_imports_are_refused_with_a_reason_and_change_nothing() {
    let t = admin_merger().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 5, 0)])).await;
    let before = t.everything().await;
    let uri = "/v1/counters/home/import";
    for (request, status, code) in [
        (
            import_request(uri, r#"{"import":"a","count":1}"#, None),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            import_request(uri, r#"{"import":"a","count":1}"#, Some(TOKEN)),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            import_request(uri, r#"{"import":"a","count":-1}"#, Some(ADMIN)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_import",
        ),
        (
            import_request(
                uri,
                r#"{"import":"a","count":"18446744073709551616"}"#,
                Some(ADMIN),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_import",
        ),
        (
            import_request(uri, r#"{"import":"a b","count":1}"#, Some(ADMIN)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id_bad_char",
        ),
        (
            import_request(uri, r#"{"import":"","count":1}"#, Some(ADMIN)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_id",
        ),
        (
            import_request(uri, r#"{"import":"a","count":1.5}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            import_request(uri, r#"{"import":"a"}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            import_request(uri, r#"{"import":"a","count":1,"extra":2}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            Request::post(uri)
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .body(Body::from(r#"{"import":"a","count":1}"#))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            import_request(
                "/v1/widgets/home/import",
                r#"{"import":"a","count":1}"#,
                Some(ADMIN),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let answer = t.send(request).await;
        assert_error(&answer, status, code);
        assert_eq!(
            t.everything().await,
            before,
            "a refused import changes nothing"
        );
    }
    let t = TestMerger::new().await;
    let answer = t
        .send(import_request(
            uri,
            r#"{"import":"a","count":1}"#,
            Some(ADMIN),
        ))
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "admin_disabled");
}

#[tokio::test]
async fn the_import_command_reads_csv_and_json_lines_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let merger = tally_e2e::MergerProcess::start_binary(
        Path::new(env!("CARGO_BIN_EXE_tally-merger")),
        dir.path(),
        0,
        &["--admin-token", ADMIN],
    )
    .await;
    let csv = dir.path().join("totals.csv");
    std::fs::write(
        &csv,
        "namespace,id,count,import\n\
         counters,home,1204331,ga-2025\n\
         counters,about,40,\n\
         gauges,queue,-12,redis\n\
         \n\
         # a comment\n",
    )
    .unwrap();
    let jsonl = dir.path().join("more.jsonl");
    std::fs::write(
        &jsonl,
        "{\"namespace\": \"counters\", \"id\": \"pricing\", \"count\": \"9007199254740993\", \"import\": \"sql\"}\n",
    )
    .unwrap();
    let run = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tally-merger"))
            .arg("import")
            .arg(file)
            .args([
                "--url",
                &merger.url,
                "--admin-token",
                ADMIN,
                "--import",
                "default-id",
            ])
            .output()
            .expect("the command runs")
    };
    let first = run(&csv);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "imported 3, unchanged 0, conflicts 0, failed 0"
    );
    assert!(run(&jsonl).status.success());
    let again = run(&csv);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "imported 0, unchanged 3, conflicts 0, failed 0"
    );
    let client = tally_e2e::http_client();
    for (path, want) in [
        ("/v1/counters/home", json!(1_204_331)),
        ("/v1/counters/about", json!(40)),
        ("/v1/gauges/queue", json!(-12)),
        ("/v1/counters/pricing", json!("9007199254740993")),
    ] {
        let body: Value = client
            .get(format!("{}{path}", merger.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["count"], want, "{path}");
    }
    // A changed value and a bad line: reported, nothing changed, a failure status.
    let changed = dir.path().join("changed.csv");
    std::fs::write(
        &changed,
        "counters,home,5,ga-2025\ncounters,bad id,1,x\ncounters\n",
    )
    .unwrap();
    let out = run(&changed);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 0, unchanged 0, conflicts 1, failed 2"
    );
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        errors.contains("line 1: import \"ga-2025\" already brought 1204331"),
        "{errors}"
    );
    assert!(
        errors.contains("line 3: expected namespace,id,count[,import]"),
        "{errors}"
    );
    merger.terminate().await;
}
