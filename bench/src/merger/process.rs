//! The processes `tally-bench compare merger` starts: the release merger binary on any database
//! ([`MergerChild`]), and servers it measures against ([`Background`]: the hello-world
//! baseline, `redis-server`). Each listens on 127.0.0.1 on a port from the harness's
//! [`tally_e2e::free_port`], is killed if its handle drops (an error ends the run early), and
//! is stopped with SIGTERM at the end.
//!
//! Why not the harness's `MergerProcess`: it starts a merger on the SQLite file of a
//! directory (or the debug binary on any URL), notices readiness within 100 ms and hides the
//! process id. The benchmark needs the release binary on Postgres too, the time from spawn to
//! the first `/readyz` 200 within a few milliseconds, and the process id for its resident
//! memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::Error;
use crate::memory::{self, Rss};

/// Longest wait for a process to answer after it was spawned.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for a server the benchmark measures against to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How often readiness is polled: the resolution of the start time.
const POLL: Duration = Duration::from_millis(2);
/// Attempts to start on a free port: another process may take it between the harness's
/// `free_port` and the bind.
const START_ATTEMPTS: u32 = 3;

/// A `tally-merger` process.
pub struct MergerChild {
    child: Child,
    pid: u32,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// From spawn to the first `GET /readyz` answered 200.
    pub ready_after: Duration,
    /// From spawn to its `listening on` line (the store is open, it starts serving).
    pub listening_after: Option<Duration>,
}

impl MergerChild {
    /// Starts `binary` on `database` with the harness's sync token, logging at `warn` to
    /// `log` (appended), with `extra` flags, and waits until `/readyz` answers 200.
    pub async fn start(
        binary: &Path,
        database: &str,
        extra: &[String],
        log: &Path,
    ) -> Result<MergerChild, Error> {
        let mut attempt = 1;
        loop {
            match Self::start_once(binary, database, extra, log).await {
                Ok(merger) => return Ok(merger),
                Err(StartFailure::PortTaken) if attempt < START_ATTEMPTS => attempt += 1,
                Err(StartFailure::PortTaken) => {
                    return Err("the merger could not bind a free port, three times".into());
                }
                Err(StartFailure::Other(e)) => return Err(e),
            }
        }
    }

    async fn start_once(
        binary: &Path,
        database: &str,
        extra: &[String],
        log: &Path,
    ) -> Result<MergerChild, StartFailure> {
        let port = tally_e2e::free_port();
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| StartFailure::Other(format!("{}: {e}", log.display()).into()))?;
        let log_start = log_file.metadata().map_or(0, |m| m.len());
        let spawned = Instant::now();
        let mut child = Command::new(binary)
            .args(["--listen", &listen, "--database-url", database])
            .args(["--sync-token", tally_e2e::TOKEN, "--log", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StartFailure::Other(format!("{}: {e}", binary.display()).into()))?;
        let pid = child
            .id()
            .ok_or_else(|| StartFailure::Other("the merger exited at once".into()))?;
        // Its stdout: the moment of `listening on`, then drained until it exits.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut listening = Some(listening_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("listening on ")
                    && let Some(tx) = listening.take()
                {
                    let _ = tx.send(Instant::now());
                }
            }
        });
        let http = reqwest::Client::builder()
            .timeout(START_LIMIT)
            .build()
            .map_err(|e| StartFailure::Other(e.into()))?;
        let ready = format!("{url}/readyz");
        loop {
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = log_tail(log, log_start);
                if tail.contains("cannot listen") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Other(
                    format!("the merger exited before it was ready ({status}):\n{tail}").into(),
                ));
            }
            if spawned.elapsed() > START_LIMIT {
                return Err(StartFailure::Other(
                    format!("the merger was not ready within {START_LIMIT:?}").into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        let ready_after = spawned.elapsed();
        let listening_after = listening_rx.await.ok().map(|at| at - spawned);
        Ok(MergerChild {
            child,
            pid,
            log: log.to_path_buf(),
            url,
            ready_after,
            listening_after,
        })
    }

    /// Its resident memory now.
    pub fn rss(&self) -> Result<Rss, Error> {
        memory::rss(self.pid)
            .ok_or_else(|| format!("no /proc/{}/status: the merger is gone", self.pid).into())
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and a clean exit (status 0) within `limit`; killed otherwise. Answers how
    /// long it took.
    pub async fn stop(mut self, limit: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        terminate(&mut self.child, self.pid, "the merger", limit)
            .await
            .map_err(|e| format!("{e}; the end of its log:\n{}", log_tail(&self.log, 0)))?;
        Ok(start.elapsed())
    }
}

/// Why one start failed.
enum StartFailure {
    /// Someone took the port first: try another.
    PortTaken,
    Other(Error),
}

/// A server the benchmark measures against, started by [`Background::start`].
pub struct Background {
    child: Child,
    pid: u32,
    name: String,
}

impl Background {
    /// Spawns `command` (stdout and stderr to `log`), killed if the handle drops.
    pub fn start(mut command: Command, name: &str, log: &Path) -> Result<Background, Error> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let copy = file.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(copy))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name} cannot start: {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        Ok(Background {
            child,
            pid,
            name: name.to_owned(),
        })
    }

    /// Waits until `ready` answers true (polled every 20 ms), failing if the process exits
    /// first or after 30 s.
    pub async fn wait_ready<F, Fut>(&mut self, mut ready: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited before it was ready ({status})", self.name).into());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("{} was not ready within 30 s", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and an exit within 30 s (any status: these are not ours to judge).
    pub async fn stop(mut self) -> Result<(), Error> {
        signal(self.pid, "-TERM");
        match tokio::time::timeout(STOP_LIMIT, self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "{} did not exit within {STOP_LIMIT:?} of SIGTERM",
                    self.name
                )
                .into())
            }
        }
    }
}

/// Whether an HTTP server answers `GET url` with 200.
pub async fn answers(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}

/// Whether a Redis server on 127.0.0.1:`port` answers `PING` with `+PONG`.
pub async fn redis_answers(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut reply)).await,
        Ok(Ok(_))
    ) && &reply == b"+PONG\r\n"
}

/// SIGTERM to `pid`, then a successful exit of `child` within `limit`; SIGKILL after.
async fn terminate(child: &mut Child, pid: u32, name: &str, limit: Duration) -> Result<(), Error> {
    signal(pid, "-TERM");
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{name} exited with {status} after SIGTERM").into()),
        Ok(Err(e)) => Err(format!("{name}: {e}").into()),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("{name} did not exit within {limit:?} of SIGTERM").into())
        }
    }
}

/// Sends `signal` (`-TERM`, ...) to `pid` with `kill(1)` (the crate forbids `unsafe`, so no
/// `libc::kill`).
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// The last 20 lines of `log` from byte `from` on.
fn log_tail(log: &Path, from: u64) -> String {
    let Ok(text) = std::fs::read(log) else {
        return format!("(no log at {})", log.display());
    };
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    let text = String::from_utf8_lossy(&text[from..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
