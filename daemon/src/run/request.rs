//! From a `run.start` request to a [`Batch`] the engine can execute: the parameters
//! checked (each error names its field), the identity the run takes, its environment,
//! limits and resource limits, the exclusive cores it wants, and the baseline it is
//! compared with (which must exist before anything runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cleanroom_proto::{
    CompareParams, CpuRequest, Isolation, MAX_COMMANDS, Measure, Metric, RunParams,
};
use nix::sys::resource::Resource;

use super::batch::{Baseline, Batch, Caller};
use super::cgroup::Limits;
use super::error::Error;
use super::history;
use super::instructions;
use super::interleave::Compare;
use super::{Job, Want, spawn};

use crate::config::Quotas;
use crate::host::format::parse_cpu_list;
use crate::quota::Exceeded;
use crate::store::Store;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The kernel's largest `pid_max` (`PID_MAX_LIMIT`, 4M on 64-bit): no task limit above it
/// means anything, and `pids.max` refuses it.
const PID_MAX_LIMIT: u64 = 1 << 22;

/// Longest label, bytes: it is stored with every batch and shown in listings.
pub const MAX_LABEL_BYTES: usize = 256;

/// Most bytes of a command (its arguments' lengths and one byte each): it is stored with
/// every batch and shown in listings. Far more than a test command needs, far less than
/// the kernel's 2 MiB.
pub const MAX_ARGV_BYTES: usize = 128 << 10;

/// The names of the resource limits a run may set, for messages.
const RLIMIT_NAMES: &str = "nofile, nproc, core, stack, as, data, fsize, memlock, cpu";

/// The bounds a request is resolved within.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Most repetitions (`runs.max_repeat`).
    pub max_repeat: u32,
    /// The per-uid quotas and the default limits of runs.
    pub quotas: Quotas,
    /// The host's memory (`MemTotal`), bytes, for the memory quotas (none if unknown).
    pub memory_total: Option<u64>,
    /// Where a file-system clean room is built (a directory of the daemon's state).
    pub fs_stage: PathBuf,
    /// Most MiB a file-system clean room's run writes outside its `rw` directories
    /// (`runs.fs_write_mb`).
    pub fs_write_mb: u64,
}

impl Bounds {
    /// A run's task and memory limits: as asked, within the maxima (admins exempt), or
    /// the defaults when not asked.
    fn limits(&self, p: &RunParams, caller: &Caller) -> Result<(Option<u64>, Option<u64>), Error> {
        let q = &self.quotas;
        let pids = match p.pids {
            Some(n) if !caller.admin && n > q.max_pids => {
                return Err(Exceeded::new(
                    "max_pids",
                    q.max_pids,
                    caller.uid,
                    format!("a task limit of {n} asked"),
                )
                .into());
            }
            Some(n) => n,
            None => q.default_pids,
        };
        let share = |percent: u8| {
            self.memory_total
                .map(|total| total / 100 * u64::from(percent))
        };
        let memory = match (p.memory, share(q.max_memory_percent)) {
            (Some(m), Some(most)) if !caller.admin && m > most => {
                return Err(Exceeded::new(
                    "max_memory_percent",
                    q.max_memory_percent,
                    caller.uid,
                    format!(
                        "a memory limit of {} MiB asked, over {} % of the host's {} MiB",
                        m >> 20,
                        q.max_memory_percent,
                        self.memory_total.unwrap_or(0) >> 20
                    ),
                )
                .into());
            }
            (Some(m), _) => Some(m),
            (None, _) if q.default_memory_percent == 0 => None,
            (None, _) => share(q.default_memory_percent),
        };
        Ok((Some(pids), memory))
    }
}

/// Checks `params` and resolves everything a batch needs: `caller` is who asked (the run
/// is theirs unless an admin names another user), `bounds` the configured bounds.
/// Blocking look-ups (the user database, the store) run on the blocking pool.
pub async fn resolve(
    params: RunParams,
    caller: &Caller,
    bounds: &Bounds,
    store: &Store,
) -> Result<Batch, Error> {
    check(&params, bounds.max_repeat)?;
    let (pids, memory) = bounds.limits(&params, caller)?;
    if let Some(name) = &params.save_baseline {
        let most = bounds.quotas.baselines_for(caller.admin);
        history::may_save_baseline(store, caller, name, most).await?;
    }
    let baseline = match &params.baseline {
        Some(name) => Some(baseline(store, caller, name).await?),
        None => None,
    };
    let (uid, gid, groups) = match &params.user {
        None => (caller.uid, caller.gid, caller.groups.clone()),
        Some(_) if !caller.admin => return Err(Error::AdminOnly("running as another user")),
        Some(user) => {
            let user = user.clone();
            tokio::task::spawn_blocking(move || resolve_user(&user)).await??
        }
    };
    let home = tokio::task::spawn_blocking(move || home_of(uid)).await?;
    let env = environment(&params, &home);
    if counts_instructions(&params) {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(String::new(), |(_, v)| v.clone());
        if !tokio::task::spawn_blocking(move || instructions::available(&path)).await? {
            return Err(Error::Invalid(format!(
                "measure instructions needs {} in the run's PATH (apt-get install {})",
                instructions::VALGRIND,
                instructions::PACKAGE
            )));
        }
    }
    let counters = counts_counters(&params);
    if params.baseline.is_some() {
        check_measures(params.metric, params.measure)?;
    }
    let exclusive = wanted_cpus(&params)?;
    let instructions = counts_instructions(&params);
    let room = room(&params, bounds)?;
    let mut collect = collect_rules(&params, room.as_ref())?;
    if let Some(rules) = &mut collect {
        // Made (as the caller) before anything runs: a directory they cannot write is
        // refused now, not after the batch; the files go below it as resolved now.
        let (into, mut ids) = (rules.into.clone(), vec![gid]);
        ids.extend(groups.iter().copied().filter(|g| *g != gid));
        rules.into = tokio::task::spawn_blocking(move || super::collect::prepare(&into, uid, &ids))
            .await?
            .map_err(Error::Invalid)?;
    }
    let job = Job {
        spec: spawn::Spec {
            argv: params.argv.clone(),
            cwd: params.cwd.clone().unwrap_or_else(|| "/".into()).into(),
            env,
            uid,
            gid,
            groups,
            deterministic: params.deterministic,
            isolate: params.isolate.clone(),
            realtime: params.realtime,
            cgroup_v2: None,
            cgroup_procs: Vec::new(),
            rlimits: rlimits(&params),
            fs: room.map(|room| super::fsroom::Room {
                keep: collect.is_some(),
                ..room
            }),
        },
        limits: Limits {
            memory,
            pids,
            cpu_percent: params.cpu_percent,
            cpus: None,
            realtime: params.realtime,
            counters,
        },
        timeout: params.timeout_ms.map(Duration::from_millis),
        latest: collect.as_ref().map(|_| super::collect::Latest::default()),
    };
    Ok(Batch {
        owner: caller.clone(),
        job,
        exclusive,
        wait: params.wait,
        repeat: params.repeat,
        warmup: params.warmup,
        label: params.label,
        argv: params.argv,
        save_baseline: params.save_baseline.map(|name| (name, params.public)),
        baseline,
        strict: params.strict,
        metric: params.metric,
        instructions,
        detached: params.detach,
        collect,
    })
}

/// What `p` collects from its last run's clean room (`room`), checked.
fn collect_rules(
    p: &RunParams,
    room: Option<&super::fsroom::Room>,
) -> Result<Option<super::collect::Rules>, Error> {
    if p.collect.is_empty() {
        if p.collect_to.is_some() {
            return Err(Error::Invalid(
                "collect_to goes with collect (the patterns of the files to copy)".into(),
            ));
        }
        return Ok(None);
    }
    if !p.isolate.contains(&Isolation::Fs) {
        return Err(Error::Invalid(
            "collect goes with isolate fs (it copies from the run's clean room)".into(),
        ));
    }
    let Some(into) = &p.collect_to else {
        return Err(Error::Invalid(
            "collect needs collect_to, the directory the files are copied into".into(),
        ));
    };
    let rules = super::collect::Rules::new(&p.collect, into).map_err(Error::Invalid)?;
    // A relative pattern names files below the working directory: when its writes reach
    // the host (an rw directory, or kept below /tmp), none is ever in the room.
    let cwd = Path::new(p.cwd.as_deref().unwrap_or("/"));
    let writable =
        room.is_some_and(|r| r.rw.iter().any(|d| cwd.starts_with(d))) || cwd.starts_with("/tmp");
    if let Some(pattern) = rules.relative().filter(|_| writable) {
        return Err(Error::Invalid(format!(
            "collect: {pattern:?} names files below the working directory {}, whose writes \
             reach the host (nothing of it is in the clean room): give --rw none (or other \
             --rw directories), or an absolute pattern",
            cwd.display()
        )));
    }
    Ok(Some(rules))
}

/// Most directories each of `rw`, `ro` and `hide` may name.
pub const MAX_ROOM_DIRS: usize = 32;

/// The file-system clean room `p` asks for, if it asks for one: its `rw` directories (the
/// working directory unless given; one below `/tmp` is kept by the private `/tmp` itself),
/// `ro` and `hide`. Paths are checked here; whether they exist is the child's to find.
fn room(p: &RunParams, bounds: &Bounds) -> Result<Option<super::fsroom::Room>, Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    if !p.isolate.contains(&Isolation::Fs) {
        if p.rw.is_some() || !p.ro.is_empty() || !p.hide.is_empty() {
            return bad("rw, ro and hide go with isolate fs".into());
        }
        return Ok(None);
    }
    let cwd = PathBuf::from(p.cwd.clone().unwrap_or_else(|| "/".into()));
    let private = |d: &Path| {
        super::fsroom::PRIVATE
            .iter()
            .find(|p| d.starts_with(p))
            .copied()
    };
    let check = |field: &str, dirs: &[String]| -> Result<Vec<PathBuf>, Error> {
        if dirs.len() > MAX_ROOM_DIRS {
            return Err(Error::Invalid(format!(
                "{field}: {} directories; at most {MAX_ROOM_DIRS}",
                dirs.len()
            )));
        }
        dirs.iter()
            .map(|d| {
                let path = PathBuf::from(d);
                let normal = path.is_absolute()
                    && d.len() <= 4096
                    && !d.contains('\0')
                    && path
                        .components()
                        .all(|c| !matches!(c, std::path::Component::ParentDir));
                if !normal || path == Path::new("/") {
                    return Err(Error::Invalid(format!(
                        "{field}: {d:?} is not an absolute path below / without `..`"
                    )));
                }
                if let Some(p) = private(&path) {
                    return Err(Error::Invalid(format!(
                        "{field}: {d} is below {p}, which a file-system clean room shows \
                         private and empty"
                    )));
                }
                Ok(path)
            })
            .collect()
    };
    let rw = match &p.rw {
        Some(dirs) => {
            if dirs.len() > 1 && dirs.iter().any(|d| d == "none") {
                return bad(
                    "rw: none (every write vanishes) goes alone, not with directories".into(),
                );
            }
            if dirs.is_empty() && private(&cwd) == Some("/tmp") {
                return bad(format!(
                    "rw none: the working directory {} is below /tmp, which a file-system \
                     clean room keeps from the host (its writes reach it); run from elsewhere",
                    cwd.display()
                ));
            }
            check("rw", dirs)?
        }
        None => match private(&cwd) {
            // Kept by the private /tmp, bound from the host.
            Some("/tmp") => Vec::new(),
            Some(p) => {
                return bad(format!(
                    "the working directory {} is below {p}, which a file-system clean room \
                     shows empty: run from elsewhere, or name --rw directories",
                    cwd.display()
                ));
            }
            None if cwd == Path::new("/") => Vec::new(),
            None => vec![cwd.clone()],
        },
    };
    // The stage: a directory of the daemon's state (root's only) each run's tmpfs is
    // mounted on, in the run's own namespace.
    let stage = &bounds.fs_stage;
    if !stage.is_dir() {
        std::fs::create_dir_all(stage)
            .and_then(|()| {
                std::fs::set_permissions(stage, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(|e| Error::Task(format!("creating {}: {e}", stage.display())))?;
    }
    Ok(Some(super::fsroom::Room {
        stage: stage.clone(),
        upper_mb: bounds.fs_write_mb,
        keep: false,
        rw,
        ro: check("ro", &p.ro)?,
        hide: check("hide", &p.hide)?,
    }))
}

/// Whether a run counts instructions under cachegrind: asked for, or the metric compared.
fn counts_instructions(p: &RunParams) -> bool {
    p.measure == Some(Measure::Instructions) || p.metric == Metric::Instructions
}

/// Refuses a measure that contradicts the metric compared, and cycles on a host without a
/// PMU, saying why and what counts instead.
fn check_measures(metric: Metric, measure: Option<Measure>) -> Result<(), Error> {
    match (metric, measure) {
        (Metric::Instructions, Some(Measure::Counters)) => {
            return Err(Error::Invalid(
                "metric instructions compares the instructions cachegrind counts (measure \
                 instructions), not performance counters: drop measure counters, or compare \
                 the PMU's cycles (metric cycles)"
                    .into(),
            ));
        }
        (Metric::Cycles, Some(Measure::Instructions)) => {
            return Err(Error::Invalid(
                "metric cycles counts the command's own cycles with the PMU (measure \
                 counters); under cachegrind (measure instructions) they would be \
                 valgrind's: drop measure instructions"
                    .into(),
            ));
        }
        _ => {}
    }
    match super::counters::hardware_unsupported() {
        Some(why) if metric == Metric::Cycles => Err(Error::Invalid(format!(
            "metric cycles: unsupported on this host: {why} (--metric instructions counts \
             instructions under cachegrind instead)"
        ))),
        _ => Ok(()),
    }
}

/// Whether a run reads performance counters: asked for, or cycles compared.
fn counts_counters(p: &RunParams) -> bool {
    p.measure == Some(Measure::Counters) || p.metric == Metric::Cycles
}

/// Most seconds `until_decided` may measure.
pub const MAX_COMPARE_SECONDS: u64 = 24 * 3600;

/// Checks a `run.compare` and resolves each command as a batch of its own (with every
/// check of [`resolve`]), sharing the options.
pub async fn resolve_compare(
    p: CompareParams,
    caller: &Caller,
    bounds: &Bounds,
    store: &Store,
) -> Result<Compare, Error> {
    check_compare(&p, bounds.max_repeat)?;
    check_measures(p.metric, p.options.measure)?;
    let repeat = p.options.repeat;
    let max_rounds = p
        .max_rounds
        .unwrap_or_else(|| repeat.saturating_mul(10).min(bounds.max_repeat).max(repeat));
    let mut sides = Vec::with_capacity(p.commands.len());
    for (i, argv) in p.commands.iter().enumerate() {
        let params = RunParams {
            argv: argv.clone(),
            label: p.labels.get(i).cloned(),
            measure: match p.metric {
                Metric::Instructions => Some(Measure::Instructions),
                Metric::Cycles => Some(Measure::Counters),
                _ => p.options.measure,
            },
            ..p.options.clone()
        };
        let side = resolve(params, caller, bounds, store)
            .await
            .map_err(|e| match e {
                Error::Invalid(m) => Error::Invalid(format!("command {}: {m}", i + 1)),
                e => e,
            })?;
        sides.push(side);
    }
    Ok(Compare {
        sides,
        metric: p.metric,
        until_decided: p.until_decided,
        max_rounds,
        max_time: Duration::from_secs(p.max_seconds.unwrap_or(300)),
        seed: p.seed.unwrap_or(super::verdict::Settings::default().seed),
    })
}

/// The rules of a `run.compare` beyond each command's own; the message names the field.
pub(crate) fn check_compare(p: &CompareParams, max_repeat: u32) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    let k = p.commands.len();
    if !(2..=MAX_COMMANDS).contains(&k) {
        return bad(format!(
            "commands: {k} given; a comparison needs 2 to {MAX_COMMANDS}"
        ));
    }
    if !p.labels.is_empty() && p.labels.len() != k {
        return bad(format!(
            "labels: {} given for {k} commands (one for each, or none)",
            p.labels.len()
        ));
    }
    let o = &p.options;
    if !o.argv.is_empty() {
        return bad("options.argv must be empty: the commands are in `commands`".into());
    }
    for (set, name) in [
        (o.baseline.is_some(), "baseline"),
        (o.save_baseline.is_some(), "save_baseline"),
        (o.public, "public"),
        (o.detach, "detach"),
        (o.label.is_some(), "label (use `labels`, one per command)"),
        (
            o.strict,
            "strict (the commands of a comparison run side by side)",
        ),
    ] {
        if set {
            return bad(format!(
                "options.{name} does not apply to run.compare (each command is stored as a batch: baseline save NAME BATCH)"
            ));
        }
    }
    if !o.collect.is_empty() || o.collect_to.is_some() {
        return bad(
            "options.collect does not apply to run.compare (collect from a run of the command)"
                .into(),
        );
    }
    if !p.until_decided && (p.max_rounds.is_some() || p.max_seconds.is_some()) {
        return bad("max_rounds and max_seconds are the budget of until_decided".into());
    }
    if let Some(m) = p.max_rounds {
        if m < o.repeat || m > max_repeat {
            return bad(format!(
                "max_rounds must be from repeat ({}) to {max_repeat}, not {m}",
                o.repeat
            ));
        }
    }
    if let Some(s) = p.max_seconds {
        if s == 0 || s > MAX_COMPARE_SECONDS {
            return bad(format!(
                "max_seconds must be 1 to {MAX_COMPARE_SECONDS}, not {s}"
            ));
        }
    }
    Ok(())
}

/// The checks of [`resolve`] that need neither the store nor the user database, in its
/// order: the params' own rules, then the name a baseline would be saved under. Pure, so
/// the fuzzer runs it without a daemon ([`crate::fuzzing`]).
pub(crate) fn check(params: &RunParams, max_repeat: u32) -> Result<(), Error> {
    validate(params, max_repeat)?;
    if let Some(name) = &params.save_baseline {
        history::check_name(name, "save_baseline")?;
    }
    Ok(())
}

/// The environment of a run: defaults, then the caller's `env`.
pub(crate) fn environment(p: &RunParams, home: &str) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), home.into());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("TZ".into(), "UTC".into());
    if p.deterministic {
        env.insert("CLEANROOM_SEED".into(), "0".into());
        env.insert("PYTHONHASHSEED".into(), "0".into());
    }
    env.extend(p.env.clone());
    env.into_iter().collect()
}

/// Every rule the types alone cannot express; the message names the field.
fn validate(p: &RunParams, max_repeat: u32) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Invalid(m));
    if p.argv.is_empty() || p.argv[0].is_empty() {
        return bad("argv must name a program".into());
    }
    if p.argv.iter().any(|a| a.contains('\0')) {
        return bad("argv may not contain NUL bytes".into());
    }
    let argv_bytes: usize = p.argv.iter().map(|a| a.len() + 1).sum();
    if argv_bytes > MAX_ARGV_BYTES {
        return bad(format!(
            "argv is {argv_bytes} bytes; at most {MAX_ARGV_BYTES} (put long inputs in a file)"
        ));
    }
    if let Some(label) = &p.label {
        if label.len() > MAX_LABEL_BYTES {
            return bad(format!(
                "label is {} bytes; at most {MAX_LABEL_BYTES}",
                label.len()
            ));
        }
    }
    for (k, v) in &p.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(format!("env: {k:?} is not a valid variable"));
        }
    }
    if p.repeat == 0 || p.repeat > max_repeat {
        return bad(format!(
            "repeat must be 1 to {max_repeat}, not {}",
            p.repeat
        ));
    }
    if p.warmup > max_repeat {
        return bad(format!("warmup must be at most {max_repeat}"));
    }
    if p.memory.is_some_and(|m| m < 1 << 20) {
        return bad("memory must be at least 1 MiB".into());
    }
    if (p.cpus.is_some() || p.wait) && !p.exclusive {
        return bad("cpus and wait need exclusive".into());
    }
    if p.metric != cleanroom_proto::Metric::Wall && p.baseline.is_none() {
        return bad("metric needs baseline: it is the measure compared with it".into());
    }
    if p.strict && p.baseline.is_none() {
        return bad("strict needs baseline: it refuses a baseline of another environment".into());
    }
    if p.realtime && !p.exclusive {
        return bad("realtime needs exclusive: a SCHED_FIFO run must have cores of its own".into());
    }
    if let Some(CpuRequest::List(l)) = &p.cpus {
        if l.len() > 256 {
            return bad("cpus: the CPU list is longer than 256 characters".into());
        }
    }
    if matches!(p.cpus, Some(CpuRequest::Count(0))) {
        return bad("cpus must be at least 1".into());
    }
    if p.cpu_percent.is_some_and(|c| c > 100 * 4096) {
        return bad("cpu_percent is at most 409600 (4096 CPUs)".into());
    }
    if p.pids.is_some_and(|n| n > PID_MAX_LIMIT) {
        return bad(format!(
            "pids is at most {PID_MAX_LIMIT} (the kernel's pid_max limit)"
        ));
    }
    if p.pids == Some(0) || p.cpu_percent == Some(0) || p.timeout_ms == Some(0) {
        return bad("pids, cpu_percent and timeout_ms must be positive".into());
    }
    for (name, &asked) in &p.rlimits {
        let Some(resource) = rlimit_resource(name) else {
            return bad(format!("rlimits: unknown limit {name:?} ({RLIMIT_NAMES})"));
        };
        // A run cannot raise a limit past the daemon's own hard one (its child has no
        // capability to): say so here, by name, instead of a bare EPERM at the start.
        let most = hard_limit(resource);
        if asked > most {
            return bad(format!(
                "rlimits: {name}={asked} is over the most a run may have, {most} (cleanroomd's own hard limit)"
            ));
        }
    }
    if let Some(cwd) = &p.cwd {
        if !cwd.starts_with('/') {
            return bad(format!("cwd {cwd:?} must be an absolute path"));
        }
        // Like argv: a path with a NUL cannot be passed to chdir(2).
        if cwd.contains('\0') {
            return bad("cwd may not contain NUL bytes".into());
        }
    }
    Ok(())
}

/// The exclusive CPUs asked for: none, a count (default 1) or a list.
pub(crate) fn wanted_cpus(p: &RunParams) -> Result<Option<Want>, Error> {
    Ok(match &p.cpus {
        _ if !p.exclusive => None,
        None => Some(Want::Count(1)),
        Some(CpuRequest::Count(n)) => Some(Want::Count(*n as usize)),
        Some(CpuRequest::List(l)) => Some(Want::List(parse_cpu_list(l).map_err(|e| {
            Error::Invalid(format!(
                "cpus: {l:?} is neither a count nor a CPU list (like 2,3 or 4-7): {e}"
            ))
        })?)),
    })
}

/// The baseline to compare with. (Baselines are readable by every runner for now; who
/// may read one is the next issue's.)
async fn baseline(store: &Store, caller: &Caller, name: &str) -> Result<Baseline, Error> {
    match history::load(store, caller, &format!("baseline:{name}")).await {
        Ok(stored) => Ok(Baseline {
            against: format!("baseline:{name}"),
            batch: stored.batch,
            owner: stored.owner,
            label: stored.label,
            result: stored.result,
        }),
        Err(Error::NotFound(_)) => Err(Error::Invalid(format!(
            "baseline: no baseline named {name:?} (cleanroomctl baseline list)"
        ))),
        Err(e) => Err(e),
    }
}

/// The `RLIMIT_*` resource of a limit's name.
fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "core" => Resource::RLIMIT_CORE,
        "stack" => Resource::RLIMIT_STACK,
        "as" => Resource::RLIMIT_AS,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "cpu" => Resource::RLIMIT_CPU,
        _ => return None,
    })
}

/// The daemon's hard limit on `resource` (infinity when it cannot be read).
fn hard_limit(resource: Resource) -> u64 {
    nix::sys::resource::getrlimit(resource).map_or(u64::MAX, |(_, hard)| hard)
}

/// The limits a run gets: the daemon's original open-files limit, then those asked for.
fn rlimits(p: &RunParams) -> Vec<(i32, u64, u64)> {
    let mut out: Vec<(i32, u64, u64)> = Vec::new();
    if let (Some((soft, hard)), false) = (
        crate::privileges::original_nofile(),
        p.rlimits.contains_key("nofile"),
    ) {
        out.push((libc::RLIMIT_NOFILE as i32, soft, hard));
    }
    for (name, v) in &p.rlimits {
        if let Some(r) = rlimit_resource(name) {
            out.push((r as i32, *v, *v));
        }
    }
    out
}

/// A user by name or uid: its uid, primary gid and groups from the user database.
fn resolve_user(user: &str) -> Result<(u32, u32, Vec<u32>), Error> {
    use nix::unistd::{Uid, User, getgrouplist};
    let bad = |detail: String| Error::Invalid(detail);
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|e| bad(format!("user: cannot look {user:?} up: {e}")))?
    .ok_or_else(|| bad(format!("user: no user {user:?}")))?;
    let name = std::ffi::CString::new(found.name.clone())
        .map_err(|_| bad(format!("user: bad name {:?}", found.name)))?;
    let groups = getgrouplist(&name, found.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![found.gid.as_raw()]);
    Ok((found.uid.as_raw(), found.gid.as_raw(), groups))
}

/// A user's home directory, `/` where the user database has none.
fn home_of(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir.display().to_string())
        .unwrap_or_else(|| "/".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_that_contradict_the_metric_are_refused_naming_both() {
        let refused = |metric, measure| match check_measures(metric, Some(measure)) {
            Err(Error::Invalid(m)) => m,
            other => panic!("{metric:?} with {measure:?}: {other:?}"),
        };
        let m = refused(Metric::Instructions, Measure::Counters);
        assert!(
            m.contains("metric instructions") && m.contains("measure counters"),
            "{m}"
        );
        let m = refused(Metric::Cycles, Measure::Instructions);
        assert!(
            m.contains("metric cycles") && m.contains("valgrind's"),
            "{m}"
        );
        assert!(check_measures(Metric::Instructions, Some(Measure::Instructions)).is_ok());
        assert!(check_measures(Metric::Wall, Some(Measure::Counters)).is_ok());
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let mut p = RunParams {
            argv: vec!["true".into()],
            repeat: 1,
            ..RunParams::default()
        };
        p.env.insert("TZ".into(), "Europe/Paris".into());
        p.deterministic = true;
        let env: BTreeMap<String, String> = environment(&p, "/home/x").into_iter().collect();
        assert_eq!(env["TZ"], "Europe/Paris");
        assert_eq!(env["HOME"], "/home/x");
        assert_eq!(env["CLEANROOM_SEED"], "0");
        assert!(env["PATH"].contains("/usr/bin"));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let ok = RunParams {
            argv: vec!["true".into()],
            repeat: 1,
            ..RunParams::default()
        };
        assert!(validate(&ok, 10).is_ok());
        for (p, needle) in [
            (
                RunParams {
                    argv: vec![],
                    ..ok.clone()
                },
                "argv",
            ),
            (
                RunParams {
                    repeat: 0,
                    ..ok.clone()
                },
                "repeat",
            ),
            (
                RunParams {
                    repeat: 11,
                    ..ok.clone()
                },
                "repeat",
            ),
            (
                RunParams {
                    memory: Some(10),
                    ..ok.clone()
                },
                "memory",
            ),
            (
                RunParams {
                    cwd: Some("rel".into()),
                    ..ok.clone()
                },
                "cwd",
            ),
            (
                RunParams {
                    cwd: Some("/tmp\0x".into()),
                    ..ok.clone()
                },
                "cwd",
            ),
            (
                RunParams {
                    cpus: Some(CpuRequest::List("2-".into())),
                    exclusive: true,
                    ..ok.clone()
                },
                "cpus",
            ),
        ] {
            let e = validate(&p, 10)
                .and_then(|()| wanted_cpus(&p).map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
