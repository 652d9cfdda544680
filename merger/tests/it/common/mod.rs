//! Helpers shared by the merger's tests: an in-process merger on a temp SQLite file, request
//! builders, and the real binary on a loopback port (through the end-to-end harness).
#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod rows;

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tally_merger::{Config, Merger};
use tower::ServiceExt;

pub use tally_e2e::{MergerProcess, TOKEN};

/// The admin token of the tests that need one (`Config::admin_token`).
pub const ADMIN: &str = "admin-token-for-tests-0123";

/// A merger with [`ADMIN`] as its admin token and a history snapshot every 30 ms, so history
/// shows at once what an admin call did.
pub async fn admin_merger() -> TestMerger {
    TestMerger::with(|c| {
        c.admin_token = Some(ADMIN.into());
        c.snapshot_interval = std::time::Duration::from_millis(30);
    })
    .await
}

/// A merger on a fresh SQLite file in a temp dir, driven in-process.
pub struct TestMerger {
    pub dir: tempfile::TempDir,
    pub merger: Merger,
    pub app: Router,
}

impl TestMerger {
    pub async fn new() -> TestMerger {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestMerger {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        Self::open_in(dir, adjust).await
    }

    /// Opens a merger on the database of `dir` (kept across [`TestMerger::reopen`]).
    pub async fn open_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestMerger {
        let mut config = Config::new(database_url(dir.path()), TOKEN);
        adjust(&mut config);
        let merger = Merger::open(config)
            .await
            .expect("the merger opens its temp database");
        let app = merger.router();
        TestMerger { dir, merger, app }
    }

    /// Closes the merger (committing what is queued) and opens a new one on the same file.
    pub async fn reopen(self) -> TestMerger {
        self.reopen_with(|_| {}).await
    }

    /// [`TestMerger::reopen`] with a configuration of its own.
    pub async fn reopen_with(self, adjust: impl FnOnce(&mut Config)) -> TestMerger {
        self.merger.close().await;
        Self::open_in(self.dir, adjust).await
    }

    /// Sends a request; returns the status and the body as JSON (`Value::Null` if empty or
    /// not JSON).
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body is readable")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    /// POSTs a sync body with the right token and content type.
    pub async fn sync(&self, body: &Value) -> (StatusCode, Value) {
        self.send(sync_request(body.to_string())).await
    }

    /// POSTs a read body with the right token and content type.
    pub async fn read(&self, body: &Value) -> (StatusCode, Value) {
        self.send(read_request(body.to_string())).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self
            .app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .expect("the router is infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body is readable")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("metrics are UTF-8")
    }

    /// The value of one sample of `/metrics`, named with its labels as written
    /// (`tally_commits_total{purpose="sync"}`); 0 when the line is absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Every counter and gauge with its full view: the observable state, for "unchanged"
    /// checks.
    pub async fn everything(&self) -> Value {
        let mut all = serde_json::Map::new();
        for ns in ["counters", "gauges"] {
            let (status, page) = self.get(&format!("/v1/{ns}?limit=1000")).await;
            assert_eq!(status, StatusCode::OK);
            for item in page["items"].as_array().unwrap() {
                let id = item["id"].as_str().unwrap();
                all.insert(
                    format!("{ns}/{id}"),
                    self.get(&format!("/v1/{ns}/{id}")).await.1,
                );
            }
        }
        Value::Object(all)
    }
}

pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("tally.db").display())
}

/// A JSON `POST` to `path`, with `Authorization: Bearer` of `token` if given.
pub fn post_json(path: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    r.body(body.into()).unwrap()
}

/// A JSON `POST` of an edge route, with the sync token.
fn edge_post(path: &str, body: impl Into<Body>) -> Request<Body> {
    post_json(path, Some(TOKEN), body)
}

pub fn sync_request(body: impl Into<Body>) -> Request<Body> {
    edge_post("/v1/sync", body)
}

pub fn retire_request(body: impl Into<Body>) -> Request<Body> {
    edge_post("/v1/retire", body)
}

pub fn read_request(body: impl Into<Body>) -> Request<Body> {
    edge_post("/v1/read", body)
}

/// The value of `sample` (name and labels, as written) in a metrics text; 0 when absent.
#[track_caller]
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a metric value is a number"))
        .next()
        .unwrap_or(0.0)
}

/// A replica id from a small number.
pub fn replica(n: u64) -> String {
    format!("{n:032x}")
}

/// The id of incarnation `generation` of edge object `object` (a lineage id).
pub fn incarnation(object: u128, generation: u32) -> tally_crdt::ReplicaId {
    tally_crdt::ReplicaId::lineage(tally_crdt::ReplicaId::from_u128(object << 32), generation)
}

/// A version-4 sync body of `g:a` from incarnation `generation` of object 1: `p`, and the
/// carry (absent when 0).
pub fn v4_sync(generation: u32, p: u64, carried: u64) -> Value {
    let mut counter = json!({"kind": "g", "id": "a", "p": p, "n": 0});
    if carried > 0 {
        counter["carried"] = json!({"p": carried, "n": 0});
    }
    json!({
        "version": 4,
        "replica": incarnation(1, generation).to_string(),
        "region": "eu",
        "counters": [counter],
    })
}

/// A sync body of the current protocol version: `counters` as `(id, kind, p, n)`.
pub fn sync_body(replica_n: u64, region: &str, counters: &[(&str, &str, u64, u64)]) -> Value {
    versioned_sync_body(2, replica_n, region, counters)
}

/// A sync body of version 1, as an edge one version behind sends it.
pub fn sync_body_v1(replica_n: u64, region: &str, counters: &[(&str, &str, u64, u64)]) -> Value {
    versioned_sync_body(1, replica_n, region, counters)
}

fn versioned_sync_body(
    version: u32,
    replica_n: u64,
    region: &str,
    counters: &[(&str, &str, u64, u64)],
) -> Value {
    let counters: Vec<Value> = counters
        .iter()
        .map(|&(id, kind, p, n)| json!({"id": id, "kind": kind, "p": p, "n": n}))
        .collect();
    json!({"version": version, "replica": replica(replica_n), "region": region, "counters": counters})
}

/// A read body: `counters` as `(id, kind)`, for `replica_n` if given.
pub fn read_body(replica_n: Option<u64>, counters: &[(&str, &str)]) -> Value {
    let counters: Vec<Value> = counters
        .iter()
        .map(|&(id, kind)| json!({"id": id, "kind": kind}))
        .collect();
    let mut body = json!({"version": 2, "counters": counters});
    if let Some(r) = replica_n {
        body["replica"] = replica(r).into();
    }
    body
}

/// Asserts a time as tally writes it: RFC 3339 UTC with exactly three fractional digits.
#[track_caller]
pub fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_default();
    let form = text.len() == 24
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && text.as_bytes()[19] == b'.';
    assert!(form, "a time like 2030-10-10T12:11:42.000Z: {value}");
    assert!(text.parse::<tally_crdt::Timestamp>().is_ok(), "{value}");
}

/// Asserts an error answer: status, and the JSON error body with this code and a message.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "body: {}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "body: {}", answer.1);
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error has a message: {}",
        answer.1
    );
}

/// The real `tally-merger` binary of this build, on a loopback port chosen by the OS.
pub async fn start_binary(db_dir: &Path) -> MergerProcess {
    MergerProcess::start_binary(
        Path::new(env!("CARGO_BIN_EXE_tally-merger")),
        db_dir,
        0,
        &[],
    )
    .await
}

/// Takes the write lock of the SQLite database in `dir` (made if missing) from a connection of
/// the test's (`BEGIN EXCLUSIVE`): every write of a merger on it waits, up to its busy timeout
/// (5 s), until [`release_write_lock`]. On a database in WAL mode this is the same lock as
/// `BEGIN IMMEDIATE` (reads go on); on a new file it also holds back a merger's open, whose
/// switch to WAL would otherwise fail at once under `IMMEDIATE`.
pub async fn hold_write_lock(dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut db = sqlx::sqlite::SqliteConnectOptions::from_str(&database_url(dir))
        .expect("a SQLite URL")
        .create_if_missing(true)
        .connect()
        .await
        .expect("the test database opens");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut db)
        .await
        .expect("the test takes the write lock");
    db
}

/// Lets go of the lock [`hold_write_lock`] took.
pub async fn release_write_lock(mut db: sqlx::SqliteConnection) {
    use sqlx::Connection;
    sqlx::query("ROLLBACK")
        .execute(&mut db)
        .await
        .expect("the test lets the write lock go");
    db.close().await.expect("the test connection closes");
}

/// Makes the merger's SQLite database refuse any row named `poison` in `table` (a trigger),
/// so that a batch holding one fails whole; `false` drops the trigger.
pub async fn refuse_poison(t: &TestMerger, table: &str, on: bool) {
    use sqlx::Connection;
    let mut db = sqlx::SqliteConnection::connect(&database_url(t.dir.path()))
        .await
        .expect("the test database opens");
    let sql = if on {
        format!(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON {table} WHEN NEW.name = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison refused by the test'); END"
        )
    } else {
        "DROP TRIGGER refuse_poison".to_owned()
    };
    sqlx::query(&sql)
        .execute(&mut db)
        .await
        .expect("the trigger changes");
    db.close().await.expect("the test connection closes");
}
