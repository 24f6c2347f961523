//! What came of a suite: a summary table for a person, JSON, JUnit XML (one testcase per
//! step, budgets' warnings in its system-out) and TAP.

use serde::Serialize;

use super::exec::{Outcome, Status};
use crate::export::{self, Case};

/// A suite's outcome, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct SuiteResult<'a> {
    /// The suite.
    pub suite: &'a str,
    /// Its file.
    pub file: String,
    /// Whether every step passed (warnings allowed).
    pub passed: bool,
    /// Steps by status.
    pub counts: Counts,
    /// Every step's outcome, in the file's order.
    pub steps: &'a [Outcome],
}

/// Steps by status.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Passed.
    pub passed: usize,
    /// Passed with a warning.
    pub warned: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
}

/// How many of `steps` ended each way.
pub fn counts(steps: &[Outcome]) -> Counts {
    let mut c = Counts::default();
    for s in steps {
        match s.status {
            Status::Passed => c.passed += 1,
            Status::Warned => c.warned += 1,
            Status::Failed => c.failed += 1,
            Status::Skipped => c.skipped += 1,
        }
    }
    c
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

/// The summary table and a closing line.
pub fn table(suite: &str, steps: &[Outcome]) -> String {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                match s.status {
                    Status::Passed => "passed",
                    Status::Warned => "warning",
                    Status::Failed => "FAILED",
                    Status::Skipped => "skipped",
                }
                .into(),
                ms(s.wall_ms),
                ms(s.cpu_ms),
                s.max_rss_kb
                    .map_or_else(|| "-".into(), |v| format!("{v:.0} KiB")),
                s.reasons
                    .iter()
                    .chain(&s.warnings)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
            ]
        })
        .collect();
    let mut out = crate::output::columns(
        &["STEP", "RESULT", "WALL", "CPU", "PEAK MEMORY", "WHY"],
        &rows,
    );
    let c = counts(steps);
    out.push_str(&format!(
        "{suite}: {} passed, {} with warnings, {} failed, {} skipped\n",
        c.passed, c.warned, c.failed, c.skipped
    ));
    out
}

/// TAP version 13: a line per step, skipped steps as `# SKIP`, warnings as comments.
pub fn tap(steps: &[Outcome]) -> String {
    let mut out = format!("TAP version 13\n1..{}\n", steps.len());
    for (i, s) in steps.iter().enumerate() {
        let name = s.name.replace('#', "\\#");
        let line = match s.status {
            Status::Passed | Status::Warned => format!("ok {} - {name}", i + 1),
            Status::Failed => format!("not ok {} - {name}", i + 1),
            Status::Skipped => format!(
                "ok {} - {name} # SKIP {}",
                i + 1,
                s.reasons.first().map_or("", String::as_str)
            ),
        };
        out.push_str(&crate::report::printable(&line));
        out.push('\n');
        if s.status == Status::Failed {
            for r in &s.reasons {
                out.push_str(&format!("  # {}\n", crate::report::printable(r)));
            }
        }
        for w in &s.warnings {
            out.push_str(&format!("  # warning: {}\n", crate::report::printable(w)));
        }
    }
    out
}

/// JUnit XML: one testcase per step; a failed step a failure with its reasons, a skipped
/// one skipped with why; warnings and the step's output in its system-out.
pub fn junit(suite: &str, steps: &[Outcome]) -> Result<String, String> {
    let cases: Vec<Case> = steps
        .iter()
        .map(|s| {
            let mut output = String::new();
            for w in &s.warnings {
                output.push_str(&format!("warning: {w}\n"));
            }
            if let Some(b) = &s.batch {
                output.push_str(&format!(
                    "batch {b}: wall {}, cpu {}\n",
                    ms(s.wall_ms),
                    ms(s.cpu_ms)
                ));
            }
            output.push_str(&s.stdout);
            Case {
                name: s.name.clone(),
                seconds: s.seconds,
                ending: match s.status {
                    Status::Passed | Status::Warned => export::Outcome::Passed,
                    Status::Failed => export::Outcome::Failed(s.reasons.join("; ")),
                    Status::Skipped => export::Outcome::Skipped(s.reasons.join("; ")),
                },
                failure_text: Some(format!("{}\n{}", s.reasons.join("\n"), s.stderr)),
                output,
            }
        })
        .collect();
    export::junit_cases(suite, &cases)
}
