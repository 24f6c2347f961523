//! `run.*`, `runs.*` and `baseline.*`: clean-room runs, their history and baselines, and
//! the notifications a run streams before its answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

fn default_one() -> u32 {
    1
}

/// Params of `run.start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// Program and arguments (the program is looked up in the run's `PATH`); in
    /// [`CompareParams::options`], empty (the commands are given there).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Working directory, entered as the caller (default `/`); with `isolate` `mount`, one
    /// below `/tmp` is kept in the private `/tmp` (see [`Isolation::Mount`]).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment besides the defaults (`PATH`, `HOME`, `LANG`, `TZ=UTC`), which these
    /// override.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Memory limit in bytes (swap off for the run).
    #[serde(default)]
    pub memory: Option<u64>,
    /// Most processes and threads.
    #[serde(default)]
    pub pids: Option<u64>,
    /// CPU quota in percent of one CPU.
    #[serde(default)]
    pub cpu_percent: Option<u64>,
    /// Wall-clock limit in milliseconds; the whole run is killed when it passes.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// ASLR off for the child, a fixed environment and `CLEANROOM_SEED`.
    #[serde(default)]
    pub deterministic: bool,
    /// Whole cores of its own from the isolation pool, shielded from every other task
    /// while it runs.
    #[serde(default)]
    pub exclusive: bool,
    /// Which exclusive CPUs: a count (`2`; default 1, rounded up to whole cores, on one
    /// NUMA node when one has enough) or a CPU list (`"2,3"`, `"4-7"`: exactly those, whole
    /// cores of the isolation pool).
    #[serde(default)]
    pub cpus: Option<CpuRequest>,
    /// When the exclusive CPUs are held by other runs: wait for them (cancellable; the
    /// timeout does not count the wait) instead of failing at once. A request the pool can
    /// never serve fails at once either way.
    #[serde(default)]
    pub wait: bool,
    /// SCHED_FIFO (priority 1) for the run on its exclusive cores; the kernel's RT
    /// throttling stays on, so a runaway run cannot starve the machine.
    #[serde(default)]
    pub realtime: bool,
    /// Run as this user (name or uid) with its groups; role admin only. Without it, a run
    /// is always the caller's own uid, gid and groups.
    #[serde(default)]
    pub user: Option<String>,
    /// Save the measured runs as the baseline of this name.
    #[serde(default)]
    pub save_baseline: Option<String>,
    /// With `save_baseline`: every user may compare with it (default: only its owner and
    /// admins).
    #[serde(default)]
    pub public: bool,
    /// Compare the measured runs with this baseline (`comparison` in the result).
    #[serde(default)]
    pub baseline: Option<String>,
    /// With `baseline`: refuse the comparison, before running anything, when the
    /// environment differs from the baseline's ([`Fingerprint`], the executable aside).
    #[serde(default)]
    pub strict: bool,
    /// With `baseline`: the measure compared (default wall time).
    #[serde(default)]
    pub metric: Metric,
    /// Count this besides times in every measured run.
    #[serde(default)]
    pub measure: Option<Measure>,
    /// Resource limits by name (`nofile`, `nproc`, `core`, `stack`, `as`, `data`, `fsize`,
    /// `memlock`, `cpu`), each setting the soft and the hard limit (`u64::MAX`: unlimited).
    /// Without `nofile` a run gets the open-files limit the daemon was started with, not
    /// the daemon's raised one.
    #[serde(default)]
    pub rlimits: std::collections::BTreeMap<String, u64>,
    /// Namespaces of its own: `net` (only a loopback interface, up), `mount` (a private
    /// `/tmp`), `uts` (hostname `cleanroom`), `ipc`, `pid` (the command is PID 1 and
    /// `/proc` shows only the run's processes), `fs` (a file-system clean room).
    #[serde(default)]
    pub isolate: Vec<Isolation>,
    /// With `isolate` `fs`: directories whose writes reach the host (absolute paths;
    /// `null`: the working directory; empty: none, every write vanishes).
    #[serde(default)]
    pub rw: Option<Vec<String>>,
    /// With `isolate` `fs`: directories shown read-only.
    #[serde(default)]
    pub ro: Vec<String>,
    /// With `isolate` `fs`: directories hidden behind an empty one (`~/.ssh`).
    #[serde(default)]
    pub hide: Vec<String>,
    /// With `isolate` `fs`: glob patterns (`*`, `?`, `[...]`, `**` for any directories)
    /// of files the batch's last run created or changed outside its `rw` directories,
    /// copied from its clean room into `collect_to` once the batch ends, as the caller
    /// (owned by them; only what they could read). An absolute pattern matches the path
    /// the run saw (the file lands at that path below `collect_to`), a relative one a path
    /// below the run's working directory (the file lands at that relative path).
    #[serde(default)]
    pub collect: Vec<String>,
    /// With `collect`: the directory the files are copied into (an absolute path; created,
    /// as the caller, if missing).
    #[serde(default)]
    pub collect_to: Option<String>,
    /// A label stored with the run.
    #[serde(default)]
    pub label: Option<String>,
    /// Answer at once (with the batch id and `end_reason` `running`) and let the batch run
    /// on without the client: it is not cancelled when the connection closes, only by
    /// `run.cancel` or the daemon stopping; its result is stored (`runs.show`).
    #[serde(default)]
    pub detach: bool,
    /// Measured repetitions (default 1).
    #[serde(default = "default_one")]
    pub repeat: u32,
    /// Unmeasured repetitions first (default 0).
    #[serde(default)]
    pub warmup: u32,
}

/// The measure a comparison compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Wall time (`wall_ms`).
    #[default]
    Wall,
    /// CPU time of the whole run, user and system (`cpu_ms`), from the kernel's
    /// nanosecond counters.
    Cpu,
    /// Instructions executed, counted under valgrind's cachegrind (`instructions`;
    /// implies [`Measure::Instructions`]). The PMU's count is in [`Counters`] and never
    /// compared with it: a simulated CPU and a real one count differently.
    Instructions,
    /// CPU cycles of the whole run, counted by the PMU (`cycles`; implies
    /// [`Measure::Counters`]; refused where the host has no PMU).
    Cycles,
}

impl Metric {
    /// The name of the sample series it reads (`wall_ms`, `cpu_ms`, `instructions`).
    pub fn series(self) -> &'static str {
        match self {
            Metric::Wall => "wall_ms",
            Metric::Cpu => "cpu_ms",
            Metric::Instructions => "instructions",
            Metric::Cycles => "cycles",
        }
    }
}

/// What a measured run counts besides times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// Instructions executed: the command runs under valgrind's cachegrind (Debian's
    /// `valgrind`), many times slower (the result's `cost_factor`); warm-ups run plain.
    Instructions,
    /// Performance counters of the whole run cgroup through `perf_event_open`
    /// ([`Counters`]): software counters everywhere, hardware ones (instructions, cycles,
    /// branch and cache misses) where the host has a PMU.
    Counters,
}

/// Performance counters of a whole run (every process and thread in its cgroup), from just
/// before its process is cloned until its last process is gone. The software counters
/// include the run's time in the kernel; the hardware ones count user space only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Time the run's tasks were on a CPU (the software task clock), milliseconds.
    pub task_clock_ms: f64,
    /// Context switches.
    pub context_switches: u64,
    /// Moves of a task from one CPU to another.
    pub cpu_migrations: u64,
    /// Page faults, minor and major.
    pub page_faults: u64,
    /// Instructions retired in user space (`None` without a PMU, as for the other hardware
    /// counters).
    pub instructions: Option<u64>,
    /// CPU cycles.
    pub cycles: Option<u64>,
    /// Branch mispredictions.
    pub branch_misses: Option<u64>,
    /// Last-level cache misses.
    pub cache_misses: Option<u64>,
    /// Share of the run the hardware counters counted (below 1 where the PMU was shared
    /// with other counters: the counts are then scaled up from what was seen).
    pub hardware_running: Option<f64>,
    /// Why there are no hardware counters (no PMU on this host, or refused).
    pub hardware_unsupported: Option<String>,
}

/// Params of `run.compare`: two or more commands run alternately on the same CPUs, in a
/// random order each round, and compared.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareParams {
    /// The commands (two to [`MAX_COMMANDS`]); the first is the reference the others are
    /// compared with.
    pub commands: Vec<Vec<String>>,
    /// A label per command, stored with its batch (none, or one for each).
    #[serde(default)]
    pub labels: Vec<String>,
    /// The run options every command shares (`argv` empty): `repeat` is the number of
    /// rounds (at least 5 for a verdict), `warmup` the unmeasured rounds first.
    /// `baseline`, `save_baseline`, `public` and `detach` do not apply.
    #[serde(default)]
    pub options: RunParams,
    /// The measure compared (default wall time).
    #[serde(default)]
    pub metric: Metric,
    /// After `repeat` rounds, keep adding rounds until no verdict is `inconclusive` or
    /// the budget (`max_rounds`, `max_seconds`) is spent.
    #[serde(default)]
    pub until_decided: bool,
    /// With `until_decided`: most rounds in all (default 10 × `repeat`, within
    /// `runs.max_repeat`).
    #[serde(default)]
    pub max_rounds: Option<u32>,
    /// With `until_decided`: most seconds of measuring (default 300).
    #[serde(default)]
    pub max_seconds: Option<u64>,
    /// Seed of the round order and the bootstrap (default: a fixed one, so the same
    /// measurements give the same verdict).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Most commands one `run.compare` compares.
pub const MAX_COMMANDS: usize = 16;

/// Result of `run.compare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareResult {
    /// Each command's batch, in the order given; every one after the first carries its
    /// comparison with the first (`comparison`).
    pub sides: Vec<RunResult>,
    /// Measured rounds.
    pub rounds: u32,
    /// Why measuring stopped: `rounds` (the rounds asked for), `decided`, `max_rounds`,
    /// `max_seconds`, `failed` (a run did not exit 0) or `cancelled`.
    pub stopped: String,
    /// The metric compared.
    pub metric: Metric,
    /// The seed of the round order and the bootstrap.
    pub seed: u64,
}

impl Default for RunParams {
    /// What an empty params object means: one measured run, nothing else asked.
    fn default() -> Self {
        Self {
            argv: Vec::new(),
            cwd: None,
            env: Default::default(),
            memory: None,
            pids: None,
            cpu_percent: None,
            timeout_ms: None,
            deterministic: false,
            exclusive: false,
            cpus: None,
            wait: false,
            realtime: false,
            user: None,
            save_baseline: None,
            public: false,
            baseline: None,
            strict: false,
            metric: Metric::Wall,
            measure: None,
            rlimits: Default::default(),
            isolate: Vec::new(),
            rw: None,
            ro: Vec::new(),
            hide: Vec::new(),
            collect: Vec::new(),
            collect_to: None,
            label: None,
            detach: false,
            repeat: 1,
            warmup: 0,
        }
    }
}

/// Which exclusive CPUs a run asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CpuRequest {
    /// This many CPUs (whole cores).
    Count(u32),
    /// Exactly these CPUs, a CPU list like `2,3` or `4-7`.
    List(String),
}

/// A namespace a run can have of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own network stack with only `lo`.
    Net,
    /// Its own mount table with a private `/tmp`. A working directory below the host's
    /// `/tmp` stays: it is bind-mounted into the private one at its own path (at most 32
    /// directories deep), behind copies of its parents with the same permissions.
    Mount,
    /// Its own hostname.
    Uts,
    /// Its own System V IPC and POSIX message queues.
    Ipc,
    /// Its own process ids: the command is PID 1 and sees only its own processes; implies
    /// a private mount namespace with `/proc` of its own.
    Pid,
    /// A file-system clean room: the host's file system through overlays whose writes
    /// are the run's own and vanish with it (but in `rw` directories), `/tmp`, `/var/tmp`,
    /// `/run` and `/dev/shm` private and empty; implies `mount`.
    Fs,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The program exited (any code).
    Exited,
    /// A signal ended it.
    Signaled,
    /// The timeout passed; every process of the run was killed.
    Timeout,
    /// The memory limit was hit and the kernel's OOM killer ended it.
    Oom,
    /// Cancelled (by request, by the client leaving, or by the daemon stopping).
    Cancelled,
    /// It could not start (command not found: 127; not executable: 126).
    FailedToStart,
    /// Still running: the answer to a detached start (`detach`).
    Running,
}

impl EndReason {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::Signaled => "signaled",
            EndReason::Timeout => "timeout",
            EndReason::Oom => "oom",
            EndReason::Cancelled => "cancelled",
            EndReason::FailedToStart => "failed_to_start",
            EndReason::Running => "running",
        }
    }
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Exit code, when it exited (127/126 when it could not start).
    pub exit_code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Why it ended.
    pub end_reason: EndReason,
    /// Wall time, milliseconds.
    pub wall_ms: f64,
    /// User CPU time of the whole process tree (cgroup), milliseconds.
    pub user_ms: f64,
    /// System CPU time of the whole tree, milliseconds.
    pub sys_ms: f64,
    /// Peak memory of the tree (cgroup), KiB; the largest process's RSS where the kernel
    /// keeps no cgroup peak.
    pub max_rss_kb: u64,
    /// Voluntary context switches (the program and the descendants it waited for).
    pub voluntary_ctxt_switches: u64,
    /// Involuntary context switches.
    pub involuntary_ctxt_switches: u64,
    /// OOM kills inside the run.
    pub oom_kills: u64,
    /// Processes still alive when the program ended (or at the timeout), all killed.
    pub killed: u64,
    /// CPUs the run could use.
    pub cpus: String,
    /// What else happened on the machine while it ran.
    pub noise: Noise,
    /// Whether output beyond the cap was dropped.
    pub output_truncated: bool,
    /// Why it could not start, if it could not.
    #[serde(default)]
    pub error: Option<String>,
    /// Instructions executed, with `measure` `instructions` (every process it started,
    /// under cachegrind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
    /// Performance counters, with `measure` `counters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

impl RunRecord {
    /// A record of run `id` on `cpus` that has nothing measured yet.
    pub fn new(id: String, end_reason: EndReason, cpus: String) -> Self {
        Self {
            id,
            exit_code: None,
            signal: None,
            end_reason,
            wall_ms: 0.0,
            user_ms: 0.0,
            sys_ms: 0.0,
            max_rss_kb: 0,
            voluntary_ctxt_switches: 0,
            involuntary_ctxt_switches: 0,
            oom_kills: 0,
            killed: 0,
            cpus,
            noise: Noise::default(),
            output_truncated: false,
            error: None,
            instructions: None,
            counters: None,
        }
    }
}

/// Interference seen during a run: the noise report.
///
/// The CPU figures cover the run's CPUs (`cpus` of the [`RunRecord`]) from just before
/// the program is started until its last process is gone. Every field is optional (`null`
/// where this host cannot tell), and a record stored before a field existed reads it as
/// `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// CPU pressure stall during the run (PSI `some` total delta), microseconds; `None`
    /// where PSI is not available. Host-wide, not limited to the run's CPUs.
    #[serde(default)]
    pub cpu_pressure_us: Option<u64>,
    /// Memory pressure stall delta, microseconds (host-wide).
    #[serde(default)]
    pub memory_pressure_us: Option<u64>,
    /// I/O pressure stall delta, microseconds (host-wide).
    #[serde(default)]
    pub io_pressure_us: Option<u64>,
    /// CPU time on the run's CPUs that was not the run's, milliseconds: other tasks
    /// (the daemon's own work included), the kernel's interrupt handling, and time the
    /// hypervisor took (steal). `irq_ms` and `steal_ms` are parts of it. Never negative.
    /// Other tasks' time comes from the root cpuacct cgroup where cgroup v1 has one
    /// (nanoseconds, per CPU), else from `/proc/stat` (sampled at the scheduler tick and
    /// shown in 10 ms units, so a short run can be off by about 10 ms per CPU).
    #[serde(default)]
    pub foreign_cpu_ms: Option<f64>,
    /// Interrupt handling (hard and soft IRQs) on the run's CPUs, milliseconds
    /// (`/proc/stat` `irq` + `softirq`, 10 ms units). Without the kernel's
    /// `CONFIG_IRQ_TIME_ACCOUNTING` this is sampled at the tick.
    #[serde(default)]
    pub irq_ms: Option<f64>,
    /// Time the hypervisor ran something else on the run's virtual CPUs (`/proc/stat`
    /// `steal`), milliseconds, 10 ms units; 0 on bare metal.
    #[serde(default)]
    pub steal_ms: Option<f64>,
    /// Lowest current frequency of the run's CPUs seen at its start or end
    /// (`cpufreq/scaling_cur_freq`), kHz; `None` without cpufreq.
    #[serde(default)]
    pub freq_min_khz: Option<u64>,
    /// Highest current frequency seen at the start or end, kHz.
    #[serde(default)]
    pub freq_max_khz: Option<u64>,
    /// Thermal throttling events during the run on the run's CPUs: the increase of
    /// `thermal_throttle/core_throttle_count` per CPU plus `package_throttle_count` once
    /// per package; `None` where the kernel does not count them.
    #[serde(default)]
    pub throttle_events: Option<u64>,
}

/// Statistics of one metric over the measured repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// Sample standard deviation.
    pub stddev: f64,
    /// Coefficient of variation, percent (stddev / mean).
    pub cv_percent: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Indexes of outliers: outside the Tukey fences (Q1 - 1.5 IQR, Q3 + 1.5 IQR).
    pub outliers: Vec<usize>,
}

/// What a comparison concludes about new against old (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Slower by more than the margin δ, with the interval entirely above 1: a regression.
    Slower,
    /// Faster by more than δ, with the interval entirely below 1.
    Faster,
    /// The interval lies entirely within 1 ± δ: no change that matters.
    Equivalent,
    /// Neither can be said from these measurements (see `more_repeats` and `reason`).
    Inconclusive,
}

impl Verdict {
    /// The name on the wire and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Slower => "slower",
            Verdict::Faster => "faster",
            Verdict::Equivalent => "equivalent",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// How the two sides of a comparison were measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    /// Interleaved rounds (`run.compare`): each round measured both, in random order; the
    /// bootstrap resamples whole rounds.
    Paired,
    /// Two batches measured at different times (`run --baseline`, `runs.compare`): each
    /// side resampled on its own, the interval widened by the command's between-batch
    /// variance.
    Independent,
}

/// One field of the environment that differs between the two sides of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// The [`Fingerprint`] field.
    pub field: String,
    /// Its value on the reference side (`null`: not known there).
    pub baseline: Option<String>,
    /// Its value on the compared side.
    pub current: Option<String>,
}

/// A comparison of one metric: the ratio new/old of the medians with its bootstrap
/// confidence interval, and the verdict against the equivalence margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric compared (`wall_ms`, `cpu_ms`, `instructions`, `cycles`).
    pub metric: String,
    /// The reference side: a batch id, or `baseline:NAME`.
    pub against: String,
    /// The reference side's batch id (for a baseline, the batch it named when compared;
    /// `null` in comparisons stored before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_batch: Option<String>,
    /// Interleaved or sequential.
    pub design: Design,
    /// Median of the reference side.
    pub baseline_median: f64,
    /// Median of the compared side.
    pub median: f64,
    /// `median / baseline_median`: above 1 is slower.
    pub ratio: f64,
    /// Lower end of the interval of the ratio.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
    /// Confidence level of the interval (above the configured one when several
    /// comparisons are made at once: Holm's step-down level for this one).
    pub level: f64,
    /// The equivalence margin δ, percent.
    pub delta_percent: f64,
    /// Bootstrap p-value of "no difference" (two-sided).
    pub p_value: f64,
    /// The p-value after Holm's correction for the comparisons made together (equal to
    /// `p_value` for one).
    pub p_adjusted: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// For an inconclusive verdict: about how many more repeats (rounds, for a paired
    /// one) a side would decide it; `null` when no reasonable number would.
    #[serde(default)]
    pub more_repeats: Option<u32>,
    /// Why the verdict is inconclusive whatever the interval says (too few repeats, the
    /// between-batch variance unknown), if so.
    #[serde(default)]
    pub reason: Option<String>,
    /// For sequential batches: the between-batch spread (standard deviation of log
    /// medians, percent) the interval was widened by, and where it came from.
    #[serde(default)]
    pub between_batch: Option<BetweenBatch>,
    /// Measured values on the reference side.
    pub n_baseline: u32,
    /// Measured values on the compared side.
    pub n: u32,
    /// Environment fields that differ between the two sides (the executable aside).
    #[serde(default)]
    pub environment_differs: Vec<FieldDiff>,
    /// Whether both sides ran the same executable (same sha256); `null` where unknown.
    #[serde(default)]
    pub same_executable: Option<bool>,
}

/// The between-batch spread a sequential comparison accounts for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BetweenBatch {
    /// Standard deviation of a batch's log median beyond its own sampling error, percent.
    pub percent: f64,
    /// `history` (the label's earlier batches) or `baseline` (the drift within the
    /// baseline's own repeats).
    pub source: String,
    /// How many batches (for `history`) or repeats (for `baseline`) it rests on.
    pub from: u32,
}

/// The environment a batch ran in. Every field is optional: `null` where this host does
/// not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fingerprint {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu_model: Option<String>,
    /// CPU microcode revision.
    pub microcode: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// SMT state (`/sys/devices/system/cpu/smt/control`).
    pub smt: Option<String>,
    /// cpufreq governors of the CPUs (distinct values, comma-separated).
    pub governor: Option<String>,
    /// Frequency boost (`cpufreq/boost` or `intel_pstate/no_turbo`).
    pub boost: Option<String>,
    /// Frequency limits of the CPUs, kHz (`min-max`, distinct values).
    pub frequency_limits: Option<String>,
    /// The active tuning profile (`none` when none).
    pub profile: Option<String>,
    /// The tuning journal's phase (`active` when the profile is fully applied).
    pub profile_state: Option<String>,
    /// `v1`, `v2` or `hybrid`.
    pub cgroup: Option<String>,
    /// How exclusive CPUs were shielded (exclusive runs only).
    pub shield: Option<String>,
    /// The exclusive CPUs (exclusive runs only).
    pub exclusive_cpus: Option<String>,
    /// The C library's version (glibc).
    pub glibc: Option<String>,
    /// The executable, as found in the run's `PATH`.
    pub executable: Option<String>,
    /// Its sha256, when the caller may read it.
    pub executable_sha256: Option<String>,
}

impl Fingerprint {
    /// The fields that differ from `baseline` (the executable's path and hash aside: two
    /// builds compared differ there by design, see [`Comparison::same_executable`]).
    pub fn differences(&self, baseline: &Fingerprint) -> Vec<FieldDiff> {
        let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
            (serde_json::to_value(baseline), serde_json::to_value(self))
        else {
            return Vec::new();
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        a.iter()
            .filter(|(k, _)| !k.starts_with("executable"))
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| FieldDiff {
                field: k.clone(),
                baseline: text(Some(v)),
                current: text(b.get(k)),
            })
            .collect()
    }

    /// Whether both ran the same executable, where both hashes are known.
    pub fn same_executable(&self, baseline: &Fingerprint) -> Option<bool> {
        Some(self.executable_sha256.as_ref()? == baseline.executable_sha256.as_ref()?)
    }
}

/// A repeat measured again because something else took its CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rerun {
    /// The repeat's place among the measured ones (0-based; for `run.compare`, the
    /// round).
    pub index: u32,
    /// The command (its index in `run.compare`; 0 for `run.start`).
    pub command: u32,
    /// Why: the foreign CPU time (or throttling) it saw.
    pub reason: String,
}

/// Result of `run.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The last measured run (the only one without `repeat`), flattened.
    #[serde(flatten)]
    pub last: RunRecord,
    /// The measured runs' records, when `repeat` > 1: the first [`MAX_RECORDS`] of them
    /// (every run's measures are in `samples`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
    /// Measured runs whose records are left out of `runs` (past [`MAX_RECORDS`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runs_omitted: u32,
    /// Every measured run's value by metric (`wall_ms`, `user_ms`, `sys_ms`, `cpu_ms`,
    /// `max_rss_kb`, and `instructions` when counted), in run order, when `repeat` > 1: what `stats` summarizes, compactly.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub samples: std::collections::BTreeMap<String, Vec<f64>>,
    /// Every measured run's exit code in run order (`null` for one a signal ended, or that
    /// did not start), when `repeat` > 1: the codes of runs past [`MAX_RECORDS`] too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<Option<i32>>,
    /// The warm-up runs' wall times in order, milliseconds (not measured: what they show
    /// is how the command warms up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warmup_ms: Vec<f64>,
    /// Statistics by metric (`wall_ms`, `user_ms`, `sys_ms`, `max_rss_kb`), when
    /// `repeat` > 1.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stats: std::collections::BTreeMap<String, Summary>,
    /// The batch id under which the runs are stored (`runs.show`).
    #[serde(default)]
    pub batch: String,
    /// The comparison with `baseline` (or, for a side of `run.compare`, with the
    /// reference command), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// A comparison stored before verdicts (Welch's t-test on the means), kept as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welch: Option<Value>,
    /// The environment it ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// With `measure`: the median wall time of the measured runs over the warm-ups'
    /// (which run plain): what measuring costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_factor: Option<f64>,
    /// Repeats measured again because they were noisy (at most `runs.max_reruns`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<Rerun>,
    /// How the exclusive cores were shielded (`partition`, `cpuset` or `affinity`), for an
    /// exclusive run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield: Option<String>,
    /// The answer to a detached start: the batch is still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// Where a stored batch came from (`runs.show` fills it in): who ran what, when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Provenance>,
    /// What `collect` copied out of the last run's clean room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected: Option<Collected>,
}

/// Files a batch's `collect` copied out of its last run's clean room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// The directory they were copied into.
    pub into: String,
    /// Files copied.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Matching files left out: past the most one batch collects, or not copied (see
    /// `errors`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub left_out: u64,
    /// Why files were not copied (the first few), or why nothing could be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Who ran a stored batch, what and when (`runs.show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// When it ended (seconds since the epoch).
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Its label (to its owner and admins only).
    #[serde(default)]
    pub label: Option<String>,
    /// The command (to its owner and admins only: an argument can hold a secret).
    #[serde(default)]
    pub argv: Vec<String>,
}

impl RunResult {
    /// The values of `metric`, one per measured run.
    pub fn metric_values(&self, metric: Metric) -> Vec<f64> {
        let r = self;
        // Every run's, from `samples`; results stored before it have every record instead.
        let series = |name: &str, of: fn(&RunRecord) -> f64| {
            if let Some(values) = r.samples.get(name) {
                values.clone()
            } else if r.runs.is_empty() {
                vec![of(&r.last)]
            } else {
                r.runs.iter().map(of).collect()
            }
        };
        match metric {
            Metric::Wall => series("wall_ms", |x| x.wall_ms),
            Metric::Cpu => match (r.samples.get("user_ms"), r.samples.get("sys_ms")) {
                // Stored before `cpu_ms` was a series of its own: its parts are.
                (Some(u), Some(s)) if !r.samples.contains_key("cpu_ms") => {
                    u.iter().zip(s).map(|(u, s)| u + s).collect()
                }
                _ => series("cpu_ms", |x| x.user_ms + x.sys_ms),
            },
            Metric::Cycles => match r.samples.get("cycles") {
                Some(values) => values.clone(),
                None => r
                    .runs
                    .iter()
                    .chain(r.runs.is_empty().then_some(&r.last))
                    .filter_map(|x| x.counters.as_ref()?.cycles.map(|n| n as f64))
                    .collect(),
            },
            // Counted runs only: a batch measured without counting has none.
            Metric::Instructions => match r.samples.get("instructions") {
                Some(values) => values.clone(),
                None if r.runs.is_empty() => {
                    r.last.instructions.map(|n| n as f64).into_iter().collect()
                }
                None => r
                    .runs
                    .iter()
                    .filter_map(|x| x.instructions.map(|n| n as f64))
                    .collect(),
            },
        }
    }
}

/// Most whole records a result holds; past them, a run's measures are in
/// [`RunResult::samples`] only (a `--repeat 10000` result stays a few hundred KiB).
pub const MAX_RECORDS: usize = 100;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Params of `baseline.save`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSaveParams {
    /// Baseline name (letters, digits, `.`, `_`, `-`; at most 64).
    pub name: String,
    /// The stored batch it names (`runs.list`).
    pub batch: String,
    /// Every user may compare with it (default: only its owner and admins).
    #[serde(default)]
    pub public: bool,
}

/// Params of `runs.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsListParams {
    /// How many (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One batch in `runs.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchInfo {
    /// Batch id.
    pub batch: String,
    /// When it ended (seconds since the epoch).
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Its label.
    pub label: Option<String>,
    /// The command.
    pub argv: Vec<String>,
    /// Measured runs.
    pub runs: u32,
    /// How the last one ended.
    pub end_reason: EndReason,
    /// Exit code of the last one.
    pub exit_code: Option<i32>,
    /// Median wall time, milliseconds.
    pub wall_ms: f64,
}

/// Result of `runs.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsListResult {
    /// Newest first.
    pub batches: Vec<BatchInfo>,
}

/// One batch in progress, in `runs.active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveBatch {
    /// Batch id (for `run.cancel`).
    pub batch: String,
    /// Who runs it.
    pub uid: u32,
    /// Its label.
    pub label: Option<String>,
    /// The command.
    pub argv: Vec<String>,
    /// When it started (seconds since the epoch).
    pub started: f64,
    /// Whether its client went away on purpose (`--detach`).
    pub detached: bool,
    /// The exclusive CPUs it holds (a CPU list), if any.
    pub exclusive_cpus: Option<String>,
    /// How the shield keeps other tasks off them, while it holds them.
    pub shield: Option<String>,
}

/// Result of `runs.active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsActiveResult {
    /// Oldest first.
    pub batches: Vec<ActiveBatch>,
}

/// Params naming a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    /// Batch id.
    pub batch: String,
}

/// Params of `runs.compare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsCompareParams {
    /// The reference batch (or `baseline:NAME`).
    pub a: String,
    /// The batch compared with it (or `baseline:NAME`).
    pub b: String,
    /// Refuse when the two ran in different environments ([`Fingerprint`], the
    /// executable aside).
    #[serde(default)]
    pub strict: bool,
    /// The measure compared (default wall time).
    #[serde(default)]
    pub metric: Metric,
}

/// Params of `runs.history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsHistoryParams {
    /// The label.
    pub label: String,
    /// The measure followed (default wall time).
    #[serde(default)]
    pub metric: Metric,
    /// How many of the newest batches (default 100, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One batch in a label's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Batch id.
    pub batch: String,
    /// When it ended (seconds since the epoch).
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Median of the metric over its measured runs.
    pub median: f64,
    /// Its measured runs.
    pub runs: u32,
    /// The baselines naming it.
    #[serde(default)]
    pub baselines: Vec<String>,
}

/// A change point in a label's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangePointInfo {
    /// The first batch after the change.
    pub batch: String,
    /// Its place in `batches` (oldest first).
    pub index: u32,
    /// Median after over median before (within the segment it splits): above 1 is
    /// slower.
    pub magnitude: f64,
    /// 1 − the permutation test's p-value.
    pub confidence: f64,
}

/// Result of `runs.history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsHistoryResult {
    /// The label.
    pub label: String,
    /// The measure followed.
    pub metric: Metric,
    /// Oldest first (batches without the metric left out).
    pub batches: Vec<HistoryPoint>,
    /// Change points found (E-Divisive with a permutation test; none with fewer than
    /// twice the minimum segment of batches).
    pub change_points: Vec<ChangePointInfo>,
    /// The fewest batches on either side of a change point.
    pub min_segment: u32,
}

/// Params naming a baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineParams {
    /// Baseline name.
    pub name: String,
}

/// One baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineInfo {
    /// Its name.
    pub name: String,
    /// The batch it names.
    pub batch: String,
    /// When it was saved.
    pub ts: f64,
    /// Who saved it.
    pub uid: u32,
    /// Whether every user may compare with it (else only its owner and admins).
    #[serde(default)]
    pub public: bool,
}

/// Result of `baseline.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineListResult {
    /// By name.
    pub baselines: Vec<BaselineInfo>,
}

/// Result of `baseline.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineDeleteResult {
    /// The name.
    pub name: String,
    /// Whether it existed.
    pub deleted: bool,
}

/// The `run.output` notification: a chunk of the child's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    /// The request id of the `run.start` it belongs to.
    pub request: Value,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The bytes, as UTF-8 (invalid sequences replaced).
    pub data: String,
}

/// The `run.started` notification: the batch id, first thing a `run.start` sends (for
/// `run.cancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The request id of the `run.start` it belongs to.
    pub request: Value,
    /// The batch id.
    pub batch: String,
}

/// Result of `run.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCancelResult {
    /// The batch.
    pub batch: String,
    /// Whether it was running (and is now being ended).
    pub cancelled: bool,
}

/// The `run.progress` notification: a repetition finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The request id of the `run.start` it belongs to.
    pub request: Value,
    /// Repetitions done (warm-up included).
    pub done: u32,
    /// Repetitions in all (warm-up included).
    pub total: u32,
    /// Whether the one that finished was a warm-up.
    pub warmup: bool,
    /// Its wall time, milliseconds.
    pub wall_ms: f64,
    /// For `run.compare`: which command (its index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<u32>,
}

/// A notification `run.start` streams before its answer, each carrying the request id of
/// the `run.start` it belongs to: `run.started` first (the batch id, for `run.cancel`),
/// then `run.output` and `run.progress` as they come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params")]
pub enum Event {
    /// `run.started`.
    #[serde(rename = "run.started")]
    RunStarted(RunStarted),
    /// `run.output`.
    #[serde(rename = "run.output")]
    RunOutput(RunOutput),
    /// `run.progress`.
    #[serde(rename = "run.progress")]
    RunProgress(RunProgress),
}

impl Event {
    /// The notification's method name.
    pub fn method(&self) -> &'static str {
        match self {
            Event::RunStarted(_) => "run.started",
            Event::RunOutput(_) => "run.output",
            Event::RunProgress(_) => "run.progress",
        }
    }
}

impl From<Event> for crate::Notification {
    fn from(e: Event) -> Self {
        let method = e.method().to_owned();
        let params = match serde_json::to_value(e) {
            Ok(Value::Object(mut m)) => m.remove("params").unwrap_or_default(),
            _ => Value::Null,
        };
        crate::Notification {
            jsonrpc: crate::JSONRPC_VERSION.to_owned(),
            method,
            params,
        }
    }
}

impl TryFrom<crate::Notification> for Event {
    type Error = serde_json::Error;

    fn try_from(n: crate::Notification) -> Result<Self, Self::Error> {
        serde_json::from_value(serde_json::json!({"method": n.method, "params": n.params}))
    }
}
