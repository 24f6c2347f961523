//! `cleanroomctl report`: stored batches, their comparisons and labels' histories in one
//! document a person reads: HTML with charts (one self-contained file), Markdown tables,
//! CSV of every repeat, or the gathered JSON.
//!
//! [`gather`] asks the daemon (`runs.show`, `runs.compare`, `runs.history`); the renderers
//! are pure functions of the [`Report`] it returns.

pub mod charts;
pub mod html;
pub mod text;

use cleanroom_proto::{
    BatchParams, Comparison, Metric, RunResult, RunsCompare, RunsCompareParams, RunsHistory,
    RunsHistoryParams, RunsHistoryResult, RunsShow,
};
use serde::Serialize;

use crate::client::{CallError, Client};

/// Most batches one report names (with a label's newest each, at most ten: every one its
/// own colour and its own tick on an axis).
pub const MAX_SOURCES: usize = 8;
/// Most labels one report follows.
pub const MAX_LABELS: usize = 2;

/// Everything a report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was made (seconds since the epoch).
    pub generated: f64,
    /// The measure charted and compared.
    pub metric: Metric,
    /// The batches, in the order asked (a label's newest after the named ones).
    pub batches: Vec<Batch>,
    /// Comparisons: each later named batch against the first, and any comparison a batch
    /// was stored with.
    pub comparisons: Vec<Compared>,
    /// The labels' histories.
    pub histories: Vec<RunsHistoryResult>,
    /// What could not be shown, and why (a comparison the daemon refused, say).
    pub notes: Vec<String>,
}

/// One batch, as it was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    /// What named it: a batch id, `baseline:NAME` or `label:NAME` (its newest batch).
    pub source: String,
    /// The stored result, with where it came from (`stored`).
    pub result: RunResult,
    /// Whether another batch of the report has the same title: then the source is added
    /// to tell them apart.
    #[serde(skip)]
    pub ambiguous: bool,
}

impl Batch {
    /// A short name for legends and axes: [`Batch::title`] cut to 28 characters.
    pub fn name(&self) -> String {
        shorten(&self.title(), 28)
    }

    /// What the batch is called: its label, else its command, else its id (printable);
    /// with its source when another batch of the report is called the same.
    pub fn title(&self) -> String {
        if self.ambiguous {
            format!("{} ({})", self.plain_title(), printable(&self.source))
        } else {
            self.plain_title()
        }
    }

    fn plain_title(&self) -> String {
        let stored = self.result.stored.as_ref();
        let name = match stored {
            Some(s) if s.label.is_some() => s.label.clone().unwrap_or_default(),
            Some(s) if !s.argv.is_empty() => self.command(),
            _ => self.source.clone(),
        };
        printable(&name)
    }

    /// The command line as a shell would take it back (quoted where it must be),
    /// printable.
    pub fn command(&self) -> String {
        self.result
            .stored
            .as_ref()
            .map(|s| {
                let words = s.argv.iter().map(String::as_str);
                printable(&shlex::try_join(words).unwrap_or_else(|_| s.argv.join(" ")))
            })
            .unwrap_or_default()
    }
}

/// A comparison and the batches it compares.
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    /// The compared batch's index in [`Report::batches`].
    pub batch: usize,
    /// The reference's index, when it is in the report.
    pub reference: Option<usize>,
    /// The comparison.
    pub comparison: Comparison,
    /// Whether it was stored with the batch (measured then) rather than computed for the
    /// report (`runs.compare`: sequential batches).
    pub stored: bool,
}

/// What `report` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Batch ids or `baseline:NAME`; the first is the reference.
    pub sources: Vec<String>,
    /// Labels whose history to show.
    pub labels: Vec<String>,
    /// The measure.
    pub metric: Metric,
    /// How many of a label's newest batches.
    pub limit: u32,
}

impl Request {
    /// Why the request cannot make a report (a usage error), if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.sources.is_empty() && self.labels.is_empty() {
            return Err("name at least one batch (an id or baseline:NAME) or a --label".into());
        }
        if self.sources.len() > MAX_SOURCES || self.labels.len() > MAX_LABELS {
            return Err(format!(
                "a report shows at most {MAX_SOURCES} batches and {MAX_LABELS} labels \
                 ({} and {} asked)",
                self.sources.len(),
                self.labels.len()
            ));
        }
        Ok(())
    }
}

/// Asks the daemon for everything `request` names (checked with [`Request::check`]).
pub fn gather(client: &mut Client, request: &Request) -> Result<Report, CallError> {
    let show = |client: &mut Client, source: &str| -> Result<Batch, CallError> {
        let result = client.call::<RunsShow>(&BatchParams {
            batch: source.to_owned(),
        })?;
        Ok(Batch {
            source: source.to_owned(),
            result,
            ambiguous: false,
        })
    };
    let mut batches = Vec::new();
    for source in &request.sources {
        batches.push(show(client, source)?);
    }
    let named = batches.len();
    let mut histories = Vec::new();
    let mut notes = Vec::new();
    for label in &request.labels {
        let history = client.call::<RunsHistory>(&RunsHistoryParams {
            label: label.clone(),
            metric: request.metric,
            limit: Some(request.limit),
        })?;
        if let Some(newest) = history.batches.last() {
            if !batches.iter().any(|b| b.result.batch == newest.batch) {
                match show(client, &newest.batch) {
                    Ok(mut b) => {
                        b.source = format!("label:{label}");
                        batches.push(b);
                    }
                    Err(e) => notes.push(format!(
                        "the newest batch of {label:?} ({}) cannot be shown: {e}",
                        newest.batch
                    )),
                }
            }
        }
        histories.push(history);
    }
    for i in 0..batches.len() {
        let title = batches[i].plain_title();
        batches[i].ambiguous = batches
            .iter()
            .enumerate()
            .any(|(j, b)| j != i && b.plain_title() == title);
    }
    let mut comparisons = Vec::new();
    let series = request.metric.series();
    for (i, b) in batches.iter().enumerate() {
        let stored = b.result.comparison.as_ref().filter(|c| c.metric == series);
        // A later named batch is compared with the first: as it was measured, when it
        // was compared with that very batch then; else as sequential batches now.
        if i > 0 && i < named {
            if let Some(c) = stored.filter(|c| reference_of(c, &batches) == Some(0)) {
                comparisons.push(Compared {
                    batch: i,
                    reference: Some(0),
                    comparison: c.clone(),
                    stored: true,
                });
                continue;
            }
            match client.call::<RunsCompare>(&RunsCompareParams {
                a: request.sources[0].clone(),
                b: b.source.clone(),
                strict: false,
                metric: request.metric,
            }) {
                Ok(comparison) => comparisons.push(Compared {
                    batch: i,
                    reference: Some(0),
                    comparison,
                    stored: false,
                }),
                Err(e) => notes.push(format!(
                    "{} cannot be compared with {}: {e}",
                    b.source, request.sources[0]
                )),
            }
        } else if let Some(c) = stored {
            comparisons.push(Compared {
                batch: i,
                reference: reference_of(c, &batches),
                comparison: c.clone(),
                stored: true,
            });
        }
    }
    Ok(Report {
        generated: now(),
        metric: request.metric,
        batches,
        comparisons,
        histories,
        notes,
    })
}

/// The batch of the report a stored comparison was made against: by the batch id it
/// names (a baseline may name another batch by now); a comparison stored before that id
/// was kept is matched only when it names a batch id.
fn reference_of(c: &Comparison, batches: &[Batch]) -> Option<usize> {
    let id = match &c.against_batch {
        Some(id) => id.as_str(),
        None if c.against.starts_with("baseline:") => return None,
        None => c.against.as_str(),
    };
    batches.iter().position(|b| b.result.batch == id)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `text` without control characters (a command or label can hold anything; an SVG or
/// XML reader takes none of them).
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// A time (seconds since the epoch) as `2026-12-06 16:57:00 UTC` (`?` when it is none).
pub fn when(ts: f64) -> String {
    // humantime writes years up to 9999.
    if !(0.0..253_402_300_800.0).contains(&ts) {
        return "?".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(ts);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

/// The change point before batch `i` of a history, in words (empty where none is).
pub fn change_point(h: &RunsHistoryResult, i: usize) -> String {
    h.change_points
        .iter()
        .find(|c| c.index as usize == i)
        .map_or_else(String::new, |c| {
            format!(
                "×{:.3} ({:+.1} %), confidence {:.1} %",
                c.magnitude,
                (c.magnitude - 1.0) * 100.0,
                c.confidence * 100.0
            )
        })
}

/// What the measure is called, with its unit, for axes and headings.
pub fn measure_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Wall => "wall time (ms)",
        Metric::Cpu => "CPU time (ms)",
        Metric::Instructions => "instructions",
        Metric::Cycles => "cycles",
    }
}

/// A value of the measure, as a person reads it.
pub fn value(metric: Metric, v: f64) -> String {
    match metric {
        Metric::Wall | Metric::Cpu if v >= 1000.0 => format!("{:.3} s", v / 1000.0),
        Metric::Wall | Metric::Cpu => format!("{v:.2} ms"),
        Metric::Instructions | Metric::Cycles => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(source: &str, id: &str, label: Option<&str>) -> Batch {
        let record = cleanroom_proto::RunRecord::new(
            "1".into(),
            cleanroom_proto::EndReason::Exited,
            "0".into(),
        );
        let mut v = serde_json::to_value(record).unwrap();
        v["batch"] = id.into();
        let mut result: RunResult = serde_json::from_value(v).unwrap();
        result.stored = Some(cleanroom_proto::Provenance {
            ts: 0.0,
            uid: 0,
            label: label.map(str::to_owned),
            argv: vec!["sh".into(), "-c".into(), "sleep 1".into()],
        });
        Batch {
            source: source.into(),
            result,
            ambiguous: false,
        }
    }

    fn comparison(against: &str, against_batch: Option<&str>) -> Comparison {
        serde_json::from_value(serde_json::json!({
            "metric": "wall_ms", "against": against, "against_batch": against_batch,
            "design": "independent", "baseline_median": 1.0, "median": 1.0, "ratio": 1.0,
            "low": 1.0, "high": 1.0, "level": 0.95, "delta_percent": 2.0, "p_value": 1.0,
            "p_adjusted": 1.0, "verdict": "equivalent", "n_baseline": 5, "n": 5
        }))
        .unwrap()
    }

    #[test]
    fn a_stored_comparison_is_matched_by_the_batch_it_was_made_against() {
        let batches = [batch("baseline:main", "20", None), batch("21", "21", None)];
        // Made against the batch `main` names now.
        assert_eq!(
            reference_of(&comparison("baseline:main", Some("20")), &batches),
            Some(0)
        );
        // Made against what `main` named before it was replaced: not this report's batch.
        assert_eq!(
            reference_of(&comparison("baseline:main", Some("7")), &batches),
            None
        );
        // Stored before the id was kept: a baseline name proves nothing, a batch id does.
        assert_eq!(
            reference_of(&comparison("baseline:main", None), &batches),
            None
        );
        assert_eq!(reference_of(&comparison("21", None), &batches), Some(1));
    }

    #[test]
    fn commands_are_quoted_as_a_shell_takes_them() {
        let b = batch("5", "5", None);
        assert_eq!(b.command(), "sh -c 'sleep 1'");
        assert_eq!(b.title(), "sh -c 'sleep 1'");
        let mut b = batch("5", "5", Some("nightly"));
        b.ambiguous = true;
        assert_eq!(b.title(), "nightly (5)");
    }

    #[test]
    fn names_and_times_read_plainly() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\u{fffd}[31mb\u{fffd}");
        // 1 000 000 000 s after the epoch: `date -u -d @1000000000`.
        assert_eq!(when(1e9), "2001-09-09 01:46:40 UTC");
        assert_eq!(when(f64::NAN), "?");
        assert_eq!(when(1e12), "?");
        assert_eq!(value(Metric::Wall, 1500.0), "1.500 s");
        assert_eq!(value(Metric::Cpu, 12.345), "12.35 ms");
    }
}
