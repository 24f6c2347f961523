//! Results in formats other tools read: hyperfine's `--export-json`, `--export-csv` and
//! `--export-markdown` (so what ingests hyperfine's output takes ours unchanged), and JUnit
//! XML for CI systems. Pure functions of the results; `main.rs` writes the files.
//!
//! hyperfine's fields, in seconds: `command`, `mean`, `stddev` (null for one run),
//! `median`, `user`, `system` (means), `min`, `max`, `times` (every measured run's wall
//! time), `exit_codes` (null where a signal ended the run) and `memory_usage_byte` (each
//! run's peak). Its CSV has the columns `command,mean,stddev,median,user,system,min,max`;
//! its Markdown one row per command with the mean ± σ, min and max in milliseconds (in
//! seconds when the first mean is a second or more) and the speed relative to the fastest.

use cleanroom_proto::{EndReason, RunResult, Verdict};
use serde_json::{Value, json};

/// `text` with every character XML 1.0 and a reader's terminal cannot take (control
/// characters but tab and newline) written as `\x1b`-style escapes: a command name or an
/// error can hold anything.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' => c.to_string(),
            c if c.is_control() => format!("\\x{:02x}", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}

/// Whether a command has a measured run to export: a side of a comparison stopped
/// before its first turn has none.
fn measured(r: &RunResult) -> bool {
    !(r.samples.is_empty() && r.last.end_reason == EndReason::Cancelled)
}

/// One command's result and how it is named.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The command line, as the user gave it.
    pub command: &'a str,
    /// Its batch.
    pub result: &'a RunResult,
}

/// A batch's measured runs, in seconds, as hyperfine summarizes them.
#[derive(Debug, Clone, PartialEq)]
struct Timing {
    times: Vec<f64>,
    mean: f64,
    stddev: Option<f64>,
    median: f64,
    user: f64,
    system: f64,
    min: f64,
    max: f64,
    exit_codes: Vec<Option<i32>>,
    memory: Vec<u64>,
}

/// A series of the batch (`wall_ms`, ...), or the one run's value.
fn series(r: &RunResult, name: &str, one: f64) -> Vec<f64> {
    r.samples.get(name).cloned().unwrap_or_else(|| vec![one])
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn timing(r: &RunResult) -> Timing {
    let ms = |v: Vec<f64>| v.into_iter().map(|x| x / 1e3).collect::<Vec<f64>>();
    let times = ms(series(r, "wall_ms", r.last.wall_ms));
    let user = mean(&ms(series(r, "user_ms", r.last.user_ms)));
    let system = mean(&ms(series(r, "sys_ms", r.last.sys_ms)));
    let m = mean(&times);
    let stddev = (times.len() > 1).then(|| {
        let ss: f64 = times.iter().map(|x| (x - m).powi(2)).sum();
        (ss / (times.len() - 1) as f64).sqrt()
    });
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let exit_codes = if r.exit_codes.is_empty() {
        vec![r.last.exit_code]
    } else {
        r.exit_codes.clone()
    };
    let memory = series(r, "max_rss_kb", r.last.max_rss_kb as f64)
        .into_iter()
        .map(|kb| (kb * 1024.0) as u64)
        .collect();
    Timing {
        mean: m,
        stddev,
        median,
        user,
        system,
        min: sorted.first().copied().unwrap_or(0.0),
        max: sorted.last().copied().unwrap_or(0.0),
        times,
        exit_codes,
        memory,
    }
}

/// hyperfine's `--export-json` document.
pub fn json(entries: &[Entry<'_>]) -> Value {
    let results: Vec<Value> = entries
        .iter()
        .filter(|e| measured(e.result))
        .map(|e| {
            let t = timing(e.result);
            json!({
                "command": e.command,
                "mean": t.mean,
                "stddev": t.stddev,
                "median": t.median,
                "user": t.user,
                "system": t.system,
                "min": t.min,
                "max": t.max,
                "times": t.times,
                "memory_usage_byte": t.memory,
                "exit_codes": t.exit_codes,
            })
        })
        .collect();
    json!({ "results": results })
}

/// hyperfine's `--export-csv` table.
pub fn csv(entries: &[Entry<'_>]) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| format!("cannot write CSV: {e}");
    w.write_record([
        "command", "mean", "stddev", "median", "user", "system", "min", "max",
    ])
    .map_err(fail)?;
    for e in entries.iter().filter(|e| measured(e.result)) {
        let t = timing(e.result);
        let mut row = vec![e.command.to_owned(), t.mean.to_string()];
        row.push(t.stddev.map_or_else(String::new, |s| s.to_string()));
        for v in [t.median, t.user, t.system, t.min, t.max] {
            row.push(v.to_string());
        }
        w.write_record(&row).map_err(fail)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| format!("cannot write CSV: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("cannot write CSV: {e}"))
}

/// hyperfine's `--export-markdown` table.
pub fn markdown(entries: &[Entry<'_>]) -> String {
    let entries: Vec<&Entry<'_>> = entries.iter().filter(|e| measured(e.result)).collect();
    let timings: Vec<Timing> = entries.iter().map(|e| timing(e.result)).collect();
    // The unit of the first command's mean, for the whole table.
    let (unit, scale, digits) = match timings.first() {
        Some(t) if t.mean >= 1.0 => ("s", 1.0, 3),
        _ => ("ms", 1e3, 1),
    };
    let fmt = |v: f64| format!("{:.*}", digits, v * scale);
    let mut out = format!(
        "| Command | Mean [{unit}] | Min [{unit}] | Max [{unit}] | Relative |\n\
         |:---|---:|---:|---:|---:|\n"
    );
    // The fastest of the commands that took any time (a ratio to nothing is no ratio).
    let fastest = timings
        .iter()
        .enumerate()
        .filter(|(_, t)| t.mean > 0.0)
        .min_by(|a, b| a.1.mean.total_cmp(&b.1.mean))
        .map(|(i, _)| i);
    for (i, (e, t)) in entries.iter().zip(&timings).enumerate() {
        let spread = t
            .stddev
            .map_or_else(String::new, |s| format!(" ± {}", fmt(s)));
        let relative = match fastest {
            Some(f) if f == i || timings.len() == 1 => "1.00".to_owned(),
            Some(f) => {
                let reference = &timings[f];
                let ratio = t.mean / reference.mean;
                // The ratio's spread from both relative spreads (first-order propagation).
                let rel = |t: &Timing| t.stddev.map(|s| s / t.mean);
                match (rel(t), rel(reference)) {
                    (Some(a), Some(b)) => {
                        format!("{ratio:.2} ± {:.2}", ratio * (a * a + b * b).sqrt())
                    }
                    _ => format!("{ratio:.2}"),
                }
            }
            None => "N/A".to_owned(),
        };
        out.push_str(&format!(
            "| `{}` | {}{spread} | {} | {} | {relative} |\n",
            clean(e.command).replace('\n', "\\n").replace('|', "\\|"),
            fmt(t.mean),
            fmt(t.min),
            fmt(t.max),
        ));
    }
    out
}

/// One JUnit testcase per command (a `run` is one, a comparison one a command): a failure
/// when a run did not exit 0, timed out or was otherwise ended, or when it is `slower`
/// than its reference or baseline, with the summary in the message.
pub fn junit(suite: &str, entries: &[Entry<'_>]) -> Result<String, String> {
    let cases: Vec<Case> = entries
        .iter()
        .map(|e| {
            let t = timing(e.result);
            Case {
                name: e.command.to_owned(),
                seconds: t.times.iter().sum(),
                ending: outcome(e.result),
                output: clean(&summary(&t, e.result)),
                failure_text: None,
            }
        })
        .collect();
    junit_cases(suite, &cases)
}

/// One JUnit testcase.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// How long it took.
    pub seconds: f64,
    /// How it ended.
    pub ending: Outcome,
    /// Its `system-out` (and a failure's text, unless `failure_text` says otherwise).
    pub output: String,
    /// A failure's text, when not its output.
    pub failure_text: Option<String>,
}

/// A JUnit XML document of `cases` in test suite `suite` (Jenkins' junit-10.xsd).
pub fn junit_cases(suite: &str, cases: &[Case]) -> Result<String, String> {
    use quick_xml::Writer;
    use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
    let fail = |e: std::io::Error| format!("cannot write JUnit XML: {e}");
    let failures = cases
        .iter()
        .filter(|c| matches!(c.ending, Outcome::Failed(_)))
        .count();
    let skipped = cases
        .iter()
        .filter(|c| matches!(c.ending, Outcome::Skipped(_)))
        .count();
    // Seconds with at most three decimals, as the schema allows.
    let time: f64 = cases.iter().map(|c| c.seconds).sum();
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(fail)?;
    let counts = |el: &mut BytesStart<'_>| {
        el.push_attribute(("tests", cases.len().to_string().as_str()));
        el.push_attribute(("failures", failures.to_string().as_str()));
        el.push_attribute(("errors", "0"));
        el.push_attribute(("time", format!("{time:.3}").as_str()));
    };
    let suite = clean(suite);
    let mut suites = BytesStart::new("testsuites");
    suites.push_attribute(("name", "cleanroom"));
    counts(&mut suites);
    w.write_event(Event::Start(suites)).map_err(fail)?;
    let mut s = BytesStart::new("testsuite");
    s.push_attribute(("name", suite.as_str()));
    counts(&mut s);
    s.push_attribute(("skipped", skipped.to_string().as_str()));
    w.write_event(Event::Start(s)).map_err(fail)?;
    for c in cases {
        let mut case = BytesStart::new("testcase");
        case.push_attribute(("name", clean(&c.name).as_str()));
        case.push_attribute(("classname", suite.as_str()));
        case.push_attribute(("time", format!("{:.3}", c.seconds).as_str()));
        w.write_event(Event::Start(case)).map_err(fail)?;
        let output = clean(&c.output);
        match &c.ending {
            Outcome::Passed => {}
            Outcome::Failed(message) => {
                let mut f = BytesStart::new("failure");
                f.push_attribute(("message", clean(message).as_str()));
                f.push_attribute(("type", "cleanroom"));
                w.write_event(Event::Start(f)).map_err(fail)?;
                let text = c.failure_text.as_deref().map(clean);
                w.write_event(Event::Text(BytesText::new(
                    text.as_deref().unwrap_or(&output),
                )))
                .map_err(fail)?;
                w.write_event(Event::End(BytesEnd::new("failure")))
                    .map_err(fail)?;
            }
            Outcome::Skipped(message) => {
                let mut f = BytesStart::new("skipped");
                f.push_attribute(("message", clean(message).as_str()));
                w.write_event(Event::Empty(f)).map_err(fail)?;
            }
        }
        w.write_event(Event::Start(BytesStart::new("system-out")))
            .map_err(fail)?;
        w.write_event(Event::Text(BytesText::new(&output)))
            .map_err(fail)?;
        w.write_event(Event::End(BytesEnd::new("system-out")))
            .map_err(fail)?;
        w.write_event(Event::End(BytesEnd::new("testcase")))
            .map_err(fail)?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuite")))
        .map_err(fail)?;
    w.write_event(Event::End(BytesEnd::new("testsuites")))
        .map_err(fail)?;
    let mut xml = String::from_utf8(w.into_inner()).map_err(|e| e.to_string())?;
    xml.push('\n');
    Ok(xml)
}

/// How a testcase ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// Why it failed.
    Failed(String),
    /// Why it did not run to its end (cancelled: a comparison stops at its first failing
    /// command, or someone cancelled it).
    Skipped(String),
}

fn outcome(r: &RunResult) -> Outcome {
    if r.last.end_reason == EndReason::Cancelled {
        return Outcome::Skipped("cancelled before it ran to its end".to_owned());
    }
    failure(r).map_or(Outcome::Passed, Outcome::Failed)
}

/// Why a command's testcase failed, if it did.
fn failure(r: &RunResult) -> Option<String> {
    let l = &r.last;
    let failed_run = match l.end_reason {
        EndReason::Exited if l.exit_code == Some(0) => None,
        EndReason::Exited => Some(format!("exit code {}", l.exit_code.unwrap_or(-1))),
        EndReason::Timeout => Some("timed out".to_owned()),
        EndReason::Oom => Some("killed by the OOM killer".to_owned()),
        EndReason::Signaled => Some(format!("ended by signal {}", l.signal.unwrap_or(0))),
        EndReason::Cancelled => Some("cancelled".to_owned()),
        EndReason::FailedToStart => Some(format!(
            "did not start: {}",
            l.error.as_deref().unwrap_or("unknown")
        )),
        EndReason::Running => Some("still running".to_owned()),
    };
    let other_exit = r.exit_codes.iter().find(|c| **c != Some(0));
    failed_run
        .or_else(|| {
            other_exit.map(|c| match c {
                Some(code) => format!("a run exited with code {code}"),
                None => "a run was ended by a signal".to_owned(),
            })
        })
        .or_else(|| {
            let c = r.comparison.as_ref()?;
            (c.verdict == Verdict::Slower).then(|| {
                format!(
                    "regression: {} slower than {} ({} ratio {:.4}, interval [{:.4}, {:.4}])",
                    format_args!("{:+.2}%", (c.ratio - 1.0) * 100.0),
                    c.against,
                    c.metric,
                    c.ratio,
                    c.low,
                    c.high
                )
            })
        })
}

/// The summary a testcase carries: hyperfine's lines, and the verdict when compared.
fn summary(t: &Timing, r: &RunResult) -> String {
    let ms = |s: f64| format!("{:.3} ms", s * 1e3);
    let mut out = format!(
        "Time (mean ± σ): {} ± {}  Range (min … max): {} … {}  {} runs\nUser: {}, System: {}\n",
        ms(t.mean),
        ms(t.stddev.unwrap_or(0.0)),
        ms(t.min),
        ms(t.max),
        t.times.len(),
        ms(t.user),
        ms(t.system)
    );
    if let Some(c) = &r.comparison {
        out.push_str(&format!(
            "{} against {}: ratio {:.4}, interval [{:.4}, {:.4}]: {}\n",
            c.metric,
            c.against,
            c.ratio,
            c.low,
            c.high,
            c.verdict.as_str()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleanroom_proto::RunRecord;

    /// A batch of `walls` (ms), user and system a tenth and a twentieth of each.
    fn batch(walls: &[f64], codes: &[Option<i32>]) -> RunResult {
        let mut last = RunRecord::new("9".into(), EndReason::Exited, "0".into());
        last.wall_ms = *walls.last().unwrap();
        last.exit_code = *codes.last().unwrap();
        let mut r: RunResult = serde_json::from_value(json!({
            "id": "9", "exit_code": 0, "signal": null, "end_reason": "exited", "wall_ms": 0.0,
            "user_ms": 0.0, "sys_ms": 0.0, "max_rss_kb": 0, "voluntary_ctxt_switches": 0,
            "involuntary_ctxt_switches": 0, "oom_kills": 0, "killed": 0, "cpus": "0",
            "noise": {}, "output_truncated": false, "batch": "1"
        }))
        .unwrap();
        r.last = last;
        if walls.len() > 1 {
            let of = |f: f64| walls.iter().map(|w| w * f).collect::<Vec<f64>>();
            r.samples.insert("wall_ms".into(), of(1.0));
            r.samples.insert("user_ms".into(), of(0.1));
            r.samples.insert("sys_ms".into(), of(0.05));
            r.samples
                .insert("max_rss_kb".into(), vec![4.0; walls.len()]);
            r.exit_codes = codes.to_vec();
        }
        r
    }

    #[test]
    fn json_has_hyperfines_fields_in_seconds() {
        // 10, 20, 30, 40 ms: mean 25 ms, sample σ = sqrt(500/3) ms, median 25 ms (worked by
        // hand).
        let r = batch(&[10.0, 20.0, 30.0, 40.0], &[Some(0); 4]);
        let doc = json(&[Entry {
            command: "./bench --n 3",
            result: &r,
        }]);
        let x = &doc["results"][0];
        assert_eq!(x["command"], "./bench --n 3");
        let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-12;
        assert!(close(&x["mean"], 0.025), "{x}");
        assert!(close(&x["stddev"], (500.0f64 / 3.0).sqrt() / 1e3), "{x}");
        assert!(close(&x["median"], 0.025), "{x}");
        assert!(close(&x["user"], 0.0025), "{x}");
        assert!(close(&x["system"], 0.00125), "{x}");
        assert!(close(&x["min"], 0.010) && close(&x["max"], 0.040), "{x}");
        assert_eq!(x["times"].as_array().unwrap().len(), 4);
        assert_eq!(x["exit_codes"], json!([0, 0, 0, 0]));
        assert_eq!(x["memory_usage_byte"][0], 4096);
        // One run: no σ, as hyperfine says it.
        let one = json(&[Entry {
            command: "true",
            result: &batch(&[5.0], &[Some(0)]),
        }]);
        assert!(one["results"][0]["stddev"].is_null());
    }

    #[test]
    fn csv_and_markdown_are_hyperfines_tables() {
        let a = batch(&[10.0, 20.0, 30.0, 40.0], &[Some(0); 4]);
        let b = batch(&[50.0, 50.0, 50.0, 50.0], &[Some(0); 4]);
        let entries = [
            Entry {
                command: "old, quoted",
                result: &a,
            },
            Entry {
                command: "new | piped",
                result: &b,
            },
        ];
        let text = csv(&entries).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("command,mean,stddev,median,user,system,min,max")
        );
        assert!(lines.next().unwrap().starts_with("\"old, quoted\",0.025,"));
        // σ 0 of four equal runs is a number, not empty.
        assert_eq!(
            lines.next(),
            Some("new | piped,0.05,0,0.05,0.005,0.0025,0.05,0.05")
        );
        let md = markdown(&entries);
        let rows: Vec<&str> = md.lines().collect();
        assert_eq!(
            rows[0],
            "| Command | Mean [ms] | Min [ms] | Max [ms] | Relative |"
        );
        assert_eq!(rows[1], "|:---|---:|---:|---:|---:|");
        assert_eq!(
            rows[2],
            "| `old, quoted` | 25.0 ± 12.9 | 10.0 | 40.0 | 1.00 |"
        );
        // 50 / 25 = 2, its spread 2 × sqrt(0 + (12.91/25)²) = 1.03.
        assert_eq!(
            rows[3],
            "| `new \\| piped` | 50.0 ± 0.0 | 50.0 | 50.0 | 2.00 ± 1.03 |"
        );
    }

    #[test]
    fn junit_fails_a_command_that_failed_or_regressed() {
        let ok = batch(&[10.0, 10.0], &[Some(0), Some(0)]);
        let bad = batch(&[10.0, 10.0], &[Some(0), Some(3)]);
        let xml = junit(
            "cleanroom.run",
            &[
                Entry {
                    command: "ok <&>",
                    result: &ok,
                },
                Entry {
                    command: "bad",
                    result: &bad,
                },
            ],
        )
        .unwrap();
        assert!(xml.contains(r#"tests="2" failures="1""#), "{xml}");
        assert!(xml.contains(r#"name="ok &lt;&amp;&gt;""#), "{xml}");
        assert!(xml.contains(r#"<failure message="exit code 3""#), "{xml}");
        assert!(xml.contains("Time (mean ± σ): 10.000 ms"), "{xml}");
        // A name with a terminal escape and a newline: escaped in the XML and the table.
        let odd = "printf '\u{1b}[1m'\nx";
        let xml = junit(
            "s",
            &[Entry {
                command: odd,
                result: &ok,
            }],
        )
        .unwrap();
        assert!(!xml.contains('\u{1b}') && xml.contains("\\x1b[1m"), "{xml}");
        let md = markdown(&[Entry {
            command: odd,
            result: &ok,
        }]);
        assert_eq!(md.lines().count(), 3, "{md}");
        assert!(!md.contains('\u{1b}'), "{md}");
    }

    #[test]
    fn a_command_that_never_ran_is_left_out_of_the_tables() {
        let ran = batch(&[10.0, 20.0], &[Some(0), Some(0)]);
        let mut never = batch(&[0.0], &[None]);
        never.last.end_reason = EndReason::Cancelled;
        let entries = [
            Entry {
                command: "ran",
                result: &ran,
            },
            Entry {
                command: "never",
                result: &never,
            },
        ];
        assert_eq!(json(&entries)["results"].as_array().unwrap().len(), 1);
        assert_eq!(csv(&entries).unwrap().lines().count(), 2);
        let md = markdown(&entries);
        assert!(!md.contains("never") && md.contains("| 1.00 |"), "{md}");
    }
}
