//! The contract tests: schemathesis (PyPI, the version `scripts/bootstrap.sh` pins) with every
//! check (`--checks all`) and a fixed seed, against a live merger and its own OpenAPI document
//! (`GET /openapi.json`), and against the real edge worker under `wrangler dev` and the edge's
//! checked-in document (`docs/edge-openapi.json`). Schemathesis generates requests from the
//! document, valid and invalid, sends them, and fails on any answer the document does not
//! describe: a status not listed, a body or header off its schema, a 5xx, a valid request
//! refused or an invalid one accepted, an operation that works without its token.
//!
//! The merger runs with all three tokens (sync, read, admin), each operation is sent the one
//! its security scheme names (`tests/contract/merger.toml`), and it is seeded first, so
//! reads, lists and history have counters, gauges, regions and points to answer with. The edge
//! runs with a write key, which goes where its document names it (`tests/contract/edge.toml`).
//! `tests/contract/hooks.py` keeps out of the positive cases the few requests that break a
//! rule JSON Schema cannot state (each named there, each refused with its own error code).
//!
//! `TALLY_CONTRACT_SEED` runs another seed (to look for more failures by hand).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tally_e2e::{
    Edge, EdgeOptions, MergerProcess, TOKEN, WRITE_KEY, http_client, root, temp_dir, wait_until,
};

const READ_TOKEN: &str = "contract-read-token-0123456789";
const ADMIN_TOKEN: &str = "contract-admin-token-0123456789";
/// The seed of the run in the test command.
const SEED: &str = "20261202";

/// The `st` of the pinned schemathesis: `TALLY_SCHEMATHESIS`, else where bootstrap puts it.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let script = std::fs::read_to_string(root().join("scripts/bootstrap.sh"))
        .expect("scripts/bootstrap.sh is readable");
    let version = script
        .lines()
        .find_map(|line| line.strip_prefix("SCHEMATHESIS_VERSION="))
        .expect("scripts/bootstrap.sh pins SCHEMATHESIS_VERSION");
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(format!(".cache/tally/schemathesis-{version}/bin/st"))
}

async fn post(client: &reqwest::Client, url: String, token: &str, body: Value) {
    let answer = client
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
}

/// Counters and gauges in two regions, a history of several points, an import and a reset.
async fn seed(merger: &str) {
    let client = tally_e2e::http_client();
    let sync = |replica: u64, region: &str, counters: Value| json!({"version": 2, "replica": format!("{replica:032x}"), "region": region, "counters": counters});
    for round in 1..=3_u64 {
        let eu = sync(
            1,
            "eu",
            json!([
                {"id": "home", "kind": "g", "p": 1_000 * round},
                {"id": "pricing", "kind": "g", "p": 10 * round},
                {"id": "viewers", "kind": "pn", "p": 50 * round, "n": 20 * round},
            ]),
        );
        post(&client, format!("{merger}/v1/sync"), TOKEN, eu).await;
        let us = sync(
            2,
            "us",
            json!([
                {"id": "home", "kind": "g", "p": u64::MAX - 3 + round},
                {"id": "inbox:unread", "kind": "pn", "p": 7 * round},
            ]),
        );
        post(&client, format!("{merger}/v1/sync"), TOKEN, us).await;
        // One history point per round (snapshots every 100 ms).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    post(
        &client,
        format!("{merger}/v1/counters/pricing/import"),
        ADMIN_TOKEN,
        json!({"import": "ga-2026", "count": 120_000}),
    )
    .await;
    post(
        &client,
        format!("{merger}/v1/gauges/inbox:unread/reset"),
        ADMIN_TOKEN,
        json!({}),
    )
    .await;
    let history = format!("{merger}/v1/counters/home/history");
    wait_until(Duration::from_secs(5), "home has history", || async {
        let answer = client.get(&history).bearer_auth(READ_TOKEN).send().await;
        match answer {
            Ok(answer) => answer
                .json::<Value>()
                .await
                .is_ok_and(|v| v["points"].as_array().is_some_and(|p| p.len() >= 2)),
            Err(_) => false,
        }
    })
    .await;
}

/// The operations of an OpenAPI document, as `METHOD path`.
fn operations(document: &Value) -> BTreeSet<String> {
    let paths = document["paths"]
        .as_object()
        .expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item is an object");
            methods
                .keys()
                .filter(|key| *key != "parameters")
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect()
}

/// The operations a JUnit report of schemathesis has a test case for.
fn tested(report_dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(report_dir).expect("schemathesis wrote its report") {
        let xml = std::fs::read_to_string(entry.expect("a report entry").path())
            .expect("the report is text");
        for case in xml.split("<testcase name=\"").skip(1) {
            let name = case.split('"').next().expect("a quoted name");
            found.insert(name.replace("&amp;", "&"));
        }
    }
    found
}

/// The name of the stateful phase's test case in the JUnit report.
const STATEFUL: &str = "Stateful tests";

/// Runs schemathesis with `config` (in `tests/contract/`) on the document at `location`
/// (`--url` sets the base of a document read from a file), with `env`; asserts it found no
/// failure, and answers the operations it tested.
async fn schemathesis_run(
    config: &str,
    location: &str,
    url: Option<&str>,
    env: &[(&str, &str)],
) -> BTreeSet<String> {
    let st = schemathesis();
    assert!(
        st.is_file(),
        "no schemathesis at {}: run scripts/bootstrap.sh (it installs the pinned version), \
         or set TALLY_SCHEMATHESIS to an `st` binary",
        st.display()
    );
    let seed = std::env::var("TALLY_CONTRACT_SEED").unwrap_or_else(|_| SEED.to_owned());
    let contract = root().join("tests/contract");
    // A scratch working directory: schemathesis and hypothesis write state beside it.
    let scratch = temp_dir();
    let mut command = tokio::process::Command::new(&st);
    command
        .arg("--config-file")
        .arg(contract.join(config))
        .args(["run", location])
        .args(url.map(|url| ["--url", url]).into_iter().flatten())
        .args(["--checks", "all", "--seed", &seed, "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(scratch.path().join("report"))
        .env("TALLY_CONTRACT_HOOKS", contract.join("hooks.py"))
        .envs(env.iter().copied())
        .current_dir(scratch.path())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis ends within 10 minutes (98 s alone; over 5 min seen on 2 contended cores)")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found failures (seed {seed}; the report is above)"
    );
    assert!(
        report.contains("No issues found"),
        "no verdict in the report"
    );
    tested(&scratch.path().join("report"))
}

#[tokio::test]
async fn schemathesis_finds_no_failure_in_the_merger_api() {
    let db = temp_dir();
    let merger = MergerProcess::start(
        db.path(),
        &[
            "--read-token",
            READ_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
            "--snapshot-interval",
            "100ms",
        ],
    )
    .await;
    seed(&merger.url).await;
    let document: Value = http_client()
        .get(format!("{}/openapi.json", merger.url))
        .send()
        .await
        .expect("the merger serves /openapi.json")
        .json()
        .await
        .expect("the document is JSON");
    // Every operation but the document's own (schemathesis reads it and does not test it as
    // an operation; merger/tests/it/openapi.rs checks it), and the stateful phase, which chains
    // operations (e.g. a sync, then reads of its ids).
    let mut expected = operations(&document);
    expected.remove("GET /openapi.json");
    expected.insert(STATEFUL.to_owned());

    let location = format!("{}/openapi.json", merger.url);
    let tested = schemathesis_run(
        "merger.toml",
        &location,
        None,
        &[
            ("TALLY_SYNC_TOKEN", TOKEN),
            ("TALLY_READ_TOKEN", READ_TOKEN),
            ("TALLY_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    // It tested every operation: a run that selects or reaches fewer also exits 0.
    assert_eq!(
        tested, expected,
        "schemathesis tested other operations than the document has"
    );

    // And the merger is still whole after everything schemathesis sent.
    let ready = http_client()
        .get(format!("{}/readyz", merger.url))
        .send()
        .await
        .expect("the merger answers");
    assert!(ready.status().is_success());
    merger.terminate().await;
}

#[tokio::test]
async fn schemathesis_finds_no_failure_in_the_edge_api() {
    let db = temp_dir();
    let merger = MergerProcess::start(db.path(), &[]).await;
    let storage = temp_dir();
    // A read of a counter no object holds waits for the merger; `--checks all` counts its
    // `503 merger_unreachable` (after the harness's 2 s) as a server error, so on 2 contended
    // cores, where a debug merger can take that long, the edge waits up to 15 s instead.
    let mut options = EdgeOptions::new(&merger.url, storage.path());
    options.sync_timeout_ms = 15_000;
    let edge = Edge::start(&options).await;
    // Seeded like a page in use: a counter and a gauge that several objects serve.
    let client = tally_e2e::http_client();
    for path in ["home/counter", "viewers/gauge"] {
        for _ in 0..3 {
            let answer = client
                .put(format!("{}/{path}", edge.url))
                .bearer_auth(WRITE_KEY)
                .send()
                .await
                .expect("the edge answers a hit");
            assert_eq!(answer.status(), 200, "PUT /{path}");
        }
    }
    let file = root().join("docs/edge-openapi.json");
    let generated = std::process::Command::new("python3")
        .arg(root().join("scripts/edge-openapi.py"))
        .output()
        .expect("python3 runs scripts/edge-openapi.py");
    assert!(generated.status.success(), "scripts/edge-openapi.py failed");
    assert!(
        generated.stdout == std::fs::read(&file).expect("docs/edge-openapi.json is readable"),
        "docs/edge-openapi.json is not what scripts/edge-openapi.py writes: run \
         `python3 scripts/edge-openapi.py > docs/edge-openapi.json`"
    );
    let document: Value = serde_json::from_str(
        &std::fs::read_to_string(&file).expect("docs/edge-openapi.json is readable"),
    )
    .expect("docs/edge-openapi.json is JSON");
    let mut tested = schemathesis_run(
        "edge.toml",
        file.to_str().expect("a UTF-8 path"),
        Some(&edge.url),
        &[("TALLY_WRITE_KEY", WRITE_KEY)],
    )
    .await;
    // The edge's document has no links to chain, so a stateful phase is optional.
    tested.remove(STATEFUL);
    assert_eq!(
        tested,
        operations(&document),
        "schemathesis tested other operations than the document has"
    );
    // The worker still counts: the seeded counter answers at least what was seeded.
    let answer: Value = client
        .get(format!("{}/home/counter", edge.url))
        .send()
        .await
        .expect("the edge answers a read")
        .json()
        .await
        .expect("a read is JSON");
    assert!(
        tally_e2e::count_of(&answer["count"]).is_some_and(|c| c >= 3),
        "{answer}"
    );
    edge.stop().await;
    merger.terminate().await;
}
