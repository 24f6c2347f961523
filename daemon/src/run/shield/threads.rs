//! Threads and their CPU masks: listing them, narrowing the masks of whatever is still
//! allowed on the shielded CPUs (journaled first), and widening threads born under an
//! affinity shield.

use super::*;
use crate::host::tasks::{Thread, mask_of, set_of, threads};

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
        fixed,
        start,
        ..
    } in threads(host)
    {
        if exempt.tids.contains(&tid) {
            continue;
        }
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
        // Kernel threads move too, but for those bound to their CPU by the kernel.
        if fixed {
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
        tid, fixed, start, ..
    } in threads(host)
    {
        if fixed || (start as i64) < meta.raised_at {
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
