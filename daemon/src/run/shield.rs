//! Exclusive CPUs: whole cores from the isolation pool for one run at a time, and the
//! shield that keeps every other task off them while any exclusive run holds cores.
//!
//! On cgroup v1 (this kind of host) the shield is the CPU affinity of every other thread:
//! the shielded CPUs are removed from each one's mask (its original mask is journaled in
//! SQLite first, so a crash never leaves the host shielded: the next start puts the masks
//! back). Processes started later inherit the reduced mask from their parent. Lowering the
//! shield is compare-and-swap per thread: a mask someone changed since is left alone.
//!
//! IRQs are moved off the shielded CPUs the same way (default affinity and every IRQ the
//! kernel lets move; managed IRQs stay and are counted).
//!
//! Limitations (next steps): the cgroup v2 partition (`cpuset.cpus.partition`, which lets
//! the kernel keep every present and future task off the CPUs), NUMA-aware
//! placement, waiting for cores instead of failing fast, and children of exempt processes
//! (PID 1 when exempt) are not shielded.

use std::collections::BTreeSet;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use rusqlite::{Connection, OptionalExtension, params};

use crate::host::Host;
use crate::host::format::{format_cpu_list, parse_cpu_list};

/// Groups of SMT siblings (one per core) among `cpus`, from sysfs.
pub fn cores(host: &Host, cpus: &BTreeSet<u32>) -> Vec<BTreeSet<u32>> {
    let mut out: Vec<BTreeSet<u32>> = Vec::new();
    for &cpu in cpus {
        if out.iter().any(|c| c.contains(&cpu)) {
            continue;
        }
        let siblings = host
            .read(&format!(
                "/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            ))
            .ok()
            .and_then(|t| parse_cpu_list(&t).ok())
            .unwrap_or_else(|| BTreeSet::from([cpu]));
        out.push(siblings);
    }
    out
}

/// Picks `want` CPUs as whole cores from `pool` minus `taken`; `None` if they are not free.
pub fn pick(
    cores: &[BTreeSet<u32>],
    pool: &BTreeSet<u32>,
    taken: &BTreeSet<u32>,
    want: usize,
) -> Option<BTreeSet<u32>> {
    let mut got = BTreeSet::new();
    for core in cores {
        if got.len() >= want {
            break;
        }
        if core.is_subset(pool) && core.is_disjoint(taken) {
            got.extend(core.iter().copied());
        }
    }
    (got.len() >= want).then_some(got)
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
    /// Threads moved off the shielded CPUs.
    pub moved: usize,
    /// Threads that could not be moved (per-CPU kernel threads and the like).
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

/// Keeps every thread but the exempt ones off `cpus`, journaling each original mask first.
pub fn raise(
    host: &Host,
    conn: &mut Connection,
    cpus: &BTreeSet<u32>,
    exempt: &[i32],
) -> rusqlite::Result<Raised> {
    let mut plan: Vec<(i32, u64, BTreeSet<u32>, BTreeSet<u32>)> = Vec::new();
    let mut raised = Raised::default();
    let me = std::process::id() as i32;
    for Thread {
        pid,
        tid,
        kernel,
        start,
    } in threads(host)
    {
        if exempt.contains(&pid) && pid != me {
            continue;
        }
        if kernel {
            raised.unmovable += 1;
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        let original = set_of(&current);
        if original.is_disjoint(cpus) {
            continue;
        }
        let reduced: BTreeSet<u32> = original.difference(cpus).copied().collect();
        if reduced.is_empty() {
            raised.unmovable += 1;
            continue;
        }
        plan.push((tid, start, original, reduced));
    }
    let irqs: Vec<(String, bool, BTreeSet<u32>, BTreeSet<u32>)> = irq_files(host)
        .into_iter()
        .filter(|(_, _, set)| !set.is_disjoint(cpus))
        .filter_map(|(path, mask, set)| {
            let reduced: BTreeSet<u32> = set.difference(cpus).copied().collect();
            (!reduced.is_empty()).then_some((path, mask, set, reduced))
        })
        .collect();
    // Originals on disk before any mask changes, with when the shield went up (threads
    // born under it are given their CPUs back when it comes down).
    let online = host
        .read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(&t).ok())
        .unwrap_or_default();
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT OR REPLACE INTO shield_meta (id, raised_at, boot_id, shielded, online)
         VALUES (1, ?1, ?2, ?3, ?4)",
        params![
            uptime_ticks(host) as i64,
            host.boot_id().unwrap_or_default(),
            format_cpu_list(cpus),
            format_cpu_list(&online)
        ],
    )?;
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
    for (path, mask, _, reduced) in &irqs {
        if write_irq(host, path, *mask, reduced) {
            raised.irqs_moved += 1;
        } else {
            raised.irqs_unmovable += 1;
        }
    }
    for (tid, _, _, reduced) in &plan {
        let ok =
            mask_of(reduced).is_some_and(|m| sched_setaffinity(Pid::from_raw(*tid), &m).is_ok());
        if ok {
            raised.moved += 1;
        } else {
            raised.unmovable += 1;
        }
    }
    Ok(raised)
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

/// Puts back every journaled mask that still holds what the shield wrote, on the same
/// thread (same start time), and every online CPU to threads born under the shield that
/// still have its mask; returns how many.
pub fn lower(host: &Host, conn: &mut Connection) -> rusqlite::Result<usize> {
    let rows: Vec<(i32, i64, String, String)> = {
        let mut stmt =
            conn.prepare_cached("SELECT tid, start_time, original, written FROM shield")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut restored = 0;
    for (tid, start, original, written) in &rows {
        let same_thread = host
            .read(&format!("/proc/{tid}/stat"))
            .ok()
            .and_then(|t| stat_fields(&t))
            .is_some_and(|(_, s)| s as i64 == *start);
        if !same_thread {
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(*tid)) else {
            continue;
        };
        let (Ok(original), Ok(written)) = (parse_cpu_list(original), parse_cpu_list(written))
        else {
            continue;
        };
        if set_of(&current) != written {
            continue; // changed by someone else since: left alone
        }
        if mask_of(&original).is_some_and(|m| sched_setaffinity(Pid::from_raw(*tid), &m).is_ok()) {
            restored += 1;
        }
    }
    conn.execute("DELETE FROM shield", [])?;
    let irqs: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare_cached("SELECT path, original, written FROM shield_irq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (path, original, written) in &irqs {
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
        if current.as_ref() == Some(&written) && write_irq(host, path, mask, &original) {
            restored += 1;
        }
    }
    conn.execute("DELETE FROM shield_irq", [])?;
    restored += widen_newborn(host, conn)?;
    conn.execute("DELETE FROM shield_meta", [])?;
    Ok(restored)
}

/// Whether a shield is journaled (raised, or left by a crash).
pub fn is_raised(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM shield) OR EXISTS (SELECT 1 FROM shield_irq)
             OR EXISTS (SELECT 1 FROM shield_meta)",
        [],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn picks_whole_cores_from_the_pool() {
        let cores = vec![set(&[0, 4]), set(&[1, 5]), set(&[2, 6]), set(&[3, 7])];
        let pool = set(&[1, 2, 3, 5, 6, 7]);
        assert_eq!(pick(&cores, &pool, &set(&[]), 2), Some(set(&[1, 5])));
        assert_eq!(
            pick(&cores, &pool, &set(&[1, 5]), 3),
            Some(set(&[2, 3, 6, 7]))
        );
        assert_eq!(pick(&cores, &pool, &set(&[1, 2, 3]), 1), None);
        // A core half outside the pool is never handed out.
        assert_eq!(
            pick(&cores, &set(&[0, 1, 5]), &set(&[]), 1),
            Some(set(&[1, 5]))
        );
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let text =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(stat_fields(text), Some((4_194_560, 98_765)));
        assert_eq!(stat_fields("garbage"), None);
    }
}
