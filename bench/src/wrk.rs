//! Raw throughput with `wrk`, run as a child process, and its report parsed.
//!
//! wrk is the tool of the earlier edge figures and the lightest load generator at hand (C and
//! LuaJIT), so the baseline and tally are driven identically: same threads, connections,
//! duration and script. Its text report is parsed here; a request it counts is one whose
//! answer arrived, and requests still in flight when it stops are not counted (at most one
//! per connection), which the count checks allow for.

use std::path::Path;
use std::time::Duration;

use crate::Error;

/// How to run wrk.
#[derive(Debug, Clone)]
pub struct Wrk {
    /// `-t`.
    pub threads: u32,
    /// `-c`.
    pub connections: u32,
    /// `-d`, seconds.
    pub seconds: u64,
}

impl Wrk {
    /// The threads wrk runs: at most one per connection (it refuses more threads than
    /// connections, so a one-connection run would fail).
    pub fn thread_count(&self) -> u32 {
        self.threads.min(self.connections).max(1)
    }
}

/// One wrk run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkRun {
    /// Answers received.
    pub requests: u64,
    /// The run's duration as wrk measured it, seconds.
    pub seconds: f64,
    /// wrk's `Requests/sec`.
    pub rps: f64,
    /// Latency percentiles (with `--latency`), milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Socket errors: connect, read, write, timeout, summed.
    pub socket_errors: u64,
}

impl WrkRun {
    /// Answers that were 2xx (or 3xx: tally never answers one).
    pub fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx)
    }

    /// Whether every request was answered, and well.
    pub fn clean(&self) -> bool {
        self.non_2xx == 0 && self.socket_errors == 0 && self.requests > 0
    }
}

impl Wrk {
    /// Runs wrk against `url` with `script` (a file under `bench/wrk/`, or none: `GET`),
    /// extra `-H` headers and script arguments.
    pub async fn run(
        &self,
        url: &str,
        script: Option<&Path>,
        headers: &[String],
        script_args: &[&str],
    ) -> Result<WrkRun, Error> {
        let mut command = tokio::process::Command::new("wrk");
        command
            .arg(format!("-t{}", self.thread_count()))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds))
            // Long enough that no slow answer is cut off and missing from the percentiles.
            .args(["--timeout", "30s", "--latency"])
            .kill_on_drop(true);
        if let Some(script) = script {
            command.arg("-s").arg(script);
        }
        for header in headers {
            command.args(["-H", header]);
        }
        command.arg(url);
        if !script_args.is_empty() {
            command.arg("--").args(script_args);
        }
        let limit = Duration::from_secs(self.seconds + 60);
        let output = tokio::time::timeout(limit, command.output())
            .await
            .map_err(|_| format!("wrk did not finish within {limit:?}"))?
            .map_err(|e| format!("wrk cannot run (install the Debian package wrk): {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "wrk failed ({}): {}{}",
                output.status,
                text,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        parse(&text).ok_or_else(|| format!("unreadable wrk report:\n{text}").into())
    }
}

/// Reads wrk's text report.
pub fn parse(report: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut seen_total = false;
    for line in report.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            run.rps = rest.trim().parse().ok()?;
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            run.requests = count.trim().parse().ok()?;
            let duration = rest.split(',').next()?;
            run.seconds = duration_ms(duration.trim())? / 1000.0;
            seen_total = true;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 1, write 0, timeout 2"
            for part in rest.split(',') {
                let n: u64 = part.split_whitespace().nth(1)?.parse().ok()?;
                run.socket_errors += n;
            }
        } else if let Some(rest) = line.strip_prefix("50%") {
            run.p50_ms = duration_ms(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            run.p99_ms = duration_ms(rest.trim());
        }
    }
    seen_total.then_some(run)
}

/// A wrk duration (`812.00us`, `1.25ms`, `2.00s`, `1.50m`) in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_has_no_more_threads_than_connections() {
        let wrk = |threads, connections| Wrk {
            threads,
            connections,
            seconds: 1,
        };
        assert_eq!(wrk(2, 32).thread_count(), 2);
        assert_eq!(wrk(2, 1).thread_count(), 1, "wrk refuses -t2 -c1");
        assert_eq!(wrk(4, 3).thread_count(), 3);
    }

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:8787/bench/counter
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    41.23ms   10.11ms   1.20s    80.00%
    Req/Sec   390.12     50.00   500.00     70.00%
  Latency Distribution
     50%  812.00us
     75%   45.00ms
     90%   50.00ms
     99%    1.25s
  7800 requests in 10.01s, 1.50MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:    779.22
Transfer/sec:    150.00KB
";

    #[test]
    fn a_report_is_read_with_its_errors_and_percentiles() {
        let run = parse(REPORT).expect("the report parses");
        assert_eq!(run.requests, 7800);
        assert!((run.seconds - 10.01).abs() < 1e-9);
        assert!((run.rps - 779.22).abs() < 1e-9);
        assert_eq!(run.p50_ms, Some(0.812));
        assert_eq!(run.p99_ms, Some(1250.0));
        assert_eq!(run.non_2xx, 5);
        assert_eq!(run.socket_errors, 3);
        assert_eq!(run.ok(), 7795);
        assert!(!run.clean());
    }

    #[test]
    fn a_clean_report_has_no_error_lines() {
        let text = "  100 requests in 1.00m, 1.00KB read\nRequests/sec:      1.67\n";
        let run = parse(text).expect("the report parses");
        assert_eq!(run.requests, 100);
        assert!((run.seconds - 60.0).abs() < 1e-9);
        assert!(run.clean());
        assert_eq!(run.p99_ms, None);
    }

    #[test]
    fn a_report_without_totals_is_refused() {
        assert_eq!(parse("wrk: unable to connect"), None);
        assert_eq!(duration_ms("12.5parsecs"), None);
    }
}
