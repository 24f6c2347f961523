//! Threads and their CPU masks: listing them, narrowing the masks of whatever is still
//! allowed on the shielded CPUs (journaled first), and widening threads born under an
//! affinity shield.

use super::*;

/// Fields of `/proc/<tid>/stat` after the command name: (flags, start time).
pub(crate) fn stat_fields(text: &str) -> Option<(u64, u64)> {
    // From just after the last `)` (one byte, so always a character boundary): the space
    // that follows it is whitespace the split skips, and a text that ends there has none.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(6)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

pub(super) const PF_KTHREAD: u64 = 0x0020_0000;

/// One thread of the system: process id, thread id, whether it is a kernel thread, and
/// its start time (clock ticks since boot).
pub(super) struct Thread {
    pub(super) pid: i32,
    pub(super) tid: i32,
    pub(super) kernel: bool,
    pub(super) start: u64,
}

/// Every thread in `/proc` whose stat could be read.
pub(super) fn threads(host: &Host) -> Vec<Thread> {
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

pub(super) fn mask_of(set: &BTreeSet<u32>) -> Option<CpuSet> {
    let mut m = CpuSet::new();
    for &c in set {
        m.set(c as usize).ok()?;
    }
    Some(m)
}

pub(super) fn set_of(m: &CpuSet) -> BTreeSet<u32> {
    (0..CpuSet::count())
        .filter(|&c| m.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect()
}

/// The affinity of every thread still allowed on `cpus` is narrowed, originals journaled
/// first. After a partition or the cpuset move this finds only what those left.
pub(super) fn affinity_off(
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
    let rows: Vec<journal::Saved<journal::Thread>> = plan
        .iter()
        .map(|(tid, start, original, reduced)| journal::Saved {
            key: journal::Thread {
                tid: *tid,
                start: *start as i64,
            },
            original: format_cpu_list(original),
            written: format_cpu_list(reduced),
        })
        .collect();
    journal::add_threads(conn, &rows, false)?;
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
pub(super) fn uptime_ticks(host: &Host) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    host.read("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * hz) as u64)
}

/// Threads born while the shield was up inherited a mask without the shielded CPUs; those
/// whose mask is still exactly that get every online CPU back.
pub(super) fn widen_newborn(host: &Host, meta: &journal::Meta) -> usize {
    // Start times count from boot: after a reboot nothing was born under this shield.
    if host.boot_id().ok().as_deref() != Some(meta.boot_id.as_str()) {
        return 0;
    }
    let (Ok(shielded), Ok(online)) = (parse_cpu_list(&meta.shielded), parse_cpu_list(&meta.online))
    else {
        return 0;
    };
    let reduced: BTreeSet<u32> = online.difference(&shielded).copied().collect();
    let Some(full) = mask_of(&online) else {
        return 0;
    };
    let mut widened = 0;
    for Thread {
        tid, kernel, start, ..
    } in threads(host)
    {
        if kernel || (start as i64) < meta.raised_at {
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        if set_of(&current) == reduced && sched_setaffinity(Pid::from_raw(tid), &full).is_ok() {
            widened += 1;
        }
    }
    widened
}

/// Whether thread `tid` is still the one that started at `start`.
pub(super) fn same_thread(host: &Host, tid: i32, start: i64) -> bool {
    host.read(&format!("/proc/{tid}/stat"))
        .ok()
        .and_then(|t| stat_fields(&t))
        .is_some_and(|(_, s)| s as i64 == start)
}
