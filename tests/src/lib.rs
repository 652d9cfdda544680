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

/// The key every test edge signs session tokens with (`SESSION_KEY`).
pub const SESSION_KEY: &str = "e2e-session-key-0123456789";

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

/// How long a test's HTTP client keeps an idle connection for reuse: less than the 5 s after
/// which workerd closes one (its HTTP server's pipeline timeout, measured: a kept-alive
/// connection to the worker closes 5.0 s after its last answer). A request sent on a
/// connection the server is closing that moment fails after it was sent, and a `PUT` so
/// failed cannot be retried without risking a double count; a connection idle longer than
/// this is never reused.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(2);

/// The longest any test request may take, unless the test sets a shorter one: a request that
/// gets no answer fails the test then, instead of hanging until CI's limit. Generous, since
/// it bounds a hang, not a speed (the slowest request of a test run under the test command's
/// load takes a few seconds: a read that waits for a stopped merger, a large import).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP client for the tests, for the worker and the merger alike: an idle connection is
/// reused for [`IDLE_CONNECTION`] at most, and every request ends within [`REQUEST_TIMEOUT`].
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(IDLE_CONNECTION)
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client with no TLS settings builds")
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, or `target/` in the repository): where
/// builds and test artifacts (screenshots, logs kept after a run) go.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// The merger binary the tests start: the one `TALLY_E2E_MERGER_BIN` names, or
/// `<target>/debug/tally-merger`. The harness builds nothing: a build inside a test would
/// compete with the running tests for the cores, and `cargo build -p tally-merger` resolves
/// the dependencies' features for that package alone, so it would build them again beside
/// the workspace's build. `scripts/test.sh` builds the binary before any test starts and
/// names it here; by hand, `cargo build -p tally-merger` first (docs/testing.md). Panics,
/// naming the fix, when the binary is missing or older than a source it is built from.
pub fn merger_binary() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let binary = std::env::var_os("TALLY_E2E_MERGER_BIN")
                .map_or_else(|| target_dir().join("debug/tally-merger"), PathBuf::from);
            let sources = [
                "merger/src",
                "merger/migrations",
                "merger/assets",
                "merger/Cargo.toml",
                "shared/src",
                "shared/Cargo.toml",
                "Cargo.lock",
            ];
            built_artifact(&binary, &sources, "cargo build --locked -p tally-merger");
            binary
        })
        .clone()
}

/// The edge worker's `wrangler.toml` for tests: the worker `scripts/build-edge.sh` built (in
/// `edge/build/`, or the folder `TALLY_E2E_WORKER_BUILD` names, e.g. an older commit's build
/// to see which tests fail on it), copied under `target/tally-e2e/` and served from a
/// generated config without the `[build]` step, so each `wrangler dev` starts in seconds
/// instead of rebuilding, and a test never serves a worker that changes under it. The harness
/// builds nothing ([`merger_binary`] says why); it panics, naming the fix, when the build is
/// missing or older than a source it is built from.
pub fn worker_config() -> PathBuf {
    static COPIED: OnceLock<PathBuf> = OnceLock::new();
    COPIED
        .get_or_init(|| {
            let build = std::env::var_os("TALLY_E2E_WORKER_BUILD")
                .map_or_else(|| root().join("edge/build"), PathBuf::from);
            let sources = [
                "edge/src",
                "edge/Cargo.toml",
                "shared/src",
                "shared/Cargo.toml",
                "Cargo.lock",
                "scripts/build-edge.sh",
            ];
            built_artifact(
                &build.join("worker/shim.mjs"),
                &sources,
                "bash scripts/build-edge.sh",
            );
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

/// Panics unless `artifact` exists and is newer than every file under `sources` (paths from
/// the repository root), with a message that names `build`, the command that makes it.
fn built_artifact(artifact: &Path, sources: &[&str], build: &str) {
    fn newest(path: &Path, found: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                newest(&entry.path(), found);
            }
        } else if let Ok(modified) = meta.modified()
            && found.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            *found = Some((modified, path.to_path_buf()));
        }
    }
    let built = std::fs::metadata(artifact).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "{} is missing: the tests build nothing themselves; run `{build}` first \
             (scripts/test.sh builds everything before the tests start)",
            artifact.display()
        );
    };
    let mut found = None;
    for source in sources {
        newest(&root().join(source), &mut found);
    }
    if let Some((changed, source)) = found {
        assert!(
            changed <= built,
            "{} is older than {}: run `{build}` again (the tests build nothing themselves)",
            artifact.display(),
            source.display()
        );
    }
}

/// A copy of the test worker's config ([`worker_config`]) named `name`, beside it (so its
/// relative paths still hold), with the first `from` replaced by `to`; panics, naming
/// `what` the test changes, when the repository's `wrangler.toml` no longer has `from`.
pub fn worker_config_with(name: &str, from: &str, to: &str, what: &str) -> PathBuf {
    let base = worker_config();
    let text = std::fs::read_to_string(&base).expect("the test config is readable");
    assert!(
        text.contains(from),
        "wrangler.toml's {what} is no longer `{from}`: update this test"
    );
    let config = base.with_file_name(name);
    std::fs::write(&config, text.replacen(from, to, 1)).expect("the test config can be written");
    config
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
/// The time it took is recorded against `timeout` ([`record_timing`]).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            record_timing(what, start.elapsed(), timeout);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {timeout:?}");
}

/// Asserts that `measured` (the time `what` took) is within `bound`, and records it
/// ([`record_timing`]).
#[track_caller]
pub fn assert_within(what: &str, measured: Duration, bound: Duration) {
    record_timing(what, measured, bound);
    assert!(
        measured <= bound,
        "{what} took {measured:?}, more than {bound:?}"
    );
}

/// Records that `what` took `measured` against a test's `bound` for it: printed, and appended
/// to the file `TALLY_TIMINGS` names (one line: `what`, measured and bound in ms, tab-separated).
/// No test bounds a time tighter than 5x what it takes under the test command's load;
/// `scripts/timings.py` reads the files of several runs and lists each bound against the
/// largest time measured (docs/testing.md keeps the table).
pub fn record_timing(what: &str, measured: Duration, bound: Duration) {
    eprintln!("[timing] {what}: {measured:?} (bound {bound:?})");
    let Some(file) = std::env::var_os("TALLY_TIMINGS") else {
        return;
    };
    let line = format!(
        "{}\t{}\t{}\n",
        what.replace(['\t', '\n'], " "),
        measured.as_millis(),
        bound.as_millis()
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "[timing] cannot append to {}: {e}",
            Path::new(&file).display()
        );
    }
}

/// `tally-merger backup --database-url DATABASE --to TO` with [`merger_binary`]: a consistent
/// copy of the database taken while mergers run (docs/deployment.md, "Backups and restore").
/// Panics, with the command's message, if it fails or has not finished within 120 s (a guard
/// against a hang: a backup of a test's database takes about a second).
pub async fn merger_backup(database: &str, to: &Path) {
    let run = Command::new(merger_binary())
        .args(["backup", "--database-url", database, "--to"])
        .arg(to)
        .env_remove("TALLY_DATABASE_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("tally-merger backup finishes within 120 s")
        .expect("the merger binary runs");
    assert!(
        output.status.success(),
        "tally-merger backup failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
}

/// Sends SIGTERM (or SIGKILL) to a whole process group.
fn signal_group(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status();
}

/// How to start a merger process ([`MergerProcess::launch`]): the one way the tests and the
/// benchmarks start one.
#[derive(Debug, Clone)]
pub struct MergerLaunch {
    /// The binary ([`merger_binary`] for tests; the benchmarks start the release build).
    pub binary: PathBuf,
    /// `--database-url`: a SQLite file or a Postgres database.
    pub database: String,
    /// The loopback port; 0 lets the OS choose (no race with another process for it).
    pub port: u16,
    /// Further flags.
    pub extra: Vec<String>,
    /// Where the merger's log (stderr) goes, appended; `None`: the test's own stderr.
    pub log: Option<PathBuf>,
    /// How often readiness (`GET /readyz` answered 200) is polled: the resolution of
    /// [`MergerProcess::ready_after`].
    pub poll: Duration,
}

impl MergerLaunch {
    /// [`merger_binary`] on `database`, on a port the OS chooses, logging to the test's stderr,
    /// readiness polled every 100 ms.
    pub fn new(database: &str) -> MergerLaunch {
        MergerLaunch::of(merger_binary(), database)
    }

    /// `binary` on `database`, otherwise as [`MergerLaunch::new`] (a benchmark's release
    /// build: the debug build [`merger_binary`] checks need not exist).
    pub fn of(binary: PathBuf, database: &str) -> MergerLaunch {
        MergerLaunch {
            binary,
            database: database.to_owned(),
            port: 0,
            extra: Vec::new(),
            log: None,
            poll: Duration::from_millis(100),
        }
    }

    /// The SQLite database `tally.db` in `db_dir`.
    pub fn sqlite(db_dir: &Path) -> MergerLaunch {
        MergerLaunch::new(&sqlite_url(db_dir))
    }
}

/// The URL of the SQLite database `tally.db` in `db_dir`.
fn sqlite_url(db_dir: &Path) -> String {
    format!("sqlite://{}", db_dir.join("tally.db").display())
}

/// Longest wait for a merger to listen, and then to answer `/readyz`.
const MERGER_START_LIMIT: Duration = Duration::from_secs(60);

/// The real `tally-merger` binary on a loopback port, killed if its handle drops.
pub struct MergerProcess {
    child: Child,
    pid: u32,
    log: Option<PathBuf>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// From spawn to its `listening on` line (the store is open, it starts serving).
    pub listening_after: Duration,
    /// From spawn to the first `GET /readyz` answered 200.
    pub ready_after: Duration,
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
        let mut launch = MergerLaunch::of(binary.to_path_buf(), &sqlite_url(db_dir));
        launch.port = port;
        launch.extra = extra.iter().map(|&f| f.to_owned()).collect();
        Self::launch(&launch)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the merger on any database URL (e.g. a Postgres database several mergers
    /// share); `port` 0 lets the OS choose.
    pub async fn start_database(database: &str, port: u16, extra: &[&str]) -> MergerProcess {
        let mut launch = MergerLaunch::new(database);
        launch.port = port;
        launch.extra = extra.iter().map(|&f| f.to_owned()).collect();
        Self::launch(&launch)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a merger as `launch` says, with the tests' sync token, and waits until it is
    /// ready; an error names why it did not start (the end of its log, when it has one).
    pub async fn launch(launch: &MergerLaunch) -> Result<MergerProcess, String> {
        let listen = format!("127.0.0.1:{}", launch.port);
        let stderr = match &launch.log {
            Some(log) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .map_err(|e| format!("{}: {e}", log.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let log_start = launch
            .log
            .as_ref()
            .and_then(|log| std::fs::metadata(log).ok())
            .map_or(0, |m| m.len());
        let spawned = Instant::now();
        let mut child = Command::new(&launch.binary)
            .args(["--listen", &listen, "--database-url", &launch.database])
            .args(["--sync-token", TOKEN, "--log", "warn"])
            .args(&launch.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{} does not start: {e}", launch.binary.display()))?;
        let pid = child.id().ok_or("the merger exited at once")?;
        let why = |what: String| match &launch.log {
            Some(log) => format!(
                "{what}; the end of its log:\n{}",
                log_tail(log, log_start, 20)
            ),
            None => what,
        };
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let listening = tokio::time::timeout(MERGER_START_LIMIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.to_owned());
                }
            }
            None
        })
        .await;
        let url = match listening {
            Ok(Some(url)) => url,
            Ok(None) => return Err(why("the merger exited before listening".into())),
            Err(_) => {
                return Err(why(format!(
                    "the merger did not listen within {MERGER_START_LIMIT:?}"
                )));
            }
        };
        let listening_after = spawned.elapsed();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready = format!("{url}/readyz");
        let client = http_client();
        loop {
            let answer = client
                .get(&ready)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(why(format!(
                    "the merger exited before it was ready ({status})"
                )));
            }
            if spawned.elapsed() > MERGER_START_LIMIT {
                return Err(why(format!(
                    "the merger was not ready within {MERGER_START_LIMIT:?}"
                )));
            }
            tokio::time::sleep(launch.poll).await;
        }
        let ready_after = spawned.elapsed();
        // A test's wait, bounded; the benchmarks (which keep a log) report start times
        // themselves.
        if launch.log.is_none() {
            record_timing(
                "merger ready after it listens",
                ready_after.saturating_sub(listening_after),
                MERGER_START_LIMIT,
            );
        }
        Ok(MergerProcess {
            child,
            pid,
            log: launch.log.clone(),
            url,
            listening_after,
            ready_after,
        })
    }

    /// Its process id (its resident memory is in `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to the merger process: a stopped merger
    /// accepts connections but answers nothing, like a hung one.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.pid);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill_9(mut self) {
        self.child.kill().await.expect("the merger can be killed");
    }

    /// SIGTERM, and a clean exit within 30 s.
    pub async fn terminate(self) {
        if let Err(e) = self.stop(Duration::from_secs(30)).await {
            panic!("graceful shutdown: {e}");
        }
    }

    /// SIGTERM, and a clean exit (status 0) within `limit`, killed otherwise; answers how
    /// long it took.
    pub async fn stop(mut self, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let outcome = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(start.elapsed()),
            Ok(Ok(status)) => Err(format!("the merger exited with {status} after SIGTERM")),
            Ok(Err(e)) => Err(format!("the merger's exit status: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "the merger did not exit within {limit:?} of SIGTERM"
                ))
            }
        };
        outcome.map_err(|e| match &self.log {
            Some(log) => format!("{e}; the end of its log:\n{}", log_tail(log, 0, 20)),
            None => e,
        })
    }
}

/// The last `count` lines of `log` from byte `from` on (a server's log, for an error).
pub(crate) fn log_tail(log: &Path, from: u64, count: usize) -> String {
    let Ok(text) = std::fs::read(log) else {
        return format!("(no log at {})", log.display());
    };
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    let text = String::from_utf8_lossy(&text[from..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
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
    /// `SYNC_TIMEOUT_MS`: the longest wait for the merger's answer.
    pub sync_timeout_ms: u64,
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
    /// capped at 2 s, at most 2 s waited for the merger's answer, anti-entropy off.
    pub fn new(merger_url: &str, persist_dir: &Path) -> EdgeOptions {
        EdgeOptions {
            merger_url: merger_url.to_owned(),
            persist_dir: persist_dir.to_path_buf(),
            partitions: 4,
            spread: 2,
            sync_interval_ms: 300,
            max_backoff_ms: 2000,
            sync_timeout_ms: 2000,
            anti_entropy_ms: 0,
            rotate_ms: None,
            vars: Vec::new(),
            config: None,
            probe_status: 404,
            log: None,
        }
    }

    /// [`EdgeOptions::new`] with one object per region holding every counter (`PARTITIONS=1`,
    /// `SPREAD=1`): every hit and read of a region meets at that object.
    pub fn one_object(merger_url: &str, persist_dir: &Path) -> EdgeOptions {
        EdgeOptions {
            partitions: 1,
            spread: 1,
            ..EdgeOptions::new(merger_url, persist_dir)
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
        let var = |k: &str, v: &str| format!("{k}:{v}");
        // wrangler's dev server with the DevTools inspector off and clients served by the
        // runtime itself, not wrangler's ProxyWorker (tests/wrangler-dev.mjs says why: the
        // inspector's relay cost more CPU than the worker itself, and the proxy answered a
        // PUT now and then with a 503 of its own); the flags are `wrangler dev`'s, and the
        // runtime's address (a port workerd picks) comes back in the URL file.
        let url_dir = tempfile::tempdir().expect("a temporary folder can be made");
        let url_file = url_dir.path().join("edge.url");
        let mut command = Command::new("node");
        command
            .arg(root().join("tests/wrangler-dev.mjs"))
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
            .args(["--ip", "127.0.0.1", "--url-file"])
            .arg(&url_file)
            .args(["--log-level", "warn", "--persist-to"])
            .arg(&options.persist_dir)
            .args(["--var", &var("MERGER_URL", &options.merger_url)])
            .args(["--var", &var("SYNC_TOKEN", TOKEN)])
            .args(["--var", &var("PARTITIONS", &options.partitions.to_string())])
            .args(["--var", &var("SPREAD", &options.spread.to_string())])
            .args(["--var", &var("WRITE_KEY", WRITE_KEY)])
            .args(["--var", &var("UNIQUE_SALT", UNIQUE_SALT)])
            .args(["--var", &var("SESSION_KEY", SESSION_KEY)])
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
                &var("SYNC_TIMEOUT_MS", &options.sync_timeout_ms.to_string()),
            ])
            .args(["--var", "ALLOW_REGION_OVERRIDE:true"])
            .args(
                options
                    .rotate_ms
                    .iter()
                    .flat_map(|ms| ["--var".to_owned(), var("ROTATE_MS", &ms.to_string())]),
            )
            .args(options.vars.iter().flat_map(|v| ["--var", v.as_str()]))
            .env("WRANGLER_SEND_METRICS", "false")
            // wrangler's debug log (every message, whatever the level) goes beside the
            // tests' other output, not into the home folder.
            .env(
                "WRANGLER_LOG_PATH",
                target_dir().join("tally-e2e/wrangler-logs"),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("wrangler starts (run scripts/bootstrap.sh first)");
        let pgid = child.id().expect("wrangler is running");
        let start = Instant::now();
        let url = loop {
            // Written whole (a rename) once the worker is ready.
            if let Ok(url) = std::fs::read_to_string(&url_file) {
                break url.trim().to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(status);
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "wrangler dev is not ready after 180 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let probe = format!("{url}/_probe");
        let client = crate::http_client();
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
    /// Why, as the HTTP client words it (with its sources).
    NoAnswer(String),
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
        Err(e) => Outcome::NoAnswer(error_chain(&e)),
    }
}

/// An error and its sources, one after the other: reqwest's own words ("error sending
/// request") name no cause; hyper's and the system's below it do.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        Outcome::NotSent | Outcome::NoAnswer(_) => (0, Value::Null),
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

/// The halves `(p, n)` and epoch a session token holds for the counter `key` (`g:home`,
/// `pn:viewers`): tokens are `1.<key id>.<mac>.<written>;<read>`, each list of entries
/// `<kind>:<id>=<p>[-<n>][@<epoch>]` (edge/src/session.rs). The signature is not checked.
pub fn session_entry(token: &str, key: &str) -> Option<(u128, u128, u64)> {
    let body = token.splitn(4, '.').nth(3)?;
    body.split([';', ',']).find_map(|entry| {
        let (k, totals) = entry.rsplit_once('=')?;
        if k != key {
            return None;
        }
        let (totals, epoch) = totals.split_once('@').unwrap_or((totals, "0"));
        let (p, n) = totals.split_once('-').unwrap_or((totals, "0"));
        Some((p.parse().ok()?, n.parse().ok()?, epoch.parse().ok()?))
    })
}

/// A session token's entries with the signature left as it is and the body replaced by
/// `body`: what a client that edits its token sends (it never verifies).
pub fn forge_session(token: &str, body: &str) -> String {
    let head: Vec<&str> = token.splitn(4, '.').take(3).collect();
    format!("{}.{body}", head.join("."))
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
