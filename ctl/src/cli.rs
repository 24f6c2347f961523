//! cleanroomctl's command line, as a library so that man pages and shell completions are
//! generated from the same definition the binary parses (`cleanroom-docgen`).
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage; 69 daemon unreachable; 75 over a
//! quota; 77 permission denied.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The exit codes, for `--help` and the man page.
pub const EXIT_HELP: &str = "Exit codes:\n  \
    0   success\n  \
    1   the operation failed (the message says why); run, compare: a regression\n  \
    2   usage error\n  \
    3   run --baseline, compare: a verdict is inconclusive (with --fail-inconclusive)\n  \
    69  the daemon is unreachable (not running, or wrong --socket)\n  \
    75  over a quota: try again once something of yours ends (the message names it)\n  \
    77  permission denied (the message names the group to join)";

/// Control cleanroomd, the cleanroom system tuner and clean-room test runner.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = format!("Examples:\n  \
        cleanroomctl status                 # what the daemon is, and who you are to it\n  \
        cleanroomctl --json status | jq .   # the same, for scripts\n  \
        cleanroomctl ping                   # round-trip time to the daemon\n  \
        cleanroomctl metrics                # Prometheus metrics\n  \
        sudo cleanroomctl reload            # re-read /etc/cleanroom/cleanroomd.toml\n\n{EXIT_HELP}")
)]
pub struct Cli {
    /// Socket of the daemon.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = cleanroom_proto::SOCKET_ENV,
        default_value = cleanroom_proto::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// Print the result object as JSON on stdout and nothing else.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the daemon's answer (e.g. 10, 2.5s, 500ms) [default: 10s].
    /// With `run` and `compare`: each run's wall-clock limit, after which every process
    /// of the run is killed (no limit by default).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's version, socket, state, cgroup mode, and your identity and role.
    #[command(after_help = "Examples:\n  cleanroomctl status\n  cleanroomctl status --json")]
    Status,
    /// Check that the daemon answers, and how fast.
    #[command(
        after_help = "Examples:\n  cleanroomctl ping\n  cleanroomctl --socket /tmp/cr.sock ping"
    )]
    Ping,
    /// Print the daemon's metrics in Prometheus text format.
    #[command(after_help = "Examples:\n  cleanroomctl metrics | grep cleanroomd_requests_total")]
    Metrics,
    /// Run a command in a clean room: its own cgroup, as you, measured; every process it
    /// starts ends with it. Exits with the command's exit code.
    #[command(
        after_help = "Exit code: the command's own; 124 when the timeout ended it; 128+N when signal N\n\
        ended it; 127 command not found; 126 not executable; 1 when the run could not be done.\n\
        The command's output streams to your stdout and stderr (to stderr only with --json, whose\n\
        stdout is the result object); a summary goes to stderr.\n\n\
        Examples:\n  \
        cleanroomctl run -- make test\n  \
        cleanroomctl run --timeout 30s --memory 512M --pids 256 -- ./integration-test\n  \
        cleanroomctl run --repeat 20 --warmup 3 -- ./bench --quick\n  \
        cleanroomctl run --measure counters --repeat 10 -- ./bench   # perf counters of the run\n  \
        cleanroomctl --json run --repeat 10 -- ./bench > result.json"
    )]
    Run(Box<RunArgs>),
    /// Compare two or more commands: run alternately on the same CPUs, in a random order
    /// each round, each stored as a batch, with a verdict for each against the first.
    #[command(
        after_help = format!("The commands follow --, separated by :: (or the word --separator names); the\n\
        first is the reference. Each verdict is the ratio new/reference of the medians with\n\
        its 95% bootstrap interval (rounds resampled as pairs): slower or faster when the\n\
        interval is clear of 1 and the change beyond the margin (runs.compare_threshold_percent,\n\
        2%), equivalent when the interval is within the margin, else inconclusive (with the\n\
        rounds that would decide). Several commands: Holm's correction.\n\n\
        Exit code: 0; 1 when a command is slower than the reference or a run failed; 3 with\n\
        --fail-inconclusive when a verdict is inconclusive; see below for the rest.\n\n\
        Examples:\n  \
        cleanroomctl compare -- ./bench-old :: ./bench-new\n  \
        cleanroomctl compare --rounds 20 --exclusive -- ./a --n 100 :: ./b --n 100\n  \
        cleanroomctl compare --until-decided --max-time 60s --exclusive -- ./old :: ./new\n  \
        cleanroomctl compare --metric cpu --label old --label new -- ./old :: ./new\n  \
        cleanroomctl compare --metric instructions --rounds 5 -- ./old :: ./new\n  \
        cleanroomctl compare --metric cycles --rounds 10 -- ./old :: ./new\n  \
        cleanroomctl compare --separator VS -- sh -c 'a :: b' VS sh -c 'c'\n\n{EXIT_HELP}")
    )]
    Compare(Box<CompareArgs>),
    /// Stored runs: list, show, compare.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// A report of stored batches to look at or share: charts of every repeat, the
    /// comparisons with their intervals, labels' histories with baselines and change
    /// points, the environments (HTML, one file that needs no network), or the same as
    /// Markdown tables, CSV of every repeat, or JSON.
    #[command(
        after_help = "The first batch named is the reference: each later one is compared with it \
        (as measured, when\nit was compared with it then; else as sequential batches). A --label adds its history\nand its newest batch.\n\n\
        Examples:\n  \
        cleanroomctl report 1795438620536 -o run.html\n  \
        cleanroomctl report baseline:main 1795438620536 -o compare.html\n  \
        cleanroomctl report --label nightly-bench -o nightly.html\n  \
        cleanroomctl report --label nightly-bench --metric cpu --format md >> $GITHUB_STEP_SUMMARY\n  \
        cleanroomctl report 1795438620536 --format csv | python3 -c 'import pandas, sys; print(pandas.read_csv(sys.stdin))'"
    )]
    Report(Box<ReportArgs>),
    /// Run a declarative test suite (a TOML file, or a directory of them): steps with
    /// expectations and budgets, each a run in a file-system clean room unless the suite
    /// says otherwise, stored as label SUITE/STEP; independent steps in parallel.
    #[command(
        after_help = "A suite file:\n\n  [suite]\n  name = \"demo\"          # label prefix of every step's batches\n  \
        parallel = 2             # steps at once\n  timeout = \"30s\"\n\n  [[step]]\n  name = \"build\"\n  \
        shell = \"make\"           # or run = [\"make\", \"-j2\"]\n  [step.expect]\n  files = [\"app\"]\n\n  \
        [[step]]\n  name = \"bench\"\n  run = [\"./app\", \"--bench\"]\n  depends_on = [\"build\"]\n  repeat = 10\n  \
        [step.budget.wall_ms]\n  target = 50\n  warning = 80\n  critical = 120\n\n\
        Exit code 0 when every step passed (warnings allowed), 1 otherwise, 2 for a suite file\nwith errors (each names file:line:column and the key).\n\n\
        Examples:\n  cleanroomctl test examples/suites/hello.toml\n  cleanroomctl test examples/suites --junit junit.xml\n  \
        cleanroomctl test suite.toml --step bench --fail-fast\n  cleanroomctl test suite.toml --tap | tappy"
    )]
    Test(Box<TestArgs>),
    /// Baselines: list, save, delete (or save one with `run --save-baseline NAME`).
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Tuning profiles: list, show, apply, revert, verify, recommend.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// The CPU shield exclusive runs raise: lower what the kernel refused to take back.
    #[command(subcommand)]
    Shield(ShieldCommand),
    /// Pin processes and threads by hand, beside the active profile's `[[pin]]` rules: add,
    /// list, remove.
    #[command(subcommand)]
    Pin(PinCommand),
    /// Make the daemon re-read its configuration (like SIGHUP); needs role admin.
    #[command(
        after_help = "An invalid file is refused with an error naming the key and line, and the\n\
        configuration in force stays unchanged.\n\nExamples:\n  sudo cleanroomctl reload"
    )]
    Reload,
}

/// The options of a clean-room run, shared by `run` and `compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Memory limit (bytes, or with K, M, G suffix); swap is off for the run.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Most processes and threads the run may have (a fork bomb stops there).
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// CPU quota in percent of one CPU (150 = one and a half CPUs).
    #[arg(long, value_name = "PERCENT")]
    pub cpu_percent: Option<u64>,
    /// Whole cores of its own from the isolation pool; every other task is kept off them
    /// while it runs.
    #[arg(long)]
    pub exclusive: bool,
    /// Which exclusive CPUs (with --exclusive): a count N (default 1; whole cores, one NUMA
    /// node when one has enough) or a CPU list such as 2,3 or 4-7 (exactly those; one CPU
    /// alone is written 3-3).
    #[arg(long, value_name = "N|LIST", requires = "exclusive", value_parser = parse_cpus)]
    pub cpus: Option<cleanroom_proto::CpuRequest>,
    /// When other runs hold the exclusive CPUs, wait for them instead of failing (Ctrl-C
    /// or `runs cancel` stops waiting; --timeout counts from the start of the run).
    #[arg(long, requires = "exclusive")]
    pub wait: bool,
    /// SCHED_FIFO for the run on its exclusive cores (the kernel's RT throttling stays on).
    #[arg(long, requires = "exclusive")]
    pub realtime: bool,
    /// ASLR off for the command, fixed environment, CLEANROOM_SEED=0.
    #[arg(long)]
    pub deterministic: bool,
    /// Namespaces of its own, comma-separated: net (only lo), pid (it is PID 1 and /proc
    /// shows only its processes), mount (private /tmp; a working directory below /tmp
    /// stays), uts (hostname cleanroom), ipc, fs (a file-system clean room: it sees the
    /// host's files, and what it writes outside --rw directories vanishes when it ends;
    /// /tmp, /var/tmp, /run, /dev/shm private and empty).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_isolation)]
    pub isolate: Vec<cleanroom_proto::Isolation>,
    /// With --isolate fs: a directory whose writes reach the host (repeatable; default:
    /// the working directory; `none`: every write vanishes).
    #[arg(long, value_name = "DIR|none")]
    pub rw: Vec<PathBuf>,
    /// With --isolate fs: a directory shown read-only (repeatable).
    #[arg(long, value_name = "DIR")]
    pub ro: Vec<PathBuf>,
    /// With --isolate fs: a directory hidden behind an empty one, e.g. ~/.ssh (repeatable).
    #[arg(long, value_name = "DIR")]
    pub hide: Vec<PathBuf>,
    /// Environment variable for the command (repeatable); the rest of your environment
    /// is not passed.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory [default: the current one].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// A resource limit for the command, soft and hard (repeatable): nofile, nproc, core,
    /// stack, as, data, fsize, memlock or cpu, e.g. --rlimit nofile=4096 --rlimit
    /// core=unlimited. Without nofile the command gets the daemon's original open-files
    /// limit.
    #[arg(long = "rlimit", value_name = "NAME=VALUE", value_parser = parse_rlimit)]
    pub rlimits: Vec<(String, u64)>,
    /// Run as this user (name or uid) instead of yourself; role admin only.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Count this in every measured run besides times: instructions (the command under
    /// valgrind's cachegrind, many times slower; warm-ups run plain and the cost factor
    /// is shown; needs valgrind on the host), or counters (performance counters of the
    /// whole run through perf_event_open, at no cost: task clock, context switches, CPU
    /// migrations and page faults everywhere; instructions, cycles, branch and cache
    /// misses where the host has a PMU, and the reason where it has none).
    #[arg(long, value_name = "WHAT", value_parser = parse_measure)]
    pub measure: Option<cleanroom_proto::Measure>,
}

/// Files the results are written to, in formats other tools read.
#[derive(Debug, Default, clap::Args)]
pub struct Exports {
    /// Write the results as hyperfine's --export-json does (command, mean, stddev,
    /// median, user, system, min, max, times, exit_codes, memory_usage_byte; seconds), so
    /// dashboards that read hyperfine's read ours.
    #[arg(long, value_name = "FILE", help_heading = "Exports")]
    pub export_json: Option<std::path::PathBuf>,
    /// Write the results as hyperfine's --export-csv does
    /// (command,mean,stddev,median,user,system,min,max; seconds).
    #[arg(long, value_name = "FILE", help_heading = "Exports")]
    pub export_csv: Option<std::path::PathBuf>,
    /// Write the results as hyperfine's --export-markdown does (a table: mean ± σ, min,
    /// max, relative speed).
    #[arg(long, value_name = "FILE", help_heading = "Exports")]
    pub export_markdown: Option<std::path::PathBuf>,
    /// Write JUnit XML: one testcase per command, failed when a run did not exit 0 or the
    /// verdict is slower, with the summary. Written whether or not it failed.
    #[arg(long, value_name = "FILE", help_heading = "Exports")]
    pub junit: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub options: RunOptions,
    #[command(flatten)]
    pub exports: Exports,
    /// Measured repetitions; statistics are printed when more than one.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: u32,
    /// Unmeasured repetitions before the measured ones.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup: u32,
    /// A label stored with the run (`runs history LABEL` follows it over time).
    #[arg(long)]
    pub label: Option<String>,
    /// Start the run and return at once with its batch id; it goes on without this
    /// client (ended only by `runs cancel` or the daemon stopping) and its result is
    /// stored: `cleanroomctl runs show BATCH` once it has ended. Output is not kept.
    #[arg(long, conflicts_with_all = ["export_json", "export_csv", "export_markdown", "junit"])]
    pub detach: bool,
    /// Save the measured runs as the baseline of this name (yours and admins' to compare
    /// with, unless --public).
    #[arg(long, value_name = "NAME")]
    pub save_baseline: Option<String>,
    /// With --save-baseline: every user may compare with it.
    #[arg(long, requires = "save_baseline")]
    pub public: bool,
    /// Compare with this baseline: the verdict (slower, faster, equivalent or
    /// inconclusive) from a bootstrap interval of the ratio of medians, widened by the
    /// command's between-batch spread (from the label's history); exit code 1 on
    /// `slower` when the command itself succeeded.
    #[arg(long, value_name = "NAME")]
    pub baseline: Option<String>,
    /// With --baseline: refuse (before running) when this host's environment differs
    /// from the baseline's (CPU, microcode, kernel, command line, profile, ...).
    #[arg(long, requires = "baseline")]
    pub strict: bool,
    /// With --baseline: exit code 3 when the verdict is inconclusive.
    #[arg(long, requires = "baseline")]
    pub fail_inconclusive: bool,
    /// With --baseline: what to compare, wall (wall time), cpu (user + system CPU time
    /// of the whole run, from the kernel's nanosecond counters), instructions (counted
    /// under cachegrind: implies --measure instructions; the baseline must have them) or
    /// cycles (the PMU's:
    /// implies --measure counters; refused on a host without a PMU).
    #[arg(long, value_name = "METRIC", default_value = "wall", requires = "baseline", value_parser = parse_metric)]
    pub metric: cleanroom_proto::Metric,
    /// With --isolate fs: copy the files the last run created or changed outside its --rw
    /// directories that match this glob (repeatable; `*` and `?` within a directory, `**`
    /// across them; quote it from your shell) into --collect-to, as you and owned by you.
    /// An absolute pattern (/var/tmp/*.log) keeps the whole path below --collect-to, a
    /// relative one (out/**/*.xml) the path below the working directory.
    #[arg(long, value_name = "GLOB")]
    pub collect: Vec<String>,
    /// With --collect: the directory the files are copied into (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "collected",
        requires = "collect"
    )]
    pub collect_to: PathBuf,
    /// The command and its arguments (after --).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The separator between the commands of `compare`, unless --separator says otherwise.
pub const DEFAULT_SEPARATOR: &str = "::";

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// A suite file, or a directory whose *.toml files are suites.
    #[arg(value_name = "FILE|DIR")]
    pub path: PathBuf,
    /// Run only this step (its dependencies are not run).
    #[arg(long, value_name = "NAME")]
    pub step: Option<String>,
    /// Start no step after the first one that fails.
    #[arg(long)]
    pub fail_fast: bool,
    /// Write JUnit XML here: one testcase per step.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Print TAP (version 13) instead of the summary table.
    #[arg(long, conflicts_with = "junit")]
    pub tap: bool,
    /// Only check the suite files.
    #[arg(long)]
    pub check: bool,
}

/// What `report` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained page with charts.
    Html,
    /// The tables, in Markdown.
    Md,
    /// Every repeat of every batch, one row each.
    Csv,
    /// Everything gathered, as JSON.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Batches: ids (from `runs list`) or baseline:NAME. The first is the reference.
    #[arg(value_name = "BATCH", required_unless_present = "labels")]
    pub sources: Vec<String>,
    /// Show this label's history (its batches over time, baselines, change points) and its
    /// newest batch; repeatable.
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// The measure charted and compared: wall, cpu, instructions or cycles.
    #[arg(long, default_value = "wall", value_parser = parse_metric)]
    pub metric: cleanroom_proto::Metric,
    /// Output format (default: html, or what the -o file's extension says).
    #[arg(long, value_enum)]
    pub format: Option<ReportFormat>,
    /// Write to FILE (replaced whole, never half-written) instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// How many of a label's newest batches its history shows (at most 500).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

impl ReportArgs {
    /// The format asked for, else the one the output file's extension names, else HTML.
    pub fn format(&self) -> ReportFormat {
        self.format.unwrap_or_else(|| {
            match self
                .output
                .as_ref()
                .and_then(|p| p.extension())
                .and_then(|e| e.to_str())
            {
                Some("md" | "markdown") => ReportFormat::Md,
                Some("csv") => ReportFormat::Csv,
                Some("json") => ReportFormat::Json,
                _ => ReportFormat::Html,
            }
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub options: RunOptions,
    #[command(flatten)]
    pub exports: Exports,
    /// Measured rounds: in each, every command runs once, in a random order (at least 5
    /// for a verdict).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub rounds: u32,
    /// Unmeasured rounds first.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: u32,
    /// After --rounds, keep adding rounds until no verdict is inconclusive, or the budget
    /// (--max-rounds, --max-time) is spent.
    #[arg(long)]
    pub until_decided: bool,
    /// With --until-decided: most rounds in all [default: 10 × --rounds].
    #[arg(long, value_name = "N", requires = "until_decided")]
    pub max_rounds: Option<u32>,
    /// With --until-decided: most time measuring (e.g. 60s, 5m) [default: 5m].
    #[arg(long, value_name = "DURATION", requires = "until_decided", value_parser = parse_duration)]
    pub max_time: Option<u64>,
    /// What to compare: wall (wall time), cpu (user + system CPU time of the whole run,
    /// from the kernel's nanosecond counters), instructions (executed, counted under
    /// valgrind's cachegrind: immune to the machine's noise; implies --measure
    /// instructions) or cycles (CPU
    /// cycles counted by the PMU: implies --measure counters; refused on a host without
    /// a PMU, as most virtual machines are).
    #[arg(long, value_name = "METRIC", default_value = "wall", value_parser = parse_metric)]
    pub metric: cleanroom_proto::Metric,
    /// A label per command, in order (repeat it once for each command).
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Seed of the round order and the bootstrap [default: a fixed one].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Exit code 3 when a verdict is inconclusive (else 0, with a warning).
    #[arg(long)]
    pub fail_inconclusive: bool,
    /// Show the commands' own output (hidden by default).
    #[arg(long)]
    pub show_output: bool,
    /// The word that separates the commands [default: ::]; for commands that take `::`
    /// as an argument.
    #[arg(long, value_name = "WORD")]
    pub separator: Option<String>,
    /// The commands after --, separated by :: (the first is the reference): -- ./old
    /// --size 10 :: ./new --size 10
    #[arg(required = true, last = true, value_name = "COMMANDS")]
    pub commands: Vec<String>,
}

impl CompareArgs {
    /// The commands, split at the separator; an error names what is wrong.
    pub fn split(&self) -> Result<Vec<Vec<String>>, String> {
        let sep = self.separator.as_deref().unwrap_or(DEFAULT_SEPARATOR);
        let commands: Vec<Vec<String>> = self
            .commands
            .split(|w| w == sep)
            .map(<[String]>::to_vec)
            .collect();
        if let Some(i) = commands.iter().position(Vec::is_empty) {
            return Err(format!(
                "command {} is empty: put one command between each {sep} (e.g. -- ./old {sep} ./new)",
                i + 1
            ));
        }
        if commands.len() < 2 {
            return Err(format!(
                "one command given: compare needs two or more, separated by {sep} (e.g. -- ./old {sep} ./new)"
            ));
        }
        if !self.labels.is_empty() && self.labels.len() != commands.len() {
            return Err(format!(
                "{} --label given for {} commands: one for each, or none",
                self.labels.len(),
                commands.len()
            ));
        }
        Ok(commands)
    }
}

fn parse_metric(s: &str) -> Result<cleanroom_proto::Metric, String> {
    match s.trim() {
        "wall" => Ok(cleanroom_proto::Metric::Wall),
        "cpu" => Ok(cleanroom_proto::Metric::Cpu),
        "instructions" => Ok(cleanroom_proto::Metric::Instructions),
        "cycles" => Ok(cleanroom_proto::Metric::Cycles),
        other => Err(format!(
            "{other:?} is not a metric: use wall, cpu, instructions or cycles"
        )),
    }
}

fn parse_measure(s: &str) -> Result<cleanroom_proto::Measure, String> {
    match s.trim() {
        "instructions" => Ok(cleanroom_proto::Measure::Instructions),
        "counters" => Ok(cleanroom_proto::Measure::Counters),
        other => Err(format!(
            "{other:?} is not a measure: use instructions or counters"
        )),
    }
}

fn parse_cpus(s: &str) -> Result<cleanroom_proto::CpuRequest, String> {
    let t = s.trim();
    if t.contains([',', '-']) {
        let ok = !t.is_empty()
            && t.split(',').all(|part| {
                let mut ends = part.splitn(2, '-');
                ends.all(|n| n.trim().parse::<u32>().is_ok())
            });
        if ok {
            return Ok(cleanroom_proto::CpuRequest::List(t.to_owned()));
        }
        return Err(format!("{s:?} is not a CPU list such as 2,3 or 4-7"));
    }
    match t.parse::<u32>() {
        Ok(0) => Err("the count must be at least 1".into()),
        Ok(n) => Ok(cleanroom_proto::CpuRequest::Count(n)),
        Err(_) => Err(format!(
            "{s:?} is neither a count nor a CPU list (2 = two CPUs; 2,3 or 2-3 = those CPUs)"
        )),
    }
}

fn parse_rlimit(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE (like nofile=4096)"))?;
    let value = match value {
        "unlimited" | "infinity" => u64::MAX,
        v => parse_size(v).map_err(|e| format!("{name}: {e}"))?,
    };
    Ok((name.to_owned(), value))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match t[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                _ => return Err(format!("{s:?}: unknown size suffix (use K, M, G or T)")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 512M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s or 500ms"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1e3,
        "m" | "min" => n * 60e3,
        "h" => n * 3600e3,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(ms.is_finite() && ms >= 1.0) {
        return Err(format!("{s:?} must be at least 1ms"));
    }
    Ok(ms as u64)
}

pub fn parse_isolation(s: &str) -> Result<cleanroom_proto::Isolation, String> {
    use cleanroom_proto::Isolation;
    match s.trim() {
        "net" => Ok(Isolation::Net),
        "mount" => Ok(Isolation::Mount),
        "uts" => Ok(Isolation::Uts),
        "ipc" => Ok(Isolation::Ipc),
        "pid" => Ok(Isolation::Pid),
        "fs" => Ok(Isolation::Fs),
        other => Err(format!(
            "{other:?} is not a namespace: use net, pid, mount, uts, ipc, fs"
        )),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The newest stored runs (yours; an admin sees every one).
    #[command(
        after_help = "Examples:\n  cleanroomctl runs list\n  cleanroomctl runs list --limit 100"
    )]
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The batches in progress (yours; an admin sees every one): owner, how long, the
    /// exclusive CPUs held, the command.
    #[command(
        after_help = "Examples:\n  cleanroomctl runs active\n  sudo cleanroomctl runs active   # everyone's\n  cleanroomctl runs cancel BATCH  # end one"
    )]
    Active,
    /// One stored batch of runs, whole (as `run --json` printed it).
    #[command(after_help = "Examples:\n  cleanroomctl runs show 1795438620536")]
    Show {
        /// Batch id (from `runs list`), or baseline:NAME.
        batch: String,
    },
    /// End a batch that is running (yours, or any as admin); its `run` exits as cancelled.
    #[command(after_help = "Examples:\n  cleanroomctl runs cancel 1795438620536")]
    Cancel {
        /// Batch id (from the run's start, or `runs list`).
        batch: String,
    },
    /// Compare batch B against batch A (ids or baseline:NAME) as sequential batches: the
    /// verdict's interval is widened by the command's between-batch spread (from the
    /// label's history). Exit code 1 when B is slower.
    #[command(
        after_help = "Examples:\n  cleanroomctl runs compare baseline:main 1795438620536\n  \
        cleanroomctl runs compare --strict 1795438620535 1795438620536"
    )]
    Compare {
        /// The reference.
        a: String,
        /// The batch compared with it.
        b: String,
        /// Refuse when the two ran in different environments.
        #[arg(long)]
        strict: bool,
        /// What to compare: wall, cpu or instructions.
        #[arg(long, default_value = "wall", value_parser = parse_metric)]
        metric: cleanroom_proto::Metric,
    },
    /// A label's batches over time, and the change points among them (E-Divisive with a
    /// permutation test): where the median moved, by how much, how surely.
    #[command(
        after_help = "Examples:\n  cleanroomctl runs history nightly-bench\n  \
        cleanroomctl runs history nightly-bench --metric cpu --limit 300\n  \
        cleanroomctl --json runs history nightly-bench | jq .change_points"
    )]
    History {
        /// The label (`run --label`).
        label: String,
        /// The measure followed: wall, cpu, instructions or cycles.
        #[arg(long, default_value = "wall", value_parser = parse_metric)]
        metric: cleanroom_proto::Metric,
        /// How many of the newest batches (at most 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Every baseline.
    #[command(after_help = "Examples:\n  cleanroomctl baseline list")]
    List,
    /// Name a stored batch of yours (see `runs list`) as a baseline; `run --baseline NAME`
    /// then compares against it. Only you and admins may, unless it is --public.
    #[command(
        after_help = "Examples:\n  cleanroomctl baseline save main 1795444724295\n  cleanroomctl baseline save --public release-1.2 1795444724295"
    )]
    Save {
        /// The baseline's name (letters, digits, . _ -).
        name: String,
        /// The stored batch.
        batch: String,
        /// Every user may compare with it.
        #[arg(long)]
        public: bool,
    },
    /// Forget a baseline (yours, or any as admin).
    #[command(after_help = "Examples:\n  cleanroomctl baseline delete main")]
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// List the profiles, built in or from a file (broken ones with their error).
    #[command(after_help = "Examples:\n  cleanroomctl profile list")]
    List,
    /// Show a profile with includes resolved and where each value came from.
    #[command(after_help = "Examples:\n  cleanroomctl profile show benchmark")]
    Show {
        /// Profile name.
        name: String,
    },
    /// Apply a profile: originals are journaled durably before any write; a failure
    /// undoes what this apply wrote (unless --best-effort). Needs role admin.
    #[command(after_help = "Exit code 1 when a knob failed.\n\nExamples:\n  \
        cleanroomctl profile apply throughput-performance --dry-run\n  \
        sudo cleanroomctl profile apply throughput-performance")]
    Apply {
        /// Profile name.
        name: String,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Apply what can be applied; do not undo on a failure.
        #[arg(long)]
        best_effort: bool,
    },
    /// Put back every original value cleanroom changed. A knob someone else changed since
    /// is left alone and reported as a conflict (unless --force). Needs role admin.
    #[command(
        after_help = "Exit code 1 when conflicts or failures remain.\n\nExamples:\n  \
        sudo cleanroomctl profile revert\n  sudo cleanroomctl profile revert --force"
    )]
    Revert {
        /// Restore knobs someone else changed too.
        #[arg(long)]
        force: bool,
    },
    /// Compare the active profile with the host, knob by knob.
    #[command(
        after_help = "Exit code 1 when a knob drifted.\n\nExamples:\n  cleanroomctl profile verify"
    )]
    Verify,
    /// Recommend a profile for this host, with the reasons.
    #[command(after_help = "Examples:\n  cleanroomctl profile recommend")]
    Recommend,
    /// Show the active profile and the journal's size.
    #[command(after_help = "Examples:\n  cleanroomctl profile active")]
    Active,
}

#[derive(Debug, Subcommand)]
pub enum ShieldCommand {
    /// Lower a CPU shield left journaled, trying again what the kernel refused to take
    /// back; --force forgets what it still refuses. Needs role admin.
    ///
    /// What the kernel refused to take back when the last exclusive run ended (an IRQ
    /// whose affinity cannot be set, a cpuset that cannot have its CPUs back) stays
    /// journaled, and every exclusive run is refused until a lowering succeeds. This tries
    /// again and lists what stays, with why; --force forgets it instead, listing each file
    /// with the value it should hold and the one it holds, to set by hand. Refused while
    /// exclusive runs hold cores.
    #[command(
        after_help = "Exit code 1 when something stays journaled (without --force).\n\n\
        Every file --force forgets is written to the audit log. With the daemon stopped,\n\
        `cleanroomd --revert --force` does the same.\n\n\
        Examples:\n  \
        sudo cleanroomctl shield lower\n  \
        sudo cleanroomctl shield lower --force\n  \
        echo f | sudo tee /proc/irq/default_smp_affinity   # then set a forgotten file by hand"
    )]
    Lower {
        /// Forget from the journal what the kernel still refuses to take back.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PinCommand {
    /// Add a pin rule: one selector (--comm, --cmdline, --thread, --cgroup, --unit; --user
    /// narrows) and at least one placement (--cpus, --mems, --policy with --priority,
    /// --nice, --ioprio). Needs role admin.
    ///
    /// What matches now is placed at once, and what starts or changes later as it does
    /// (the kernel's process events). Every original is journaled first; `pin remove`
    /// puts them back. The rule stays in force across daemon restarts (per
    /// tuning.on_start) and wins over the profile's rules where both set an attribute.
    #[command(after_help = "Examples:\n  \
        sudo cleanroomctl pin add --comm nginx --cpus 2-3\n  \
        sudo cleanroomctl pin add --comm 'postgres*' --user postgres --nice -5 --ioprio be:0\n  \
        sudo cleanroomctl pin add --cmdline 'java .*ingest' --thread 'io-*' --policy fifo --priority 10\n  \
        sudo cleanroomctl pin add --cgroup /system.slice/db.service --cpus 4-7 --mems 1   # its cpuset\n  \
        sudo cleanroomctl pin add --unit nginx.service --cpus 2-3   # AllowedCPUs=, kept across restarts\n  \
        sudo cleanroomctl pin add --comm nginx --cpus 2-3 --dry-run   # what it would match and change")]
    Add {
        #[command(flatten)]
        rule: Box<PinRuleArgs>,
        /// Say what it would match and change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The pin rules in force (the profile's and those added by hand), with the tasks
    /// each matches now and any that drifted.
    #[command(after_help = "Examples:\n  cleanroomctl pin list\n  cleanroomctl --json pin list")]
    List,
    /// Remove a pin rule added by hand: what it placed gets its originals back
    /// (a task someone changed since is left alone, as a conflict). Needs role admin.
    #[command(after_help = "Exit code 1 when a conflict or failure is left.\n\n\
        Examples:\n  sudo cleanroomctl pin remove 3")]
    Remove {
        /// The rule's id, as `pin add` and `pin list` show it.
        id: u64,
    },
}

/// The selector and placement of a pin rule.
#[derive(Debug, Clone, clap::Args)]
pub struct PinRuleArgs {
    /// Processes whose name (/proc/PID/comm, at most 15 characters) matches this glob.
    #[arg(long, value_name = "GLOB")]
    pub comm: Option<String>,
    /// Processes whose command line (arguments joined by spaces) matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub cmdline: Option<String>,
    /// Only the threads of the matched processes whose name matches this glob.
    #[arg(long, value_name = "GLOB")]
    pub thread: Option<String>,
    /// Only processes of this user (a name or a uid).
    #[arg(long)]
    pub user: Option<String>,
    /// The processes in this cgroup and below it (a path as /proc/PID/cgroup shows it).
    /// Alone, --cpus and --mems go to the cgroup's cpuset, so what starts in it later has
    /// them from the kernel.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// The processes of this systemd unit (e.g. nginx.service). Alone, --cpus and --mems
    /// become the unit's AllowedCPUs= and AllowedMemoryNodes= (at runtime), which systemd
    /// keeps across restarts of the unit.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// CPU affinity, a CPU list (e.g. 2-3,6).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Memory nodes, a list (e.g. 0 or 0-1): with --cgroup alone, its cpuset.mems.
    #[arg(long, value_name = "LIST")]
    pub mems: Option<String>,
    /// Scheduling policy: other, batch, idle, fifo or rr.
    #[arg(long)]
    pub policy: Option<String>,
    /// Real-time priority for fifo and rr, 1-99.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Nice value, -20 to 19.
    #[arg(long, allow_negative_numbers = true)]
    pub nice: Option<i64>,
    /// I/O priority: none, idle, be:N or rt:N (N 0-7, 0 the highest).
    #[arg(long, value_name = "CLASS[:N]")]
    pub ioprio: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_sizes_and_env() {
        assert_eq!(parse_duration("0.5"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("2m"), Ok(120_000));
        for bad in ["0", "-1", "abc", "5 parsecs", "0.1ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
    }
}
