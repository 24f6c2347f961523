//! Run cgroups: one per run, nested below the daemon's own cgroup in every hierarchy, with
//! limits, accounting and a way to end every process inside.
//!
//! cgroup v2 (unified): the daemon moves itself into `<own>/daemon` (the no-internal-
//! processes rule), enables controllers for `<own>/runs`, and each run lives in
//! `<own>/runs/run-<id>`; ending a run is one write to `cgroup.kill`.
//! cgroup v1 (and hybrid hosts, whose unified mount has no controllers): one directory per
//! controller, `<mount>/<own>/cleanroom/run-<id>`; ending a run freezes it (so nothing can
//! fork while the list is read), kills every pid, and thaws it.
//!
//! All access goes through the host layer, so a fake root can stand in for cgroupfs.

use std::time::{Duration, Instant};

use cleanroom_proto::CgroupMode;

use crate::host::{Error as HostError, Host};
use crate::run::shield::Method;

/// v1 controllers a run uses.
const V1_WANTED: &[&str] = &["pids", "memory", "cpu", "cpuacct", "cpuset", "freezer"];

/// Why runs cannot have cgroups on this host.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A cgroup file could not be read or made (the error names it).
    #[error(transparent)]
    Host(#[from] HostError),
    /// The unified hierarchy is not mounted (cgroup v2 mode).
    #[error("no cgroup2 mount")]
    NoCgroup2,
    /// A v1 controller runs need is not mounted.
    #[error("the v1 {0} controller is not mounted")]
    NotMounted(&'static str),
    /// No cgroup file system at all.
    #[error("no cgroup file system is mounted")]
    None,
}

/// Limits applied to a run's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes (swap off for the run).
    pub memory: Option<u64>,
    /// Most processes and threads.
    pub pids: Option<u64>,
    /// CPU quota in percent of one CPU (150 = one and a half CPUs).
    pub cpu_percent: Option<u64>,
    /// CPUs the run may use (a CPU list); `None` keeps the parent's.
    pub cpus: Option<String>,
    /// The run is SCHED_FIFO: with v1 RT group scheduling its cpu cgroup needs RT time.
    pub realtime: bool,
    /// Its performance counters are read: on v1 the run joins the hierarchy that has
    /// `perf_event` too.
    pub counters: bool,
}

/// Resource use read from a run's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub sys_us: u64,
    /// Peak memory, bytes (None where the kernel does not say).
    pub peak_memory: Option<u64>,
    /// OOM kills inside the cgroup.
    pub oom_kills: u64,
}

/// Where runs go on this host.
#[derive(Debug, Clone)]
pub enum Layout {
    /// One directory per v1 hierarchy: (controllers, base directory).
    V1(Vec<(Vec<String>, String)>),
    /// The unified hierarchy: the daemon's own cgroup directory.
    V2(String),
}

/// A run's cgroup.
#[derive(Debug, Clone)]
pub struct RunCgroup {
    v2: bool,
    /// (controllers, directory) per hierarchy; one entry on v2.
    dirs: Vec<(Vec<String>, String)>,
}

fn join(a: &str, b: &str) -> String {
    let a = a.trim_end_matches('/');
    let b = b.trim_start_matches('/');
    if b.is_empty() {
        a.to_owned()
    } else {
        format!("{a}/{b}")
    }
}

impl Layout {
    /// Finds (and prepares) where runs go: below the daemon's own cgroups, in a directory
    /// named after `instance` (so daemons with different state directories never touch
    /// each other's runs).
    pub fn detect(host: &Host, mode: CgroupMode, instance: &str) -> Result<Self, LayoutError> {
        let mounts = host.cgroup_mounts()?;
        let own = host.own_cgroups()?;
        match mode {
            CgroupMode::V2 => {
                let mount = mounts
                    .iter()
                    .find(|m| m.unified)
                    .ok_or(LayoutError::NoCgroup2)?;
                let path = own
                    .iter()
                    .find(|c| c.id == 0)
                    .map_or("/", |c| c.path.as_str());
                let mut base = join(&mount.mount_point.display().to_string(), path);
                // Started again inside the leaf a predecessor made (a restart that kept
                // the cgroup): the subtree is the leaf's parent, as before.
                if let Some(parent) = base.strip_suffix("/daemon") {
                    if host.exists(&join(parent, &format!("runs-{instance}"))) {
                        base = parent.to_owned();
                    }
                }
                let runs = prepare_v2(host, &base, instance)?;
                Ok(Layout::V2(runs))
            }
            CgroupMode::V1 | CgroupMode::Hybrid => {
                let mut hiers: Vec<(Vec<String>, String)> = Vec::new();
                for want in V1_WANTED {
                    if hiers.iter().any(|(c, _)| c.iter().any(|x| x == want)) {
                        continue;
                    }
                    let Some(mount) = mounts
                        .iter()
                        .find(|m| !m.unified && m.controllers.iter().any(|c| c == want))
                    else {
                        return Err(LayoutError::NotMounted(want));
                    };
                    let path = own
                        .iter()
                        .find(|c| c.controllers.iter().any(|x| x == want))
                        .map_or("/", |c| c.path.as_str());
                    // Started while a shield was up (by a process it moved): the shield's
                    // cpuset is temporary, so runs go where it was made instead.
                    let path = match path.find("/cleanroom-shield-") {
                        Some(0) => "/",
                        Some(i) => &path[..i],
                        None => path,
                    };
                    let base = join(
                        &join(&mount.mount_point.display().to_string(), path),
                        &format!("cleanroom-{instance}"),
                    );
                    host.make_dir(&base)?;
                    if mount.controllers.iter().any(|c| c == "cpuset") {
                        inherit_cpuset(host, &base)?;
                    }
                    hiers.push((mount.controllers.clone(), base));
                }
                // Optional: a host where it cannot be made still runs everything that does
                // not count (and a run that does is refused, saying why).
                match perf_v1(host, &mounts, &own, instance) {
                    Ok(Some(perf)) => hiers.push(perf),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "no cgroup for runs' performance counters; runs that count are refused"
                    ),
                }
                Ok(Layout::V1(hiers))
            }
            CgroupMode::None => Err(LayoutError::None),
        }
    }

    fn is_v2(&self) -> bool {
        matches!(self, Layout::V2(_))
    }

    fn runs_dirs(&self) -> Vec<(Vec<String>, String)> {
        match self {
            Layout::V1(h) => h.clone(),
            Layout::V2(base) => vec![(Vec::new(), base.clone())],
        }
    }

    /// The directories that hold this daemon's run cgroups.
    pub fn bases(&self) -> Vec<String> {
        self.runs_dirs().into_iter().map(|(_, d)| d).collect()
    }

    /// How the shield works with this layout: v2 a cpuset partition (if `partition`),
    /// v1 the cpuset hierarchy, else thread affinity.
    pub fn shield_method(&self, host: &Host, instance: &str, partition: bool) -> Method {
        let mounts = host.cgroup_mounts().unwrap_or_default();
        match self {
            Layout::V2(_) if partition => match mounts.iter().find(|m| m.unified) {
                Some(m) => {
                    let mount = m.mount_point.display().to_string();
                    let dir = join(&mount, &format!("cleanroom-exclusive-{instance}"));
                    Method::Partition {
                        mount,
                        dir,
                        limits_from: match self {
                            Layout::V2(runs) => {
                                runs.rsplit_once('/').map_or("/", |(p, _)| p).to_owned()
                            }
                            Layout::V1(_) => String::new(),
                        },
                        isolated: false,
                    }
                }
                None => Method::Affinity,
            },
            Layout::V2(_) => Method::Affinity,
            Layout::V1(hiers) => {
                let cpuset = mounts
                    .iter()
                    .find(|m| !m.unified && m.controllers.iter().any(|c| c == "cpuset"));
                let keep = hiers
                    .iter()
                    .find(|(c, _)| c.iter().any(|x| x == "cpuset"))
                    .map(|(_, base)| base.clone());
                match (cpuset, keep) {
                    (Some(m), Some(keep)) => {
                        let mount = m.mount_point.display().to_string();
                        let dir = join(&mount, &format!("cleanroom-shield-{instance}"));
                        Method::Cpuset { mount, dir, keep }
                    }
                    _ => Method::Affinity,
                }
            }
        }
    }

    /// Creates the cgroup of run `id` with `limits`; on v2, in `partition` when given (an
    /// exclusive run while the shield's partition is up).
    pub fn create(
        &self,
        host: &Host,
        id: &str,
        limits: &Limits,
        partition: Option<&str>,
    ) -> Result<RunCgroup, HostError> {
        // Every v1 hierarchy the run joins costs one cgroup migration (~0.3 ms here):
        // join cpu and cpuset only when the run asks for a quota or CPUs.
        let wanted = |c: &[String]| {
            c.iter()
                .any(|x| matches!(x.as_str(), "pids" | "memory" | "cpuacct" | "freezer"))
                || (limits.cpu_percent.is_some() && c.iter().any(|x| x == "cpu"))
                || (limits.cpus.is_some() && c.iter().any(|x| x == "cpuset"))
                || (limits.counters && c.iter().any(|x| x == "perf_event"))
        };
        let dirs: Vec<(Vec<String>, String)> = self
            .runs_dirs()
            .into_iter()
            .filter(|(c, _)| c.is_empty() || wanted(c))
            .map(|(c, base)| {
                let base = match (self, partition) {
                    (Layout::V2(_), Some(p)) => p.to_owned(),
                    _ => base,
                };
                (c, join(&base, &format!("run-{id}")))
            })
            .collect();
        let cg = RunCgroup {
            v2: matches!(self, Layout::V2(_)),
            dirs,
        };
        for (_, dir) in &cg.dirs {
            if let Err(e) = host.make_dir(dir) {
                cg.remove(host);
                return Err(e);
            }
        }
        if let Err(e) = cg.apply_limits(host, limits) {
            cg.remove(host);
            return Err(e);
        }
        Ok(cg)
    }

    /// Creates a cgroup v1 run cgroup ahead of any request, `ready-<id>`, in every
    /// hierarchy a run may need (cpu and cpuset too, since it does not know its run yet),
    /// with no limits: [`RunCgroup::take`] names it `run-<id>` when a run takes it, and
    /// [`RunCgroup::apply_limits`] sets the run's limits.
    pub fn create_slot(&self, host: &Host, id: &str) -> Result<RunCgroup, HostError> {
        // Not the perf_event hierarchy: on a hybrid host that is the unified one, where a
        // cgroup cannot be renamed (runs that count make their cgroup when they start).
        let cg = RunCgroup {
            v2: matches!(self, Layout::V2(_)),
            dirs: self
                .runs_dirs()
                .into_iter()
                .filter(|(c, _)| self.is_v2() || !c.iter().any(|x| x == "perf_event"))
                .map(|(c, base)| (c, join(&base, &format!("ready-{id}"))))
                .collect(),
        };
        for (_, dir) in &cg.dirs {
            if let Err(e) = host.make_dir(dir) {
                cg.remove(host);
                return Err(e);
            }
        }
        // A v1 cpuset takes no task before it has CPUs and memory nodes.
        if let Some(d) = cg.dir_with("cpuset").filter(|_| !cg.v2) {
            if let Err(e) = inherit_cpuset(host, d) {
                cg.remove(host);
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// Removes the directories that hold run cgroups (at a clean stop; they must be empty).
    pub fn remove_base(&self, host: &Host) {
        match self {
            Layout::V1(h) => {
                for (_, base) in h {
                    let _ = host.remove_dir(base);
                }
            }
            Layout::V2(base) => {
                let _ = host.remove_dir(base);
            }
        }
    }

    /// Ends and removes run cgroups left by a daemon that died; returns how many.
    pub fn cleanup_stale(&self, host: &Host) -> usize {
        self.end_all(
            host,
            "removed the cgroup of a run left by a previous daemon",
        )
    }

    /// Ends and removes every run cgroup there is, logging `why` for each; returns how
    /// many.
    pub fn end_all(&self, host: &Host, why: &str) -> usize {
        let mut ids: Vec<String> = Vec::new();
        for (_, base) in self.runs_dirs() {
            for name in host.list(&base) {
                let ours = name.starts_with("run-") || name.starts_with("ready-");
                if ours && !ids.contains(&name) {
                    ids.push(name);
                }
            }
        }
        for id in &ids {
            let cg = RunCgroup {
                v2: matches!(self, Layout::V2(_)),
                dirs: self
                    .runs_dirs()
                    .into_iter()
                    .map(|(c, b)| (c, join(&b, id)))
                    .collect(),
            };
            let killed = cg.kill_all(host);
            cg.wait_empty(host, Duration::from_secs(2));
            cg.remove(host);
            if id.starts_with("run-") {
                tracing::warn!(run = %id, killed, "{why}");
            } else {
                tracing::debug!(cgroup = %id, "removed a run cgroup prepared ahead");
            }
        }
        ids.len()
    }
}

/// With RT group scheduling (v1 `cpu.rt_runtime_us`), a SCHED_FIFO task may only join a
/// cpu cgroup that has RT time, and a cgroup only gets what its parent has: the runs'
/// base takes its parent's (once; it keeps it until the daemon stops and removes it), the
/// run takes the base's. Without the file there is nothing to do.
fn grant_rt_time(host: &Host, run: &str) -> Result<(), HostError> {
    let file = |d: &str| join(d, "cpu.rt_runtime_us");
    if !host.exists(&file(run)) {
        return Ok(());
    }
    let base = run.rsplit_once('/').map_or("/", |(p, _)| p);
    let parent = base.rsplit_once('/').map_or("/", |(p, _)| p);
    let num = |d: &str| -> u64 {
        host.read(&file(d))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    if num(base) == 0 {
        // The parent's siblings may hold some: ask for less until the kernel agrees.
        let mut want = num(parent);
        while want >= 1000 && host.write(&file(base), &want.to_string()).is_err() {
            want /= 2;
        }
    }
    host.write(&file(run), &num(base).to_string())
}

fn inherit_cpuset(host: &Host, dir: &str) -> Result<(), HostError> {
    let parent = dir.rsplit_once('/').map_or("/", |(p, _)| p);
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let current = host.read(&join(dir, f)).unwrap_or_default();
        if current.trim().is_empty() {
            let value = host.read(&join(parent, f))?;
            host.write(&join(dir, f), value.trim())?;
        }
    }
    Ok(())
}

fn prepare_v2(host: &Host, base: &str, instance: &str) -> Result<String, HostError> {
    // No internal processes: the daemon leaves its cgroup for a leaf of its own.
    let leaf = join(base, "daemon");
    host.make_dir(&leaf)?;
    host.write(
        &join(&leaf, "cgroup.procs"),
        &std::process::id().to_string(),
    )?;
    let available = host
        .read(&join(base, "cgroup.controllers"))
        .unwrap_or_default();
    let enable: Vec<String> = ["cpu", "cpuset", "memory", "pids", "io"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    let runs = join(base, &format!("runs-{instance}"));
    host.make_dir(&runs)?;
    if !enable.is_empty() {
        host.write(&join(base, "cgroup.subtree_control"), &enable.join(" "))?;
        host.write(&join(&runs, "cgroup.subtree_control"), &enable.join(" "))?;
    }
    Ok(runs)
}

impl RunCgroup {
    fn dir_with(&self, controller: &str) -> Option<&str> {
        if self.v2 {
            return self.dirs.first().map(|(_, d)| d.as_str());
        }
        self.dirs
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, d)| d.as_str())
    }

    /// The run's directories (one per hierarchy).
    pub fn dirs(&self) -> Vec<String> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The run's directory in the unified hierarchy, on cgroup v2 (a process can be cloned
    /// straight into it).
    pub fn v2_dir(&self) -> Option<&str> {
        self.dirs
            .first()
            .filter(|_| self.v2)
            .map(|(_, d)| d.as_str())
    }

    /// The run's directory in the hierarchy that has `perf_event` (its performance
    /// counters count what runs in it): the unified one on v2; on v1 a `perf_event` mount,
    /// or the unified hierarchy where no v1 mount holds the controller.
    pub fn perf_dir(&self) -> Option<&str> {
        match self.v2_dir() {
            Some(d) => Some(d),
            None => self.dir_with("perf_event"),
        }
    }

    /// Gives back the RT time a realtime run's v1 cpu cgroup took from its parent (one
    /// write): the cgroup itself is removed after the answer, and until then the next
    /// realtime run could not have that time.
    pub fn release_rt_time(&self, host: &Host) {
        if self.v2 {
            return;
        }
        if let Some(d) = self.dir_with("cpu") {
            let file = join(d, "cpu.rt_runtime_us");
            if host.exists(&file) {
                if let Err(e) = host.write(&file, "0") {
                    tracing::warn!(error = %e, "cannot give a run's RT time back");
                }
            }
        }
    }

    /// The id the run's directories are named after (`run-<id>`, or `ready-<id>` while
    /// prepared).
    pub fn id(&self) -> &str {
        self.dirs
            .first()
            .and_then(|(_, d)| d.rsplit('/').next())
            .and_then(|leaf| leaf.strip_prefix("run-").or(leaf.strip_prefix("ready-")))
            .unwrap_or_default()
    }

    /// A prepared cgroup taken by a run: `ready-<id>` renamed `run-<id>` in every hierarchy
    /// (cgroup v1 renames within a parent; what is inside stays).
    pub fn take(self, host: &Host) -> Result<RunCgroup, HostError> {
        let id = self.id().to_owned();
        let mut dirs: Vec<(Vec<String>, String)> = Vec::with_capacity(self.dirs.len());
        for (c, d) in &self.dirs {
            let to = match d.rsplit_once('/') {
                Some((parent, _)) => join(parent, &format!("run-{id}")),
                None => d.clone(),
            };
            if let Err(e) = host.rename(d, &to) {
                // Put back what was renamed, so the cgroup is one thing again.
                for (_, done) in &dirs {
                    let back = done_back(done, &id);
                    let _ = host.rename(done, &back);
                }
                return Err(e);
            }
            dirs.push((c.clone(), to));
        }
        Ok(RunCgroup { v2: self.v2, dirs })
    }

    /// v1 counters a run's accounting starts from, reset when a helper hands the run over:
    /// `cpuacct.usage` and `memory.max_usage_in_bytes`.
    pub fn accounting_files(&self) -> Vec<String> {
        if self.v2 {
            return Vec::new();
        }
        [
            ("cpuacct", "cpuacct.usage"),
            ("memory", "memory.max_usage_in_bytes"),
        ]
        .into_iter()
        .filter_map(|(c, f)| Some(join(self.dir_with(c)?, f)))
        .collect()
    }

    /// The `cgroup.procs` files a pid must be written to, to enter the run.
    pub fn procs_files(&self) -> Vec<String> {
        self.dirs
            .iter()
            .map(|(_, d)| join(d, "cgroup.procs"))
            .collect()
    }

    /// Sets the run's limits (and, on v1, its CPUs: those asked for, else its parent's).
    pub fn apply_limits(&self, host: &Host, l: &Limits) -> Result<(), HostError> {
        if !self.v2 {
            if let Some(d) = self.dir_with("cpuset") {
                inherit_cpuset(host, d)?;
            }
        }
        let w = |ctrl: &str, file: &str, value: &str| -> Result<(), HostError> {
            match self.dir_with(ctrl) {
                Some(d) => host.write(&join(d, file), value),
                None => Ok(()),
            }
        };
        if let Some(pids) = l.pids {
            w("pids", "pids.max", &pids.to_string())?;
        }
        if let Some(mem) = l.memory {
            if self.v2 {
                w("memory", "memory.max", &mem.to_string())?;
                // Swap off for the run, where the kernel has swap accounting.
                if let Some(d) = self.dir_with("memory") {
                    if host.exists(&join(d, "memory.swap.max")) {
                        host.write(&join(d, "memory.swap.max"), "0")?;
                    }
                }
            } else {
                w("memory", "memory.limit_in_bytes", &mem.to_string())?;
                if let Some(d) = self.dir_with("memory") {
                    if host.exists(&join(d, "memory.memsw.limit_in_bytes")) {
                        host.write(&join(d, "memory.memsw.limit_in_bytes"), &mem.to_string())?;
                    }
                    host.write(&join(d, "memory.swappiness"), "0").ok();
                }
            }
        }
        if l.realtime && !self.v2 {
            if let Some(d) = self.dir_with("cpu") {
                grant_rt_time(host, d)?;
            }
        }
        if let Some(pct) = l.cpu_percent {
            let period = 100_000u64;
            let quota = period * pct / 100;
            if self.v2 {
                w("cpu", "cpu.max", &format!("{quota} {period}"))?;
            } else {
                w("cpu", "cpu.cfs_period_us", &period.to_string())?;
                w("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        if let Some(cpus) = &l.cpus {
            w("cpuset", "cpuset.cpus", cpus)?;
        }
        Ok(())
    }

    /// Pids in the run now.
    pub fn pids(&self, host: &Host) -> Vec<i32> {
        let Some((_, d)) = self.dirs.first() else {
            return Vec::new();
        };
        // On v1 any hierarchy lists the same processes; pids is always one of ours.
        let dir = self.dir_with("pids").unwrap_or(d);
        host.read(&join(dir, "cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Ends every process in the run; returns how many were signalled.
    pub fn kill_all(&self, host: &Host) -> usize {
        let before = self.pids(host);
        if before.is_empty() {
            return 0;
        }
        if self.v2 {
            if let Some(d) = self.dirs.first().map(|(_, d)| d) {
                if host.write(&join(d, "cgroup.kill"), "1").is_ok() {
                    return before.len();
                }
            }
        }
        // v1 (or a kernel without cgroup.kill): kill what is listed, at once (a killed
        // process cannot fork any more); a few passes catch children forked between the
        // read and the kill. Only a run that keeps forking faster than that is frozen, so
        // nothing can fork while the list is read, killed, and thawed.
        let mut killed = std::collections::BTreeSet::new();
        let kill_listed = |killed: &mut std::collections::BTreeSet<i32>| {
            for pid in self.pids(host) {
                if killed.contains(&pid) {
                    continue;
                }
                if self.kill_member(host, pid) {
                    killed.insert(pid);
                }
            }
        };
        for _ in 0..3 {
            kill_listed(&mut killed);
            if self.wait_empty(host, Duration::from_millis(20)) {
                return killed.len().max(before.len());
            }
        }
        let freezer = self.dir_with("freezer").map(|d| join(d, "freezer.state"));
        if let Some(f) = &freezer {
            if host.write(f, "FROZEN").is_ok() {
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline {
                    if host.read(f).map(|s| s.trim() == "FROZEN").unwrap_or(true) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        kill_listed(&mut killed);
        if let Some(f) = &freezer {
            let _ = host.write(f, "THAWED");
        }
        killed.len().max(before.len())
    }

    /// SIGKILLs `pid` only if it is still a member of this run: through a pidfd, taken
    /// before checking membership, so a pid reused by an unrelated process after the list
    /// was read is never signalled.
    fn kill_member(&self, host: &Host, pid: i32) -> bool {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return false;
        }
        // SAFETY: the kernel just returned this descriptor to us; OwnedFd closes it.
        let pidfd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let ours = self.dirs.first().is_some_and(|(_, d)| {
            let leaf = d.rsplit('/').next().unwrap_or_default();
            host.read(&format!("/proc/{pid}/cgroup"))
                .is_ok_and(|t| t.lines().any(|l| l.rsplit('/').next() == Some(leaf)))
        });
        if !ours {
            return false;
        }
        let raw = std::os::fd::AsRawFd::as_raw_fd(&pidfd);
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                raw,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }

    /// Waits until no process is left; false on timeout.
    pub fn wait_empty(&self, host: &Host, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            if self.pids(host).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// CPU time, peak memory and OOM kills. The CPU time is the scheduler's own, in
    /// nanoseconds: v2's `cpu.stat` scales its user/system split to it already; on v1 the
    /// split (`cpuacct.usage_user`, `_sys`) is counted in scheduler ticks, so it is scaled
    /// to the exact total (`cpuacct.usage`) here, as the kernel does for v2.
    pub fn usage(&self, host: &Host) -> Usage {
        let mut u = Usage::default();
        if self.v2 {
            let d = self
                .dirs
                .first()
                .map(|(_, d)| d.clone())
                .unwrap_or_default();
            let stat = host.read(&join(&d, "cpu.stat")).unwrap_or_default();
            u.user_us = keyed(&stat, "user_usec");
            u.sys_us = keyed(&stat, "system_usec");
            u.peak_memory = host
                .read(&join(&d, "memory.peak"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            u.oom_kills = keyed(
                &host.read(&join(&d, "memory.events")).unwrap_or_default(),
                "oom_kill",
            );
        } else {
            if let Some(d) = self.dir_with("cpuacct") {
                let ns = |f: &str| {
                    host.read(&join(d, f))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let (user, sys) = precise_split(
                    ns("cpuacct.usage"),
                    ns("cpuacct.usage_user"),
                    ns("cpuacct.usage_sys"),
                );
                u.user_us = user / 1000;
                u.sys_us = sys / 1000;
            }
            if let Some(d) = self.dir_with("memory") {
                u.peak_memory = host
                    .read(&join(d, "memory.max_usage_in_bytes"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                u.oom_kills = keyed(
                    &host
                        .read(&join(d, "memory.oom_control"))
                        .unwrap_or_default(),
                    "oom_kill",
                );
            }
        }
        u
    }

    /// The run's own CPU time, for the noise report: per CPU where cgroup v1's cpuacct
    /// keeps it (`cpuacct.usage_percpu`), else in total (v2 `cpu.stat` `usage_usec`).
    pub fn own_cpu(&self, host: &Host) -> super::noise::Own {
        use super::noise::{Own, parse_usage_percpu};
        if self.v2 {
            let Some((_, d)) = self.dirs.first() else {
                return Own::Unknown;
            };
            return match host.read(&join(d, "cpu.stat")) {
                Ok(stat) => Own::Total(keyed(&stat, "usage_usec").saturating_mul(1000)),
                Err(_) => Own::Unknown,
            };
        }
        self.dir_with("cpuacct")
            .and_then(|d| host.read(&join(d, "cpuacct.usage_percpu")).ok())
            .and_then(|t| parse_usage_percpu(&t).ok())
            .map_or(Own::Unknown, Own::PerCpu)
    }

    /// Removes the run's directories (they must be empty of processes).
    pub fn remove(&self, host: &Host) {
        for (_, d) in &self.dirs {
            if let Err(e) = host.remove_dir(d) {
                tracing::warn!(cgroup = %d, error = %e, "cannot remove run cgroup");
            }
        }
    }
}

/// Where runs' performance counters can count on a v1 (or hybrid) host: the `perf_event`
/// v1 mount, else the unified hierarchy when the kernel keeps the controller there (no v1
/// hierarchy holds it: `/proc/cgroups` lists it on hierarchy 0), else nowhere. Marked
/// with the controller `perf_event` either way.
fn perf_v1(
    host: &Host,
    mounts: &[crate::host::CgroupMount],
    own: &[crate::host::ProcCgroup],
    instance: &str,
) -> Result<Option<(Vec<String>, String)>, HostError> {
    let own_path = |of: &dyn Fn(&crate::host::ProcCgroup) -> bool| {
        own.iter()
            .find(|c| of(c))
            .map_or_else(|| "/".to_owned(), |c| c.path.clone())
    };
    let v1 = mounts
        .iter()
        .find(|m| !m.unified && m.controllers.iter().any(|c| c == "perf_event"));
    let (mount, path) = match v1 {
        Some(m) => (
            m,
            own_path(&|c| c.controllers.iter().any(|x| x == "perf_event")),
        ),
        None => {
            // perf_event on no v1 hierarchy: the kernel lists it on hierarchy 0, enabled.
            let on_unified = host.read("/proc/cgroups").is_ok_and(|t| {
                t.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&"perf_event")
                        && f.get(1) == Some(&"0")
                        && f.get(3) == Some(&"1")
                })
            });
            match mounts.iter().find(|m| m.unified) {
                Some(m) if on_unified => (m, own_path(&|c| c.id == 0)),
                _ => return Ok(None),
            }
        }
    };
    let base = join(
        &join(&mount.mount_point.display().to_string(), &path),
        &format!("cleanroom-{instance}"),
    );
    host.make_dir(&base)?;
    Ok(Some((vec!["perf_event".to_owned()], base)))
}

/// The `ready-<id>` name of a renamed `run-<id>` directory.
fn done_back(dir: &str, id: &str) -> String {
    match dir.rsplit_once('/') {
        Some((parent, _)) => join(parent, &format!("ready-{id}")),
        None => dir.to_owned(),
    }
}

/// `key value` lines (cpu.stat, memory.events, memory.oom_control) → the value of `key`.
pub(crate) fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key))
                .then(|| it.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// `(user, system)` nanoseconds: the exact total `total` split in the proportion of the
/// tick-counted `user` and `sys`, the way the kernel's `cputime_adjust` splits a task's
/// runtime (all of it user time when neither counted a tick, or one of them none).
fn precise_split(total: u64, user: u64, sys: u64) -> (u64, u64) {
    match (user, sys) {
        (_, 0) => (total, 0),
        (0, _) => (0, total),
        (u, s) => {
            let sys = (u128::from(total) * u128::from(s) / (u128::from(u) + u128::from(s))) as u64;
            (total - sys, sys)
        }
    }
}

#[cfg(test)]
mod tests {
    /// Worked by hand: 10,000,003 ns of runtime with ticks of 8 ms user and 4 ms system
    /// is a third system (3,333,334 ns, rounded down: 3,333,334.33) and the rest user; the
    /// parts always add up to the exact total; no tick at all is all user time.
    #[test]
    fn cpu_time_is_the_exact_total_split_by_ticks() {
        assert_eq!(
            precise_split(10_000_003, 8_000_000, 4_000_000),
            (6_666_669, 3_333_334)
        );
        assert_eq!(precise_split(1_500_000, 0, 0), (1_500_000, 0));
        assert_eq!(precise_split(1_500_000, 0, 4_000_000), (0, 1_500_000));
        assert_eq!(
            precise_split(u64::MAX, u64::MAX, u64::MAX),
            (u64::MAX - u64::MAX / 2, u64::MAX / 2)
        );
    }

    use super::*;
    use crate::host::fake_root as fake;

    #[test]
    fn keyed_files() {
        assert_eq!(
            keyed("usage_usec 10\nuser_usec 7\nsystem_usec 3\n", "user_usec"),
            7
        );
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            2
        );
        assert_eq!(keyed("", "x"), 0);
    }

    /// A hybrid host's files: v1 controllers (perf_event among them or not) and the
    /// unified hierarchy; `perf_event` is on hierarchy `perf_hier` in /proc/cgroups.
    fn hybrid(perf_v1: bool, perf_hier: &str) -> (tempfile::TempDir, Host) {
        let mut mountinfo = String::new();
        let mut ctrls = vec!["pids", "memory", "cpu,cpuacct", "cpuset", "freezer"];
        if perf_v1 {
            ctrls.push("perf_event");
        }
        for (i, c) in ctrls.iter().enumerate() {
            mountinfo.push_str(&format!(
                "{} 23 0:{} / /sys/fs/cgroup/{c} rw - cgroup cgroup rw,{c}\n",
                40 + i,
                30 + i
            ));
        }
        mountinfo.push_str("60 23 0:50 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n");
        let cgroups = format!(
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\nperf_event\t{perf_hier}\t1\t1\n"
        );
        let mut files: Vec<(String, String)> = ctrls
            .iter()
            .chain(&["unified"])
            .map(|c| (format!("/sys/fs/cgroup/{c}/cgroup.procs"), String::new()))
            .collect();
        files.extend(
            [
                ("/proc/self/mountinfo", mountinfo.as_str()),
                ("/proc/self/cgroup", "1:pids:/\n0::/svc\n"),
                ("/proc/cgroups", cgroups.as_str()),
                ("/sys/fs/cgroup/cpuset/cpuset.cpus", "0-1\n"),
                ("/sys/fs/cgroup/cpuset/cpuset.mems", "0\n"),
                ("/sys/fs/cgroup/cpuset/cleanroom-t/cpuset.cpus", ""),
                ("/sys/fs/cgroup/cpuset/cleanroom-t/cpuset.mems", ""),
                ("/sys/fs/cgroup/unified/svc/cgroup.procs", ""),
                ("/sys/fs/cgroup/cpuset/cleanroom-t/ready-6/cpuset.cpus", ""),
                ("/sys/fs/cgroup/cpuset/cleanroom-t/ready-6/cpuset.mems", ""),
            ]
            .map(|(p, c)| (p.to_owned(), c.to_owned())),
        );
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        fake(&files)
    }

    #[test]
    fn a_v1_run_that_counts_joins_the_hierarchy_that_has_perf_event() {
        let perf_dir = |host: &Host, layout: &Layout, counters: bool| {
            let limits = Limits {
                counters,
                ..Limits::default()
            };
            let cg = layout.create(host, "5", &limits, None).unwrap();
            cg.perf_dir().map(str::to_owned)
        };
        // perf_event on no v1 hierarchy: the kernel keeps it on the unified one, below the
        // daemon's own unified cgroup.
        let (_d, host) = hybrid(false, "0");
        let layout = Layout::detect(&host, CgroupMode::Hybrid, "t").unwrap();
        assert!(
            layout
                .bases()
                .contains(&"/sys/fs/cgroup/unified/svc/cleanroom-t".to_owned())
        );
        assert_eq!(
            perf_dir(&host, &layout, true).as_deref(),
            Some("/sys/fs/cgroup/unified/svc/cleanroom-t/run-5")
        );
        assert_eq!(perf_dir(&host, &layout, false), None);
        // A prepared slot leaves it out: the unified hierarchy cannot rename a directory.
        let slot = layout.create_slot(&host, "6").unwrap();
        assert!(
            slot.dirs().iter().all(|d| !d.contains("unified")),
            "{:?}",
            slot.dirs()
        );
        // A v1 perf_event mount is used where there is one.
        let (_d, host) = hybrid(true, "6");
        let layout = Layout::detect(&host, CgroupMode::Hybrid, "t").unwrap();
        assert!(
            layout
                .bases()
                .contains(&"/sys/fs/cgroup/perf_event/cleanroom-t".to_owned())
        );
        // Bound to a v1 hierarchy that is not mounted here: nowhere to count.
        let (_d, host) = hybrid(false, "6");
        let layout = Layout::detect(&host, CgroupMode::Hybrid, "t").unwrap();
        assert!(
            layout.bases().iter().all(|b| !b.contains("unified")),
            "{:?}",
            layout.bases()
        );
    }

    #[test]
    fn v2_layout_limits_and_usage_on_a_fake_root() {
        let (d, host) = fake(&[
            (
                "/proc/self/mountinfo",
                "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            ),
            ("/proc/self/cgroup", "0::/system.slice/cleanroomd.service\n"),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/cgroup.controllers",
                "cpuset cpu io memory pids\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/cgroup.subtree_control",
                "",
            ),
            // The kernel creates the interface files of a new cgroup; a fake root must too.
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/daemon/cgroup.procs",
                "",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/runs-t/cgroup.subtree_control",
                "",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/runs-t/run-7/memory.max",
                "max\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/runs-t/run-7/memory.swap.max",
                "max\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/runs-t/run-7/pids.max",
                "max\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/runs-t/run-7/cpu.max",
                "max 100000\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/cleanroomd.service/runs-t/run-7/cpuset.cpus",
                "\n",
            ),
        ]);
        let base = "/sys/fs/cgroup/system.slice/cleanroomd.service";
        let layout = Layout::detect(&host, CgroupMode::V2, "t").unwrap();
        let read =
            |p: &str| std::fs::read_to_string(d.path().join(p.trim_start_matches('/'))).unwrap();
        assert_eq!(
            read(&format!("{base}/daemon/cgroup.procs")),
            std::process::id().to_string()
        );
        assert_eq!(
            read(&format!("{base}/cgroup.subtree_control")),
            "+cpu +cpuset +memory +pids +io"
        );
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(100),
            cpu_percent: Some(150),
            cpus: Some("1".into()),
            realtime: false,
            counters: true,
        };
        let run = format!("{base}/runs-t/run-7");
        let cg = layout.create(&host, "7", &limits, None).unwrap();
        assert_eq!(
            read(&format!("{run}/memory.max")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&format!("{run}/memory.swap.max")), "0");
        assert_eq!(read(&format!("{run}/pids.max")), "100");
        assert_eq!(read(&format!("{run}/cpu.max")), "150000 100000");
        assert_eq!(read(&format!("{run}/cpuset.cpus")), "1");
        assert_eq!(cg.procs_files(), vec![format!("{run}/cgroup.procs")]);
        std::fs::write(
            d.path().join(run.trim_start_matches('/')).join("cpu.stat"),
            "usage_usec 30\nuser_usec 20\nsystem_usec 10\n",
        )
        .unwrap();
        std::fs::write(
            d.path()
                .join(run.trim_start_matches('/'))
                .join("memory.peak"),
            "4096\n",
        )
        .unwrap();
        std::fs::write(
            d.path()
                .join(run.trim_start_matches('/'))
                .join("memory.events"),
            "oom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            cg.usage(&host),
            Usage {
                user_us: 20,
                sys_us: 10,
                peak_memory: Some(4096),
                oom_kills: 1
            }
        );
        assert_eq!(cg.own_cpu(&host), crate::run::noise::Own::Total(30_000));
    }
}
