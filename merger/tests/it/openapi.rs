//! The OpenAPI document (`GET /openapi.json`) against the router that serves it: the same
//! routes, every status a route can answer listed with its body, no `default` responses, and
//! the layers' statuses (401, 403, 408, 413) on exactly the routes those layers wrap.

use std::collections::BTreeSet;

use crate::common::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const READ: &str = "read-token-for-tests-0123";

/// Every route the merger serves, as `(method, OpenAPI path)`.
const ROUTES: [(&str, &str); 26] = [
    ("POST", "/v1/sync"),
    ("POST", "/v1/read"),
    ("POST", "/v1/retire"),
    ("POST", "/v1/presence"),
    ("POST", "/v1/read/presence"),
    ("GET", "/v1/presence/{id}"),
    ("POST", "/v1/unique"),
    ("POST", "/v1/read/unique"),
    ("GET", "/v1/unique/{id}"),
    ("GET", "/v1/{namespace}/{id}"),
    ("GET", "/v1/{namespace}"),
    ("GET", "/v1/{namespace}/{id}/history"),
    ("POST", "/v1/{namespace}/{id}/reset"),
    ("DELETE", "/v1/{namespace}/{id}"),
    ("POST", "/v1/{namespace}/{id}/import"),
    ("POST", "/v1/{namespace}/{id}/milestones"),
    ("GET", "/v1/{namespace}/{id}/milestones"),
    ("DELETE", "/v1/{namespace}/{id}/milestones/{n}"),
    ("GET", "/v1/{namespace}/{id}/receipts/{receipt}"),
    ("GET", "/v1/regions"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/openapi.json"),
    ("GET", "/openapi"),
];

/// The routes inside the body limit and the request timeout (`http::router`'s "bounded").
const BOUNDED: [&str; 20] = [
    "POST /v1/sync",
    "POST /v1/read",
    "POST /v1/retire",
    "POST /v1/presence",
    "POST /v1/read/presence",
    "GET /v1/presence/{id}",
    "POST /v1/unique",
    "POST /v1/read/unique",
    "GET /v1/unique/{id}",
    "GET /v1/{namespace}",
    "GET /v1/{namespace}/{id}/history",
    "POST /v1/{namespace}/{id}/reset",
    "DELETE /v1/{namespace}/{id}",
    "POST /v1/{namespace}/{id}/import",
    "POST /v1/{namespace}/{id}/milestones",
    "GET /v1/{namespace}/{id}/milestones",
    "DELETE /v1/{namespace}/{id}/milestones/{n}",
    "GET /v1/{namespace}/{id}/receipts/{receipt}",
    "GET /v1/regions",
    "GET /metrics",
];

const METHODS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH"];

async fn merger() -> TestMerger {
    TestMerger::with(|c| {
        c.admin_token = Some(ADMIN.into());
        c.read_token = Some(READ.into());
    })
    .await
}

/// The document as served.
async fn document(t: &TestMerger) -> Value {
    let response = t
        .app
        .clone()
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("/openapi.json is JSON")
}

/// Every operation of the document: `("METHOD path", operation)`.
fn operations(doc: &Value) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("the document has paths") {
        for (method, operation) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                found.push((format!("{} {path}", method.to_uppercase()), operation));
            }
        }
    }
    found
}

/// A concrete URI for an OpenAPI path.
fn concrete(path: &str) -> String {
    path.replace("{namespace}", "counters")
        .replace("{id}", "home")
}

/// `(status, error code)` of a request with the admin token (valid for every guarded route
/// but the edge's, whose token is the sync token).
async fn probe(t: &TestMerger, method: &str, path: &str) -> (StatusCode, Option<String>) {
    let token = if path.starts_with("/v1/sync")
        || path.starts_with("/v1/read")
        || path.starts_with("/v1/retire")
        || path.starts_with("/v1/presence")
        || path.starts_with("/v1/unique")
    {
        TOKEN
    } else if path.starts_with("/v1/regions")
        || path == "/metrics"
        || path.ends_with("/history")
        || path == "/v1/{namespace}"
    {
        READ
    } else {
        ADMIN
    };
    let request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(concrete(path))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, body) = t.send(request).await;
    let code = body["error"]["code"].as_str().map(str::to_owned);
    (status, code)
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_names_the_merger() {
    let t = merger().await;
    let doc = document(&t).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "tally-merger");
    for scheme in ["sync_token", "read_token", "admin_token"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"], "bearer",
            "{scheme}"
        );
    }
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_served() {
    let t = merger().await;
    let doc = document(&t).await;
    let documented: BTreeSet<String> = operations(&doc).into_iter().map(|(op, _)| op).collect();
    let expected: BTreeSet<String> = ROUTES.iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(documented, expected);
    // Each documented operation is routed (not the fallback's 404 or 405) ...
    for (method, path) in ROUTES {
        let (status, code) = probe(&t, method, path).await;
        assert!(
            !matches!(code.as_deref(), Some("not_found" | "method_not_allowed")),
            "{method} {path}: {status} {code:?}"
        );
    }
    // ... and no other method is, on any documented path (HEAD is GET's).
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        for method in METHODS {
            let documented = ROUTES.contains(&(method, path))
                || (method == "HEAD" && ROUTES.contains(&("GET", path)));
            if documented {
                continue;
            }
            let (status, code) = probe(&t, method, path).await;
            // A HEAD answer has no body to carry the code.
            let code = if method == "HEAD" {
                Some("method_not_allowed".into())
            } else {
                code
            };
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
                "{method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn no_response_is_a_default() {
    let t = merger().await;
    let doc = document(&t).await;
    for (op, operation) in operations(&doc) {
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{op} has responses"));
        assert!(!responses.is_empty(), "{op}");
        for status in responses.keys() {
            assert!(
                status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()),
                "{op}: response {status:?} is not a status code"
            );
        }
    }
}

#[tokio::test]
async fn every_error_status_has_the_error_schema() {
    let t = merger().await;
    let doc = document(&t).await;
    let error = &doc["components"]["schemas"]["ErrorResponse"];
    assert_eq!(error["required"], serde_json::json!(["error"]), "{error}");
    for (op, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            let content = &response["content"];
            if status.starts_with('2') {
                assert!(content.is_object(), "{op} {status} has a body schema");
                continue;
            }
            let media = content.as_object().map(|m| m.keys().collect::<Vec<_>>());
            assert_eq!(
                media,
                Some(vec![&"application/json".to_owned()]),
                "{op} {status}"
            );
            assert_eq!(
                content["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorResponse",
                "{op} {status}"
            );
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| d.contains('`')),
                "{op} {status}: the description names the error codes"
            );
        }
    }
}

#[tokio::test]
async fn the_layers_statuses_are_listed_on_the_routes_they_wrap() {
    let t = merger().await;
    let doc = document(&t).await;
    for (op, operation) in operations(&doc) {
        let listed = |status: &str| operation["responses"].get(status).is_some();
        let bounded = BOUNDED.contains(&op.as_str());
        for status in ["408", "413"] {
            assert_eq!(listed(status), bounded, "{op} {status}");
        }
        let security = operation["security"].as_array();
        let guarded = security.is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
        });
        assert_eq!(listed("401"), guarded, "{op} 401");
        let admin = security.is_some_and(|s| s.iter().any(|r| r.get("admin_token").is_some()));
        assert_eq!(listed("403"), admin, "{op} 403");
        let takes_body = operation.get("requestBody").is_some();
        assert_eq!(listed("415"), takes_body, "{op} 415");
        let namespaced = op.contains("{namespace}");
        assert_eq!(listed("404"), namespaced, "{op} 404");
    }
}

#[tokio::test]
async fn a_real_answer_has_the_fields_its_schema_requires() {
    let t = merger().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 7, 0)])).await;
    let doc = document(&t).await;
    let schemas = &doc["components"]["schemas"];
    let (status, counter) = t.get("/v1/counters/home").await;
    assert_eq!(status, StatusCode::OK);
    let schema = &schemas["Counter"];
    let properties: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let fields: BTreeSet<&String> = counter.as_object().unwrap().keys().collect();
    assert_eq!(properties, fields, "{schema}");
    for required in schema["required"].as_array().unwrap() {
        assert!(
            counter.get(required.as_str().unwrap()).is_some(),
            "{required}"
        );
    }
}

#[tokio::test]
async fn the_page_is_served_and_loads_nothing_from_elsewhere() {
    let t = merger().await;
    let response = t
        .app
        .clone()
        .oneshot(Request::get("/openapi").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let page = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(page.contains("/openapi.json"));
    assert!(!page.contains("http://") && !page.contains("https://"));
}
