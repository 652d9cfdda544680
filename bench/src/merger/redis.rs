//! P3's baseline: Redis `INCR`, one command per hit, measured by `redis-benchmark` against a
//! `redis-server` on loopback. Both are Debian's tools (`redis-server`, `redis-tools`), run
//! as they are; this module starts the server, runs the tool and reads its report.
//!
//! Two servers: one with no persistence at all (`--save '' --appendonly no`: P3's
//! denominator, the fastest Redis can count), and one with `appendfsync always` (every write
//! flushed to disk before the answer, the durability the merger gives). Each is measured
//! one command per hit and pipelined (`-P 16`), so the figures show what the ratio is not.

use std::path::Path;

use tokio::process::Command;

use crate::Error;
use crate::merger::process::{Background, redis_answers};

/// A `redis-server` on 127.0.0.1.
pub struct Redis {
    server: Background,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` in `dir` (created), with no persistence, or with every write
    /// flushed before it is answered (`fsync_always`).
    pub async fn start(dir: &Path, fsync_always: bool) -> Result<Redis, Error> {
        std::fs::create_dir_all(dir)?;
        let port = tally_e2e::free_port();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir);
        if fsync_always {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut server = Background::start(command, "redis-server", &dir.join("redis.log"))
            .map_err(|e| format!("{e} (install the Debian package redis-server)"))?;
        server.wait_ready(|| redis_answers(port)).await?;
        Ok(Redis { server, port })
    }

    /// `INCR`s per second of `redis-benchmark -t incr -c 50 -n requests [-P pipeline]`.
    pub async fn incr_per_second(&self, requests: u64, pipeline: u32) -> Result<f64, Error> {
        let output = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-t", "incr", "-c", "50", "-q"])
            .args(["-n", &requests.to_string(), "-P", &pipeline.to_string()])
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("redis-benchmark cannot run (install redis-tools): {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "redis-benchmark failed ({}): {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        requests_per_second(&text)
            .ok_or_else(|| format!("unreadable redis-benchmark report: {text:?}").into())
    }

    /// Stops the server.
    pub async fn stop(self) -> Result<(), Error> {
        self.server.stop().await
    }
}

/// The final figure of `redis-benchmark -q`: its progress lines end in `\r`, the last line
/// reads `INCR: 99950.05 requests per second, p50=0.263 msec` (older versions stop after
/// "second").
pub fn requests_per_second(report: &str) -> Option<f64> {
    report
        .split(['\r', '\n'])
        .filter(|line| line.contains("requests per second"))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "requests")?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_figure_of_a_quiet_report_is_read() {
        let report = "INCR: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
                      INCR: rps=98000.0 (overall: 98000.0) avg_msec=0.3 (overall: 0.3)\r\
                      INCR: 99950.05 requests per second, p50=0.263 msec\n\n";
        assert_eq!(requests_per_second(report), Some(99_950.05));
        assert_eq!(
            requests_per_second("INCR: 1583531.62 requests per second\n"),
            Some(1_583_531.62)
        );
    }

    #[test]
    fn a_report_without_the_figure_is_refused() {
        assert_eq!(
            requests_per_second("Could not connect to Redis at 127.0.0.1"),
            None
        );
        assert_eq!(requests_per_second("INCR: lots requests per second"), None);
    }
}
