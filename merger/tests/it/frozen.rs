//! The frozen bodies of every released protocol version (`shared/tests/protocol/`), replayed
//! in order against today's merger: each answer must be the frozen one, times aside. An edge
//! of any release the merger still accepts thus gets the answer it was built for, and a change
//! of what the merger sends for a version fails here — change the wire by adding a version.
//!
//! A request without a frozen answer is a new version's: run with
//! `TALLY_FREEZE_PROTOCOL=1` once to write its answer, read it, and commit both. Frozen
//! answers are never rewritten.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;

use crate::common::*;

/// `shared/tests/protocol/`.
fn frozen_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/protocol")
}

/// The route a frozen request goes to, from its file name (`NN-vV-<what>.request.json`).
fn route(name: &str) -> &'static str {
    let what = name
        .split_once(".request.json")
        .map(|(stem, _)| stem.splitn(3, '-').nth(2).unwrap_or_default())
        .unwrap_or_default();
    match what {
        "sync" => "/v1/sync",
        "read" => "/v1/read",
        "retire" => "/v1/retire",
        "presence" => "/v1/presence",
        "read-presence" => "/v1/read/presence",
        "unique" => "/v1/unique",
        "read-unique" => "/v1/read/unique",
        other => panic!("{name}: no route for {other:?}"),
    }
}

/// Times vary from run to run: every RFC 3339 string becomes `<time>`.
fn without_times(value: &mut Value) {
    match value {
        Value::String(s)
            if s.len() == 24 && s.ends_with('Z') && s.as_bytes().get(10) == Some(&b'T') =>
        {
            *s = "<time>".into();
        }
        Value::Array(items) => items.iter_mut().for_each(without_times),
        Value::Object(fields) => fields.values_mut().for_each(without_times),
        _ => {}
    }
}

#[tokio::test]
async fn every_frozen_body_of_every_version_is_answered_as_frozen() {
    let t = TestMerger::new().await;
    let freeze = std::env::var_os("TALLY_FREEZE_PROTOCOL").is_some_and(|v| v == "1");
    let mut requests: Vec<PathBuf> = std::fs::read_dir(frozen_dir())
        .expect("shared/tests/protocol/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    requests.sort();
    assert!(requests.len() >= 11, "the frozen bodies are there");
    let mut missing = Vec::new();
    for request in &requests {
        let name = request.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read_to_string(request).expect("a frozen request");
        let http = Request::post(route(&name))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, mut answer) = t.send(http).await;
        assert_eq!(status, StatusCode::OK, "{name}: {answer}");
        without_times(&mut answer);
        let frozen_path = PathBuf::from(
            request
                .to_string_lossy()
                .replace(".request.json", ".response.json"),
        );
        match std::fs::read_to_string(&frozen_path) {
            Ok(text) => {
                let mut frozen: Value = serde_json::from_str(&text).expect("a frozen answer");
                without_times(&mut frozen);
                assert_eq!(answer, frozen, "{name}: the answer is not the frozen one");
            }
            Err(_) if freeze => {
                let text = serde_json::to_string_pretty(&answer).unwrap() + "\n";
                std::fs::write(&frozen_path, text).expect("the answer can be written");
                eprintln!("froze {}", frozen_path.display());
            }
            Err(_) => missing.push(name),
        }
    }
    assert!(
        missing.is_empty(),
        "requests without a frozen answer (a new version: run once with \
         TALLY_FREEZE_PROTOCOL=1, read the answers, commit them): {missing:?}"
    );
}
