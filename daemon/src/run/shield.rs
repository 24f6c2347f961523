//! The shield: while any exclusive run holds cores, every other task is kept off the
//! isolation pool's CPUs, and so are IRQs.
//!
//! How, by cgroup layout ([`Method`]):
//! - cgroup v2: a cpuset partition (`cpuset.cpus.partition` = `root`) holding the pool's
//!   CPUs; exclusive runs live inside it. The kernel itself takes the CPUs from every other
//!   cgroup, present and future (PID 1 and unbound kernel threads included). Before Linux
//!   6.7 a partition root's parent must be a partition root too, so the partition is a
//!   child of the root cgroup (`cleanroom-exclusive-<instance>`), not of the daemon's
//!   delegated subtree: exclusive runs on v2 get their limits there, not inside the
//!   daemon's. Where the kernel refuses the partition (no cpuset controller, CPUs another
//!   cgroup holds exclusively) the affinity shield below is used instead, and said so.
//! - cgroup v1: the root cpuset's processes move into `cleanroom-shield-<instance>` (every
//!   CPU but the pool's; what they fork later is born there too), other cpusets give up
//!   the pool's CPUs (deepest first), and the affinity of whatever is left is narrowed.
//! - Otherwise: the affinity of every thread (processes started later inherit the narrowed
//!   mask from their parent).
//!
//! Kernel threads are never moved (per-CPU ones cannot be; they are counted). IRQs move
//! off the pool the same way (the default affinity and every IRQ the kernel lets move;
//! managed IRQs stay and are counted).
//!
//! Everything is journaled in SQLite before it is changed, like tuning, so a crash never
//! leaves the host shielded: the next start lowers a shield it finds. Lowering is
//! compare-and-swap: a mask or cpuset someone changed since is left alone.
//!
//! Exemptions ([`Exempt`]: pids, command-name globs, cgroup paths) are left alone by the v1
//! and affinity shields; a v2 partition cannot leave anyone on its CPUs, so a host that
//! needs exemptions on v2 turns it off (`runs.shield_partition = false`).
//!
//! IRQs that appear while the shield is up take its default affinity and get the original
//! default back when it comes down (every IRQ is journaled, so they are told apart).
//!
//! Limitation: threads born under the affinity shield get every online CPU back only when
//! their mask is exactly the shield's (the cpuset and partition shields have no such gap).

use std::collections::{BTreeSet, HashMap};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use rusqlite::{Connection, OptionalExtension, params};

use crate::host::Host;
use crate::host::format::{format_cpu_list, parse_cpu_list};

/// How the shield keeps other work off the CPUs on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// cgroup v2: a cpuset partition at `dir`, a child of the root cgroup at `mount`.
    Partition {
        /// The cgroup2 mount point (the root cgroup).
        mount: String,
        /// The partition's directory.
        dir: String,
        /// The daemon's own cgroup, whose memory and task limits the partition copies.
        limits_from: String,
    },
    /// cgroup v1: the root cpuset's processes move to `dir`; other cpusets give up the CPUs
    /// except `keep` (the runs' base directory) and its ancestors.
    Cpuset {
        /// The cpuset hierarchy's mount point (the root cpuset).
        mount: String,
        /// The cpuset the other processes move into.
        dir: String,
        /// The directory holding the run cpusets.
        keep: String,
    },
    /// The affinity of every thread.
    Affinity,
}

/// What the shield leaves alone.
#[derive(Debug, Clone, Default)]
pub struct Exempt {
    /// Process ids.
    pub pids: Vec<i32>,
    /// Command names (`/proc/<pid>/comm`), as globs; only root's processes (anyone can
    /// name a process anything).
    pub names: Vec<glob::Pattern>,
    /// cgroup paths (as in `/proc/<pid>/cgroup`, any hierarchy); their descendants too.
    pub cgroups: Vec<String>,
}

impl Exempt {
    fn covers(&self, host: &Host, pid: i32) -> bool {
        if self.pids.contains(&pid) {
            return true;
        }
        // Any process may name itself anything: a name only exempts root's processes.
        if !self.names.is_empty() && owned_by_root(host, pid) {
            if let Ok(comm) = host.read(&format!("/proc/{pid}/comm")) {
                let comm = comm.trim_end_matches('\n');
                if self.names.iter().any(|p| p.matches(comm)) {
                    return true;
                }
            }
        }
        if !self.cgroups.is_empty() {
            if let Ok(text) = host.read(&format!("/proc/{pid}/cgroup")) {
                return text.lines().any(|line| {
                    let path = line.splitn(3, ':').nth(2).unwrap_or("");
                    self.cgroups.iter().any(|c| is_under(path, c))
                });
            }
        }
        false
    }
}

/// Whether every uid of process `pid` (real, effective, saved, fs) is root.
fn owned_by_root(host: &Host, pid: i32) -> bool {
    host.read(&format!("/proc/{pid}/status")).is_ok_and(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().all(|id| id == "0"))
    })
}

/// Whether cgroup `path` is `prefix` or below it.
fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Fields of `/proc/<tid>/stat` after the command name: (flags, start time).
fn stat_fields(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(6)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// One thread of the system: process id, thread id, whether it is a kernel thread, and
/// its start time (clock ticks since boot).
struct Thread {
    pid: i32,
    tid: i32,
    kernel: bool,
    start: u64,
}

/// Every thread in `/proc` whose stat could be read.
fn threads(host: &Host) -> Vec<Thread> {
    let mut out = Vec::new();
    for pid in host
        .list("/proc")
        .iter()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        for tid in host
            .list(&format!("/proc/{pid}/task"))
            .iter()
            .filter_map(|t| t.parse::<i32>().ok())
        {
            let stat = host.read(&format!("/proc/{pid}/task/{tid}/stat")).ok();
            if let Some((flags, start)) = stat.and_then(|t| stat_fields(&t)) {
                out.push(Thread {
                    pid,
                    tid,
                    kernel: flags & PF_KTHREAD != 0,
                    start,
                });
            }
        }
    }
    out
}

fn mask_of(set: &BTreeSet<u32>) -> Option<CpuSet> {
    let mut m = CpuSet::new();
    for &c in set {
        m.set(c as usize).ok()?;
    }
    Some(m)
}

fn set_of(m: &CpuSet) -> BTreeSet<u32> {
    (0..CpuSet::count())
        .filter(|&c| m.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect()
}

/// What raising the shield did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raised {
    /// How: `partition`, `cpuset` or `affinity`.
    pub method: &'static str,
    /// Why the cgroup method was not used, when it fell back to the affinity shield.
    pub fallback: Option<String>,
    /// The partition exclusive runs go into (v2).
    pub partition: Option<String>,
    /// Processes moved into the shield's cpuset (v1).
    pub processes_moved: usize,
    /// Other cpusets that gave up the shielded CPUs (v1).
    pub cpusets_narrowed: usize,
    /// Threads whose affinity was narrowed.
    pub moved: usize,
    /// Threads still allowed on the shielded CPUs (per-CPU kernel threads, tasks pinned
    /// there, tasks the kernel refused to move).
    pub unmovable: usize,
    /// IRQs moved off the shielded CPUs.
    pub irqs_moved: usize,
    /// IRQs the kernel would not move.
    pub irqs_unmovable: usize,
}

/// IRQ affinity files and their current CPU sets: the default (a mask) and every IRQ's
/// list.
fn irq_files(host: &Host) -> Vec<(String, bool, BTreeSet<u32>)> {
    let mut out = Vec::new();
    let default = "/proc/irq/default_smp_affinity".to_owned();
    let mask = host
        .read(&default)
        .ok()
        .and_then(|t| crate::host::format::parse_cpu_mask(&t).ok());
    if let Some(set) = mask {
        out.push((default, true, set));
    }
    for irq in host
        .list("/proc/irq")
        .iter()
        .filter(|n| n.parse::<u32>().is_ok())
    {
        let path = format!("/proc/irq/{irq}/smp_affinity_list");
        if let Some(set) = host.read(&path).ok().and_then(|t| parse_cpu_list(&t).ok()) {
            out.push((path, false, set));
        }
    }
    out
}

fn write_irq(host: &Host, path: &str, mask: bool, set: &BTreeSet<u32>) -> bool {
    let value = if mask {
        crate::host::format::format_cpu_mask(set)
    } else {
        format_cpu_list(set)
    };
    host.write(path, &value).is_ok()
}

/// Online CPUs.
fn online(host: &Host) -> BTreeSet<u32> {
    host.read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(&t).ok())
        .unwrap_or_default()
}

/// Keeps every task but the exempt ones off `cpus` by `method`, and IRQs too, journaling
/// each original first. An error means nothing is shielded (what was changed is put back).
pub fn raise(
    host: &Host,
    conn: &mut Connection,
    cpus: &BTreeSet<u32>,
    exempt: &Exempt,
    method: &Method,
) -> Result<Raised, String> {
    let online = online(host);
    let rest: BTreeSet<u32> = online.difference(cpus).copied().collect();
    if rest.is_empty() {
        return Err(format!(
            "the isolation pool {} covers every online CPU: nothing would be left for the \
             rest of the system",
            format_cpu_list(cpus)
        ));
    }
    let db = |e: rusqlite::Error| format!("cannot journal the shield: {e}");
    // A shield still journaled (a lowering that failed) is lowered first: its originals
    // must not be replaced by what it left.
    if is_raised(conn).map_err(db)? {
        lower(host, conn).map_err(|e| format!("cannot lower the previous shield: {e}"))?;
        if conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM shield) OR EXISTS (SELECT 1 FROM shield_irq)
                     OR EXISTS (SELECT 1 FROM shield_cpuset)",
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(db)?
        {
            return Err("a previous shield could not be lowered completely".into());
        }
    }
    // The journal first: when the shield went up (threads born under it get their CPUs
    // back), and the cgroups it is about to create.
    let (partition, cpuset) = match method {
        Method::Partition { dir, .. } => (Some(dir.as_str()), None),
        Method::Cpuset { mount, dir, .. } => (None, Some((dir.as_str(), mount.as_str()))),
        Method::Affinity => (None, None),
    };
    conn.execute(
        "INSERT OR REPLACE INTO shield_meta
             (id, raised_at, boot_id, shielded, online, cpuset_dir, cpuset_mount, partition)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            uptime_ticks(host) as i64,
            host.boot_id().unwrap_or_default(),
            format_cpu_list(cpus),
            format_cpu_list(&online),
            cpuset.map(|c| c.0),
            cpuset.map(|c| c.1),
            partition,
        ],
    )
    .map_err(db)?;
    let mut raised = Raised {
        method: "affinity",
        ..Raised::default()
    };
    let result = (|| {
        match method {
            Method::Partition {
                mount,
                dir,
                limits_from,
            } => match partition_up(host, conn, (mount, dir, limits_from), cpus) {
                Ok(()) => {
                    raised.method = "partition";
                    raised.partition = Some(dir.clone());
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "no cpuset partition: shielding by affinity");
                    conn.execute("UPDATE shield_meta SET partition = NULL", [])
                        .map_err(db)?;
                    raised.fallback = Some(why);
                }
            },
            Method::Cpuset { mount, dir, keep } => {
                cpuset_up(
                    host,
                    conn,
                    mount,
                    dir,
                    keep,
                    cpus,
                    &rest,
                    exempt,
                    &mut raised,
                )?;
                raised.method = "cpuset";
            }
            Method::Affinity => {}
        }
        irqs_off(host, conn, cpus, &mut raised).map_err(db)?;
        affinity_off(host, conn, cpus, exempt, &mut raised).map_err(db)
    })();
    match result {
        Ok(()) => Ok(raised),
        Err(e) => {
            if let Err(undo) = lower(host, conn) {
                tracing::error!(error = %undo, "cannot undo a shield that failed to go up");
            }
            Err(e)
        }
    }
}

/// v2: the partition exclusive runs go into; the kernel takes its CPUs from everyone else.
/// It gets the memory and task limits of the daemon's own cgroup (`limits_from`), so
/// exclusive runs stay inside what the host gives the daemon. On failure nothing is left
/// (controllers it enabled in the root cgroup are disabled again).
fn partition_up(
    host: &Host,
    conn: &Connection,
    (mount, dir, limits_from): (&str, &str, &str),
    cpus: &BTreeSet<u32>,
) -> Result<(), String> {
    let available = host
        .read(&format!("{mount}/cgroup.controllers"))
        .map_err(|e| e.to_string())?;
    if !available.split_whitespace().any(|c| c == "cpuset") {
        return Err("the root cgroup has no cpuset controller".into());
    }
    let wanted = ["cpuset", "cpu", "memory", "pids"];
    let enabled = host
        .read(&format!("{mount}/cgroup.subtree_control"))
        .unwrap_or_default();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .collect();
    let undo_root = || {
        for c in &missing {
            let _ = host.write(&format!("{mount}/cgroup.subtree_control"), &format!("-{c}"));
        }
        let _ = conn.execute("UPDATE shield_meta SET root_enabled = NULL", []);
    };
    if !missing.is_empty() {
        // Journaled first: lowering the shield disables them again (if nobody uses them).
        conn.execute(
            "UPDATE shield_meta SET root_enabled = ?1",
            params![missing.join(" ")],
        )
        .map_err(|e| e.to_string())?;
        let plus: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        if let Err(e) = host.write(&format!("{mount}/cgroup.subtree_control"), &plus.join(" ")) {
            undo_root();
            return Err(e.to_string());
        }
    }
    let fail = |e: String| {
        let _ = host.remove_dir(dir);
        undo_root();
        e
    };
    host.make_dir(dir).map_err(|e| fail(e.to_string()))?;
    host.write(&format!("{dir}/cpuset.cpus"), &format_cpu_list(cpus))
        .map_err(|e| fail(e.to_string()))?;
    for f in ["memory.max", "memory.swap.max", "pids.max"] {
        let from = format!("{limits_from}/{f}");
        if let (Ok(v), true) = (host.read(&from), host.exists(&format!("{dir}/{f}"))) {
            host.write(&format!("{dir}/{f}"), v.trim())
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    let inside = host
        .read(&format!("{dir}/cgroup.controllers"))
        .unwrap_or_default();
    let plus: Vec<String> = wanted
        .iter()
        .filter(|c| inside.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    host.write(&format!("{dir}/cgroup.subtree_control"), &plus.join(" "))
        .map_err(|e| fail(e.to_string()))?;
    host.write(&format!("{dir}/cpuset.cpus.partition"), "root")
        .map_err(|e| fail(format!("the kernel refused the partition: {e}")))?;
    let state = host
        .read(&format!("{dir}/cpuset.cpus.partition"))
        .unwrap_or_default();
    if state.trim() != "root" {
        return Err(fail(format!(
            "the kernel refused the partition: {}",
            state.trim()
        )));
    }
    Ok(())
}

/// The cgroup directories below `dir` (depth first), with their depth below the mount.
fn cgroup_tree(host: &Host, dir: &str, depth: usize, out: &mut Vec<(String, usize)>) {
    for name in host.list(dir) {
        let child = format!("{dir}/{name}");
        if host.exists(&format!("{child}/cgroup.procs")) {
            out.push((child.clone(), depth + 1));
            cgroup_tree(host, &child, depth + 1, out);
        }
    }
}

/// v1: the root cpuset's processes move into `dir`, other cpusets give up `cpus`.
#[allow(clippy::too_many_arguments)]
fn cpuset_up(
    host: &Host,
    conn: &mut Connection,
    mount: &str,
    dir: &str,
    keep: &str,
    cpus: &BTreeSet<u32>,
    rest: &BTreeSet<u32>,
    exempt: &Exempt,
    raised: &mut Raised,
) -> Result<(), String> {
    let e = |e: crate::host::Error| e.to_string();
    let db = |e: rusqlite::Error| format!("cannot journal the shield: {e}");
    host.make_dir(dir).map_err(e)?;
    let mems = host.read(&format!("{mount}/cpuset.mems")).map_err(e)?;
    host.write(&format!("{dir}/cpuset.mems"), mems.trim())
        .map_err(e)?;
    host.write(&format!("{dir}/cpuset.cpus"), &format_cpu_list(rest))
        .map_err(e)?;
    // Other cpusets give up the CPUs, deepest first (a child's CPUs must stay within its
    // parent's). Not ours, not the runs' base or its ancestors (runs need the CPUs), not
    // an exempt one, and not one that would be left without a CPU (its tasks are counted).
    let mut tree = Vec::new();
    cgroup_tree(host, mount, 0, &mut tree);
    let rel = |p: &str| p.strip_prefix(mount).unwrap_or(p).to_owned();
    let mut narrow: Vec<(String, usize, BTreeSet<u32>, BTreeSet<u32>)> = Vec::new();
    for (path, depth) in tree {
        if path == dir
            || is_under(&path, keep)
            || is_under(keep, &path)
            || exempt.cgroups.iter().any(|c| is_under(&rel(&path), c))
        {
            continue;
        }
        let Some(current) = host
            .read(&format!("{path}/cpuset.cpus"))
            .ok()
            .and_then(|t| parse_cpu_list(&t).ok())
        else {
            continue;
        };
        let reduced: BTreeSet<u32> = current.difference(cpus).copied().collect();
        if current.is_disjoint(cpus) || reduced.is_empty() {
            continue;
        }
        narrow.push((path, depth, current, reduced));
    }
    narrow.sort_by_key(|n| std::cmp::Reverse(n.1));
    {
        let tx = conn.transaction().map_err(db)?;
        let mut ins = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO shield_cpuset (path, depth, original, written)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db)?;
        for (path, depth, current, reduced) in &narrow {
            ins.execute(params![
                path,
                *depth as i64,
                format_cpu_list(current),
                format_cpu_list(reduced)
            ])
            .map_err(db)?;
        }
        drop(ins);
        tx.commit().map_err(db)?;
    }
    for (path, _, _, reduced) in &narrow {
        match host.write(&format!("{path}/cpuset.cpus"), &format_cpu_list(reduced)) {
            Ok(()) => raised.cpusets_narrowed += 1,
            Err(err) => tracing::warn!(error = %err, "a cpuset kept the shielded CPUs"),
        }
    }
    // The root cpuset's processes move, their threads' masks journaled first (attaching
    // to a v1 cpuset rewrites them).
    let procs: Vec<i32> = host
        .read(&format!("{mount}/cgroup.procs"))
        .map_err(e)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let me = std::process::id() as i32;
    for pid in procs {
        if pid != me && exempt.covers(host, pid) {
            continue;
        }
        let mut threads: Vec<(i32, u64, BTreeSet<u32>)> = Vec::new();
        let mut kernel = false;
        for tid in host
            .list(&format!("/proc/{pid}/task"))
            .iter()
            .filter_map(|t| t.parse::<i32>().ok())
        {
            let Some((flags, start)) = host
                .read(&format!("/proc/{pid}/task/{tid}/stat"))
                .ok()
                .and_then(|t| stat_fields(&t))
            else {
                continue;
            };
            kernel |= flags & PF_KTHREAD != 0;
            if let Ok(mask) = sched_getaffinity(Pid::from_raw(tid)) {
                threads.push((tid, start, set_of(&mask)));
            }
        }
        if kernel || threads.is_empty() {
            continue;
        }
        {
            let tx = conn.transaction().map_err(db)?;
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO shield (tid, start_time, original, written, moved)
                     VALUES (?1, ?2, ?3, ?4, 1)",
                )
                .map_err(db)?;
            for (tid, start, original) in &threads {
                let expected: BTreeSet<u32> = original.intersection(rest).copied().collect();
                ins.execute(params![
                    tid,
                    *start as i64,
                    format_cpu_list(original),
                    format_cpu_list(if expected.is_empty() { rest } else { &expected })
                ])
                .map_err(db)?;
            }
            drop(ins);
            tx.commit().map_err(db)?;
        }
        if host
            .write(&format!("{dir}/cgroup.procs"), &pid.to_string())
            .is_ok()
        {
            raised.processes_moved += 1;
            // What the kernel made of each mask, for the compare-and-swap on the way back.
            for (tid, _, _) in &threads {
                if let Ok(now) = sched_getaffinity(Pid::from_raw(*tid)) {
                    conn.execute(
                        "UPDATE shield SET written = ?2 WHERE tid = ?1",
                        params![tid, format_cpu_list(&set_of(&now))],
                    )
                    .map_err(db)?;
                }
            }
        } else {
            // Gone, or refused: the affinity pass takes care of it.
            for (tid, _, _) in &threads {
                conn.execute(
                    "DELETE FROM shield WHERE tid = ?1 AND moved = 1",
                    params![tid],
                )
                .map_err(db)?;
            }
        }
    }
    Ok(())
}

/// IRQs off `cpus`, originals journaled first.
fn irqs_off(
    host: &Host,
    conn: &mut Connection,
    cpus: &BTreeSet<u32>,
    raised: &mut Raised,
) -> rusqlite::Result<()> {
    // Every IRQ is journaled, those left alone with their affinity unchanged: lowering
    // then knows which IRQs appeared while the shield was up.
    let irqs: Vec<(String, bool, BTreeSet<u32>, BTreeSet<u32>)> = irq_files(host)
        .into_iter()
        .map(|(path, mask, set)| {
            let reduced: BTreeSet<u32> = set.difference(cpus).copied().collect();
            if set.is_disjoint(cpus) || reduced.is_empty() {
                (path, mask, set.clone(), set)
            } else {
                (path, mask, set, reduced)
            }
        })
        .collect();
    let tx = conn.transaction()?;
    {
        let mut irq = tx.prepare_cached(
            "INSERT OR IGNORE INTO shield_irq (path, original, written) VALUES (?1, ?2, ?3)",
        )?;
        for (path, _, original, reduced) in &irqs {
            irq.execute(params![
                path,
                format_cpu_list(original),
                format_cpu_list(reduced)
            ])?;
        }
        // Says the list above is complete: only then can lowering tell new IRQs apart.
        irq.execute(params![IRQS_COMPLETE, "", ""])?;
    }
    tx.commit()?;
    for (path, mask, _, reduced) in irqs.iter().filter(|(_, _, o, r)| o != r) {
        if write_irq(host, path, *mask, reduced) {
            raised.irqs_moved += 1;
        } else {
            raised.irqs_unmovable += 1;
        }
    }
    Ok(())
}

/// The affinity of every thread still allowed on `cpus` is narrowed, originals journaled
/// first. After a partition or the cpuset move this finds only what those left.
fn affinity_off(
    host: &Host,
    conn: &mut Connection,
    cpus: &BTreeSet<u32>,
    exempt: &Exempt,
    raised: &mut Raised,
) -> rusqlite::Result<()> {
    let mut plan: Vec<(i32, u64, BTreeSet<u32>, BTreeSet<u32>)> = Vec::new();
    let me = std::process::id() as i32;
    let rest: BTreeSet<u32> = online(host).difference(cpus).copied().collect();
    let mut exempt_pid: HashMap<i32, bool> = HashMap::new();
    for Thread {
        pid,
        tid,
        kernel,
        start,
    } in threads(host)
    {
        if pid != me
            && *exempt_pid
                .entry(pid)
                .or_insert_with(|| exempt.covers(host, pid))
        {
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        let original = set_of(&current);
        if original.is_disjoint(cpus) {
            continue;
        }
        // A thread pinned to shielded CPUs only goes to the rest of the machine too.
        let mut reduced: BTreeSet<u32> = original.difference(cpus).copied().collect();
        if reduced.is_empty() {
            reduced = rest.clone();
        }
        if kernel {
            raised.unmovable += 1;
            continue;
        }
        plan.push((tid, start, original, reduced));
    }
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR IGNORE INTO shield (tid, start_time, original, written) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (tid, start, original, reduced) in &plan {
            ins.execute(params![
                tid,
                *start as i64,
                format_cpu_list(original),
                format_cpu_list(reduced)
            ])?;
        }
    }
    tx.commit()?;
    for (tid, _, _, reduced) in &plan {
        let ok =
            mask_of(reduced).is_some_and(|m| sched_setaffinity(Pid::from_raw(*tid), &m).is_ok());
        if ok {
            raised.moved += 1;
        } else {
            raised.unmovable += 1;
        }
    }
    Ok(())
}

/// Clock ticks since boot, the unit of a task's start time in `/proc/<pid>/stat`.
fn uptime_ticks(host: &Host) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    host.read("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * hz) as u64)
}

/// The `shield_irq` row saying every IRQ present at raise time is journaled.
const IRQS_COMPLETE: &str = "(every irq)";

/// IRQs that appeared while the shield was up took the shield's default affinity; those
/// that still have exactly it get the default's original back (every online CPU if the
/// default was not narrowed).
fn widen_new_irqs(
    host: &Host,
    conn: &Connection,
    journaled: &[(String, String, String)],
) -> rusqlite::Result<usize> {
    let meta: Option<(String, String, String)> = conn
        .query_row(
            "SELECT boot_id, shielded, online FROM shield_meta WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((boot_id, shielded, online)) = meta else {
        return Ok(0);
    };
    let complete = journaled.iter().any(|(p, _, _)| p == IRQS_COMPLETE);
    if !complete || host.boot_id().ok().as_deref() != Some(boot_id.as_str()) {
        return Ok(0);
    }
    let (Ok(shielded), Ok(online)) = (parse_cpu_list(&shielded), parse_cpu_list(&online)) else {
        return Ok(0);
    };
    let reduced: BTreeSet<u32> = online.difference(&shielded).copied().collect();
    let default = journaled
        .iter()
        .find(|(p, _, _)| p.ends_with("default_smp_affinity"))
        .and_then(|(_, original, _)| parse_cpu_list(original).ok())
        .unwrap_or(online);
    let mut widened = 0;
    for (path, mask, current) in irq_files(host) {
        if mask || current != reduced || journaled.iter().any(|(p, _, _)| *p == path) {
            continue;
        }
        if write_irq(host, &path, false, &default) {
            widened += 1;
        }
    }
    Ok(widened)
}

/// Threads born while the shield was up inherited a mask without the shielded CPUs; those
/// whose mask is still exactly that get every online CPU back.
fn widen_newborn(host: &Host, conn: &Connection) -> rusqlite::Result<usize> {
    let meta: Option<(i64, String, String, String)> = conn
        .query_row(
            "SELECT raised_at, boot_id, shielded, online FROM shield_meta WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((raised_at, boot_id, shielded, online)) = meta else {
        return Ok(0);
    };
    // Start times count from boot: after a reboot nothing was born under this shield.
    if host.boot_id().ok().as_deref() != Some(boot_id.as_str()) {
        return Ok(0);
    }
    let (Ok(shielded), Ok(online)) = (parse_cpu_list(&shielded), parse_cpu_list(&online)) else {
        return Ok(0);
    };
    let reduced: BTreeSet<u32> = online.difference(&shielded).copied().collect();
    let Some(full) = mask_of(&online) else {
        return Ok(0);
    };
    let mut widened = 0;
    for Thread {
        tid, kernel, start, ..
    } in threads(host)
    {
        if kernel || (start as i64) < raised_at {
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        if set_of(&current) == reduced && sched_setaffinity(Pid::from_raw(tid), &full).is_ok() {
            widened += 1;
        }
    }
    Ok(widened)
}

/// v2: ends whatever a dead daemon left in the partition and removes it (the kernel gives
/// its CPUs back to the root cgroup). Returns whether it is gone.
fn partition_down(host: &Host, dir: &str) -> bool {
    for name in host.list(dir) {
        let child = format!("{dir}/{name}");
        if !host.exists(&format!("{child}/cgroup.procs")) {
            continue;
        }
        let _ = host.write(&format!("{child}/cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while host
            .read(&format!("{child}/cgroup.procs"))
            .is_ok_and(|t| !t.trim().is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = host.remove_dir(&child);
    }
    remove_cgroup(host, dir)
}

/// Removes a cgroup directory, retrying briefly (a cgroup whose last task just exited
/// can still be busy for a moment); a missing one is fine.
fn remove_cgroup(host: &Host, dir: &str) -> bool {
    for _ in 0..100 {
        match host.remove_dir(dir) {
            Ok(()) => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    match host.remove_dir(dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot remove the shield's cgroup");
            false
        }
    }
}

/// v1: every process in the shield's cpuset goes back to the root cpuset (those it moved,
/// and what they started since), then the cpuset is removed.
fn cpuset_down(host: &Host, mount: &str, dir: &str) {
    for _ in 0..20 {
        let procs: Vec<String> = host
            .read(&format!("{dir}/cgroup.procs"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        if procs.is_empty() {
            break;
        }
        for pid in procs {
            let _ = host.write(&format!("{mount}/cgroup.procs"), pid.trim());
        }
    }
    if !remove_cgroup(host, dir) {
        // Someone made cgroups inside it: it cannot go, so it stops confining them.
        if let Ok(all) = host.read(&format!("{mount}/cpuset.cpus")) {
            let _ = host.write(&format!("{dir}/cpuset.cpus"), all.trim());
        }
        tracing::warn!(cpuset = %dir, "the shield's cpuset holds cgroups of someone else: left in place with every CPU");
    }
}

/// Whether thread `tid` is still the one that started at `start`.
fn same_thread(host: &Host, tid: i32, start: i64) -> bool {
    host.read(&format!("/proc/{tid}/stat"))
        .ok()
        .and_then(|t| stat_fields(&t))
        .is_some_and(|(_, s)| s as i64 == start)
}

type Row = (i32, i64, String, String);

fn shield_rows(conn: &Connection, moved: bool) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn
        .prepare_cached("SELECT tid, start_time, original, written FROM shield WHERE moved = ?1")?;
    let rows = stmt.query_map(params![moved], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    rows.collect()
}

/// Puts back everything the journal says the shield changed (the partition, the cpusets,
/// moved processes, thread masks, IRQs) where it still holds what the shield left;
/// returns how many things were restored.
pub fn lower(host: &Host, conn: &mut Connection) -> rusqlite::Result<usize> {
    type Meta = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let meta: Option<Meta> = conn
        .query_row(
            "SELECT cpuset_dir, cpuset_mount, partition, root_enabled FROM shield_meta
             WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let (cpuset_dir, cpuset_mount, partition, root_enabled) = meta.unwrap_or_default();
    let mut restored = 0;
    let mut partition_left = false;
    if let Some(dir) = &partition {
        if partition_down(host, dir) {
            restored += 1;
        } else {
            // A run process the kernel cannot kill yet (stuck in uninterruptible sleep)
            // holds it: it gives its CPUs back now and stays journaled, so the next
            // lowering removes it.
            let _ = host.write(&format!("{dir}/cpuset.cpus.partition"), "member");
            partition_left = true;
        }
        if let (Some(list), Some((root, _))) = (&root_enabled, dir.rsplit_once('/')) {
            for c in list.split_whitespace() {
                // Refused while anyone else uses it: then it stays.
                let _ = host.write(&format!("{root}/cgroup.subtree_control"), &format!("-{c}"));
            }
        }
    }
    // Masks of moved threads: only those still as the move left them are given back.
    let mut give_back: Vec<(i32, BTreeSet<u32>)> = Vec::new();
    for (tid, start, original, written) in shield_rows(conn, true)? {
        let current = sched_getaffinity(Pid::from_raw(tid)).map(|m| set_of(&m));
        if let (true, Ok(current), Ok(original), Ok(written)) = (
            same_thread(host, tid, start),
            current,
            parse_cpu_list(&original),
            parse_cpu_list(&written),
        ) {
            if current == written {
                give_back.push((tid, original));
            }
        }
    }
    if let (Some(dir), Some(mount)) = (&cpuset_dir, &cpuset_mount) {
        cpuset_down(host, mount, dir);
    }
    for (tid, original) in give_back {
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        // Kernels since 6.2 keep the mask asked for across cpuset moves; older ones widen
        // it to the cpuset's.
        if set_of(&current) == original
            || mask_of(&original).is_some_and(|m| sched_setaffinity(Pid::from_raw(tid), &m).is_ok())
        {
            restored += 1;
        }
    }
    // Narrowed cpusets, parents first.
    let cpusets: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT path, original, written FROM shield_cpuset ORDER BY depth ASC",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (path, original, written) in &cpusets {
        let file = format!("{path}/cpuset.cpus");
        let current = host.read(&file).ok().and_then(|t| parse_cpu_list(&t).ok());
        if current == parse_cpu_list(written).ok() && host.write(&file, original).is_ok() {
            restored += 1;
        }
    }
    conn.execute("DELETE FROM shield_cpuset", [])?;
    for (tid, start, original, written) in shield_rows(conn, false)? {
        if !same_thread(host, tid, start) {
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        let (Ok(original), Ok(written)) = (parse_cpu_list(&original), parse_cpu_list(&written))
        else {
            continue;
        };
        if set_of(&current) != written {
            continue; // changed by someone else since: left alone
        }
        if mask_of(&original).is_some_and(|m| sched_setaffinity(Pid::from_raw(tid), &m).is_ok()) {
            restored += 1;
        }
    }
    conn.execute("DELETE FROM shield", [])?;
    let irqs: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare_cached("SELECT path, original, written FROM shield_irq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (path, original, written) in irqs.iter().filter(|(p, _, _)| p != IRQS_COMPLETE) {
        let mask = path.ends_with("default_smp_affinity");
        let current = host.read(path).ok().and_then(|t| {
            if mask {
                crate::host::format::parse_cpu_mask(&t).ok()
            } else {
                parse_cpu_list(&t).ok()
            }
        });
        let (Ok(original), Ok(written)) = (parse_cpu_list(original), parse_cpu_list(written))
        else {
            continue;
        };
        // Compare-and-swap: only an affinity still as the shield left it goes back.
        if original != written
            && current.as_ref() == Some(&written)
            && write_irq(host, path, mask, &original)
        {
            restored += 1;
        }
    }
    restored += widen_new_irqs(host, conn, &irqs)?;
    // Threads born under a cpuset or partition shield got their CPUs back from the kernel;
    // only the affinity shield leaves newborn masks to widen.
    if cpuset_dir.is_none() && partition.is_none() {
        restored += widen_newborn(host, conn)?;
    }
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM shield_irq", [])?;
    if partition_left {
        tx.execute(
            "UPDATE shield_meta SET cpuset_dir = NULL, cpuset_mount = NULL, root_enabled = NULL",
            [],
        )?;
    } else {
        tx.execute("DELETE FROM shield_meta", [])?;
    }
    tx.commit()?;
    Ok(restored)
}

/// Whether a shield is journaled (raised, or left by a crash).
pub fn is_raised(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM shield) OR EXISTS (SELECT 1 FROM shield_irq)
             OR EXISTS (SELECT 1 FROM shield_meta) OR EXISTS (SELECT 1 FROM shield_cpuset)",
        [],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_matched_by_component() {
        assert!(is_under("/system.slice/db.service", "/system.slice"));
        assert!(is_under("/system.slice", "/system.slice/"));
        assert!(!is_under("/system.slice2/x", "/system.slice"));
        assert!(!is_under("/", "/system.slice"));
    }

    #[test]
    fn the_v2_partition_is_journaled_made_and_removed() {
        let mount = "/sys/fs/cgroup";
        let dir = "/sys/fs/cgroup/cleanroom-exclusive-ab";
        let (_tmp, host) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-3\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/proc/uptime", "10.0 1.0\n"),
            (
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory pids\n",
            ),
            ("/sys/fs/cgroup/cgroup.subtree_control", "cpu memory pids\n"),
            (
                "/sys/fs/cgroup/cleanroom-exclusive-ab/cgroup.controllers",
                "cpuset cpu memory pids\n",
            ),
            (
                "/sys/fs/cgroup/cleanroom-exclusive-ab/cgroup.subtree_control",
                "",
            ),
            ("/sys/fs/cgroup/cleanroom-exclusive-ab/cpuset.cpus", ""),
            (
                "/sys/fs/cgroup/cleanroom-exclusive-ab/cpuset.cpus.partition",
                "member\n",
            ),
        ]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let mut conn = store.lock_blocking();
        let method = Method::Partition {
            mount: mount.into(),
            dir: dir.into(),
            limits_from: "/sys/fs/cgroup/system.slice/cleanroomd.service".into(),
        };
        let cpus: BTreeSet<u32> = [2, 3].into();
        let r = raise(&host, &mut conn, &cpus, &Exempt::default(), &method).unwrap();
        assert_eq!(r.method, "partition");
        assert_eq!(r.partition.as_deref(), Some(dir));
        let read = |f: &str| host.read(&format!("{dir}/{f}")).unwrap();
        assert_eq!(read("cpuset.cpus"), "2-3");
        assert_eq!(read("cpuset.cpus.partition"), "root");
        assert_eq!(read("cgroup.subtree_control"), "+cpuset +cpu +memory +pids");
        // The root lacked cpuset for its children: enabled, and journaled to undo.
        assert_eq!(
            host.read("/sys/fs/cgroup/cgroup.subtree_control").unwrap(),
            "+cpuset"
        );
        assert!(is_raised(&conn).unwrap());
        // A partition that cannot be removed (here: a fake directory with files; on a
        // host: a run stuck in the kernel) gives its CPUs back and stays journaled...
        lower(&host, &mut conn).unwrap();
        assert_eq!(read("cpuset.cpus.partition"), "member");
        assert_eq!(
            host.read("/sys/fs/cgroup/cgroup.subtree_control").unwrap(),
            "-cpuset"
        );
        assert!(is_raised(&conn).unwrap());
        // ...and the next lowering removes it.
        std::fs::remove_dir_all(host.path(dir).unwrap()).unwrap();
        std::fs::create_dir(host.path(dir).unwrap()).unwrap();
        lower(&host, &mut conn).unwrap();
        assert!(!host.exists(dir));
        assert!(!is_raised(&conn).unwrap());
    }

    #[test]
    fn no_cpuset_controller_means_the_affinity_shield() {
        let (_tmp, host) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-1\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n"),
        ]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let mut conn = store.lock_blocking();
        let method = Method::Partition {
            mount: "/sys/fs/cgroup".into(),
            dir: "/sys/fs/cgroup/cleanroom-exclusive-ab".into(),
            limits_from: "/sys/fs/cgroup".into(),
        };
        let r = raise(&host, &mut conn, &[1].into(), &Exempt::default(), &method).unwrap();
        assert_eq!(r.method, "affinity");
        assert_eq!(
            r.fallback.as_deref(),
            Some("the root cgroup has no cpuset controller")
        );
        assert!(!host.exists("/sys/fs/cgroup/cleanroom-exclusive-ab"));
        // A pool of every online CPU is refused: nothing would be left.
        let e = raise(
            &host,
            &mut conn,
            &[0, 1].into(),
            &Exempt::default(),
            &method,
        );
        assert!(e.unwrap_err().contains("covers every online CPU"));
        lower(&host, &mut conn).unwrap();
    }

    #[test]
    fn irqs_that_appear_under_the_shield_get_the_default_back() {
        let (tmp, host) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-3\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/proc/irq/default_smp_affinity", "f\n"),
            ("/proc/irq/1/smp_affinity_list", "0-3\n"),
            // Pinned by an admin to exactly what the shield leaves: not the shield's doing.
            ("/proc/irq/3/smp_affinity_list", "0-1\n"),
        ]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let mut conn = store.lock_blocking();
        let r = raise(
            &host,
            &mut conn,
            &[2, 3].into(),
            &Exempt::default(),
            &Method::Affinity,
        )
        .unwrap();
        assert_eq!(r.irqs_moved, 2, "the default and IRQ 1");
        assert_eq!(host.read("/proc/irq/1/smp_affinity_list").unwrap(), "0-1");
        // IRQ 2 appears meanwhile, with the shield's default.
        std::fs::create_dir_all(tmp.path().join("proc/irq/2")).unwrap();
        std::fs::write(tmp.path().join("proc/irq/2/smp_affinity_list"), "0-1\n").unwrap();
        lower(&host, &mut conn).unwrap();
        assert_eq!(host.read("/proc/irq/1/smp_affinity_list").unwrap(), "0-3");
        assert_eq!(host.read("/proc/irq/2/smp_affinity_list").unwrap(), "0-3");
        assert_eq!(host.read("/proc/irq/3/smp_affinity_list").unwrap(), "0-1\n");
        assert_eq!(host.read("/proc/irq/default_smp_affinity").unwrap(), "f");
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let text =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(stat_fields(text), Some((4_194_560, 98_765)));
        assert_eq!(stat_fields("garbage"), None);
    }
}
