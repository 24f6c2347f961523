//! Declarative test suites (`cleanroomctl test FILE.toml|DIR`): steps, each a batch of the
//! run engine (in a file-system clean room unless the suite says otherwise), with
//! expectations and resource budgets, run in dependency order, independent ones in
//! parallel.
//!
//! [`load`] reads and checks a suite before anything runs: every error names the file, the
//! line and the key (an unknown key, a `depends_on` naming no step, a cycle with its
//! steps, a budget whose levels are out of order). [`run`] executes it; [`report`] writes
//! what came of it.

pub mod exec;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Most steps one suite holds.
pub const MAX_STEPS: usize = 256;

/// Most steps at once (under the daemon's default `quotas.runs_per_uid` of 32, so a
/// suite waits rather than runs into it).
pub const MAX_PARALLEL: usize = 16;

/// A suite file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    suite: Option<Defaults>,
    #[serde(default)]
    step: Vec<StepFile>,
}

/// `[suite]`: its name and what every step gets unless it says otherwise.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// The suite's name (default: the file's stem).
    pub name: Option<String>,
    /// Most steps at once (default 2).
    pub parallel: Option<usize>,
    /// Namespaces (default `["fs"]`: a file-system clean room).
    pub isolate: Option<Vec<String>>,
    /// Each run's limit (`30s`).
    pub timeout: Option<String>,
    /// Memory limit (`512M`).
    pub memory: Option<String>,
    /// Task limit.
    pub pids: Option<u64>,
    /// Environment for every step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Measured repeats of every step.
    pub repeat: Option<u32>,
    /// Warm-ups of every step.
    pub warmup: Option<u32>,
    /// Working directory, relative to the suite file's (default: that directory).
    pub cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: Spanned<String>,
    run: Option<Vec<String>>,
    shell: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    timeout: Option<String>,
    memory: Option<String>,
    pids: Option<u64>,
    #[serde(default)]
    exclusive: bool,
    cpus: Option<u32>,
    repeat: Option<u32>,
    warmup: Option<u32>,
    isolate: Option<Vec<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    expect: Expect,
    #[serde(default)]
    budget: BTreeMap<String, Spanned<Levels>>,
    baseline: Option<String>,
    save_baseline: Option<String>,
    #[serde(default)]
    collect: Vec<Spanned<String>>,
    collect_to: Option<String>,
}

/// What a step must show to pass.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Its exit code (default 0).
    pub exit: Option<i32>,
    /// Text its standard output holds (each one).
    #[serde(default)]
    pub stdout_contains: Vec<String>,
    /// A regular expression its standard output matches.
    pub stdout_regex: Option<String>,
    /// Text its standard error holds.
    #[serde(default)]
    pub stderr_contains: Vec<String>,
    /// A regular expression its standard error matches.
    pub stderr_regex: Option<String>,
    /// Files the step writes (relative to its working directory): each must exist
    /// afterwards, created or rewritten by it (one left from before does not count).
    #[serde(default)]
    pub files: Vec<String>,
}

/// A budget's levels: within `target` is the goal, past `warning` a warning, past
/// `critical` a failure. Each optional; those given in that order.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    /// The goal.
    pub target: Option<f64>,
    /// Past it, the step passes with a warning.
    pub warning: Option<f64>,
    /// Past it, the step fails.
    pub critical: Option<f64>,
}

/// The measures a budget may bound.
pub const BUDGET_METRICS: [&str; 3] = ["wall_ms", "cpu_ms", "max_rss_kb"];

/// A checked step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its name (unique in the suite).
    pub name: String,
    /// The command.
    pub argv: Vec<String>,
    /// Its environment (the suite's, then its own).
    pub env: BTreeMap<String, String>,
    /// Its working directory (absolute).
    pub cwd: PathBuf,
    /// Each run's limit, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Memory limit, bytes.
    pub memory: Option<u64>,
    /// Task limit.
    pub pids: Option<u64>,
    /// Whole cores of its own.
    pub exclusive: bool,
    /// How many.
    pub cpus: Option<u32>,
    /// Measured repeats.
    pub repeat: u32,
    /// Warm-ups.
    pub warmup: u32,
    /// Namespaces.
    pub isolate: Vec<cleanroom_proto::Isolation>,
    /// The steps that must pass first (indexes).
    pub depends_on: Vec<usize>,
    /// What it must show.
    pub expect: Expect,
    /// Compiled `stdout_regex`, `stderr_regex`.
    pub regexes: (Option<regex::Regex>, Option<regex::Regex>),
    /// Budgets by measure.
    pub budget: BTreeMap<String, Levels>,
    /// Compare with this baseline.
    pub baseline: Option<String>,
    /// Save as this baseline.
    pub save_baseline: Option<String>,
    /// Files to copy out of its clean room (glob patterns).
    pub collect: Vec<String>,
    /// Where (absolute; default `collected/STEP` below its working directory).
    pub collect_to: PathBuf,
}

/// A checked suite.
#[derive(Debug, Clone)]
pub struct Suite {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Most steps at once.
    pub parallel: usize,
    /// Its steps, in the file's order.
    pub steps: Vec<Step>,
}

/// `file:line:column: message` for byte `at` of `text`.
fn at(file: &Path, text: &str, at: usize, message: &str) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{column}: {message}", file.display())
}

/// The suite files `path` names: the file, or a directory's `*.toml` files in name order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(format!("{}: no *.toml suite in it", path.display()));
        }
        Ok(found)
    } else {
        Ok(vec![path.to_owned()])
    }
}

/// Reads and checks the suite in `file`.
pub fn load(file: &Path) -> Result<Suite, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    parse(file, &text)
}

fn isolation(file: &Path, names: &[String]) -> Result<Vec<cleanroom_proto::Isolation>, String> {
    names
        .iter()
        .map(|n| {
            cleanroomctl::cli::parse_isolation(n)
                .map_err(|e| format!("{}: isolate: {e}", file.display()))
        })
        .collect()
}

/// Checks the suite `text` read from `file`.
pub fn parse(file: &Path, text: &str) -> Result<Suite, String> {
    let parsed: File = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => at(file, text, span.start, e.message()),
        None => format!("{}: {}", file.display(), e.message()),
    })?;
    let defaults = parsed.suite.unwrap_or_default();
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let base = match &defaults.cwd {
        Some(c) => dir.join(c),
        None => dir.clone(),
    };
    let duration = |what: &str, v: &Option<String>| -> Result<Option<u64>, String> {
        v.as_deref()
            .map(|s| {
                cleanroomctl::cli::parse_duration(s)
                    .map_err(|e| format!("{}: {what}: {e}", file.display()))
            })
            .transpose()
    };
    let size = |what: &str, v: &Option<String>| -> Result<Option<u64>, String> {
        v.as_deref()
            .map(|s| {
                cleanroomctl::cli::parse_size(s)
                    .map_err(|e| format!("{}: {what}: {e}", file.display()))
            })
            .transpose()
    };
    if parsed.step.is_empty() {
        return Err(format!("{}: no [[step]]", file.display()));
    }
    if parsed.step.len() > MAX_STEPS {
        return Err(format!(
            "{}: {} steps; at most {MAX_STEPS}",
            file.display(),
            parsed.step.len()
        ));
    }
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, s) in parsed.step.iter().enumerate() {
        let name = s.name.get_ref();
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
            return Err(at(
                file,
                text,
                s.name.span().start,
                &format!("step name {name:?}: not empty, without `/` or control characters"),
            ));
        }
        if index.insert(name.clone(), i).is_some() {
            return Err(at(
                file,
                text,
                s.name.span().start,
                &format!("a second step named {name:?}"),
            ));
        }
    }
    let name_at: Vec<usize> = parsed.step.iter().map(|s| s.name.span().start).collect();
    let mut steps = Vec::with_capacity(parsed.step.len());
    for s in parsed.step {
        let name = s.name.get_ref().clone();
        let here = |m: &str| {
            at(
                file,
                text,
                s.name.span().start,
                &format!("step {name:?}: {m}"),
            )
        };
        let argv = match (s.run, s.shell) {
            (Some(argv), None) if !argv.is_empty() && !argv[0].is_empty() => argv,
            (None, Some(script)) => vec!["sh".into(), "-c".into(), script],
            (Some(_), Some(_)) => return Err(here("both run and shell: give one")),
            _ => return Err(here("no command: give run = [argv] or shell = \"script\"")),
        };
        let mut depends_on = Vec::new();
        for d in &s.depends_on {
            match index.get(d.get_ref()) {
                Some(&j) => depends_on.push(j),
                None => {
                    return Err(at(
                        file,
                        text,
                        d.span().start,
                        &format!(
                            "step {name:?}: depends_on {:?}: no step of that name",
                            d.get_ref()
                        ),
                    ));
                }
            }
        }
        let mut budget = BTreeMap::new();
        for (metric, levels) in s.budget {
            if !BUDGET_METRICS.contains(&metric.as_str()) {
                return Err(at(
                    file,
                    text,
                    levels.span().start,
                    &format!(
                        "step {name:?}: budget {metric:?}: bound wall_ms, cpu_ms or max_rss_kb"
                    ),
                ));
            }
            let l = *levels.get_ref();
            let given: Vec<f64> = [l.target, l.warning, l.critical]
                .into_iter()
                .flatten()
                .collect();
            if given.is_empty()
                || given.windows(2).any(|w| w[0] > w[1])
                || given.iter().any(|v| v.is_nan() || *v < 0.0)
            {
                return Err(at(
                    file,
                    text,
                    levels.span().start,
                    &format!(
                        "step {name:?}: budget {metric}: levels target ≤ warning ≤ critical, at least one, none negative"
                    ),
                ));
            }
            budget.insert(metric, l);
        }
        let regex = |what: &str, r: &Option<String>| -> Result<Option<regex::Regex>, String> {
            r.as_deref()
                .map(|r| regex::Regex::new(r).map_err(|e| here(&format!("expect.{what}: {e}"))))
                .transpose()
        };
        let regexes = (
            regex("stdout_regex", &s.expect.stdout_regex)?,
            regex("stderr_regex", &s.expect.stderr_regex)?,
        );
        let mut env = defaults.env.clone();
        env.extend(s.env);
        // A bad value is named at its step (the suite's default, at the step using it).
        let isolate = isolation(
            file,
            s.isolate
                .as_ref()
                .or(defaults.isolate.as_ref())
                .map_or(&["fs".to_owned()][..], Vec::as_slice),
        )
        .map_err(|e| here(e.trim_start_matches(&format!("{}: ", file.display()))))?;
        let timeout_ms = duration("timeout", &s.timeout.or(defaults.timeout.clone()))
            .map_err(|e| here(e.trim_start_matches(&format!("{}: ", file.display()))))?;
        let memory = size("memory", &s.memory.or(defaults.memory.clone()))
            .map_err(|e| here(e.trim_start_matches(&format!("{}: ", file.display()))))?;
        let cwd = match &s.cwd {
            Some(c) => base.join(c),
            None => base.clone(),
        };
        for c in &s.collect {
            let bad = |m: String| {
                Err(at(
                    file,
                    text,
                    c.span().start,
                    &format!("step {name:?}: collect {:?}: {m}", c.get_ref()),
                ))
            };
            if !isolate.contains(&cleanroom_proto::Isolation::Fs) {
                return bad("collect goes with isolate fs (it copies from the clean room)".into());
            }
            if let Err(e) = glob::Pattern::new(c.get_ref()) {
                return bad(format!("not a glob pattern: {e}"));
            }
        }
        if s.collect_to.is_some() && s.collect.is_empty() {
            return Err(here(
                "collect_to goes with collect (the patterns of the files to copy)",
            ));
        }
        steps.push(Step {
            collect: s.collect.iter().map(|c| c.get_ref().clone()).collect(),
            collect_to: match &s.collect_to {
                Some(dir) => cwd.join(dir),
                None => cwd.join("collected").join(&name),
            },
            cwd,
            argv,
            env,
            timeout_ms,
            memory,
            pids: s.pids.or(defaults.pids),
            exclusive: s.exclusive,
            cpus: s.cpus,
            repeat: s.repeat.or(defaults.repeat).unwrap_or(1).max(1),
            warmup: s.warmup.or(defaults.warmup).unwrap_or(0),
            isolate,
            depends_on,
            expect: s.expect,
            regexes,
            budget,
            baseline: s.baseline,
            save_baseline: s.save_baseline,
            name,
        });
    }
    if let Some(cycle) = cycle(&steps) {
        let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
        return Err(at(
            file,
            text,
            name_at[cycle[0]],
            &format!("depends_on makes a cycle: {}", names.join(" → ")),
        ));
    }
    Ok(Suite {
        name: defaults.name.unwrap_or_else(|| {
            file.file_stem()
                .map_or_else(|| "suite".into(), |s| s.to_string_lossy().into_owned())
        }),
        file: file.to_owned(),
        parallel: defaults.parallel.unwrap_or(2).clamp(1, MAX_PARALLEL),
        steps,
    })
}

/// A cycle of `depends_on`, as the steps on it with the first repeated at the end.
fn cycle(steps: &[Step]) -> Option<Vec<usize>> {
    // 0: not seen, 1: on the path, 2: done.
    fn visit(
        i: usize,
        steps: &[Step],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for &d in &steps[i].depends_on {
            match state[d] {
                1 => {
                    let from = path.iter().position(|&p| p == d).unwrap_or(0);
                    let mut c = path[from..].to_vec();
                    c.push(d);
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(d, steps, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; steps.len()];
    (0..steps.len()).find_map(|i| {
        if state[i] == 0 {
            visit(i, steps, &mut state, &mut Vec::new())
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("/s/x.toml"), text).unwrap_err()
    }

    #[test]
    fn a_suite_is_read_with_its_defaults() {
        let s = parse(
            Path::new("/s/x.toml"),
            "[suite]\nname = \"demo\"\ntimeout = \"5s\"\nenv = { A = \"1\" }\n\
             [[step]]\nname = \"a\"\nrun = [\"true\"]\nenv = { B = \"2\" }\n\
             [[step]]\nname = \"b\"\nshell = \"echo hi\"\ndepends_on = [\"a\"]\nisolate = []\n\
             [step.budget.wall_ms]\ntarget = 10\ncritical = 100\n",
        )
        .unwrap();
        assert_eq!(s.name, "demo");
        assert_eq!(s.steps[0].timeout_ms, Some(5000));
        assert_eq!(s.steps[0].env.len(), 2);
        assert_eq!(s.steps[0].isolate, vec![cleanroom_proto::Isolation::Fs]);
        assert_eq!(s.steps[1].argv, vec!["sh", "-c", "echo hi"]);
        assert_eq!(s.steps[1].depends_on, vec![0]);
        assert!(s.steps[1].isolate.is_empty());
        assert_eq!(s.steps[0].cwd, PathBuf::from("/s"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[[step]]\nname = \"a\"\nrun = [\"true\"]\nbogus = 1\n");
        assert!(
            e.starts_with("/s/x.toml:4:1: ") && e.contains("bogus"),
            "{e}"
        );
        let e = err("[[step]]\nname = \"a\"\nrun = [\"true\"]\ndepends_on = [\"zz\"]\n");
        assert!(
            e.starts_with("/s/x.toml:4:15: ") && e.contains("\"zz\""),
            "{e}"
        );
        let e = err(
            "[[step]]\nname = \"a\"\nrun = [\"true\"]\n\n[[step]]\nname = \"b\"\nrun = [\"true\"]\ntimeout = \"soon\"\n",
        );
        assert!(e.starts_with("/s/x.toml:6:8: step \"b\": timeout: "), "{e}");
        let e = err("[[step]]\nname = \"a\"\n");
        assert!(e.contains("step \"a\": no command"), "{e}");
        let e = err(
            "[[step]]\nname = \"a\"\nrun = [\"true\"]\n[step.budget.wall_ms]\ntarget = 5\ncritical = 1\n",
        );
        assert!(e.contains("target ≤ warning ≤ critical"), "{e}");
        let e = err(
            "[[step]]\nname = \"a\"\nrun = [\"true\"]\n[[step]]\nname = \"a\"\nrun = [\"true\"]\n",
        );
        assert!(e.starts_with("/s/x.toml:5:8: a second step"), "{e}");
    }

    #[test]
    fn a_dependency_cycle_is_named() {
        let e = err(
            "[[step]]\nname = \"a\"\nrun = [\"true\"]\ndepends_on = [\"c\"]\n\
             [[step]]\nname = \"b\"\nrun = [\"true\"]\ndepends_on = [\"a\"]\n\
             [[step]]\nname = \"c\"\nrun = [\"true\"]\ndepends_on = [\"b\"]\n",
        );
        assert_eq!(e, "/s/x.toml:2:8: depends_on makes a cycle: a → c → b → a");
    }
}
