//! `tally-merger import`: brings starting values from another system (a SQL table, Redis,
//! an analytics export) into a running merger, through its admin API
//! (`POST /v1/{namespace}/{id}/import`), so the merger's cache and every peer see them at once.
//!
//! The input is CSV or JSON lines, one counter per line:
//!
//! ```text
//! namespace,id,count,import          # CSV: the header line is optional; `import` too,
//! counters,home,1204331,ga-2025      # when --import names the id for every line
//! gauges,queue,-12,redis-snapshot
//! {"namespace": "counters", "id": "home", "count": 1204331, "import": "ga-2025"}
//! ```
//!
//! Every line is one import of one counter: re-running a file changes nothing (each line
//! answers "unchanged"), and a line whose value differs from what the same import id brought
//! before is reported as a conflict and changes nothing. The command reports every line that
//! was not imported, then a summary, and exits non-zero if any line failed or conflicted.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// The `import` subcommand's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The file to read: CSV (`namespace,id,count[,import]`) or JSON lines (a line starting
    /// with `{`); `-` reads standard input.
    pub file: PathBuf,

    /// The merger to import into.
    #[arg(
        long,
        env = "TALLY_MERGER_URL",
        default_value = "http://127.0.0.1:8790"
    )]
    pub url: String,

    /// The merger's admin token.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// The import id of lines that name none (e.g. `ga-2025-11`).
    #[arg(long)]
    pub import: Option<String>,
}

/// One line of the input.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// `counters` or `gauges`.
    pub namespace: String,
    /// The counter id.
    pub id: String,
    /// The value, as written (a JSON number or string, or a CSV field).
    pub count: Value,
    /// The import id, if the line names one.
    #[serde(default)]
    pub import: Option<String>,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Lines whose value this run brought in.
    pub imported: u64,
    /// Lines an earlier run had brought in already.
    pub unchanged: u64,
    /// Lines refused because the import id brought another value before.
    pub conflicts: u64,
    /// Lines that could not be read or were refused for another reason.
    pub failed: u64,
}

impl Summary {
    /// Whether every line is in.
    pub fn ok(&self) -> bool {
        self.conflicts == 0 && self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported {}, unchanged {}, conflicts {}, failed {}",
            self.imported, self.unchanged, self.conflicts, self.failed
        )
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl ImportArgs {
    /// Imports every line, reporting the lines that were not imported on standard error.
    pub async fn run(&self) -> Result<Summary, ImportError> {
        let text = if self.file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(&self.file)
        }
        .map_err(|source| ImportError::Read {
            path: self.file.display().to_string(),
            source,
        })?;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let base = self.url.trim_end_matches('/');
        let mut summary = Summary::default();
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            let parsed = match parse_line(line, number) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("line {number}: {e}");
                    summary.failed += 1;
                    continue;
                }
            };
            let Some(import) = parsed.import.clone().or_else(|| self.import.clone()) else {
                eprintln!("line {number}: no import id (add an `import` column or --import)");
                summary.failed += 1;
                continue;
            };
            let url = format!("{base}/v1/{}/{}/import", parsed.namespace, parsed.id);
            let answer = client
                .post(&url)
                .bearer_auth(&self.admin_token)
                .json(&serde_json::json!({"import": import, "count": parsed.count}))
                .send()
                .await;
            match answer {
                Ok(response) => {
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    match status.as_u16() {
                        200 if body["created"] == true => summary.imported += 1,
                        200 => summary.unchanged += 1,
                        409 => {
                            eprintln!("line {number}: {}", message(&body));
                            summary.conflicts += 1;
                        }
                        _ => {
                            eprintln!("line {number}: {status}: {}", message(&body));
                            summary.failed += 1;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("line {number}: {url}: {e}");
                    summary.failed += 1;
                }
            }
        }
        Ok(summary)
    }
}

/// One input line: `None` for a blank line, a comment (`#`) or the CSV header.
pub fn parse_line(line: &str, number: usize) -> Result<Option<Line>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('{') {
        return serde_json::from_str(line).map(Some).map_err(|e| {
            format!("not a JSON line {{\"namespace\",\"id\",\"count\",\"import\"}}: {e}")
        });
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if number == 1 && fields.first() == Some(&"namespace") {
        return Ok(None);
    }
    match fields.as_slice() {
        [namespace, id, count] | [namespace, id, count, ""] => Ok(Some(Line {
            namespace: (*namespace).to_owned(),
            id: (*id).to_owned(),
            count: Value::String((*count).to_owned()),
            import: None,
        })),
        [namespace, id, count, import] => Ok(Some(Line {
            namespace: (*namespace).to_owned(),
            id: (*id).to_owned(),
            count: Value::String((*count).to_owned()),
            import: Some((*import).to_owned()),
        })),
        _ => Err(format!(
            "expected namespace,id,count[,import], found {} fields",
            fields.len()
        )),
    }
}

/// The message of an API error body, or the body itself.
fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_lines_read_alike_and_headers_and_blanks_are_skipped() {
        let want = Line {
            namespace: "counters".into(),
            id: "home".into(),
            count: Value::String("1204331".into()),
            import: Some("ga".into()),
        };
        assert_eq!(parse_line("namespace,id,count,import", 1), Ok(None));
        assert_eq!(parse_line("  ", 2), Ok(None));
        assert_eq!(parse_line("# a comment", 2), Ok(None));
        assert_eq!(
            parse_line("counters, home ,1204331,ga", 2),
            Ok(Some(want.clone()))
        );
        let json = parse_line(
            r#"{"namespace": "counters", "id": "home", "count": "1204331", "import": "ga"}"#,
            3,
        );
        assert_eq!(json, Ok(Some(want)));
        assert_eq!(parse_line("gauges,q,-12", 4).unwrap().unwrap().import, None);
        assert!(parse_line("counters,home", 5).is_err());
        assert!(parse_line(r#"{"namespace": "counters", "id": 7}"#, 5).is_err());
    }
}
