//! What a benchmark run prints (`tally-bench compare edge`, `tally-bench compare merger`): the figures as
//! measured, the ratios against their targets, and the correctness checks, whose failure
//! makes the run fail. A missed target is reported, not an error: on a shared 2-core machine
//! the ratios are the result.

use std::fmt::Write as _;

/// A ratio's target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// At least this.
    AtLeast(f64),
    /// At most this.
    AtMost(f64),
    /// Exactly zero.
    Zero,
    /// No target: shown for context.
    None,
}

impl Target {
    /// Whether `value` meets the target (`None` when there is none).
    pub fn met(self, value: f64) -> Option<bool> {
        match self {
            Target::AtLeast(t) => Some(value >= t),
            Target::AtMost(t) => Some(value <= t),
            Target::Zero => Some(value == 0.0),
            Target::None => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t}"),
            Target::AtMost(t) => format!("<= {t}"),
            Target::Zero => "0".to_owned(),
            Target::None => String::new(),
        }
    }
}

/// The run's results, in the order they were measured.
#[derive(Debug, Default)]
pub struct Report {
    figures: Vec<(String, String)>,
    ratios: Vec<(String, String, f64, Target)>,
    checks: Vec<(bool, String)>,
    notes: Vec<String>,
}

impl Report {
    /// A measured figure.
    pub fn figure(&mut self, label: impl Into<String>, value: impl Into<String>) {
        let (label, value) = (label.into(), value.into());
        eprintln!("[bench]   {label}: {value}");
        self.figures.push((label, value));
    }

    /// A ratio: `key` names it in the summary line.
    pub fn ratio(&mut self, key: &str, label: impl Into<String>, value: f64, target: Target) {
        let label = label.into();
        eprintln!("[bench]   {label}: {value:.3}");
        self.ratios.push((key.to_owned(), label, value, target));
    }

    /// A correctness check.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        eprintln!(
            "[bench]   check {}: {what}",
            if ok { "ok" } else { "FAILED" }
        );
        self.checks.push((ok, what));
    }

    /// A line of detail printed after the tables (counts per call, failures).
    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(ok, _)| *ok)
    }

    /// Prints the tables under `heading`; keeps the run's directory `work` when asked to or
    /// when a check failed (saying where, and what it holds: `kept`); answers the verdict.
    pub fn finish(
        &self,
        heading: &str,
        name: &str,
        work: tempfile::TempDir,
        keep: bool,
        kept: &str,
    ) -> crate::Verdict {
        println!("{}", self.render(heading, name));
        if keep || !self.passed() {
            let dir = work.keep();
            eprintln!("[bench] {kept} kept in {}", dir.display());
        }
        if self.passed() {
            crate::Verdict::Pass
        } else {
            crate::Verdict::Fail
        }
    }

    /// The tables, for people, and one `<name> key=value ...` line, for scripts.
    pub fn render(&self, heading: &str, name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{heading}\n");
        let width = self.figures.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.figures {
            let _ = writeln!(out, "  {label:<width$}  {value}");
        }
        let _ = writeln!(out);
        let width = self.ratios.iter().map(|r| r.1.len()).max().unwrap_or(0);
        for (_, label, value, target) in &self.ratios {
            let verdict = match target.met(*value) {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            let line = format!(
                "  {label:<width$}  {:>9}  {:<8} {verdict}",
                fixed(*value),
                target.describe()
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let _ = writeln!(out);
        for (ok, what) in &self.checks {
            let _ = writeln!(out, "  {}  {what}", if *ok { "ok    " } else { "FAILED" });
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for note in &self.notes {
                let _ = writeln!(out, "  {note}");
            }
        }
        let _ = write!(out, "\n{name}");
        for (key, _, value, _) in &self.ratios {
            let _ = write!(out, " {key}={}", fixed(*value));
        }
        let failed = self.checks.iter().filter(|(ok, _)| !ok).count();
        let _ = writeln!(out, " checks={} failed={failed}", self.checks.len());
        out
    }
}

/// A ratio with as many decimals as it needs to be read (0.63, 0.0041, 512).
pub fn fixed(value: f64) -> String {
    if value == 0.0 || value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value.abs() >= 0.01 {
        format!("{value:.2}")
    } else {
        format!("{value:.2e}")
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `a / b`, 0 when `b` is 0 (a run that measured nothing has failed its checks already).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Announces a step of a run on stderr.
pub fn step(what: &str) {
    eprintln!("\n[bench] {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn targets_are_met_or_missed() {
        assert_eq!(Target::AtLeast(1.0).met(1.0), Some(true));
        assert_eq!(Target::AtLeast(3.0).met(1.2), Some(false));
        assert_eq!(Target::AtMost(1.5).met(500.0), Some(false));
        assert_eq!(Target::Zero.met(0.0), Some(true));
        assert_eq!(Target::Zero.met(0.001), Some(false));
        assert_eq!(Target::None.met(7.0), None);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }

    #[test]
    fn a_failed_check_fails_the_run_and_shows_in_the_summary() {
        let mut r = Report::default();
        r.ratio("p5", "P5", 0.75, Target::AtLeast(1.0));
        r.check(true, "counts");
        assert!(r.passed());
        r.check(false, "stale reads");
        assert!(!r.passed());
        let text = r.render("edge benchmarks", "edge");
        assert!(text.contains(">= 1     MISSED"), "{text}");
        assert!(text.contains("FAILED  stale reads"), "{text}");
        assert!(text.ends_with("edge p5=0.75 checks=2 failed=1\n"), "{text}");
    }

    #[test]
    fn ratios_keep_their_significant_digits() {
        assert_eq!(fixed(0.7512), "0.75");
        assert_eq!(fixed(512.3), "512.3");
        assert_eq!(fixed(0.0), "0.0");
        assert_eq!(fixed(0.004_1), "4.10e-3");
    }
}
