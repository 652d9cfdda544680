//! The JavaScript client (`js/tally-client`, npm package `tally-client`) against the real
//! merger and the real worker under `wrangler dev`, as a web page and a Node backend use it.
//!
//! The first test runs the package's Node tests (`js/tally-client/test/*.test.mjs`, node:test)
//! on the package as `scripts/build-client.sh` built it, installed by name into a throwaway
//! project: its types against docs/edge-openapi.json, its two entries, and the live tests —
//! hits, reads, batch reads, unique visitors, the server entry's writes, live viewers over
//! WebSockets (a socket cut by the test reconnects and rejoins), and the retry rules. For
//! those the test puts a proxy that drops every answer (a hit sent and never answered is
//! unknown, and counted once) and one that never forwards a byte (timeouts) in front of the
//! edge, and gives the edge a small new-id budget in 10 s windows, so a hit refused with 429
//! `too_many_new_ids` is retried within the test's time.
//!
//! The second test drives the example page (`js/tally-client/example/index.html`: a like
//! button and a viewers-now badge) in Debian's headless Chromium with
//! `tests/browser/client.mjs` (playwright-core), the page served from a loopback server the
//! script starts and the edge on another origin (CORS). Like the dashboard's test it is
//! skipped with `TALLY_NO_BROWSER=1`, and fails, naming the fix, without the browser.
//!
//! The harness builds nothing: `bash scripts/build-client.sh` builds the package (the test
//! command's build phase does).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::stall::StallProxy;
use tally_e2e::{
    Edge, EdgeOptions, MergerProcess, WRITE_KEY, copy_dir, root, serial, target_dir, temp_dir,
    worker_config_with,
};

/// The new ids one client may add per window in the first test (wrangler.toml: 200).
const NEW_ID_LIMIT: u32 = 40;
/// The new-id budget's window in the first test, in seconds (wrangler.toml: 60; Cloudflare
/// allows 10 or 60): a refused hit's retries reach the next window within the test.
const NEW_ID_PERIOD_S: u32 = 10;
/// `PRESENCE_TTL_MS` of the first test's edge: a socket that did not ping within it is
/// closed, so the test sees the client's pings keep its sockets.
const PRESENCE_TTL_MS: u64 = 3000;
/// The longest a Node run may take.
const NODE_LIMIT: Duration = Duration::from_secs(240);

/// The package `scripts/build-client.sh` built; panics, naming the fix, when it is missing
/// or older than a source of it.
fn client_package() -> PathBuf {
    let package = target_dir().join("js/tally-client");
    let built = package.join("dist/index.js");
    let fix = "run `bash scripts/build-client.sh` (the tests build nothing themselves)";
    let built_at = std::fs::metadata(&built)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {fix}", built.display()));
    let sources = root().join("js/tally-client");
    for dir in [sources.join("src"), sources.join("example")]
        .into_iter()
        .chain([sources.join("package.json"), sources.join("tsconfig.json")])
    {
        for source in files_under(&dir) {
            let changed = std::fs::metadata(&source)
                .and_then(|m| m.modified())
                .expect("a listed file has a time");
            assert!(
                changed <= built_at,
                "{} is older than {}: {fix}",
                built.display(),
                source.display()
            );
        }
    }
    package
}

/// `path` if it is a file, else every file under it.
fn files_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|entry| files_under(&entry.path()))
        .collect()
}

/// A project that has the built package installed by name (`node_modules/tally-client`)
/// and the package's tests in `test/`, as a user's project would.
fn test_project(package: &Path) -> tempfile::TempDir {
    let project = temp_dir();
    copy_dir(package, &project.path().join("node_modules/tally-client"))
        .expect("the built package can be copied");
    copy_dir(
        &root().join("js/tally-client/test"),
        &project.path().join("test"),
    )
    .expect("the client's tests can be copied");
    project
}

/// The test worker's config with the new-id budget set to `limit` ids per `period_s`
/// seconds (beside it, so its relative paths still hold).
fn config_with_budget(limit: u32, period_s: u32) -> PathBuf {
    worker_config_with(
        "wrangler-client-test.toml",
        "simple = { limit = 200, period = 60 }",
        &format!("simple = {{ limit = {limit}, period = {period_s} }}"),
        "NEW_IDS rate limit",
    )
}

/// Runs `node` with `args` in `dir` and `env`, within [`NODE_LIMIT`]; panics with its output
/// unless it succeeds, else prints it.
async fn node(dir: &Path, args: &[&str], env: &[(&str, String)], what: &str) -> Output {
    let mut command = tokio::process::Command::new("node");
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(NODE_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {NODE_LIMIT:?}"))
        .expect("node runs (Node.js >= 20 is required)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{text}",
        output.status
    );
    eprintln!("{text}");
    output
}

/// Node's flags for a global `WebSocket`: Node 20 has one behind `--experimental-websocket`,
/// Node 22 and later by default.
async fn websocket_flags() -> Vec<&'static str> {
    let version = tokio::process::Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .await
        .expect("node runs (Node.js >= 20 is required)");
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .trim()
        .parse()
        .expect("node prints its major version");
    if major < 22 {
        vec!["--experimental-websocket"]
    } else {
        Vec::new()
    }
}

#[tokio::test]
async fn the_client_counts_batches_retries_and_follows_viewers_against_a_live_edge() {
    let package = client_package();
    let _serial = serial().await;
    let started = Instant::now();
    let db = temp_dir();
    let merger = MergerProcess::start(db.path(), &[]).await;
    let persist = temp_dir();
    let mut options = EdgeOptions::new(&merger.url, persist.path());
    options.config = Some(config_with_budget(NEW_ID_LIMIT, NEW_ID_PERIOD_S));
    options.vars = vec![format!("PRESENCE_TTL_MS:{PRESENCE_TTL_MS}")];
    let edge = Edge::start(&options).await;
    let dropping = Proxy::start(
        &edge.url,
        Faults {
            drop_response: 1.0,
            ..Faults::none()
        },
        28,
    )
    .await;
    let stalled = StallProxy::start(edge.url.trim_start_matches("http://")).await;
    stalled.stall();

    let project = test_project(&package);
    let mut args = websocket_flags().await;
    args.extend([
        "--test",
        "--test-concurrency=1",
        "test/entries.test.mjs",
        "test/openapi.test.mjs",
        "test/live.test.mjs",
    ]);
    let env = [
        ("TALLY_ROOT", root().display().to_string()),
        ("TALLY_EDGE_URL", edge.url.clone()),
        ("TALLY_MERGER_URL", merger.url.clone()),
        ("TALLY_DROPPING_URL", dropping.url.clone()),
        ("TALLY_STALLED_URL", format!("http://{}", stalled.addr)),
        ("TALLY_WRITE_KEY", WRITE_KEY.to_owned()),
        ("TALLY_NEW_ID_LIMIT", NEW_ID_LIMIT.to_string()),
        ("TALLY_PRESENCE_TTL_MS", PRESENCE_TTL_MS.to_string()),
    ];
    let node_started = Instant::now();
    let output = node(project.path(), &args, &env, "the client's Node tests").await;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("# fail 0") && !report.contains("# pass 0"),
        "the Node tests ran and none failed"
    );
    assert!(
        dropping.stats().responses_dropped >= 1,
        "the unknown-outcome test sent its hit through the dropping proxy"
    );
    eprintln!(
        "client Node tests: {:.1} s (whole test {:.1} s)",
        node_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn the_example_page_counts_likes_and_shows_viewers_in_chromium() {
    let Some(chromium) = crate::dashboard::chromium("the client's browser test") else {
        return;
    };
    let package = client_package();
    let _serial = serial().await;
    let started = Instant::now();
    let db = temp_dir();
    let merger = MergerProcess::start(db.path(), &[]).await;
    let persist = temp_dir();
    // One object per counter: a second visitor's first read (the page reads once) must show
    // the three likes. With a counter spread over two objects, an object that counted one of
    // them and had not yet heard the others' sync may answer 2 for up to the staleness bound
    // (`READ_TTL_MS` + `SYNC_TIMEOUT_MS`), as designed; the page does not read again, so the
    // check raced that (a fresh-clone run read 2 for 15 s).
    let edge = Edge::start(&EdgeOptions::one_object(&merger.url, persist.path())).await;

    let target = target_dir();
    std::fs::create_dir_all(&target).expect("the target dir can be created");
    let screenshot = target.join("client-example.png");
    let _ = std::fs::remove_file(&screenshot);
    let env = [
        ("TALLY_EDGE_URL", edge.url.clone()),
        ("TALLY_MERGER_URL", merger.url.clone()),
        ("TALLY_CHROMIUM", chromium.display().to_string()),
        ("TALLY_CLIENT_PACKAGE", package.display().to_string()),
        (
            "TALLY_EXAMPLE",
            root().join("js/tally-client/example").display().to_string(),
        ),
        ("TALLY_SCREENSHOT", screenshot.display().to_string()),
    ];
    let script = root().join("tests/browser/client.mjs");
    node(
        &root(),
        &[&script.display().to_string()],
        &env,
        "the example page's browser checks",
    )
    .await;
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!(
        "client browser test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    edge.stop().await;
    merger.terminate().await;
}
