//! `run.*`, `runs.*` and `baseline.*`: clean-room runs, their history and baselines, and
//! the notifications a run streams before its answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

fn default_one() -> u32 {
    1
}

/// Params of `run.start`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// Program and arguments (the program is looked up in the run's `PATH`).
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
    /// Resource limits by name (`nofile`, `nproc`, `core`, `stack`, `as`, `data`, `fsize`,
    /// `memlock`, `cpu`), each setting the soft and the hard limit (`u64::MAX`: unlimited).
    /// Without `nofile` a run gets the open-files limit the daemon was started with, not
    /// the daemon's raised one.
    #[serde(default)]
    pub rlimits: std::collections::BTreeMap<String, u64>,
    /// Namespaces of its own: `net` (only a loopback interface, up), `mount` (a private
    /// `/tmp`), `uts` (hostname `cleanroom`), `ipc`, `pid` (the command is PID 1 and
    /// `/proc` shows only the run's processes).
    #[serde(default)]
    pub isolate: Vec<Isolation>,
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

/// Whether a set of runs is faster or slower than another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significantly faster, by more than the threshold.
    Faster,
    /// Significantly slower, by more than the threshold: a regression.
    Slower,
    /// Neither.
    NoChange,
}

/// A comparison of one metric between a baseline and new runs (Welch's t-test and a
/// relative threshold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric (`wall_ms`).
    pub metric: String,
    /// Mean of the baseline.
    pub baseline_mean: f64,
    /// Mean of the new runs.
    pub mean: f64,
    /// Relative change of the mean, percent (positive: slower).
    pub change_percent: f64,
    /// Two-sided p-value of Welch's t-test.
    pub p_value: f64,
    /// 100 × (1 − p).
    pub confidence_percent: f64,
    /// Significance level used.
    pub alpha: f64,
    /// Smallest relative change that counts, percent.
    pub threshold_percent: f64,
    /// The verdict.
    pub verdict: Verdict,
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
    /// Every measured run's value by metric (`wall_ms`, `user_ms`, `sys_ms`,
    /// `max_rss_kb`), in run order, when `repeat` > 1: what `stats` summarizes, compactly.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub samples: std::collections::BTreeMap<String, Vec<f64>>,
    /// Statistics by metric (`wall_ms`, `user_ms`, `sys_ms`, `max_rss_kb`), when
    /// `repeat` > 1.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stats: std::collections::BTreeMap<String, Summary>,
    /// The batch id under which the runs are stored (`runs.show`).
    #[serde(default)]
    pub batch: String,
    /// The comparison with `baseline`, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// How the exclusive cores were shielded (`partition`, `cpuset` or `affinity`), for an
    /// exclusive run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield: Option<String>,
    /// The answer to a detached start: the batch is still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
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
