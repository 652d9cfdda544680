//! Test harness for tally's end-to-end tests: starts the real `tally-merger` binary and the
//! real edge worker under `wrangler dev` on free loopback ports, waits until they answer,
//! and stops them (the whole process group) at the end.
//!
//! [`proxy`] puts faults between the edge and the merger; [`checker`] sends hits and checks
//! the final counts against what was acknowledged; [`postgres`] runs a throwaway Postgres
//! cluster for the merger's Postgres store; [`stall`] is a TCP proxy that goes silent
//! without closing, for clients that vanish.
//!
//! Everything listens on 127.0.0.1 only. Processes are killed when their handle drops, so a
//! failing test leaves nothing running.

pub mod checker;
pub mod postgres;
pub mod proxy;
pub mod raw;
pub mod stall;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The sync token every test uses (the merger requires at least 16 characters).
pub const TOKEN: &str = "e2e-sync-token-0123456789";
/// The application write key every test edge has; [`put_hit`] presents it, so tests that
/// are not about the public write policy may send any delta and write gauges.
pub const WRITE_KEY: &str = "e2e-write-key-0123456789";

/// The secret of every test edge's derived visitor keys (`UNIQUE_SALT`).
pub const UNIQUE_SALT: &str = "e2e-unique-salt-0123456789";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// A port free on 127.0.0.1 right now (for programs that must be told their port).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback has free ports");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, or `target/` in the repository): where
/// builds and test artifacts (screenshots, logs kept after a run) go.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// The merger binary, built once per test process.
pub fn merger_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--locked", "-p", "tally-merger"])
                .current_dir(root())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building tally-merger failed");
            target_dir().join("debug/tally-merger")
        })
        .clone()
}

/// The edge worker's `wrangler.toml` for tests: the worker is built once per test process
/// (`scripts/build-edge.sh`), copied under `target/tally-e2e/`, and served from a generated
/// config without the `[build]` step, so each `wrangler dev` starts in seconds instead of
/// rebuilding, and a test never serves a worker that changes under it.
pub fn worker_config() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // TALLY_E2E_WORKER_BUILD serves another build (e.g. an older commit's, to see which
            // tests fail on it) instead of building this checkout's.
            let build = match std::env::var_os("TALLY_E2E_WORKER_BUILD") {
                Some(dir) => PathBuf::from(dir),
                None => build_worker(),
            };
            let dir = target_dir()
                .join("tally-e2e")
                .join(format!("worker-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(&build, &dir.join("build")).expect("the built worker can be copied");
            let repo = std::fs::read_to_string(root().join("wrangler.toml"))
                .expect("wrangler.toml is readable");
            let config = dir.join("wrangler.toml");
            std::fs::write(&config, without_build(&repo, "build/worker/shim.mjs"))
                .expect("the test config can be written");
            config
        })
        .clone()
}

/// Builds the worker into `edge/build/` unless the build there is of the same sources: every
/// test binary asks (each is a process of its own), and one build per change of the sources
/// is enough (a no-op `worker-build` still takes about 20 s). The sources' fingerprint is
/// kept beside the build; a lock file makes test binaries that run at once take turns.
fn build_worker() -> PathBuf {
    let build = root().join("edge/build");
    let stamp = build.join(".tally-sources");
    let fingerprint = worker_sources_fingerprint();
    let _lock = BuildLock::take(&root().join("edge/.build.lock"));
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s == fingerprint)
        && build.join("worker/shim.mjs").exists();
    if !fresh {
        let status = std::process::Command::new("bash")
            .arg(root().join("scripts/build-edge.sh"))
            .current_dir(root())
            .stdout(Stdio::null())
            .status()
            .expect("bash runs");
        assert!(status.success(), "building the edge worker failed");
        std::fs::write(&stamp, &fingerprint).expect("the build's stamp can be written");
    }
    build
}

/// A fingerprint of everything the worker build reads: the two crates' sources and
/// manifests, the lock file, the toolchain, the build script and the JS tool pins.
fn worker_sources_fingerprint() -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    for dir in ["edge/src", "shared/src"] {
        walk(&root.join(dir), &mut files);
    }
    for file in [
        "edge/Cargo.toml",
        "shared/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        "scripts/build-edge.sh",
        "package-lock.json",
    ] {
        files.push(root.join(file));
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        file.strip_prefix(&root).unwrap_or(file).hash(&mut hasher);
        std::fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    format!("{:016x} over {} files\n", hasher.finish(), files.len())
}

/// An exclusive lock held while the value lives: a file created exclusively, holding the
/// owner's pid; a lock whose owner is gone is taken over.
struct BuildLock(PathBuf);

impl BuildLock {
    fn take(path: &Path) -> BuildLock {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    let _ = write!(file, "{}", std::process::id());
                    return BuildLock(path.to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path).unwrap_or_default();
                    let alive = owner.trim().parse::<u32>().is_ok_and(|pid| {
                        pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
                    });
                    if !alive && !owner.is_empty() {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{} held for 10 minutes by {owner}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `config` (a `wrangler.toml`) with its `[build]` section dropped and `main` set to `main`;
/// bindings, migrations, rate limits and vars stay as deployed.
pub fn without_build(config: &str, main: &str) -> String {
    let mut out = String::with_capacity(config.len());
    let mut in_build = false;
    for line in config.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
        }
        if in_build {
            continue;
        }
        if trimmed.starts_with("main ") || trimmed.starts_with("main=") {
            out.push_str(&format!("main = \"{main}\""));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Copies the files of `from` into `to` (created), recursively, skipping dot entries
/// (`.wrangler` state, worker-build's `.tmp`).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {timeout:?}");
}

/// Sends SIGTERM (or SIGKILL) to a whole process group.
fn signal_group(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status();
}

/// The real `tally-merger` binary on a loopback port.
pub struct MergerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl MergerProcess {
    /// Starts the merger on the SQLite database in `db_dir`, on the port chosen by the OS,
    /// and waits until it is ready.
    pub async fn start(db_dir: &Path, extra: &[&str]) -> MergerProcess {
        Self::start_binary(&merger_binary(), db_dir, 0, extra).await
    }

    /// Like [`MergerProcess::start`], on a given port (to restart where the edge expects it).
    pub async fn start_on(db_dir: &Path, port: u16) -> MergerProcess {
        Self::start_binary(&merger_binary(), db_dir, port, &[]).await
    }

    /// Starts a given merger binary (the merger's own tests pass theirs); `port` 0 lets the OS
    /// choose.
    pub async fn start_binary(
        binary: &Path,
        db_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> MergerProcess {
        let database = format!("sqlite://{}", db_dir.join("tally.db").display());
        Self::start_url(binary, &database, port, extra).await
    }

    /// Starts the merger on any database URL (e.g. a Postgres database several mergers
    /// share); `port` 0 lets the OS choose.
    pub async fn start_database(database: &str, port: u16, extra: &[&str]) -> MergerProcess {
        Self::start_url(&merger_binary(), database, port, extra).await
    }

    async fn start_url(binary: &Path, database: &str, port: u16, extra: &[&str]) -> MergerProcess {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(binary)
            .args([
                "--listen",
                &listen,
                "--database-url",
                database,
                "--sync-token",
                TOKEN,
            ])
            .args(["--log", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the merger binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("stdout is readable") {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.to_owned();
                }
            }
            panic!("the merger exited before listening");
        })
        .await
        .expect("the merger listens within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready = format!("{url}/readyz");
        wait_until(Duration::from_secs(10), "merger ready", || async {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        MergerProcess { child, url }
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to the merger process: a stopped merger
    /// accepts connections but answers nothing, like a hung one.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the merger is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill_9(mut self) {
        self.child.kill().await.expect("the merger can be killed");
    }

    /// SIGTERM, and a clean exit within 30 s.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("the merger is running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the merger exits within 30 s of SIGTERM")
            .expect("the exit status is readable");
        assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    }
}

/// Settings of an edge under `wrangler dev`.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Where the edge syncs to.
    pub merger_url: String,
    /// Durable Object storage directory (`--persist-to`).
    pub persist_dir: PathBuf,
    /// `PARTITIONS`: objects per region.
    pub partitions: u32,
    /// `SPREAD`: objects one counter's hits go to.
    pub spread: u32,
    /// `SYNC_INTERVAL_MS`.
    pub sync_interval_ms: u64,
    /// `MAX_BACKOFF_MS`.
    pub max_backoff_ms: u64,
    /// `ANTI_ENTROPY_MS` (0: off).
    pub anti_entropy_ms: u64,
    /// `ROTATE_MS` (0: never); `None` keeps the worker's (one day: no rotation in a test).
    pub rotate_ms: Option<u64>,
    /// Further `NAME:value` vars; they come last, so they override the ones above.
    pub vars: Vec<String>,
    /// The `wrangler.toml` to serve; by default [`worker_config`] (the repository's, without
    /// its `[build]` step, serving the worker built once per process). Wrangler runs in that
    /// file's folder.
    pub config: Option<PathBuf>,
    /// The status `GET /_probe` answers once the worker serves (tally's Worker: 404).
    pub probe_status: u16,
    /// Where wrangler's output goes (appended), instead of the test's own output.
    pub log: Option<PathBuf>,
}

impl EdgeOptions {
    /// Defaults for tests: 4 partitions per region, each counter spread over 2 of them
    /// (so every counter has at least two objects that answer it), 300 ms syncs, backoff
    /// capped at 2 s, anti-entropy off.
    pub fn new(merger_url: &str, persist_dir: &Path) -> EdgeOptions {
        EdgeOptions {
            merger_url: merger_url.to_owned(),
            persist_dir: persist_dir.to_path_buf(),
            partitions: 4,
            spread: 2,
            sync_interval_ms: 300,
            max_backoff_ms: 2000,
            anti_entropy_ms: 0,
            rotate_ms: None,
            vars: Vec::new(),
            config: None,
            probe_status: 404,
            log: None,
        }
    }
}

/// The edge worker under `wrangler dev` (the real workerd runtime, offline).
pub struct Edge {
    child: Child,
    pgid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Edge {
    /// Serves a built worker (`options.config`, or by default the one built once for this
    /// test process, [`worker_config`]), with the region override allowed, until
    /// `GET /_probe` answers `options.probe_status`.
    ///
    /// workerd now and then fails to start ("The Workers runtime failed to start", seen once
    /// in a fresh-clone run with no further cause logged): a start that exits before serving
    /// is tried again, on fresh ports, up to three times.
    pub async fn start(options: &EdgeOptions) -> Edge {
        let config = match &options.config {
            Some(config) => config.clone(),
            None => tokio::task::spawn_blocking(worker_config)
                .await
                .expect("building the worker does not panic"),
        };
        let mut attempt = 1;
        loop {
            match Self::try_start(options, &config).await {
                Ok(edge) => return edge,
                Err(status) if attempt < 3 => {
                    eprintln!("wrangler dev exited before serving ({status}); starting it again");
                    attempt += 1;
                }
                Err(status) => panic!("wrangler dev exited before serving, 3 times: {status}"),
            }
        }
    }

    async fn try_start(
        options: &EdgeOptions,
        config: &Path,
    ) -> Result<Edge, std::process::ExitStatus> {
        let port = free_port();
        let inspector = free_port();
        let var = |k: &str, v: &str| format!("{k}:{v}");
        let wrangler = root().join("node_modules/.bin/wrangler");
        let mut command = Command::new(&wrangler);
        command
            .current_dir(config.parent().unwrap_or(Path::new("/")))
            .arg("--config")
            .arg(config);
        let (stdout, stderr) = match &options.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("the wrangler log file can be opened");
                let copy = file.try_clone().expect("a file handle can be cloned");
                (Stdio::from(file), Stdio::from(copy))
            }
            None => (Stdio::inherit(), Stdio::inherit()),
        };
        let mut child = command
            .args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--inspector-port",
                &inspector.to_string(),
                "--show-interactive-dev-session=false",
            ])
            .args(["--log-level", "warn", "--persist-to"])
            .arg(&options.persist_dir)
            .args(["--var", &var("MERGER_URL", &options.merger_url)])
            .args(["--var", &var("SYNC_TOKEN", TOKEN)])
            .args(["--var", &var("PARTITIONS", &options.partitions.to_string())])
            .args(["--var", &var("SPREAD", &options.spread.to_string())])
            .args(["--var", &var("WRITE_KEY", WRITE_KEY)])
            .args(["--var", &var("UNIQUE_SALT", UNIQUE_SALT)])
            .args([
                "--var",
                &var("ANTI_ENTROPY_MS", &options.anti_entropy_ms.to_string()),
            ])
            .args([
                "--var",
                &var("SYNC_INTERVAL_MS", &options.sync_interval_ms.to_string()),
            ])
            .args([
                "--var",
                &var("MAX_BACKOFF_MS", &options.max_backoff_ms.to_string()),
            ])
            .args([
                "--var",
                "SYNC_TIMEOUT_MS:2000",
                "--var",
                "ALLOW_REGION_OVERRIDE:true",
            ])
            .args(
                options
                    .rotate_ms
                    .iter()
                    .flat_map(|ms| ["--var".to_owned(), var("ROTATE_MS", &ms.to_string())]),
            )
            .args(options.vars.iter().flat_map(|v| ["--var", v.as_str()]))
            .env("WRANGLER_SEND_METRICS", "false")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("wrangler starts (run scripts/bootstrap.sh first)");
        let pgid = child.id().expect("wrangler is running");
        let url = format!("http://127.0.0.1:{port}");
        let probe = format!("{url}/_probe");
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            // The Worker answers 404 JSON for a path that is no counter: it is up. Only its
            // own answer counts (a JSON body), not one of wrangler's while it loads.
            if let Ok(r) = client.get(&probe).send().await
                && r.status() == options.probe_status
                && r.json::<Value>().await.is_ok_and(|b| b.is_object())
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(status);
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "wrangler dev is not serving after 180 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Edge { child, pgid, url })
    }

    /// The process group of wrangler and its workerd (to measure them, e.g. their memory).
    pub fn process_group(&self) -> u32 {
        self.pgid
    }

    /// SIGKILL to wrangler and workerd at once: what a crash of the runtime looks like. Durable
    /// Object storage in the persist directory stays, as after a machine failure.
    pub async fn kill_9(mut self) {
        signal_group(self.pgid, "-KILL");
        let _ = self.child.wait().await;
    }

    /// Stops wrangler and its workerd: SIGTERM to the group, SIGKILL if it lingers.
    pub async fn stop(mut self) {
        signal_group(self.pgid, "-TERM");
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            signal_group(self.pgid, "-KILL");
            let _ = self.child.wait().await;
        }
        // workerd may outlive wrangler by a moment; make sure the group is gone.
        signal_group(self.pgid, "-KILL");
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        signal_group(self.pgid, "-KILL");
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An HTTP answer: status and JSON body (`Null` if not JSON).
    Answered(u16, Value),
    /// The connection could not be made: the request was definitely not sent.
    NotSent,
    /// Sent, but no answer came (connection lost or timeout): it may or may not have landed.
    NoAnswer,
}

/// One `PUT` of `{"delta": delta}` to the edge, with its region and the write key, and how it
/// ended.
pub async fn put_hit(
    client: &reqwest::Client,
    edge: &str,
    path: &str,
    region: &str,
    delta: i64,
) -> Outcome {
    let request = client
        .put(format!("{edge}{path}"))
        .header("X-Tally-Region", region)
        .header("Authorization", format!("Bearer {WRITE_KEY}"))
        .header("Content-Type", "application/json")
        .body(format!("{{\"delta\":{delta}}}"))
        .timeout(Duration::from_secs(20));
    match request.send().await {
        Ok(r) => Outcome::Answered(r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(e) if e.is_connect() => Outcome::NotSent,
        Err(_) => Outcome::NoAnswer,
    }
}

/// One `PUT` to the edge. Returns the HTTP status (0 if there was no answer) and the body.
pub async fn hit(
    client: &reqwest::Client,
    edge: &str,
    path: &str,
    region: &str,
    delta: i64,
) -> (u16, Value) {
    match put_hit(client, edge, path, region, delta).await {
        Outcome::Answered(status, body) => (status, body),
        Outcome::NotSent | Outcome::NoAnswer => (0, Value::Null),
    }
}

/// `GET` a JSON document; `(0, Null)` if there was no answer.
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    match client
        .get(url)
        .timeout(Duration::from_secs(20))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// The value of one series of the merger's `/metrics`, e.g.
/// `tally_commits_total{purpose="sync"}`. Panics when the series is missing, so a check on
/// it cannot pass by reading nothing.
pub async fn metric(client: &reqwest::Client, merger: &str, series: &str) -> f64 {
    let text = client
        .get(format!("{merger}/metrics"))
        .send()
        .await
        .expect("the merger answers /metrics")
        .text()
        .await
        .expect("metrics are text");
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("the merger's /metrics has no series {series}"))
}

/// A `count` field as an integer, in either of its JSON forms.
pub fn count_of(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Holds the lock that runs end-to-end tests one at a time: each starts a `wrangler dev`,
/// whose build writes `edge/build/`, and two at once would also starve each other's CPU.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A temp dir.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir can be created")
}

#[cfg(test)]
mod config_tests {
    use super::*;

    const REPO_CONFIG: &str = include_str!("../../wrangler.toml");

    #[test]
    fn the_test_config_has_no_build_step_and_keeps_every_binding() {
        let config = without_build(REPO_CONFIG, "build/worker/shim.mjs");
        assert!(!config.contains("[build]"), "{config}");
        assert!(!config.contains("build-edge.sh"), "{config}");
        assert!(config.contains("main = \"build/worker/shim.mjs\"\n"));
        for kept in [
            "[durable_objects]",
            "[[migrations]]",
            "[[ratelimits]]",
            "[vars]",
        ] {
            assert!(config.contains(kept), "{kept} is dropped");
        }
    }
}
