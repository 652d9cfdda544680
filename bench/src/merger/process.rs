//! The servers `tally-bench compare merger` measures the merger against ([`Background`]: the
//! hello-world baseline, `redis-server`), each on 127.0.0.1 on a port from the harness's
//! [`tally_e2e::free_port`], killed if its handle drops (an error ends the run early) and
//! stopped with SIGTERM at the end; and the merger's resident memory ([`rss_of`]). The merger
//! itself is started by the end-to-end harness ([`tally_e2e::MergerProcess::launch`]), the
//! one way tally's tests and benchmarks start one.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::Error;
use crate::memory::{self, Rss};

/// Longest wait for a server the benchmark measures against to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// The resident memory of a running merger now.
pub fn rss_of(merger: &tally_e2e::MergerProcess) -> Result<Rss, Error> {
    let pid = merger.pid();
    memory::rss(pid).ok_or_else(|| format!("no /proc/{pid}/status: the merger is gone").into())
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

/// Sends `signal` (`-TERM`, ...) to `pid` with `kill(1)` (the crate forbids `unsafe`, so no
/// `libc::kill`).
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}
