//! cgroup v2: the cpuset partition exclusive runs live in.

use super::*;

/// v2: the partition exclusive runs go into; the kernel takes its CPUs from everyone else.
/// It gets the memory and task limits of the daemon's own cgroup (`limits_from`), so
/// exclusive runs stay inside what the host gives the daemon. `isolated` asks for an
/// isolated partition first, then a root one. On failure nothing is left (controllers it
/// enabled in the root cgroup are disabled again). The type the kernel took.
pub(super) fn partition_up(
    host: &Host,
    conn: &Connection,
    (mount, dir, limits_from): (&str, &str, &str),
    cpus: &BTreeSet<u32>,
    isolated: bool,
) -> Result<&'static str, Error> {
    let available = host.read(&format!("{mount}/cgroup.controllers"))?;
    if !available.split_whitespace().any(|c| c == "cpuset") {
        return Err(Error::NoCpuset);
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
        if let Err(e) = journal::set_root_enabled(conn, None) {
            tracing::error!(error = %e, "cannot journal the root cgroup's controllers");
        }
    };
    if !missing.is_empty() {
        // Journaled first: lowering the shield disables them again (if nobody uses them).
        journal::set_root_enabled(conn, Some(&missing.join(" ")))?;
        let plus: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        if let Err(e) = host.write(&format!("{mount}/cgroup.subtree_control"), &plus.join(" ")) {
            undo_root();
            return Err(e.into());
        }
    }
    let fail = |e: Error| {
        if let Err(undo) = host.remove_dir(dir) {
            tracing::error!(error = %undo, "cannot remove a partition that did not go up");
        }
        undo_root();
        e
    };
    host.make_dir(dir).map_err(|e| fail(e.into()))?;
    host.write(&format!("{dir}/cpuset.cpus"), &format_cpu_list(cpus))
        .map_err(|e| fail(e.into()))?;
    for f in ["memory.max", "memory.swap.max", "pids.max"] {
        let from = format!("{limits_from}/{f}");
        if let (Ok(v), true) = (host.read(&from), host.exists(&format!("{dir}/{f}"))) {
            host.write(&format!("{dir}/{f}"), v.trim())
                .map_err(|e| fail(e.into()))?;
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
        .map_err(|e| fail(e.into()))?;
    let file = format!("{dir}/cpuset.cpus.partition");
    let kinds: &[&'static str] = if isolated {
        &["isolated", "root"]
    } else {
        &["root"]
    };
    let mut refused = String::new();
    for kind in kinds {
        match host.write(&file, kind) {
            // The kernel may take the write and leave the partition invalid (it says why
            // in the file): only the type read back counts.
            Ok(()) => match host.read(&file).unwrap_or_default().trim() {
                state if state == *kind => return Ok(kind),
                state => refused = state.to_owned(),
            },
            Err(e) => refused = e.to_string(),
        }
        tracing::info!(kind, reason = %refused, "the kernel refused a partition type");
    }
    Err(fail(Error::PartitionRefused(refused)))
}

/// v2: ends whatever a dead daemon left in the partition and removes it (the kernel gives
/// its CPUs back to the root cgroup). Returns whether it is gone.
pub(super) fn partition_down(host: &Host, dir: &str) -> bool {
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
pub(super) fn remove_cgroup(host: &Host, dir: &str) -> bool {
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
