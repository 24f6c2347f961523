//! cleanroomctl: the command-line client of cleanroomd.
//!
//! Thin on purpose: it parses arguments, sends one JSON-RPC request over the daemon's Unix
//! socket, and prints the answer for a person (aligned text) or a program (`--json`).
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage; 69 daemon unreachable; 77 permission
//! denied.

mod client;
mod export;
mod output;
mod report;
mod suite;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cleanroom_proto::{
    BaselineDelete, BaselineList, BaselineParams, BatchParams, Metrics, NoParams, Ping,
    ProfileActive, ProfileApply, ProfileApplyParams, ProfileList, ProfileRecommend, ProfileRevert,
    ProfileRevertParams, ProfileShow, ProfileShowParams, ProfileVerify, Reload, RunCancel,
    RunParams, RunStart, RunsActive, RunsCompare, RunsCompareParams, RunsList, RunsListParams,
    RunsShow, ShieldItemStatus, ShieldLower, ShieldLowerParams, Status, TuneResult,
};
use cleanroomctl::cli::{
    BaselineCommand, Cli, Command, CompareArgs, PinCommand, ProfileCommand, ReportArgs,
    ReportFormat, RunArgs, RunOptions, RunsCommand, ShieldCommand, TestArgs,
};
use serde::Serialize;

use client::{CallError, Client};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string();
            if !msg.is_empty() {
                eprintln!("cleanroomctl: {}", output::printable(&msg));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: &Cli) -> Result<(), CallError> {
    // A usage error is one before the daemon is asked anything.
    let commands = match &cli.command {
        Command::Compare(a) => match a.split() {
            Ok(c) => Some(c),
            Err(e) => {
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                let compare = cmd
                    .find_subcommand_mut("compare")
                    .expect("compare is a subcommand");
                compare
                    .error(clap::error::ErrorKind::InvalidValue, e)
                    .exit()
            }
        },
        Command::Test(a) => {
            let loaded = suite::files(&a.path).and_then(|files| {
                files
                    .iter()
                    .map(|f| suite::load(f))
                    .collect::<Result<Vec<_>, _>>()
            });
            let suites = match loaded {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cleanroomctl: {e}");
                    std::process::exit(2)
                }
            };
            if let Some(name) = &a.step {
                if !suites
                    .iter()
                    .any(|s| s.steps.iter().any(|st| &st.name == name))
                {
                    eprintln!("cleanroomctl: --step {name}: no step of that name");
                    std::process::exit(2)
                }
            }
            if a.check {
                let text: String = suites
                    .iter()
                    .map(|s| format!("{}: {} steps, no errors\n", s.file.display(), s.steps.len()))
                    .collect();
                let checked: Vec<serde_json::Value> = suites
                    .iter()
                    .map(|s| serde_json::json!({"file": s.file, "suite": s.name, "steps": s.steps.len()}))
                    .collect();
                return emit(cli, &checked, || text.clone());
            }
            return test_command(cli, a, &suites);
        }
        Command::Report(a) => {
            let request = report_request(a);
            if let Err(e) = request.check() {
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                let report = cmd
                    .find_subcommand_mut("report")
                    .expect("report is a subcommand");
                report.error(clap::error::ErrorKind::InvalidValue, e).exit()
            }
            None
        }
        _ => None,
    };
    let wait = Duration::from_millis(cli.timeout.unwrap_or(10_000));
    let mut client = Client::connect(&cli.socket, wait)?;
    match cli.command {
        Command::Status => {
            let r = client.call::<Status>(&NoParams {})?;
            emit(cli, &r, || output::status(&r))
        }
        Command::Ping => {
            let started = Instant::now();
            let r = client.call::<Ping>(&NoParams {})?;
            let rtt = started.elapsed();
            emit(cli, &r, || output::ping(&cli.socket, rtt))
        }
        Command::Metrics => {
            let r = client.call::<Metrics>(&NoParams {})?;
            emit(cli, &r, || r.text.clone())
        }
        Command::Profile(ref p) => profile(cli, &mut client, p),
        Command::Run(ref r) => run_command(cli, &mut client, r),
        Command::Compare(ref a) => {
            compare_command(cli, &mut client, a, commands.unwrap_or_default())
        }
        // Handled before connecting: each step connects on its own.
        Command::Test(_) => Ok(()),
        Command::Report(ref a) => {
            let gathered = report::gather(&mut client, &report_request(a))?;
            let text = match a.format() {
                ReportFormat::Html => report::html::render(&gathered),
                ReportFormat::Md => report::text::markdown(&gathered),
                ReportFormat::Csv => report::text::csv(&gathered)
                    .map_err(|e| CallError::Protocol(format!("cannot write CSV: {e}")))?,
                ReportFormat::Json => {
                    let mut s = serde_json::to_string_pretty(&gathered).map_err(|e| {
                        CallError::Protocol(format!("cannot encode the report: {e}"))
                    })?;
                    s.push('\n');
                    s
                }
            };
            match &a.output {
                Some(path) => write_file(path, &text)
                    .map_err(|e| CallError::Exit(1, Some(format!("-o {}: {e}", path.display())))),
                None => {
                    let mut out = std::io::stdout().lock();
                    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                            Err(CallError::Protocol(format!("cannot write output: {e}")))
                        }
                        _ => Ok(()),
                    }
                }
            }
        }
        Command::Runs(RunsCommand::List { limit }) => {
            let r = client.call::<RunsList>(&RunsListParams { limit: Some(limit) })?;
            emit(cli, &r, || output::runs_list(&r))
        }
        Command::Runs(RunsCommand::Active) => {
            let r = client.call::<RunsActive>(&NoParams {})?;
            emit(cli, &r, || output::runs_active(&r))
        }
        Command::Runs(RunsCommand::Cancel { ref batch }) => {
            let r = client.call::<RunCancel>(&BatchParams {
                batch: batch.clone(),
            })?;
            emit(cli, &r, || {
                if r.cancelled {
                    format!("batch {} is being cancelled\n", r.batch)
                } else {
                    format!("batch {} is not running\n", r.batch)
                }
            })
        }
        Command::Runs(RunsCommand::Show { ref batch }) => {
            let r = client.call::<RunsShow>(&BatchParams {
                batch: batch.clone(),
            })?;
            emit(cli, &r, || output::run_summary(&r))
        }
        Command::Runs(RunsCommand::Compare {
            ref a,
            ref b,
            strict,
            metric,
        }) => {
            let r = client.call::<RunsCompare>(&RunsCompareParams {
                a: a.clone(),
                b: b.clone(),
                strict,
                metric,
            })?;
            emit(cli, &r, || output::comparison(&r))?;
            if r.verdict == cleanroom_proto::Verdict::Slower {
                Err(CallError::Exit(
                    1,
                    Some("regression: B is slower than A".into()),
                ))
            } else {
                Ok(())
            }
        }
        Command::Runs(RunsCommand::History {
            ref label,
            metric,
            limit,
        }) => {
            let r = client.call::<cleanroom_proto::RunsHistory>(
                &cleanroom_proto::RunsHistoryParams {
                    label: label.clone(),
                    metric,
                    limit: Some(limit),
                },
            )?;
            emit(cli, &r, || output::history(&r))
        }
        Command::Baseline(BaselineCommand::List) => {
            let r = client.call::<BaselineList>(&NoParams {})?;
            emit(cli, &r, || output::baselines(&r))
        }
        Command::Baseline(BaselineCommand::Save {
            ref name,
            ref batch,
            public,
        }) => {
            let r = client.call::<cleanroom_proto::BaselineSave>(
                &cleanroom_proto::BaselineSaveParams {
                    name: name.clone(),
                    batch: batch.clone(),
                    public,
                },
            )?;
            emit(cli, &r, || {
                format!("baseline {} is batch {}\n", r.name, r.batch)
            })
        }
        Command::Baseline(BaselineCommand::Delete { ref name }) => {
            let r = client.call::<BaselineDelete>(&BaselineParams { name: name.clone() })?;
            emit(cli, &r, || {
                if r.deleted {
                    format!("baseline {} deleted\n", r.name)
                } else {
                    format!("no baseline named {}\n", r.name)
                }
            })
        }
        Command::Shield(ShieldCommand::Lower { force }) => {
            let r = client.call::<ShieldLower>(&ShieldLowerParams { force })?;
            emit(cli, &r, || output::shield_lower(&r))?;
            if r.items.iter().any(|i| i.status == ShieldItemStatus::Kept) {
                Err(CallError::Failed(
                    "the kernel refuses to take back what is listed, which stays journaled: \
                     exclusive runs are refused until a lowering succeeds (--force forgets it, \
                     for you to set by hand)"
                        .into(),
                ))
            } else {
                Ok(())
            }
        }
        Command::Pin(PinCommand::Add { ref rule, dry_run }) => {
            let spec = cleanroom_proto::PinRuleSpec {
                comm: rule.comm.clone(),
                cmdline: rule.cmdline.clone(),
                thread: rule.thread.clone(),
                user: rule.user.clone(),
                cgroup: rule.cgroup.clone(),
                unit: rule.unit.clone(),
                cpus: rule.cpus.clone(),
                mems: rule.mems.clone(),
                policy: rule.policy.clone(),
                priority: rule.priority,
                nice: rule.nice,
                ioprio: rule.ioprio.clone(),
            };
            let r = client.call::<cleanroom_proto::PinAdd>(&cleanroom_proto::PinAddParams {
                rule: spec,
                dry_run,
            })?;
            emit(cli, &r, || output::pin_add(&r, dry_run))?;
            if r.report.problems.is_empty() {
                Ok(())
            } else {
                Err(CallError::Failed(
                    "the rule is in force, but some tasks could not be placed (listed above)"
                        .into(),
                ))
            }
        }
        Command::Pin(PinCommand::List) => {
            let r = client.call::<cleanroom_proto::PinList>(&NoParams {})?;
            emit(cli, &r, || output::pin_list(&r))
        }
        Command::Pin(PinCommand::Remove { id }) => {
            let r = client
                .call::<cleanroom_proto::PinRemove>(&cleanroom_proto::PinRemoveParams { id })?;
            emit(cli, &r, || output::pin_remove(&r))?;
            if r.ok {
                Ok(())
            } else {
                Err(CallError::Failed(
                    "some tasks did not get their originals back (listed above)".into(),
                ))
            }
        }
        Command::Reload => {
            let r = client.call::<Reload>(&NoParams {})?;
            emit(cli, &r, || output::reload(&r))
        }
    }
}

fn profile(cli: &Cli, client: &mut Client, cmd: &ProfileCommand) -> Result<(), CallError> {
    let tune = |cli: &Cli, r: TuneResult, what: &str| -> Result<(), CallError> {
        emit(cli, &r, || output::tune(&r))?;
        if r.ok {
            Ok(())
        } else {
            Err(CallError::Failed(what.to_owned()))
        }
    };
    match cmd {
        ProfileCommand::List => {
            let r = client.call::<ProfileList>(&NoParams {})?;
            emit(cli, &r, || output::profile_list(&r))
        }
        ProfileCommand::Show { name } => {
            let r = client.call::<ProfileShow>(&ProfileShowParams { name: name.clone() })?;
            emit(cli, &r, || output::profile_show(&r))
        }
        ProfileCommand::Apply {
            name,
            dry_run,
            best_effort,
        } => {
            let r = client.call::<ProfileApply>(&ProfileApplyParams {
                name: name.clone(),
                dry_run: *dry_run,
                best_effort: *best_effort,
            })?;
            let unplaced = r.ok && r.pins.iter().any(|p| !p.problems.is_empty());
            tune(
                cli,
                r,
                &format!("applying {name} failed; what it wrote was undone unless --best-effort"),
            )?;
            if unplaced {
                return Err(CallError::Failed(format!(
                    "{name} is applied, but some tasks could not be placed (listed above)"
                )));
            }
            Ok(())
        }
        ProfileCommand::Revert { force } => {
            let r = client.call::<ProfileRevert>(&ProfileRevertParams { force: *force })?;
            tune(
                cli,
                r,
                "revert left conflicts or failures in the journal (see above; --force restores conflicts)",
            )
        }
        ProfileCommand::Verify => {
            let r = client.call::<ProfileVerify>(&NoParams {})?;
            tune(cli, r, "the host drifted from the active profile")
        }
        ProfileCommand::Recommend => {
            let r = client.call::<ProfileRecommend>(&NoParams {})?;
            emit(cli, &r, || output::recommend(&r))
        }
        ProfileCommand::Active => {
            let r = client.call::<ProfileActive>(&NoParams {})?;
            emit(cli, &r, || output::active(&r))
        }
    }
}

/// The run options as the daemon takes them (the command, label and baselines aside).
/// `path` made absolute against the current directory (not resolved: the daemon binds what
/// it names).
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

fn run_params(cli: &Cli, o: &RunOptions) -> RunParams {
    let cwd = match &o.cwd {
        Some(c) => std::path::absolute(c).unwrap_or_else(|_| c.clone()),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    RunParams {
        cwd: Some(cwd.display().to_string()),
        env: o.env.iter().cloned().collect(),
        memory: o.memory,
        pids: o.pids,
        cpu_percent: o.cpu_percent,
        timeout_ms: cli.timeout,
        deterministic: o.deterministic,
        isolate: o.isolate.clone(),
        rw: if o.rw.is_empty() {
            None
        } else if o.rw.len() == 1 && o.rw[0].as_os_str() == "none" {
            Some(Vec::new())
        } else if o.rw.iter().any(|d| d.as_os_str() == "none") {
            // `none` with directories: the daemon refuses it, saying so.
            Some(o.rw.iter().map(|d| d.display().to_string()).collect())
        } else {
            Some(o.rw.iter().map(|d| absolute(d)).collect())
        },
        ro: o.ro.iter().map(|d| absolute(d)).collect(),
        hide: o.hide.iter().map(|d| absolute(d)).collect(),
        user: o.user.clone(),
        exclusive: o.exclusive,
        cpus: o.cpus.clone(),
        wait: o.wait,
        rlimits: o.rlimits.iter().cloned().collect(),
        realtime: o.realtime,
        measure: o.measure,
        ..RunParams::default()
    }
}

fn run_command(cli: &Cli, client: &mut Client, a: &RunArgs) -> Result<(), CallError> {
    use std::io::IsTerminal;
    let params = RunParams {
        argv: a.command.clone(),
        label: a.label.clone(),
        save_baseline: a.save_baseline.clone(),
        public: a.public,
        detach: a.detach,
        baseline: a.baseline.clone(),
        strict: a.strict,
        metric: a.metric,
        repeat: a.repeat,
        warmup: a.warmup,
        collect: a.collect.clone(),
        collect_to: (!a.collect.is_empty()).then(|| absolute(&a.collect_to)),
        ..run_params(cli, &a.options)
    };
    let progress = std::io::stderr().is_terminal() && (a.repeat + a.warmup) > 1;
    let bar = progress_bar(progress, u64::from(a.repeat + a.warmup));
    let json = cli.json;
    let mut on_note = |method: &str, params: &serde_json::Value| match method {
        "run.output" => {
            let data = params["data"].as_str().unwrap_or_default();
            let to_stderr = json || params["stream"] == "stderr";
            // The bar steps aside while the program's output is written.
            bar.suspend(|| {
                let _ = if to_stderr {
                    std::io::stderr().write_all(data.as_bytes())
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(data.as_bytes()).and_then(|()| out.flush())
                };
            });
        }
        "run.progress" if progress => {
            bar.set_length(params["total"].as_u64().unwrap_or(1));
            bar.set_position(params["done"].as_u64().unwrap_or(0));
            bar.set_message(format!(
                "last {:.1} ms{}",
                params["wall_ms"].as_f64().unwrap_or(0.0),
                if params["warmup"] == true {
                    " (warm-up)"
                } else {
                    ""
                }
            ));
        }
        _ => {}
    };
    let r = client.call_streaming::<RunStart>(&params, &mut on_note);
    bar.finish_and_clear();
    let r = r?;
    if r.detached {
        return emit(cli, &r, || {
            format!(
                "batch {b} runs detached: `cleanroomctl runs show {b}` once it has ended, \
                 `cleanroomctl runs cancel {b}` to end it now\n",
                b = r.batch
            )
        });
    }
    if json {
        emit(cli, &r, String::new)?;
    } else {
        anstream::eprint!(
            "{}",
            output::paint(&output::printable(&output::run_summary(&r)))
        );
    }
    let command = shlex::try_join(a.command.iter().map(String::as_str))
        .unwrap_or_else(|_| a.command.join(" "));
    write_exports(
        &a.exports,
        "cleanroom.run",
        &[export::Entry {
            command: &command,
            result: &r,
        }],
    )?;
    let code = output::run_exit_code(&r.last);
    let verdict = r.comparison.as_ref().map(|c| c.verdict);
    if code == 0 && verdict == Some(cleanroom_proto::Verdict::Slower) {
        return Err(CallError::Exit(
            1,
            Some("regression: slower than the baseline".into()),
        ));
    }
    if code == 0 && a.fail_inconclusive && verdict == Some(cleanroom_proto::Verdict::Inconclusive) {
        return Err(CallError::Exit(
            3,
            Some("inconclusive: the verdict could not be decided (--fail-inconclusive)".into()),
        ));
    }
    if code == 0 {
        Ok(())
    } else {
        Err(CallError::Exit(code, r.last.error.clone()))
    }
}

fn compare_command(
    cli: &Cli,
    client: &mut Client,
    a: &CompareArgs,
    commands: Vec<Vec<String>>,
) -> Result<(), CallError> {
    use std::io::IsTerminal;
    let k = commands.len();
    let params = cleanroom_proto::CompareParams {
        commands: commands.clone(),
        labels: a.labels.clone(),
        options: RunParams {
            repeat: a.rounds,
            warmup: a.warmup,
            ..run_params(cli, &a.options)
        },
        metric: a.metric,
        until_decided: a.until_decided,
        max_rounds: a.max_rounds,
        max_seconds: a.max_time.map(|ms| ms.div_ceil(1000)),
        seed: a.seed,
    };
    let progress = std::io::stderr().is_terminal();
    let bar = progress_bar(
        progress && !cli.json,
        u64::from(a.rounds + a.warmup) * k as u64,
    );
    let (json, show) = (cli.json, a.show_output);
    let mut on_note = |method: &str, params: &serde_json::Value| match method {
        "run.output" if show => {
            let data = params["data"].as_str().unwrap_or_default();
            bar.suspend(|| {
                let _ = std::io::stderr().write_all(data.as_bytes());
            });
        }
        "run.progress" if progress && !json => {
            let done = params["done"].as_u64().unwrap_or(0);
            bar.set_length(params["total"].as_u64().unwrap_or(done).max(done));
            bar.set_position(done);
            bar.set_message(format!(
                "{} round {}, command {}: {:.1} ms",
                if params["warmup"] == true {
                    "warm-up"
                } else {
                    "measuring"
                },
                done.div_ceil(k as u64),
                params["command"].as_u64().unwrap_or(0) + 1,
                params["wall_ms"].as_f64().unwrap_or(0.0),
            ));
        }
        _ => {}
    };
    let r = client.call_streaming::<cleanroom_proto::RunCompare>(&params, &mut on_note);
    bar.finish_and_clear();
    let r = r?;
    emit(cli, &r, || output::compare(&r, &commands))?;
    let names: Vec<String> = commands
        .iter()
        .map(|c| shlex::try_join(c.iter().map(String::as_str)).unwrap_or_else(|_| c.join(" ")))
        .collect();
    let entries: Vec<export::Entry<'_>> = names
        .iter()
        .zip(&r.sides)
        .map(|(command, result)| export::Entry { command, result })
        .collect();
    write_exports(&a.exports, "cleanroom.compare", &entries)?;
    // The command whose run failed (one stopped before its turn ended as `cancelled`).
    let failed = r
        .sides
        .iter()
        .enumerate()
        .filter(|(_, s)| s.last.end_reason != cleanroom_proto::EndReason::Cancelled)
        .chain(r.sides.iter().enumerate())
        .find_map(|(i, s)| {
            let code = output::run_exit_code(&s.last);
            (code != 0).then(|| format!("command {} failed: {}", i + 1, output::ended(&s.last)))
        });
    if let Some(why) = failed {
        return Err(CallError::Exit(1, Some(why)));
    }
    let verdicts: Vec<_> = r
        .sides
        .iter()
        .filter_map(|s| s.comparison.as_ref().map(|c| c.verdict))
        .collect();
    if verdicts.contains(&cleanroom_proto::Verdict::Slower) {
        return Err(CallError::Exit(
            1,
            Some("regression: a command is slower than the reference".into()),
        ));
    }
    if verdicts.contains(&cleanroom_proto::Verdict::Inconclusive) {
        if a.fail_inconclusive {
            return Err(CallError::Exit(
                3,
                Some("inconclusive: a verdict could not be decided (--fail-inconclusive)".into()),
            ));
        }
        eprintln!(
            "cleanroomctl: warning: a verdict is inconclusive (more rounds, --until-decided, or --fail-inconclusive to fail on it)"
        );
    }
    Ok(())
}

/// A progress bar on stderr (indicatif: redrawn at most a few times a second, with the
/// time left), or a hidden one when `shown` is false.
fn progress_bar(shown: bool, total: u64) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len}  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("#>-"),
    );
    bar
}

/// Writes the files `exports` names (each whole, or not at all: through a temporary file
/// renamed over it), naming the flag and the file when one cannot be written.
fn write_exports(
    exports: &cleanroomctl::cli::Exports,
    suite: &str,
    entries: &[export::Entry<'_>],
) -> Result<(), CallError> {
    let json = || {
        serde_json::to_string_pretty(&export::json(entries))
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| e.to_string())
    };
    type Render<'a> = &'a dyn Fn() -> Result<String, String>;
    let wanted: [(&str, &Option<PathBuf>, Render<'_>); 4] = [
        ("--export-json", &exports.export_json, &json),
        ("--export-csv", &exports.export_csv, &|| {
            export::csv(entries)
        }),
        ("--export-markdown", &exports.export_markdown, &|| {
            Ok(export::markdown(entries))
        }),
        ("--junit", &exports.junit, &|| export::junit(suite, entries)),
    ];
    for (flag, path, render) in wanted {
        let Some(path) = path else { continue };
        let fail = |e: String| CallError::Exit(1, Some(format!("{flag} {}: {e}", path.display())));
        let text = render().map_err(fail)?;
        write_file(path, &text).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Writes `text` to `path` whole or not at all: a file beside it, renamed over it. A
/// symbolic link is written through (the file it names is replaced, not the link), and
/// what is not a regular file (`/dev/stdout`, a FIFO) is written to as it is.
fn write_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let resolved;
    let path = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            return f.write_all(text.as_bytes()).and_then(|()| f.flush());
        }
        Ok(_) => {
            resolved = std::fs::canonicalize(path)?;
            resolved.as_path()
        }
        Err(_) => path,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    // Created 0666 less the umask, as a plain file would be.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `test`: every suite in turn; exit 1 when a step of any failed.
fn test_command(cli: &Cli, a: &TestArgs, suites: &[suite::Suite]) -> Result<(), CallError> {
    use std::io::IsTerminal;
    let mut ran: Vec<(&suite::Suite, Vec<suite::exec::Outcome>)> = Vec::new();
    for s in suites {
        let opts = suite::exec::Options {
            socket: cli.socket.clone(),
            fail_fast: a.fail_fast,
            only: a
                .step
                .clone()
                .filter(|n| s.steps.iter().any(|st| &st.name == n)),
            live: !cli.json && !a.tap && std::io::stderr().is_terminal(),
        };
        if a.step.is_some() && opts.only.is_none() {
            continue;
        }
        // --fail-fast: no suite starts after one failed.
        if a.fail_fast && ran.iter().any(|(_, o)| suite::report::counts(o).failed > 0) {
            break;
        }
        let outcomes = suite::exec::run(s, &opts);
        if !cli.json && !a.tap {
            emit(cli, &outcomes, || suite::report::table(&s.name, &outcomes))?;
        }
        ran.push((s, outcomes));
    }
    let results: Vec<suite::report::SuiteResult<'_>> = ran
        .iter()
        .map(|(s, outcomes)| {
            let counts = suite::report::counts(outcomes);
            suite::report::SuiteResult {
                suite: &s.name,
                file: s.file.display().to_string(),
                passed: counts.failed == 0,
                counts,
                steps: outcomes,
            }
        })
        .collect();
    let all_passed = results.iter().all(|r| r.passed);
    // One document, one stream: a suite's object (several: an array of them), one TAP
    // plan for every step (named SUITE/STEP when there are several suites).
    if cli.json {
        match results.as_slice() {
            [one] => emit(cli, one, String::new)?,
            many => emit(cli, &many, String::new)?,
        }
    } else if a.tap {
        let steps: Vec<suite::exec::Outcome> = ran
            .iter()
            .flat_map(|(s, outcomes)| {
                outcomes.iter().map(move |o| {
                    let mut o = o.clone();
                    if suites.len() > 1 {
                        o.name = format!("{}/{}", s.name, o.name);
                    }
                    o
                })
            })
            .collect();
        emit(cli, &steps, || suite::report::tap(&steps))?;
    }
    if let Some(path) = &a.junit {
        let fail = |e: String| CallError::Exit(1, Some(format!("--junit {}: {e}", path.display())));
        let docs: Vec<String> = ran
            .iter()
            .map(|(s, outcomes)| suite::report::junit(&s.name, outcomes))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        // One document: a suite's, or every suite's testsuite under one testsuites.
        let text = if docs.len() == 1 {
            docs.into_iter().next().unwrap_or_default()
        } else {
            merge_junit(&docs)
        };
        write_file(path, &text).map_err(|e| fail(e.to_string()))?;
    }
    if all_passed {
        Ok(())
    } else {
        Err(CallError::Exit(1, Some("a step failed".into())))
    }
}

/// Several JUnit documents as one: their `testsuite` elements under one `testsuites`.
fn merge_junit(docs: &[String]) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"cleanroom\">\n",
    );
    for d in docs {
        if let (Some(a), Some(b)) = (d.find("<testsuite "), d.rfind("</testsuite>")) {
            out.push_str(&d[a..b + "</testsuite>".len()]);
            out.push('\n');
        }
    }
    out.push_str("</testsuites>\n");
    out
}

fn report_request(a: &ReportArgs) -> report::Request {
    report::Request {
        sources: a.sources.clone(),
        labels: a.labels.clone(),
        metric: a.metric,
        limit: a.limit,
    }
}

/// Prints the result as JSON with `--json`, else as the human text `human` makes.
fn emit<T: Serialize>(
    cli: &Cli,
    result: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CallError> {
    // JSON goes out as it is (anstream would drop a DEL a string may hold); text through
    // anstream, which keeps its colours only for a terminal.
    let written = if cli.json {
        let mut s = serde_json::to_string(result)
            .map_err(|e| CallError::Protocol(format!("cannot encode result: {e}")))?;
        s.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(s.as_bytes()).and_then(|()| out.flush())
    } else {
        let text = output::paint(&output::printable(&human()));
        let mut out = anstream::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    };
    // A closed pipe (`| head`) is not an error worth a message.
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CallError::Protocol(format!("cannot write output: {e}"))),
    }
}
