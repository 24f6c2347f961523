//! Running a suite: steps in dependency order, at most `parallel` at once (each on a
//! connection of its own), a step whose dependency did not pass skipped with the reason,
//! each step's batch judged against its expectations and budgets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cleanroom_proto::{EndReason, RunParams, RunResult, RunStart, Verdict};
use serde::Serialize;

use super::{Levels, Step, Suite};
use crate::client::Client;

/// Most output of a step kept for its expectations and reports, per stream (its end).
pub const OUTPUT_KEPT: usize = 256 << 10;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every expectation held, every budget within its warning level.
    Passed,
    /// Passed, with a budget past its warning level.
    Warned,
    /// An expectation or a critical budget failed, or it could not run.
    Failed,
    /// Not run (a dependency did not pass, or `--fail-fast`).
    Skipped,
}

/// What came of one step.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The step.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reasons: Vec<String>,
    /// Budgets past their warning level, and over their target.
    pub warnings: Vec<String>,
    /// Its batch (`cleanroomctl runs show`), when it ran.
    pub batch: Option<String>,
    /// Median wall time of its repeats, ms.
    pub wall_ms: Option<f64>,
    /// Median CPU time, ms.
    pub cpu_ms: Option<f64>,
    /// Median peak memory, KiB.
    pub max_rss_kb: Option<f64>,
    /// The last run's exit code.
    pub exit_code: Option<i32>,
    /// The verdict against its baseline.
    pub verdict: Option<Verdict>,
    /// Seconds from its start to its end (0 when skipped).
    pub seconds: f64,
    /// Its standard output (the end of it).
    pub stdout: String,
    /// Its standard error (the end of it).
    pub stderr: String,
}

impl Outcome {
    fn skipped(name: &str, why: String) -> Outcome {
        Outcome {
            name: name.to_owned(),
            status: Status::Skipped,
            reasons: vec![why],
            warnings: Vec::new(),
            batch: None,
            wall_ms: None,
            cpu_ms: None,
            max_rss_kb: None,
            exit_code: None,
            verdict: None,
            seconds: 0.0,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// Whether steps depending on it may run.
    pub fn passed(&self) -> bool {
        matches!(self.status, Status::Passed | Status::Warned)
    }
}

/// How a suite is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon's socket.
    pub socket: std::path::PathBuf,
    /// Stop starting steps after the first failure.
    pub fail_fast: bool,
    /// Run only this step.
    pub only: Option<String>,
    /// Write a line as each step starts and ends (to stderr).
    pub live: bool,
}

fn keep_tail(buf: &mut String, data: &str) {
    buf.push_str(data);
    if buf.len() > OUTPUT_KEPT {
        let mut cut = buf.len() - OUTPUT_KEPT;
        while !buf.is_char_boundary(cut) {
            cut += 1;
        }
        buf.drain(..cut);
    }
}

/// Runs `step` of `suite` as one batch and judges it.
fn run_step(suite: &Suite, step: &Step, socket: &Path) -> Outcome {
    let started = Instant::now();
    let mut out = Outcome::skipped(&step.name, String::new());
    out.reasons.clear();
    let params = RunParams {
        argv: step.argv.clone(),
        cwd: Some(step.cwd.display().to_string()),
        env: step.env.clone(),
        memory: step.memory,
        pids: step.pids,
        timeout_ms: step.timeout_ms,
        exclusive: step.exclusive,
        cpus: step.cpus.map(cleanroom_proto::CpuRequest::Count),
        wait: step.exclusive,
        isolate: step.isolate.clone(),
        label: Some(format!("{}/{}", suite.name, step.name)),
        repeat: step.repeat,
        warmup: step.warmup,
        baseline: step.baseline.clone(),
        save_baseline: step.save_baseline.clone(),
        collect: step.collect.clone(),
        collect_to: (!step.collect.is_empty()).then(|| step.collect_to.display().to_string()),
        ..RunParams::default()
    };
    // An expected file must be the step's: one there before must change.
    let before: Vec<Option<Written>> = step
        .expect
        .files
        .iter()
        .map(|f| written(&step.cwd.join(f)))
        .collect();
    // The output of the run going on, and of the last one that ended (a progress note
    // follows each run's output): expectations judge the last measured run's.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let (mut last_out, mut last_err) = (String::new(), String::new());
    let result = Client::connect(socket, Duration::from_secs(10)).and_then(|mut c| {
        c.call_streaming::<RunStart>(&params, &mut |method, p| match method {
            "run.output" => {
                let data = p["data"].as_str().unwrap_or_default();
                if p["stream"] == "stderr" {
                    keep_tail(&mut stderr, data);
                } else {
                    keep_tail(&mut stdout, data);
                }
            }
            "run.progress" => {
                last_out = std::mem::take(&mut stdout);
                last_err = std::mem::take(&mut stderr);
            }
            _ => {}
        })
    });
    out.seconds = started.elapsed().as_secs_f64();
    // Output after the last progress note (none came: a daemon that sends none) counts.
    out.stdout = if stdout.is_empty() { last_out } else { stdout };
    out.stderr = if stderr.is_empty() { last_err } else { stderr };
    match result {
        Ok(r) => judge(step, &r, &before, &mut out),
        Err(e) => {
            out.status = Status::Failed;
            out.reasons.push(format!("could not run: {e}"));
        }
    }
    out
}

/// The median of `metric` over `r`'s repeats.
fn median(r: &RunResult, metric: &str) -> Option<f64> {
    if let Some(s) = r.stats.get(metric) {
        return Some(s.median);
    }
    let l = &r.last;
    match metric {
        "wall_ms" => Some(l.wall_ms),
        "cpu_ms" => Some(l.user_ms + l.sys_ms),
        "max_rss_kb" => Some(l.max_rss_kb as f64),
        _ => None,
    }
}

/// A budget's verdict on `value`: a failure, a warning, a note, or nothing.
pub fn budget(metric: &str, value: f64, l: &Levels) -> (Option<String>, Option<String>) {
    let say = |level: &str, bound: f64| format!("{metric} {value:.1} is over its {level} {bound}");
    match (l.target, l.warning, l.critical) {
        (_, _, Some(c)) if value > c => (Some(say("critical level", c)), None),
        (_, Some(w), _) if value > w => (None, Some(say("warning level", w))),
        (Some(t), _, _) if value > t => (None, Some(say("target", t))),
        _ => (None, None),
    }
}

/// What tells a file written again from one left alone: its inode and its change time
/// (which, unlike its modification time, no tool can set back: `cp -p` keeps the one,
/// never the other).
type Written = (u64, i64, i64);

/// `path`'s [`Written`], if it exists.
fn written(path: &Path) -> Option<Written> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Judges `r`, the batch of `step`; `before` holds the expected files' modification times
/// before it ran.
fn judge(step: &Step, r: &RunResult, before: &[Option<Written>], out: &mut Outcome) {
    out.batch = Some(r.batch.clone());
    out.exit_code = r.last.exit_code;
    out.wall_ms = median(r, "wall_ms");
    out.cpu_ms = median(r, "cpu_ms");
    out.max_rss_kb = median(r, "max_rss_kb");
    out.verdict = r.comparison.as_ref().map(|c| c.verdict);
    let mut fail = |m: String| out.reasons.push(m);
    let want = step.expect.exit.unwrap_or(0);
    match r.last.end_reason {
        EndReason::Exited => {
            let codes = if r.exit_codes.is_empty() {
                vec![r.last.exit_code]
            } else {
                r.exit_codes.clone()
            };
            let wrong: Vec<String> = codes
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != Some(want))
                .map(|(i, c)| {
                    format!(
                        "run {} exited {}",
                        i + 1,
                        c.map_or("?".into(), |c| c.to_string())
                    )
                })
                .collect();
            if !wrong.is_empty() {
                fail(format!("expected exit code {want}: {}", wrong.join(", ")));
            }
        }
        EndReason::Timeout => fail(format!(
            "timed out after {} ms",
            step.timeout_ms.unwrap_or_default()
        )),
        other => fail(format!(
            "ended: {}{}",
            other.as_str(),
            r.last
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )),
    }
    for (stream, text, contains, regex) in [
        (
            "stdout",
            &out.stdout,
            &step.expect.stdout_contains,
            &step.regexes.0,
        ),
        (
            "stderr",
            &out.stderr,
            &step.expect.stderr_contains,
            &step.regexes.1,
        ),
    ] {
        for c in contains {
            if !text.contains(c.as_str()) {
                out.reasons.push(format!("{stream} does not contain {c:?}"));
            }
        }
        if let Some(re) = regex {
            if !re.is_match(text) {
                out.reasons
                    .push(format!("{stream} does not match /{}/", re.as_str()));
            }
        }
    }
    for (f, then) in step.expect.files.iter().zip(before) {
        match written(&step.cwd.join(f)) {
            None => out.reasons.push(format!("{f} does not exist afterwards")),
            Some(now) if Some(now) == *then => out.reasons.push(format!(
                "{f} was not written by the step (unchanged since before it ran)"
            )),
            Some(_) => {}
        }
    }
    if let Some(c) = &r.collected {
        out.warnings
            .extend(c.errors.iter().map(|e| format!("collect: {e}")));
    }
    let values: BTreeMap<&str, Option<f64>> = [
        ("wall_ms", out.wall_ms),
        ("cpu_ms", out.cpu_ms),
        ("max_rss_kb", out.max_rss_kb),
    ]
    .into_iter()
    .collect();
    for (metric, levels) in &step.budget {
        if let Some(Some(v)) = values.get(metric.as_str()) {
            let (failure, warning) = budget(metric, *v, levels);
            out.reasons.extend(failure);
            out.warnings.extend(warning);
        }
    }
    if out.verdict == Some(Verdict::Slower) {
        out.reasons.push(format!(
            "slower than baseline {}",
            step.baseline.as_deref().unwrap_or_default()
        ));
    }
    out.status = if !out.reasons.is_empty() {
        Status::Failed
    } else if out.warnings.iter().any(|w| !w.contains("its target")) {
        Status::Warned
    } else {
        Status::Passed
    };
}

/// Runs `suite`: every step's outcome, in the file's order.
pub fn run(suite: &Suite, opts: &Options) -> Vec<Outcome> {
    let n = suite.steps.len();
    let mut done: Vec<Option<Outcome>> = vec![None; n];
    let only = opts
        .only
        .as_ref()
        .and_then(|name| suite.steps.iter().position(|s| &s.name == name));
    if let Some(o) = only {
        for (i, slot) in done.iter_mut().enumerate() {
            if i != o {
                *slot = Some(Outcome::skipped(
                    &suite.steps[i].name,
                    format!("--step {} runs that step only", suite.steps[o].name),
                ));
            }
        }
    }
    let live = |line: String| {
        if opts.live {
            eprintln!("{line}");
        }
    };
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        let mut started = vec![false; n];
        let mut failed = false;
        loop {
            // Skip what cannot run (again, until nothing changes: a dependent may come
            // before its dependency in the file); start what may, within the limit.
            let mut changed = true;
            while changed {
                changed = false;
                for i in 0..n {
                    if started[i] || done[i].is_some() {
                        continue;
                    }
                    let step = &suite.steps[i];
                    let deps_ok = only == Some(i)
                        || step
                            .depends_on
                            .iter()
                            .all(|&d| done[d].as_ref().is_some_and(Outcome::passed));
                    let blocked = if only == Some(i) {
                        None
                    } else {
                        step.depends_on
                            .iter()
                            .find(|&&d| done[d].as_ref().is_some_and(|o| !o.passed()))
                    };
                    if let Some(&d) = blocked {
                        let o = Outcome::skipped(
                            &step.name,
                            format!("its dependency {} did not pass", suite.steps[d].name),
                        );
                        live(format!("  - {} skipped: {}", step.name, o.reasons[0]));
                        done[i] = Some(o);
                        changed = true;
                        continue;
                    }
                    if failed && opts.fail_fast {
                        let o = Outcome::skipped(&step.name, "--fail-fast: a step failed".into());
                        done[i] = Some(o);
                        changed = true;
                        continue;
                    }
                    if deps_ok && running < suite.parallel {
                        started[i] = true;
                        running += 1;
                        live(format!("  ▸ {} …", step.name));
                        let tx = tx.clone();
                        let socket = opts.socket.as_path();
                        scope.spawn(move || {
                            // A step that panics is a failed step, not a suite that waits
                            // forever for it.
                            let o = std::panic::catch_unwind(|| run_step(suite, step, socket))
                                .unwrap_or_else(|_| {
                                    let mut o = Outcome::skipped(&step.name, String::new());
                                    o.status = Status::Failed;
                                    o.reasons =
                                        vec!["cleanroomctl failed running it (a bug)".into()];
                                    o
                                });
                            let _ = tx.send((i, o));
                        });
                    }
                }
            }
            if running == 0 {
                if done.iter().all(Option::is_some) {
                    break;
                }
                // Nothing runs and nothing can start: what is left waits on itself (a
                // cycle, refused at load) — never here; skip it to be safe.
                for (i, slot) in done.iter_mut().enumerate() {
                    if slot.is_none() {
                        *slot = Some(Outcome::skipped(
                            &suite.steps[i].name,
                            "not reachable".into(),
                        ));
                    }
                }
                break;
            }
            let Ok((i, o)) = rx.recv() else { break };
            running -= 1;
            let mark = match o.status {
                Status::Passed => "✓",
                Status::Warned => "!",
                Status::Failed => "✗",
                Status::Skipped => "-",
            };
            live(format!(
                "  {mark} {} ({:.2} s){}",
                o.name,
                o.seconds,
                o.reasons
                    .first()
                    .or(o.warnings.first())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
            failed |= o.status == Status::Failed;
            done[i] = Some(o);
        }
    });
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_pass_warn_and_fail_by_their_levels() {
        let l = Levels {
            target: Some(10.0),
            warning: Some(20.0),
            critical: Some(40.0),
        };
        assert_eq!(budget("wall_ms", 5.0, &l), (None, None));
        let (f, w) = budget("wall_ms", 15.0, &l);
        assert!(f.is_none() && w.unwrap().contains("over its target 10"));
        let (f, w) = budget("wall_ms", 25.0, &l);
        assert!(f.is_none() && w.unwrap().contains("over its warning level 20"));
        let (f, w) = budget("wall_ms", 45.0, &l);
        assert!(f.unwrap().contains("over its critical level 40") && w.is_none());
    }

    #[test]
    fn kept_output_is_the_end_of_it() {
        let mut b = String::new();
        keep_tail(&mut b, &"a".repeat(OUTPUT_KEPT));
        keep_tail(&mut b, "é!");
        assert!(b.len() <= OUTPUT_KEPT && b.ends_with("é!"));
    }
}
