//! Human-readable output: aligned labels, units, no debug dumps.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use cleanroom_proto::{
    ActiveResult, ProfileListResult, ProfileOrigin, ProfileShowResult, RecommendResult,
    ReloadResult, ShieldItemStatus, ShieldKind, ShieldLowerResult, StatusResult, TuneResult,
};

/// `text` (already [`printable`]) with its fixed labels and verdicts in colour: the time
/// lines in bold, a slower verdict in red, a faster or equivalent one in green, an
/// inconclusive one in yellow. Written through `anstream`, which drops the colours where
/// the stream is not a terminal, `NO_COLOR` is set or the terminal cannot show them.
pub fn paint(text: &str) -> String {
    use anstyle::{AnsiColor, Style};
    let bold = Style::new().bold();
    let styled = |style: Style, s: &str| format!("{style}{s}{style:#}");
    let mut out = text.to_owned();
    for (pattern, style) in [
        ("Time (mean ± σ):", bold),
        ("Range (min … max):", bold),
        ("SLOWER by", bold.fg_color(Some(AnsiColor::Red.into()))),
        ("FASTER by", bold.fg_color(Some(AnsiColor::Green.into()))),
        (
            "equivalent (within",
            Style::new().fg_color(Some(AnsiColor::Green.into())),
        ),
        (
            "INCONCLUSIVE",
            bold.fg_color(Some(AnsiColor::Yellow.into())),
        ),
    ] {
        out = out.replace(pattern, &styled(style, pattern));
    }
    out
}

/// Rows of `label  value`, labels padded to one column.
fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<width$}  {value}");
    }
    out
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `42s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `status`.
pub fn status(r: &StatusResult) -> String {
    let mut out = format!(
        "cleanroomd {} (protocol {}), pid {}, up {}\n",
        r.version,
        r.protocol,
        r.pid,
        duration(r.uptime_s)
    );
    let socket = if r.socket_activated {
        format!("{} (socket-activated)", r.socket)
    } else {
        r.socket.clone()
    };
    let mut rows = vec![
        ("socket", socket),
        ("state dir", r.state_dir.clone()),
        (
            "config",
            r.config_file
                .clone()
                .unwrap_or_else(|| "built-in defaults".into()),
        ),
        ("host root", r.host_root.clone()),
        ("cgroups", r.cgroup.as_str().to_owned()),
        ("connections", r.connections.to_string()),
        (
            "profile",
            r.active_profile.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "journal",
            format!("{} knobs to put back", r.journal_entries),
        ),
        ("pinning", pinning(r)),
    ];
    if let Some(p) = &r.partition {
        rows.push((
            "partition",
            format!(
                "CPUs {} kept for what is pinned there (profile {}, by {}); exclusive runs take CPUs {}",
                p.cpus, p.profile, p.method, p.run_pool
            ),
        ));
    }
    rows.extend(
        r.pin_rules
            .iter()
            .map(|rule| ("pin rule", printable(rule).into_owned())),
    );
    rows.push((
        "you",
        format!(
            "uid {} gid {} pid {}, role {}",
            r.caller.uid, r.caller.gid, r.caller.pid, r.caller.role
        ),
    ));
    out.push_str(&table(&rows));
    out
}

/// The pinning line of `status`: how many rules are in force and what they changed (the
/// rules follow, one row each).
fn pinning(r: &StatusResult) -> String {
    if r.pin_rules.is_empty() && r.pinned == 0 {
        return "no rules".into();
    }
    format!(
        "{} rule(s), {} task attribute(s) to put back{}",
        r.pin_rules.len(),
        r.pinned,
        if r.pin_events {
            ", following new processes"
        } else {
            ""
        }
    )
}

/// `ping`.
pub fn ping(socket: &Path, rtt: Duration) -> String {
    format!(
        "pong from cleanroomd at {} in {}\n",
        socket.display(),
        micros(rtt)
    )
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// `reload`.
pub fn reload(r: &ReloadResult) -> String {
    let from = r
        .config_file
        .clone()
        .unwrap_or_else(|| "built-in defaults (no file)".into());
    let mut out = format!("configuration reloaded from {from}\n");
    if r.changed.is_empty() && r.restart_required.is_empty() {
        out.push_str("  nothing changed\n");
    }
    let mut rows = Vec::new();
    if !r.changed.is_empty() {
        rows.push(("changed", r.changed.join(", ")));
    }
    if !r.restart_required.is_empty() {
        rows.push((
            "needs restart",
            format!(
                "{} (systemctl restart cleanroomd)",
                r.restart_required.join(", ")
            ),
        ));
    }
    out.push_str(&table(&rows));
    out
}

/// Columns padded to their widest cell; the last column is not padded.
/// `text` with every control character but newline and tab shown as an escape (`\x1b`,
/// `\u{9b}`): what the daemon stores of other users (labels, commands, messages) may
/// hold terminal escape sequences, and none may reach the terminal of whoever reads it.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !bad(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `runs active`.
pub fn runs_active(r: &cleanroom_proto::RunsActiveResult) -> String {
    if r.batches.is_empty() {
        return "no batch in progress\n".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let rows: Vec<Vec<String>> = r
        .batches
        .iter()
        .map(|b| {
            vec![
                b.batch.clone(),
                b.uid.to_string(),
                duration_s((now - b.started).max(0.0)),
                match (&b.exclusive_cpus, &b.shield) {
                    (Some(cpus), Some(shield)) => format!("{cpus} ({shield})"),
                    (Some(cpus), None) => cpus.clone(),
                    _ => "-".into(),
                },
                if b.detached { "yes" } else { "no" }.into(),
                b.label.clone().unwrap_or_default(),
                b.argv.join(" "),
            ]
        })
        .collect();
    columns(
        &[
            "BATCH",
            "UID",
            "RUNNING",
            "EXCLUSIVE",
            "DETACHED",
            "LABEL",
            "COMMAND",
        ],
        &rows,
    )
}

/// A duration in seconds as people read it: `42 s`, `3 min 20 s`, `2 h 5 min`.
fn duration_s(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A table of `rows` under `header`, columns two spaces apart, no borders (`kubectl get`'s
/// look), widths by display width.
pub(crate) fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    use comfy_table::{Table, presets::NOTHING};
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(header.iter().copied())
        .add_rows(rows.iter().map(|r| r.iter().take(header.len())));
    let last = header.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn status_name(s: cleanroom_proto::KnobStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// `profile apply|revert|verify`.
pub fn tune(r: &TuneResult) -> String {
    let verify = r.items.iter().any(|i| {
        matches!(
            i.status,
            cleanroom_proto::KnobStatus::Ok | cleanroom_proto::KnobStatus::Drifted
        )
    });
    let header: &[&str] = if verify {
        &["KNOB", "EXPECTED", "ACTUAL", "RESULT"]
    } else {
        &["KNOB", "BEFORE", "AFTER", "RESULT"]
    };
    let rows: Vec<Vec<String>> = r
        .items
        .iter()
        .map(|i| {
            let mut result = status_name(i.status);
            if let Some(reason) = &i.reason {
                result = format!("{result}: {reason}");
            }
            vec![
                i.knob.clone(),
                i.before.clone().unwrap_or_else(|| "-".into()),
                i.after.clone().unwrap_or_else(|| "-".into()),
                result,
            ]
        })
        .collect();
    let mut out = String::new();
    if let Some(p) = &r.profile {
        out.push_str(&format!(
            "profile {p}{}\n",
            if r.dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        ));
    }
    if rows.is_empty() && r.pins.is_empty() {
        out.push_str("nothing to do\n");
    } else if !rows.is_empty() {
        out.push_str(&columns(header, &rows));
    }
    out.push_str(&pins(&r.pins, verify));
    out.push_str(&format!(
        "journal: {} knobs to put back\n",
        r.journal_entries
    ));
    out
}

/// `pin add`.
pub fn pin_add(r: &cleanroom_proto::PinAddResult, dry_run: bool) -> String {
    let head = if dry_run {
        "dry run: nothing changed".to_owned()
    } else {
        format!("pin rule {} added", r.id)
    };
    format!("{head}\n{}", pins(std::slice::from_ref(&r.report), false))
}

/// `pin list`: one row per rule in force, then what drifted.
pub fn pin_list(r: &cleanroom_proto::PinListResult) -> String {
    if r.rules.is_empty() {
        return "no pin rules in force\n".into();
    }
    let rows: Vec<Vec<String>> = r
        .rules
        .iter()
        .map(|i| {
            vec![
                i.id.map_or_else(|| "-".into(), |id| id.to_string()),
                printable(&i.source).into_owned(),
                printable(&i.report.rule).into_owned(),
                i.report.matched.to_string(),
                i.report.placed.to_string(),
            ]
        })
        .collect();
    let mut out = columns(&["ID", "SOURCE", "RULE", "TASKS", "PLACED"], &rows);
    for i in &r.rules {
        out.push_str(&problems(&i.report));
    }
    out
}

/// `pin remove`.
pub fn pin_remove(r: &cleanroom_proto::PinRemoveResult) -> String {
    let restored: u32 = r.pins.iter().map(|p| p.changed).sum();
    let mut out = format!(
        "pin rule {} removed: {restored} task attribute(s) got their originals back\n",
        r.id
    );
    for p in &r.pins {
        out.push_str(&problems(p));
    }
    out
}

/// What went wrong with a rule, task by task (names are the processes' own: escaped).
fn problems(p: &cleanroom_proto::PinReport) -> String {
    let mut out = String::new();
    for q in &p.problems {
        out.push_str(&format!(
            "  {}: pid {} tid {} ({}) {}: expected {}, found {}{}\n",
            q.status,
            q.pid,
            q.tid,
            printable(&q.comm),
            q.attr,
            q.expected,
            q.actual.as_deref().unwrap_or("?"),
            q.reason
                .as_deref()
                .map(|r| format!(": {}", printable(r)))
                .unwrap_or_default()
        ));
    }
    if p.more_problems > 0 {
        out.push_str(&format!("  ... and {} more\n", p.more_problems));
    }
    out
}

/// The pin rules of an apply, revert or verify: one row per rule, then what went wrong
/// task by task (names are the processes' own: escaped).
fn pins(reports: &[cleanroom_proto::PinReport], verify: bool) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let header: &[&str] = if verify {
        &["PIN RULE", "TASKS", "PLACED", "DRIFTED"]
    } else {
        &["PIN RULE", "TASKS", "PLACED", "CHANGED"]
    };
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|p| {
            let problems = p.problems.len() as u32 + p.more_problems;
            vec![
                printable(&p.rule).into_owned(),
                p.matched.to_string(),
                p.placed.to_string(),
                if verify { problems } else { p.changed }.to_string(),
            ]
        })
        .collect();
    let mut out = columns(header, &rows);
    for p in reports {
        out.push_str(&problems(p));
    }
    out
}

/// Where a profile comes from, in a word or a path: `built-in`, or its file.
fn profile_source(origin: ProfileOrigin, path: &str) -> &str {
    match origin {
        ProfileOrigin::BuiltIn => "built-in",
        ProfileOrigin::File => path,
    }
}

/// `profile list`: SOURCE before SUMMARY, so a long BROKEN error does not push it off.
pub fn profile_list(r: &ProfileListResult) -> String {
    let rows: Vec<Vec<String>> = r
        .profiles
        .iter()
        .map(|p| {
            vec![
                format!("{}{}", if p.active { "* " } else { "  " }, p.name),
                profile_source(p.origin, &p.path).to_owned(),
                match &p.error {
                    Some(e) => format!("BROKEN: {e}"),
                    None => p.summary.clone(),
                },
            ]
        })
        .collect();
    columns(&["  NAME", "SOURCE", "SUMMARY"], &rows)
}

/// `profile show`.
pub fn profile_show(r: &ProfileShowResult) -> String {
    let mut out = format!(
        "{}: {}\n  source   {}\n",
        r.name,
        r.summary,
        profile_source(r.origin, &r.path)
    );
    if !r.include.is_empty() {
        out.push_str(&format!("  include  {}\n", r.include.join(", ")));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .settings
        .iter()
        .map(|s| vec![s.setting.clone(), s.value.clone(), s.source.clone()])
        .collect();
    if rows.is_empty() {
        out.push_str("(changes nothing)\n");
    } else {
        out.push_str(&columns(&["SETTING", "VALUE", "FROM"], &rows));
    }
    out
}

/// The exit code `cleanroomctl run` passes on for a run.
pub fn run_exit_code(r: &cleanroom_proto::RunRecord) -> u8 {
    use cleanroom_proto::EndReason;
    match r.end_reason {
        EndReason::Timeout => 124,
        EndReason::Exited => r.exit_code.map_or(1, |c| (c & 0xff) as u8),
        EndReason::Signaled | EndReason::Oom | EndReason::Cancelled => {
            r.signal.map_or(1, |s| (128 + s).min(255) as u8)
        }
        EndReason::FailedToStart => r.exit_code.map_or(1, |c| (c & 0xff) as u8),
        EndReason::Running => 0,
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.3} s", v / 1000.0)
    } else {
        format!("{v:.2} ms")
    }
}

/// How a run ended, in words.
pub fn ended(l: &cleanroom_proto::RunRecord) -> String {
    match (l.end_reason, l.exit_code, l.signal) {
        (cleanroom_proto::EndReason::Timeout, ..) => "timeout (every process killed)".to_owned(),
        (cleanroom_proto::EndReason::Oom, ..) => {
            "killed by the OOM killer (memory limit)".to_owned()
        }
        (cleanroom_proto::EndReason::Cancelled, ..) => "cancelled".to_owned(),
        (cleanroom_proto::EndReason::FailedToStart, ..) => {
            format!("did not start: {}", l.error.clone().unwrap_or_default())
        }
        (_, Some(c), _) => format!("exit code {c}"),
        (_, _, Some(s)) => format!("signal {s}"),
        _ => "unknown".to_owned(),
    }
}

/// Whether a series counts events (shown whole) rather than times (milliseconds).
fn counted(series: &str) -> bool {
    matches!(series, "instructions" | "cycles")
}

/// A run's performance counters, one row each; the hardware ones, or why there are none.
fn counter_rows(c: &cleanroom_proto::Counters) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("task clock", ms(c.task_clock_ms)),
        (
            "perf events",
            format!(
                "{} context switches, {} CPU migrations, {} page faults",
                c.context_switches, c.cpu_migrations, c.page_faults
            ),
        ),
    ];
    match (&c.hardware_unsupported, c.instructions, c.cycles) {
        (Some(why), ..) => rows.push(("hardware", format!("unsupported: {why}"))),
        (None, i, Some(cy)) => {
            let ipc = i.map_or_else(String::new, |i| {
                format!(", {:.2} instructions a cycle", i as f64 / cy.max(1) as f64)
            });
            let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            rows.push((
                "hardware",
                format!(
                    "{} instructions, {cy} cycles{ipc}; {} branch misses, {} cache misses{}",
                    opt(i),
                    opt(c.branch_misses),
                    opt(c.cache_misses),
                    match c.hardware_running {
                        Some(share) if share < 0.999 => format!(
                            " (scaled: counted {:.0}% of the run, the PMU was shared)",
                            share * 100.0
                        ),
                        _ => String::new(),
                    }
                ),
            ));
        }
        (None, ..) => {}
    }
    rows
}

/// The summary `cleanroomctl run` prints on stderr.
pub fn run_summary(r: &cleanroom_proto::RunResult) -> String {
    let l = &r.last;
    let mut out = String::from("\n");
    let ended = ended(l);
    let mut rows = vec![
        ("run", l.id.clone()),
        ("ended", ended),
        ("wall", ms(l.wall_ms)),
        (
            "cpu",
            format!("{} user, {} system", ms(l.user_ms), ms(l.sys_ms)),
        ),
        ("peak memory", format!("{} KiB", l.max_rss_kb)),
        (
            "ctx switches",
            format!(
                "{} voluntary, {} involuntary",
                l.voluntary_ctxt_switches, l.involuntary_ctxt_switches
            ),
        ),
        (
            "cpus",
            match &r.shield {
                Some(how) => format!("{} (exclusive, shielded by {how})", l.cpus),
                None => l.cpus.clone(),
            },
        ),
    ];
    if l.killed > 0 {
        rows.push(("left behind", format!("{} processes, killed", l.killed)));
    }
    if l.output_truncated {
        rows.push(("output", "truncated at the daemon's limit".to_owned()));
    }
    match (&l.counters, l.instructions) {
        (Some(c), _) => rows.extend(counter_rows(c)),
        (None, Some(n)) => rows.push((
            "instructions",
            match r.cost_factor {
                Some(f) => format!("{n} (cachegrind; ×{f:.1} the warm-ups' wall time)"),
                None => format!("{n} (cachegrind)"),
            },
        )),
        (None, None) => {}
    }
    rows.extend(noise_rows(&l.noise, &l.cpus));
    if let Some(c) = &r.collected {
        rows.push(("collected", collected(c)));
    }
    out.push_str(&table(&rows));
    if let Some(c) = &r.collected {
        for e in &c.errors {
            out.push_str(&format!("collect: {e}\n"));
        }
    }
    if let Some(c) = &r.comparison {
        out.push('\n');
        out.push_str(&comparison(c));
    }
    if !r.stats.is_empty() {
        out.push('\n');
        out.push_str(&statistics(r));
        out.push_str(&noise_over_runs(&r.runs));
        out.push_str(&reruns(&r.reruns));
        if r.runs_omitted > 0 {
            out.push_str(&format!(
                "(the noise over the first {} runs: the records of the other {} are not kept)\n",
                r.runs.len(),
                r.runs_omitted
            ));
        }
    }
    out
}

/// What `--collect` copied, in a line: `3 files (12.0 KiB) into /home/u/out`.
fn collected(c: &cleanroom_proto::Collected) -> String {
    let files = match c.files {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    };
    let left = match c.left_out {
        0 => String::new(),
        n => format!(", {n} left out"),
    };
    format!("{files} ({}) into {}{left}", size(c.bytes), c.into)
}

/// Bytes as a person reads them: `512 B`, `12.0 KiB`, `3.4 MiB`, `1.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The statistics of repeated runs as hyperfine shows them (the time's mean ± σ, user and
/// system time, the range), then the median and its spread, and the median of each counted
/// measure. Only what means something for a run: no spread of a system time that is
/// mostly zero (`--json` has every series and its statistics).
fn statistics(r: &cleanroom_proto::RunResult) -> String {
    let Some(wall) = r.stats.get("wall_ms") else {
        return String::new();
    };
    let mean_of = |k: &str| r.stats.get(k).map_or(0.0, |s| s.mean);
    let n = r.runs.len() + r.runs_omitted as usize;
    let mut out = format!(
        "  Time (mean ± σ):     {} ± {}    [User: {}, System: {}]\n\
         \x20 Range (min … max):   {} … {}    {n} runs\n",
        ms(wall.mean),
        ms(wall.stddev),
        ms(mean_of("user_ms")),
        ms(mean_of("sys_ms")),
        ms(wall.min),
        ms(wall.max),
    );
    let outliers = match wall.outliers.len() {
        0 => "no outliers".to_owned(),
        1 => "1 outlier by Tukey's rule (1.5 IQR)".to_owned(),
        k => format!("{k} outliers by Tukey's rule (1.5 IQR)"),
    };
    out.push_str(&format!(
        "  Median:              {}    CV {:.1} %, {outliers}\n",
        ms(wall.median),
        wall.cv_percent
    ));
    if let Some(cpu) = r.stats.get("cpu_ms") {
        out.push_str(&format!(
            "  CPU time (median):   {}    CV {:.1} %\n",
            ms(cpu.median),
            cpu.cv_percent
        ));
    }
    // Counted measures, when measured: their medians (and spread, where it is not noise
    // around zero).
    for (key, label, time) in [
        ("instructions", "Instructions", false),
        ("pmu_instructions", "Instructions (PMU)", false),
        ("cycles", "Cycles", false),
        ("task_clock_ms", "Task clock", true),
        ("context_switches", "Context switches", false),
        ("page_faults", "Page faults", false),
    ] {
        if let Some(s) = r.stats.get(key) {
            let value = if time {
                ms(s.median)
            } else {
                format!("{:.0}", s.median)
            };
            let spread = if s.mean.abs() > 0.0 && s.cv_percent.is_finite() {
                format!("    CV {:.1} %", s.cv_percent)
            } else {
                String::new()
            };
            out.push_str(&format!("  {:<21}{value}{spread}\n", format!("{label}:")));
        }
    }
    out
}

/// Milliseconds to one decimal.
fn ms1(v: f64) -> String {
    format!("{v:.1} ms")
}

/// The noise report of one run as summary rows: foreign CPU time on its CPUs, the host's
/// pressure stalls, and frequency and throttling where the host has them.
fn noise_rows(n: &cleanroom_proto::Noise, cpus: &str) -> Vec<(&'static str, String)> {
    let on = if cpus.contains([',', '-']) {
        format!("CPUs {cpus}")
    } else {
        format!("CPU {cpus}")
    };
    let part = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), ms1);
    let mut line = match n.foreign_cpu_ms {
        Some(f) => format!(
            "foreign {} on {on} (irq {}, steal {})",
            ms1(f),
            part(n.irq_ms),
            part(n.steal_ms)
        ),
        None => format!("foreign CPU time on {on} not readable here"),
    };
    if let Some(cpu) = n.cpu_pressure_us {
        let us = |v: Option<u64>| ms1(v.unwrap_or(0) as f64 / 1e3);
        line.push_str(&format!(
            "; pressure (host-wide): CPU {}, memory {}, I/O {}",
            us(Some(cpu)),
            us(n.memory_pressure_us),
            us(n.io_pressure_us)
        ));
    }
    let mut rows = vec![("noise", line)];
    if let (Some(lo), Some(hi)) = (n.freq_min_khz, n.freq_max_khz) {
        rows.push((
            "frequency",
            format!("{}–{} MHz at start and end", lo / 1000, hi / 1000),
        ));
    }
    if let Some(t) = n.throttle_events {
        rows.push(("throttling", format!("{t} thermal throttling events")));
    }
    rows
}

/// One line on the noise over repeated runs: foreign CPU time in all and in the worst run.
fn noise_over_runs(runs: &[cleanroom_proto::RunRecord]) -> String {
    let foreign: Vec<f64> = runs.iter().filter_map(|r| r.noise.foreign_cpu_ms).collect();
    if foreign.is_empty() {
        return String::new();
    }
    let sum = |f: fn(&cleanroom_proto::Noise) -> Option<f64>| {
        runs.iter().filter_map(|r| f(&r.noise)).sum::<f64>()
    };
    let worst = foreign.iter().copied().fold(0.0, f64::max);
    let throttled: u64 = runs.iter().filter_map(|r| r.noise.throttle_events).sum();
    format!(
        "noise: {} foreign CPU time on the run's CPUs over {} runs (irq {}, steal {}), \
         at most {} in one run{}\n",
        ms1(foreign.iter().sum()),
        foreign.len(),
        ms1(sum(|n| n.irq_ms)),
        ms1(sum(|n| n.steal_ms)),
        ms1(worst),
        if throttled > 0 {
            format!("; {throttled} thermal throttling events")
        } else {
            String::new()
        }
    )
}

/// A comparison, one paragraph: the verdict, the ratio and its interval, what it rests
/// on, and why it cannot decide when it cannot.
pub fn comparison(c: &cleanroom_proto::Comparison) -> String {
    use cleanroom_proto::{Design, Verdict};
    let change = (c.ratio - 1.0) * 100.0;
    let verdict = match c.verdict {
        Verdict::Slower => format!("SLOWER by {change:.2}% (regression)"),
        Verdict::Faster => format!("FASTER by {:.2}%", -change),
        Verdict::Equivalent => format!("equivalent (within ±{}%)", c.delta_percent),
        Verdict::Inconclusive => "INCONCLUSIVE".to_owned(),
    };
    let design = match c.design {
        Design::Paired => format!("{} interleaved rounds", c.n),
        Design::Independent => format!("sequential batches, {} and {} runs", c.n_baseline, c.n),
    };
    let value = |v: f64| {
        if counted(&c.metric) {
            format!("{v:.0} {}", c.metric)
        } else {
            ms(v)
        }
    };
    let mut out = format!(
        "{} against {} ({design}): {} → {}, ratio {:.4}, {:.1}% interval [{:.4}, {:.4}]: {verdict}\n",
        c.metric,
        c.against,
        value(c.baseline_median),
        value(c.median),
        c.ratio,
        c.level * 100.0,
        c.low,
        c.high,
    );
    if let Some(b) = &c.between_batch {
        out.push_str(&format!(
            "  between-batch spread {:.2}% (from {} {}) widens the interval\n",
            b.percent,
            b.from,
            if b.source == "history" {
                "earlier batches of the label"
            } else {
                "repeats of the baseline: its own drift"
            }
        ));
    }
    if let Some(why) = &c.reason {
        out.push_str(&format!("  {why}\n"));
    }
    if c.verdict == Verdict::Inconclusive {
        match c.more_repeats {
            Some(n) => out.push_str(&format!(
                "  about {n} more {} would decide it\n",
                if c.design == Design::Paired {
                    "rounds"
                } else {
                    "repeats a side"
                }
            )),
            None if c.reason.is_none() => out.push_str(
                "  the change sits on the margin: no reasonable number of repeats decides it\n",
            ),
            None => {}
        }
    }
    if c.p_adjusted != c.p_value {
        out.push_str(&format!(
            "  p = {:.4}, {:.4} after Holm's correction for the comparisons made together\n",
            c.p_value, c.p_adjusted
        ));
    }
    for d in &c.environment_differs {
        out.push_str(&format!(
            "  environment differs: {} {} → {}\n",
            d.field,
            d.baseline.as_deref().unwrap_or("unknown"),
            d.current.as_deref().unwrap_or("unknown")
        ));
    }
    match c.same_executable {
        Some(true) if c.design == Design::Independent => {
            out.push_str("  the same executable (sha256) on both sides\n")
        }
        _ => {}
    }
    out
}

/// One line per noisy repeat measured again.
fn reruns(r: &[cleanroom_proto::Rerun]) -> String {
    if r.is_empty() {
        return String::new();
    }
    let mut out = format!("{} noisy repeats measured again:\n", r.len());
    for x in r {
        out.push_str(&format!("  repeat {}: {}\n", x.index + 1, x.reason));
    }
    out
}

/// `compare` of `commands`: each command's statistics, then the verdicts.
pub fn compare(r: &cleanroom_proto::CompareResult, commands: &[Vec<String>]) -> String {
    let series = r.metric.series();
    let rows: Vec<Vec<String>> = r
        .sides
        .iter()
        .enumerate()
        .map(|(i, side)| {
            let show = |v: f64| {
                if counted(series) {
                    format!("{v:.0}")
                } else {
                    ms(v)
                }
            };
            let (median, spread) = match side.stats.get(series) {
                Some(st) => (
                    show(st.median),
                    format!("{} ± {}", show(st.mean), show(st.stddev)),
                ),
                None => (ms(side.last.wall_ms), String::new()),
            };
            vec![
                (i + 1).to_string(),
                side.batch.clone(),
                median,
                spread,
                side.comparison.as_ref().map_or_else(
                    || "(reference)".to_owned(),
                    |c| c.verdict.as_str().to_owned(),
                ),
                commands.get(i).map(|c| c.join(" ")).unwrap_or_default(),
            ]
        })
        .collect();
    let how = match r.sides.first().and_then(|s| s.shield.as_ref()) {
        Some(shield) => format!(
            "on CPUs {} (exclusive, shielded by {shield})",
            r.sides[0].last.cpus
        ),
        None => format!(
            "on CPUs {}",
            r.sides.first().map_or("", |s| s.last.cpus.as_str())
        ),
    };
    let mut out = format!(
        "{} rounds of {} commands in a random order each round, {how}; stopped: {}\n\n",
        r.rounds,
        r.sides.len(),
        match r.stopped.as_str() {
            "rounds" => "the rounds asked for are done",
            "decided" => "every verdict is decided",
            "max_rounds" => "--max-rounds reached",
            "max_seconds" => "--max-time reached",
            "failed" => "a run failed",
            "cancelled" => "cancelled",
            other => other,
        }
    );
    let median = match series {
        "cpu_ms" => "MEDIAN CPU",
        "instructions" => "MEDIAN INSTRUCTIONS",
        "cycles" => "MEDIAN CYCLES",
        _ => "MEDIAN WALL",
    };
    out.push_str(&columns(
        &["#", "BATCH", median, "MEAN ± σ", "VERDICT", "COMMAND"],
        &rows,
    ));
    for (i, side) in r.sides.iter().enumerate().skip(1) {
        if let Some(c) = &side.comparison {
            out.push_str(&format!("\n{} vs 1: ", i + 1));
            out.push_str(&comparison(c));
        }
    }
    for (i, side) in r.sides.iter().enumerate() {
        if let Some(f) = side.cost_factor {
            out.push_str(&format!(
                "command {}: counting instructions (cachegrind) cost ×{f:.1} in wall time\n",
                i + 1
            ));
        }
        if !side.reruns.is_empty() {
            out.push_str(&format!("command {}: ", i + 1));
            out.push_str(&reruns(&side.reruns));
        }
    }
    out
}

/// `runs history`: the label's batches, oldest first, and its change points.
pub fn history(r: &cleanroom_proto::RunsHistoryResult) -> String {
    if r.batches.is_empty() {
        return format!("no stored batches labelled {:?}\n", r.label);
    }
    let rows: Vec<Vec<String>> = r
        .batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let cp = r.change_points.iter().find(|c| c.index as usize == i);
            vec![
                b.batch.clone(),
                b.uid.to_string(),
                b.runs.to_string(),
                if counted(r.metric.series()) {
                    format!("{:.0}", b.median)
                } else {
                    ms(b.median)
                },
                cp.map_or_else(String::new, |c| {
                    format!(
                        "◆ change ×{:.3} ({:+.1}%), confidence {:.1}%",
                        c.magnitude,
                        (c.magnitude - 1.0) * 100.0,
                        c.confidence * 100.0
                    )
                }),
                b.baselines.join(","),
            ]
        })
        .collect();
    let median = match r.metric {
        cleanroom_proto::Metric::Cpu => "MEDIAN CPU",
        cleanroom_proto::Metric::Instructions => "MEDIAN INSTRUCTIONS",
        cleanroom_proto::Metric::Cycles => "MEDIAN CYCLES",
        cleanroom_proto::Metric::Wall => "MEDIAN WALL",
    };
    let mut out = columns(
        &["BATCH", "UID", "RUNS", median, "CHANGE POINT", "BASELINES"],
        &rows,
    );
    out.push_str(&match r.change_points.len() {
        0 if r.batches.len() < 2 * r.min_segment as usize => format!(
            "{} batches: change points need at least {} (at least {} on each side)\n",
            r.batches.len(),
            2 * r.min_segment,
            r.min_segment
        ),
        0 => format!("{} batches, no change point\n", r.batches.len()),
        n => format!(
            "{} batches, {n} change point{} (E-Divisive, permutation test at 5%)\n",
            r.batches.len(),
            if n == 1 { "" } else { "s" }
        ),
    });
    out
}

/// `runs list`.
pub fn runs_list(r: &cleanroom_proto::RunsListResult) -> String {
    let rows: Vec<Vec<String>> = r
        .batches
        .iter()
        .map(|b| {
            vec![
                b.batch.clone(),
                b.uid.to_string(),
                b.runs.to_string(),
                ms(b.wall_ms),
                match (b.end_reason, b.exit_code) {
                    (cleanroom_proto::EndReason::Exited, Some(c)) => format!("exit {c}"),
                    (reason, _) => serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                },
                b.label.clone().unwrap_or_default(),
                b.argv.join(" "),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no runs stored\n".into();
    }
    columns(
        &[
            "BATCH",
            "UID",
            "RUNS",
            "MEDIAN WALL",
            "ENDED",
            "LABEL",
            "COMMAND",
        ],
        &rows,
    )
}

/// `baseline list`.
pub fn baselines(r: &cleanroom_proto::BaselineListResult) -> String {
    if r.baselines.is_empty() {
        return "no baselines (save one with: cleanroomctl run --save-baseline NAME -- CMD)\n"
            .into();
    }
    let rows: Vec<Vec<String>> = r
        .baselines
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.batch.clone(),
                b.uid.to_string(),
                if b.public { "public" } else { "private" }.into(),
            ]
        })
        .collect();
    columns(&["NAME", "BATCH", "UID", "SHARED"], &rows)
}

/// `profile recommend`.
pub fn recommend(r: &RecommendResult) -> String {
    let mut out = format!("recommended profile: {}\n", r.profile);
    for reason in &r.reasons {
        out.push_str(&format!("  - {reason}\n"));
    }
    out
}

/// `profile active`.
pub fn active(r: &ActiveResult) -> String {
    format!(
        "profile  {}\nphase    {}\njournal  {} knobs to put back\n",
        r.profile.clone().unwrap_or_else(|| "none".into()),
        r.phase,
        r.journal_entries
    )
}

/// `shield lower`: what was restored, each file the kernel refused (kept or forgotten),
/// with the value it should hold and the one it holds, and what that leaves.
pub fn shield_lower(r: &ShieldLowerResult) -> String {
    if !r.was_raised {
        return "no shield is journaled: nothing to lower\n".into();
    }
    let mut out = format!("shield lowered: {} restored\n", r.restored);
    let rows: Vec<Vec<String>> = r
        .items
        .iter()
        .map(|i| {
            let kind = match i.kind {
                ShieldKind::Irq => "irq",
                ShieldKind::Cpuset => "cpuset",
            };
            let result = match i.status {
                ShieldItemStatus::Kept => format!("kept: {}", i.reason),
                ShieldItemStatus::Forgotten => format!("forgotten, set it by hand: {}", i.reason),
            };
            vec![
                kind.to_owned(),
                i.path.clone(),
                i.original.clone(),
                i.current.clone().unwrap_or_else(|| "-".into()),
                result,
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&columns(
            &["KIND", "FILE", "SHOULD HOLD", "HOLDS", "RESULT"],
            &rows,
        ));
    }
    if let Some(dir) = &r.partition_left {
        out.push_str(&format!(
            "partition {dir} stays: a process the kernel cannot end yet holds it (it gave its \
             CPUs back, and the next lowering removes it)\n"
        ));
    }
    let has = |s| r.items.iter().any(|i| i.status == s);
    if has(ShieldItemStatus::Forgotten) {
        out.push_str(
            "forgotten: set each file by hand (echo VALUE > FILE) to the value it should hold; \
             each is in the audit log\n",
        );
    }
    out.push_str(if !r.journaled {
        "journal: nothing left; exclusive runs may raise the shield again\n"
    } else if has(ShieldItemStatus::Kept) {
        "journal: what is kept stays for the next lowering; exclusive runs are refused until \
         one succeeds\n"
    } else {
        "journal: only the partition stays; exclusive runs are not held back by it\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::columns;

    #[test]
    fn columns_align_by_display_width() {
        let rows = vec![
            vec!["xxx".to_owned(), "y".to_owned(), "z z".to_owned()],
            vec!["日本".to_owned(), String::new(), "last".to_owned()],
        ];
        assert_eq!(
            columns(&["A", "BB", "C"], &rows),
            "A     BB  C\nxxx   y   z z\n日本      last\n"
        );
    }

    #[test]
    fn control_characters_are_shown_escaped_and_the_rest_kept() {
        use super::printable;

        assert_eq!(printable("plain – text\n\tok"), "plain – text\n\tok");
        // OSC 52 (set the clipboard), a CSI, a carriage return, a C1 CSI, DEL.
        assert_eq!(
            printable("a\u{1b}]52;c;aGk=\u{7}b\rc\u{9b}2Jd\u{7f}"),
            "a\\x1b]52;c;aGk=\\x07b\\x0dc\\u{9b}2Jd\\x7f"
        );
    }

    #[test]
    fn running_times_read_at_a_glance() {
        assert_eq!(super::duration_s(42.9), "42 s");
        assert_eq!(super::duration_s(200.0), "3 min 20 s");
        assert_eq!(super::duration_s(7500.0), "2 h 5 min");
    }
    use super::*;

    #[test]
    fn durations() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (61, "1m 1s"),
            (3_700, "1h 1m"),
            (90_000, "1d 1h"),
        ] {
            assert_eq!(duration(secs), want);
        }
    }

    #[test]
    fn profiles_say_where_they_come_from() {
        use cleanroom_proto::{ProfileInfo, SettingInfo};
        let info = |name: &str, origin, path: &str, error: Option<&str>| ProfileInfo {
            name: name.into(),
            summary: format!("{name} summary"),
            origin,
            path: path.into(),
            active: name == "benchmark",
            error: error.map(str::to_owned),
        };
        let list = ProfileListResult {
            profiles: vec![
                info("balanced", ProfileOrigin::BuiltIn, "(built-in)", None),
                info(
                    "benchmark",
                    ProfileOrigin::File,
                    "/etc/cleanroom/profiles/benchmark.toml",
                    None,
                ),
                info(
                    "x",
                    ProfileOrigin::File,
                    "/etc/p/x.toml",
                    Some("/etc/p/x.toml: line 1: bad"),
                ),
            ],
        };
        assert_eq!(
            profile_list(&list),
            "  NAME       SOURCE                                  SUMMARY\n\
             \x20 balanced   built-in                                balanced summary\n\
             * benchmark  /etc/cleanroom/profiles/benchmark.toml  benchmark summary\n\
             \x20 x          /etc/p/x.toml                           BROKEN: /etc/p/x.toml: line 1: bad\n"
        );
        let show = ProfileShowResult {
            name: "network-throughput".into(),
            origin: ProfileOrigin::BuiltIn,
            path: "(built-in)".into(),
            summary: "s".into(),
            include: vec!["throughput-performance".into()],
            settings: vec![SettingInfo {
                setting: "cpu.governor".into(),
                value: "performance".into(),
                source: "/etc/cleanroom/profiles/throughput-performance.toml".into(),
            }],
        };
        let text = profile_show(&show);
        assert!(
            text.starts_with(
                "network-throughput: s\n  source   built-in\n  include  throughput-performance\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "cpu.governor  performance  /etc/cleanroom/profiles/throughput-performance.toml"
            ),
            "{text}"
        );
    }

    #[test]
    fn table_aligns_values() {
        let t = table(&[("a", "1".into()), ("long label", "2".into())]);
        assert_eq!(t, "  a           1\n  long label  2\n");
    }

    #[test]
    fn noise_report_rows() {
        let n = cleanroom_proto::Noise {
            cpu_pressure_us: Some(4100),
            memory_pressure_us: Some(0),
            io_pressure_us: None,
            foreign_cpu_ms: Some(1.24),
            irq_ms: Some(0.0),
            steal_ms: Some(10.0),
            freq_min_khz: Some(1_200_000),
            freq_max_khz: Some(2_400_000),
            throttle_events: Some(3),
        };
        let rows = noise_rows(&n, "1");
        assert_eq!(
            rows,
            vec![
                (
                    "noise",
                    "foreign 1.2 ms on CPU 1 (irq 0.0 ms, steal 10.0 ms); pressure (host-wide): \
                     CPU 4.1 ms, memory 0.0 ms, I/O 0.0 ms"
                        .to_owned()
                ),
                ("frequency", "1200–2400 MHz at start and end".to_owned()),
                ("throttling", "3 thermal throttling events".to_owned()),
            ]
        );
        let old = noise_rows(&cleanroom_proto::Noise::default(), "0-1");
        assert_eq!(
            old,
            vec![(
                "noise",
                "foreign CPU time on CPUs 0-1 not readable here".to_owned()
            )]
        );
    }

    #[test]
    fn noise_over_repeats() {
        let run = |foreign: Option<f64>| {
            let mut r: cleanroom_proto::RunRecord = serde_json::from_value(serde_json::json!({
                "id": "1", "exit_code": 0, "signal": null, "end_reason": "exited",
                "wall_ms": 1.0, "user_ms": 0.5, "sys_ms": 0.2, "max_rss_kb": 900,
                "voluntary_ctxt_switches": 1, "involuntary_ctxt_switches": 0,
                "oom_kills": 0, "killed": 0, "cpus": "1", "output_truncated": false,
                "noise": {}
            }))
            .unwrap();
            r.noise.foreign_cpu_ms = foreign;
            r.noise.irq_ms = foreign.map(|_| 10.0);
            r.noise.steal_ms = foreign.map(|_| 0.0);
            r
        };
        assert_eq!(
            noise_over_runs(&[run(Some(2.0)), run(None), run(Some(30.5))]),
            "noise: 32.5 ms foreign CPU time on the run's CPUs over 2 runs (irq 20.0 ms, \
             steal 0.0 ms), at most 30.5 ms in one run\n"
        );
        assert_eq!(noise_over_runs(&[run(None)]), "");
    }

    #[test]
    fn a_forced_lowering_names_each_file_to_set_by_hand() {
        use cleanroom_proto::ShieldItem;
        let item = |path: &str, status| ShieldItem {
            kind: ShieldKind::Irq,
            path: path.into(),
            original: "f".into(),
            current: Some("3".into()),
            status,
            reason: "busy".into(),
        };
        let mut r = ShieldLowerResult {
            was_raised: true,
            restored: 2,
            items: vec![item(
                "/proc/irq/default_smp_affinity",
                ShieldItemStatus::Forgotten,
            )],
            partition_left: None,
            journaled: false,
        };
        let text = shield_lower(&r);
        assert!(text.contains("2 restored"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("irq"))
            .expect("a row for the forgotten file");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cells[..5],
            [
                "irq",
                "/proc/irq/default_smp_affinity",
                "f",
                "3",
                "forgotten,"
            ],
            "{text}"
        );
        assert!(text.contains("set each file by hand"), "{text}");
        assert!(text.contains("nothing left"), "{text}");
        r.items = vec![item(
            "/proc/irq/9/smp_affinity_list",
            ShieldItemStatus::Kept,
        )];
        r.journaled = true;
        let text = shield_lower(&r);
        assert!(text.contains("kept: busy"), "{text}");
        assert!(text.contains("exclusive runs are refused"), "{text}");
        r.was_raised = false;
        assert_eq!(
            shield_lower(&r),
            "no shield is journaled: nothing to lower\n"
        );
    }

    #[test]
    fn reload_says_nothing_changed() {
        let r = ReloadResult {
            config_file: None,
            changed: vec![],
            restart_required: vec![],
        };
        assert!(reload(&r).contains("nothing changed"));
    }
}
