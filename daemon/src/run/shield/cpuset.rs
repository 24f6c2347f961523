//! cgroup v1: the shield's cpuset, which the root cpuset's processes move into, and the
//! other cpusets that give up the shielded CPUs.

use super::*;

/// The cgroup directories below `dir` (depth first), with their depth below the mount.
pub(super) fn cgroup_tree(host: &Host, dir: &str, depth: usize, out: &mut Vec<(String, usize)>) {
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
pub(super) fn cpuset_up(
    host: &Host,
    conn: &mut Connection,
    mount: &str,
    dir: &str,
    keep: &str,
    cpus: &BTreeSet<u32>,
    rest: &BTreeSet<u32>,
    exempt: &Exempt,
    raised: &mut Raised,
) -> Result<(), Error> {
    host.make_dir(dir)?;
    let mems = host.read(&format!("{mount}/cpuset.mems"))?;
    host.write(&format!("{dir}/cpuset.mems"), mems.trim())?;
    host.write(&format!("{dir}/cpuset.cpus"), &format_cpu_list(rest))?;
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
    let rows: Vec<journal::Saved<journal::Cpuset>> = narrow
        .iter()
        .map(|(path, depth, current, reduced)| journal::Saved {
            key: journal::Cpuset {
                path: path.clone(),
                depth: *depth as i64,
            },
            original: format_cpu_list(current),
            written: format_cpu_list(reduced),
        })
        .collect();
    journal::add_cpusets(conn, &rows)?;
    for (path, _, _, reduced) in &narrow {
        match host.write(&format!("{path}/cpuset.cpus"), &format_cpu_list(reduced)) {
            Ok(()) => raised.cpusets_narrowed += 1,
            Err(err) => tracing::warn!(error = %err, "a cpuset kept the shielded CPUs"),
        }
    }
    // The root cpuset's processes move, their threads' masks journaled first (attaching
    // to a v1 cpuset rewrites them).
    let procs: Vec<i32> = host
        .read(&format!("{mount}/cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let me = std::process::id() as i32;
    for pid in procs {
        if pid != me && exempt.covers(host, pid) {
            continue;
        }
        // A process with a thread pinned on the shielded CPUs stays where they are allowed;
        // the affinity pass narrows its other threads.
        if host
            .list(&format!("/proc/{pid}/task"))
            .iter()
            .filter_map(|t| t.parse::<i32>().ok())
            .any(|tid| exempt.tids.contains(&tid))
        {
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
        let rows: Vec<journal::Saved<journal::Thread>> = threads
            .iter()
            .map(|(tid, start, original)| {
                let expected: BTreeSet<u32> = original.intersection(rest).copied().collect();
                journal::Saved {
                    key: journal::Thread {
                        tid: *tid,
                        start: *start as i64,
                    },
                    original: format_cpu_list(original),
                    written: format_cpu_list(if expected.is_empty() { rest } else { &expected }),
                }
            })
            .collect();
        journal::add_threads(conn, &rows, true)?;
        if host
            .write(&format!("{dir}/cgroup.procs"), &pid.to_string())
            .is_ok()
        {
            raised.processes_moved += 1;
            // What the kernel made of each mask, for the compare-and-swap on the way back.
            for (tid, _, _) in &threads {
                if let Ok(now) = sched_getaffinity(Pid::from_raw(*tid)) {
                    journal::set_thread_written(conn, *tid, &format_cpu_list(&set_of(&now)))?;
                }
            }
        } else {
            // Gone, or refused: the affinity pass takes care of it.
            let tids: Vec<i32> = threads.iter().map(|(tid, _, _)| *tid).collect();
            journal::forget_moved_threads(conn, &tids)?;
        }
    }
    Ok(())
}

/// v1: every process in the shield's cpuset goes back to the root cpuset (those it moved,
/// and what they started since), then the cpuset is removed.
pub(super) fn cpuset_down(host: &Host, mount: &str, dir: &str) {
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
