//! Clean-room runs: a command in its own cgroup, as the caller, measured, and ended with
//! every process it started.
//!
//! A run: create the cgroup (limits set) → start the child inside it before exec
//! ([`spawn`]) → stream its output → wait for it, the timeout, or cancellation → kill
//! whatever is left in the cgroup (double-forked and setsid'd processes included) → read
//! the cgroup's accounting → remove the cgroup. Results are ready as soon as the last
//! process is gone: nothing sleeps for a fixed time.
//!
//! Exclusive runs take whole cores ([`cpus`]) and, while any holds cores, the [`shield`]
//! keeps every other task off the isolation pool.

pub mod cgroup;
pub mod compare;
pub mod cpus;
pub mod noise;
pub mod shield;
pub mod spawn;
pub mod stats;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cleanroom_proto::{EndReason, Noise, RunRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::host::Host;
use cgroup::{Layout, Limits};

/// A chunk of output from a run.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The bytes.
    pub data: Vec<u8>,
}

/// One command to run, fully resolved (identity, environment, limits).
#[derive(Debug, Clone)]
pub struct Job {
    /// What to start (its `cgroup_procs` is filled in per run).
    pub spec: spawn::Spec,
    /// Cgroup limits.
    pub limits: Limits,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
}

/// Runs jobs on this host.
#[derive(Debug)]
pub struct Runner {
    host: Host,
    layout: Result<Layout, String>,
    next: AtomicU64,
    /// Output beyond this many bytes per run is dropped (and said so).
    pub max_output: u64,
    store: crate::store::Store,
    /// CPUs exclusive runs may take (from the config; a profile's `[isolation] cpus`
    /// replaces it while that profile is active).
    pool: BTreeSet<u32>,
    /// CPUs held by exclusive runs now, and the CPUs the shield covers (the pool in force
    /// when it went up; it stays the pool until the shield comes down).
    cores: std::sync::Mutex<Held>,
    /// Woken whenever exclusive cores are released.
    released: tokio::sync::Notify,
    /// What the shield leaves alone.
    exempt: shield::Exempt,
    /// How the shield works here.
    method: shield::Method,
    /// While the shield is up: the CPUs left to everything else, and the partition
    /// exclusive runs go into (v2). Its lock is only ever held for a copy (never across
    /// raising or lowering), so runs can read it from async code.
    up: std::sync::Mutex<Option<Up>>,
    /// Noise probes by CPU list.
    probes: std::sync::Mutex<std::collections::HashMap<String, noise::Probe>>,
}

/// The shield in force.
#[derive(Debug, Clone)]
struct Up {
    rest: String,
    partition: Option<String>,
}

/// Exclusive cores now.
#[derive(Debug, Default)]
struct Held {
    taken: BTreeSet<u32>,
    shielded: BTreeSet<u32>,
}

/// Which exclusive CPUs a run wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// This many, as whole cores.
    Count(usize),
    /// Exactly these (whole cores).
    List(BTreeSet<u32>),
}

/// Cores held by an exclusive run; released (and the shield lowered after the last one)
/// when dropped.
#[derive(Debug)]
pub struct Exclusive {
    runner: Arc<Runner>,
    /// The CPUs, as a CPU list.
    pub cpus: String,
    set: BTreeSet<u32>,
    /// How the shield works (`partition`, `cpuset`, `affinity`).
    pub method: &'static str,
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        let mut held = self.runner.cores.lock().unwrap_or_else(|p| p.into_inner());
        for c in &self.set {
            held.taken.remove(c);
        }
        if held.taken.is_empty() && !held.shielded.is_empty() {
            let mut conn = self.runner.store.lock_blocking();
            match shield::lower(&self.runner.host, &mut conn) {
                Ok(n) => tracing::info!(restored = n, "shield lowered"),
                Err(e) => tracing::error!(error = %e, "cannot lower the shield"),
            }
            held.shielded.clear();
            *self.runner.up.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        drop(held);
        self.runner.released.notify_waiters();
    }
}

/// Shield settings from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ShieldConfig {
    /// The isolation pool (a CPU list); default every online CPU but CPU 0.
    pub pool: Option<String>,
    /// What the shield leaves alone.
    pub exempt: shield::Exempt,
    /// On cgroup v2, shield with a cpuset partition (default); otherwise by affinity.
    pub partition: bool,
}

impl Runner {
    /// Prepares the run cgroups below the daemon's own and removes those a dead daemon
    /// left behind.
    pub fn new(
        host: Host,
        mode: cleanroom_proto::CgroupMode,
        max_output: u64,
        instance: &str,
        store: crate::store::Store,
        shield_config: ShieldConfig,
    ) -> Self {
        // A shield left by a daemon that died is lowered before anything else: on v1 it
        // moved this process (started from a shielded one) into its cpuset, and where the
        // daemon is decides where its runs go.
        {
            let mut conn = store.lock_blocking();
            if shield::is_raised(&conn).unwrap_or(false) {
                match shield::lower(&host, &mut conn) {
                    Ok(n) => {
                        tracing::warn!(restored = n, "lowered a shield left by a previous daemon")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot lower a shield left by a previous daemon")
                    }
                }
            }
        }
        let layout = Layout::detect(&host, mode, instance);
        match &layout {
            Ok(l) => {
                let n = l.cleanup_stale(&host);
                tracing::info!(layout = ?l, stale_removed = n, "run cgroups ready");
            }
            Err(e) => tracing::warn!(error = %e, "runs are unavailable: no usable cgroups"),
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let online = host
            .read("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| crate::host::format::parse_cpu_list(&t).ok())
            .unwrap_or_default();
        let pool = match shield_config
            .pool
            .as_deref()
            .map(crate::host::format::parse_cpu_list)
        {
            Some(Ok(p)) => p.intersection(&online).copied().collect(),
            _ => online.iter().copied().filter(|c| *c != 0).collect(),
        };
        let method = match &layout {
            Ok(l) => l.shield_method(&host, instance, shield_config.partition),
            Err(_) => shield::Method::Affinity,
        };
        Self {
            host,
            layout,
            next: AtomicU64::new(seed),
            max_output,
            store,
            pool,
            cores: std::sync::Mutex::new(Held::default()),
            released: tokio::sync::Notify::new(),
            exempt: shield_config.exempt,
            method,
            up: std::sync::Mutex::new(None),
            probes: std::sync::Mutex::new(Default::default()),
        }
    }

    /// Takes exclusive CPUs as whole cores from the pool (`pool`, from the active profile,
    /// or the configured one) and, for the first exclusive run, raises the shield over the
    /// pool. Blocking (sysfs, /proc, SQLite).
    pub fn take_exclusive(
        self: &Arc<Self>,
        want: &Want,
        pool: Option<&BTreeSet<u32>>,
    ) -> Result<Exclusive, cpus::PickError> {
        let mut held = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        // While the shield is up, its CPUs are the pool.
        let pool = if held.shielded.is_empty() {
            pool.unwrap_or(&self.pool).clone()
        } else {
            held.shielded.clone()
        };
        let topology = cpus::topology(&self.host, &pool);
        let set = match want {
            Want::Count(n) => cpus::pick(&topology, &pool, &held.taken, (*n).max(1))?,
            Want::List(list) => cpus::pick_list(&topology, &pool, &held.taken, list)?,
        };
        if held.shielded.is_empty() {
            let mut conn = self.store.lock_blocking();
            match shield::raise(&self.host, &mut conn, &pool, &self.exempt, &self.method) {
                Ok(r) => {
                    tracing::info!(
                        cpus = %crate::host::format::format_cpu_list(&pool),
                        method = r.method,
                        fallback = r.fallback.as_deref().unwrap_or(""),
                        processes_moved = r.processes_moved,
                        cpusets_narrowed = r.cpusets_narrowed,
                        moved = r.moved,
                        unmovable = r.unmovable,
                        irqs_moved = r.irqs_moved,
                        irqs_unmovable = r.irqs_unmovable,
                        "shield raised"
                    );
                    held.shielded = pool.clone();
                    let online = self
                        .host
                        .read("/sys/devices/system/cpu/online")
                        .ok()
                        .and_then(|t| crate::host::format::parse_cpu_list(&t).ok())
                        .unwrap_or_default();
                    *self.up.lock().unwrap_or_else(|p| p.into_inner()) = Some(Up {
                        rest: crate::host::format::format_cpu_list(
                            &online.difference(&pool).copied().collect(),
                        ),
                        partition: r.partition,
                    });
                }
                Err(e) => {
                    return Err(cpus::PickError::Never(format!(
                        "cannot raise the shield: {e}"
                    )));
                }
            }
        }
        held.taken.extend(set.iter().copied());
        let partition = self
            .up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|u| u.partition.clone());
        let method = match (&self.method, &partition) {
            (shield::Method::Partition { .. }, Some(_)) => "partition",
            (shield::Method::Cpuset { .. }, _) => "cpuset",
            _ => "affinity",
        };
        Ok(Exclusive {
            runner: Arc::clone(self),
            cpus: crate::host::format::format_cpu_list(&set),
            set,
            method,
        })
    }

    /// Resolves once exclusive cores are released after this call (to wait for cores:
    /// take the future, try, then await it).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// At a clean stop: ends runs still going, lowers the shield, removes the directories
    /// of run cgroups (a crash leaves all that to the next start).
    pub fn shutdown(&self) {
        if let Ok(l) = &self.layout {
            l.end_all(&self.host, "ended a run still going at the stop");
        }
        let mut conn = self.store.lock_blocking();
        if shield::is_raised(&conn).unwrap_or(true) {
            match shield::lower(&self.host, &mut conn) {
                Ok(n) => tracing::info!(restored = n, "shield lowered at the stop"),
                Err(e) => tracing::error!(error = %e, "cannot lower the shield at the stop"),
            }
        }
        drop(conn);
        if let Ok(l) = &self.layout {
            l.remove_base(&self.host);
        }
    }

    /// The directories holding this daemon's run cgroups.
    pub fn cgroup_bases(&self) -> Vec<String> {
        self.layout.as_ref().map(Layout::bases).unwrap_or_default()
    }

    /// A fresh id for a batch of runs.
    pub fn new_id(&self) -> String {
        self.next.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Why runs cannot happen here, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.layout.as_ref().err().map(String::as_str)
    }

    /// CPUs runs may use (the daemon's own affinity).
    fn cpus(&self) -> String {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .ok()
            .map(|s| {
                (0..nix::sched::CpuSet::count() as u32)
                    .filter(|c| s.is_set(*c as usize).unwrap_or(false))
                    .collect::<std::collections::BTreeSet<u32>>()
            })
            .unwrap_or_default();
        crate::host::format::format_cpu_list(&set)
    }

    /// Runs `job` once. Output goes to `output` (dropped when the receiver is gone);
    /// `cancel` ends the run early.
    pub async fn run_once(
        self: &Arc<Self>,
        job: &Job,
        output: mpsc::Sender<Chunk>,
        cancel: CancellationToken,
    ) -> RunRecord {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let mut record = RunRecord::new(
            id.clone(),
            EndReason::FailedToStart,
            job.limits.cpus.clone().unwrap_or_else(|| self.cpus()),
        );
        let layout = match &self.layout {
            Ok(l) => l.clone(),
            Err(e) => {
                record.error = Some(format!("runs are unavailable on this host: {e}"));
                return record;
            }
        };
        let host = self.host.clone();
        let pressure_before = pressure(&host);
        // What the host can tell about a set of CPUs does not change: found once per set.
        let probe = {
            let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
            if probes.len() > 256 {
                probes.clear(); // CPU lists are the caller's choice: keep the cache small
            }
            probes
                .entry(record.cpus.clone())
                .or_insert_with(|| noise::Probe::new(&host, &record.cpus))
                .clone()
        };
        let probe2 = probe.clone();
        let job2 = job.clone();
        let id2 = id.clone();
        let cg = {
            let (host, layout, id2, limits) =
                (host.clone(), layout, id2.clone(), job2.limits.clone());
            // An exclusive run on cgroup v2 lives in the shield's partition; any other run
            // stays off the shielded CPUs even where a cgroup move would widen its mask.
            let up = self.up.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut limits = limits;
            let partition = match (&limits.cpus, up) {
                (Some(_), Some(up)) => up.partition,
                (None, Some(up)) => {
                    limits.cpus = Some(up.rest);
                    None
                }
                _ => None,
            };
            match tokio::task::spawn_blocking(move || {
                layout.create(&host, &id2, &limits, partition.as_deref())
            })
            .await
            {
                Ok(Ok(cg)) => cg,
                Ok(Err(e)) => {
                    record.error = Some(e.to_string());
                    return record;
                }
                Err(e) => {
                    record.error = Some(format!("run task failed: {e}"));
                    return record;
                }
            }
        };
        let mut spawning = {
            let (host, cg) = (host.clone(), cg.clone());
            tokio::task::spawn_blocking(move || {
                let mut spec = job2.spec.clone();
                // v2: the child is cloned into its cgroup; v1: it writes itself into each
                // hierarchy's cgroup.procs.
                match cg.v2_dir() {
                    Some(d) => spec.cgroup_v2 = host.path(d).ok(),
                    None => {
                        spec.cgroup_procs = cg
                            .procs_files()
                            .iter()
                            .filter_map(|p| host.path(p).ok())
                            .collect()
                    }
                }
                // The noise window opens as close to the exec as the daemon can get.
                let noise_start = probe2.sample();
                let before = Instant::now();
                match spawn::spawn(&spec) {
                    Ok(child) => {
                        // spawn returns once execve succeeded: the program runs from here.
                        // Wall time and the timeout count from this point, so the cost of
                        // placing the process in its cgroups (on v1 a cgroup migration
                        // can wait for an RCU grace period) is neither measured nor
                        // charged.
                        let t0 = Instant::now();
                        let setup = t0.duration_since(before).as_secs_f64() * 1e3;
                        tracing::debug!(
                            setup_ms = setup,
                            born_in_cgroup = child.born_in_cgroup,
                            "run started"
                        );
                        Ok((child, t0, noise_start))
                    }
                    Err(e) => {
                        cg.remove(&host);
                        Err((e.exit_code(), e.to_string()))
                    }
                }
            })
        };
        // Starting can block too (a working directory or program on a file system that
        // never answers): cancellation and the timeout apply from the fork on. The child
        // is in its cgroup by then, so killing the cgroup ends the start.
        let limit = job.timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
        let mut early = None;
        let started = tokio::select! {
            r = &mut spawning => r,
            () = tokio::time::sleep(limit) => { early = Some(EndReason::Timeout); spawning_killed(&host, &cg, &mut spawning).await }
            () = cancel.cancelled() => { early = Some(EndReason::Cancelled); spawning_killed(&host, &cg, &mut spawning).await }
        };
        let started = started.map(|r| r.map(|(child, t0, n)| (cg, child, t0, n)));
        if let (Some(reason), Ok(Err(_))) = (early, &started) {
            record.end_reason = reason;
        }
        let (cg, mut child, t0, noise_start) = match started {
            Ok(Ok(x)) => x,
            Ok(Err((code, msg))) => {
                record.exit_code = code;
                record.error = Some(msg);
                return record;
            }
            Err(e) => {
                record.error = Some(format!("run task failed: {e}"));
                return record;
            }
        };
        let host = self.host.clone();
        let max = self.max_output;
        let budget = Arc::new(AtomicU64::new(max));
        let truncated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let (tx, budget, truncated) =
                (output.clone(), Arc::clone(&budget), Arc::clone(&truncated));
            readers.push(tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // Both readers share the budget: take from it atomically.
                    let mut take = 0usize;
                    let _ = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                        take = (n as u64).min(left) as usize;
                        Some(left - take as u64)
                    });
                    if take < n {
                        truncated.store(true, Ordering::Relaxed);
                    }
                    if take > 0 {
                        let _ = tx.blocking_send(Chunk {
                            stream,
                            data: buf[..take].to_vec(),
                        });
                    }
                }
            }));
        }
        drop(output);
        let pid = child.id();
        let mut waiter = tokio::task::spawn_blocking(move || {
            let r = spawn::wait(pid);
            (r, Instant::now())
        });
        let timeout = job.timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
        let mut reason = early;
        let waited = tokio::select! {
            r = &mut waiter => Some(r),
            () = tokio::time::sleep(timeout) => { reason = Some(EndReason::Timeout); None }
            () = cancel.cancelled() => { reason = Some(EndReason::Cancelled); None }
        };
        let mut killed = 0u64;
        let waited = match waited {
            Some(w) => w,
            None => {
                let at = t0.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(run = %id, reason = ?reason, at_ms = at, "ending the run");
                let (h, c) = (host.clone(), cg.clone());
                killed += tokio::task::spawn_blocking(move || c.kill_all(&h) as u64)
                    .await
                    .unwrap_or(0);
                let at = t0.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(run = %id, at_ms = at, killed, "run killed");
                waiter.await
            }
        };
        let (exit, ended) = match waited {
            Ok((Ok(exit), at)) => (Some(exit), at),
            Ok((Err(e), at)) => {
                record.error = Some(format!("cannot wait for the run: {e}"));
                (None, at)
            }
            Err(e) => {
                record.error = Some(format!("wait task failed: {e}"));
                (None, Instant::now())
            }
        };
        record.wall_ms = ended.duration_since(t0).as_secs_f64() * 1e3;
        // Nothing outlives the run: whatever the program left behind goes now.
        let (h, c) = (host.clone(), cg.clone());
        let (left, usage, noise_end) = tokio::task::spawn_blocking(move || {
            // Kill rounds until the cgroup is empty: a process stuck in the kernel
            // (uninterruptible I/O) dies only when it gets out; each round takes what
            // forked or arrived since.
            let mut n = 0;
            for round in 1..=30 {
                n += c.kill_all(&h) as u64;
                if c.wait_empty(&h, Duration::from_secs(1)) {
                    break;
                }
                tracing::warn!(
                    round,
                    left = c.pids(&h).len(),
                    "run processes outlive SIGKILL; killing again"
                );
            }
            let noise_end = (probe.sample(), c.own_cpu(&h));
            (n, c.usage(&h), Some(noise_end))
        })
        .await
        .unwrap_or_default();
        killed += left;
        // The pipes end when the last writer is gone; a writer kept alive from outside
        // the run (a passed descriptor) must not hold the run open.
        for r in readers {
            if tokio::time::timeout(Duration::from_secs(2), r)
                .await
                .is_err()
            {
                tracing::warn!(run = %id, "output still held open from outside the run; not waiting");
                truncated.store(true, Ordering::Relaxed);
            }
        }
        let h = host.clone();
        let _ = tokio::task::spawn_blocking(move || cg.remove(&h)).await;
        let pressure_after = pressure(&host);
        let cpu_noise = noise_end.map_or_else(Noise::default, |(end, own)| {
            noise::report(&noise_start, &end, &own, noise::user_hz())
        });
        record.noise = Noise {
            cpu_pressure_us: delta(pressure_before[0], pressure_after[0]),
            memory_pressure_us: delta(pressure_before[1], pressure_after[1]),
            io_pressure_us: delta(pressure_before[2], pressure_after[2]),
            ..cpu_noise
        };
        record.killed = killed;
        record.user_ms = usage.user_us as f64 / 1e3;
        record.sys_ms = usage.sys_us as f64 / 1e3;
        record.oom_kills = usage.oom_kills;
        record.output_truncated = truncated.load(Ordering::Relaxed);
        if let Some(exit) = exit {
            record.exit_code = exit.code;
            record.signal = exit.signal;
            record.voluntary_ctxt_switches = exit.voluntary;
            record.involuntary_ctxt_switches = exit.involuntary;
            record.max_rss_kb = usage.peak_memory.map_or(exit.max_rss_kb, |b| b / 1024);
        }
        record.end_reason = match reason {
            Some(r) => r,
            None if usage.oom_kills > 0 && record.exit_code != Some(0) => EndReason::Oom,
            None if record.signal.is_some() => EndReason::Signaled,
            None => EndReason::Exited,
        };
        record
    }
}

/// A short tag naming this daemon instance in cgroup paths: derived from its state
/// directory, so a restart finds the runs its predecessor left, and two daemons with
/// different state directories (tests, side-by-side instances) never touch each other's.
pub fn instance_tag(state_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let hash = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Ends a start that is taking too long: kills whatever is in the run's cgroup (the child
/// joins it first thing after the fork) and waits for the spawn to give up.
async fn spawning_killed<T: Send + 'static>(
    host: &Host,
    cg: &cgroup::RunCgroup,
    spawning: &mut tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    let (h, c) = (host.clone(), cg.clone());
    let _ = tokio::task::spawn_blocking(move || c.kill_all(&h)).await;
    spawning.await
}

/// PSI `some total=` of cpu, memory, io (microseconds), where the kernel has them.
fn pressure(host: &Host) -> [Option<u64>; 3] {
    ["cpu", "memory", "io"].map(|r| {
        host.read(&format!("/proc/pressure/{r}"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("some"))?
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("total="))?
                    .parse()
                    .ok()
            })
    })
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}
