//! A profile's `[partition] isolated = "CPUS"`: those CPUs kept free of every task, IRQ and
//! unbound kernel work that no pin rule places there, for as long as the profile is in
//! force and the daemon runs.
//!
//! The partition is the shield exclusive runs raise, held by the profile instead
//! ([`crate::run::Runner::hold_partition`]): the same journal, the same lowering (at a
//! revert, a stop, or the next start after a crash, which re-raises it when `on_start`
//! re-applies the profile). Threads pin rules place on its CPUs are taken over from the
//! shield ([`crate::pin::Fence`]); exclusive runs take their cores from inside it.

use std::collections::BTreeSet;

use cleanroom_proto::{KnobResult, KnobStatus};

use super::profile::{Resolved, Setting};
use super::{Ctx, Error};
use crate::host::Host;
use crate::host::format::{format_cpu_list, parse_cpu_list};
use crate::pin::rule::Rule;

/// The knob name partition rows carry.
const KNOB: &str = "partition (isolated CPUs)";

/// The CPUs profile `profile` partitions off, if it does.
pub(super) fn wanted(profile: &Resolved) -> Option<BTreeSet<u32>> {
    match profile.settings.get("partition.isolated")?.setting {
        Setting::Partition(ref cpus) => Some(cpus.clone()),
        _ => None,
    }
}

/// Whether a partition over `cpus` fits this host: every CPU online, and one at least left
/// to everything else. Checked before anything is written.
pub(super) fn check(host: &Host, profile: &str, cpus: &BTreeSet<u32>) -> Result<(), Error> {
    let online = host
        .read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(&t).ok())
        .unwrap_or_default();
    let missing: BTreeSet<u32> = cpus.difference(&online).copied().collect();
    if !missing.is_empty() {
        return Err(Error::Profile(format!(
            "profile {profile}: partition.isolated = \"{}\" names CPUs {} this host does not have online (online: {})",
            format_cpu_list(cpus),
            format_cpu_list(&missing),
            format_cpu_list(&online)
        )));
    }
    if online.is_subset(cpus) {
        return Err(Error::Profile(format!(
            "profile {profile}: partition.isolated = \"{}\" covers every online CPU: nothing would be left for the rest of the system",
            format_cpu_list(cpus)
        )));
    }
    Ok(())
}

/// Whether profile `profile`'s own pin rules place work on its partition's CPUs.
pub(super) fn pinned_inside(profile: &Resolved) -> bool {
    wanted(profile).is_some_and(|cpus| !pinned_cpus(&profile.pins).is_disjoint(&cpus))
}

/// The CPUs `rules` place tasks on.
fn pinned_cpus(rules: &[Rule]) -> BTreeSet<u32> {
    rules.iter().filter_map(Rule::cpus).flatten().collect()
}

/// Puts profile `name`'s partition over `cpus` in force (or, `None`, none), and tells
/// pinning; the partition's row. Exclusive runs take cores from the partition but for
/// the CPUs `rules` (every rule in force) place tasks on.
pub(super) fn hold(
    ctx: Ctx<'_>,
    name: &str,
    cpus: Option<&BTreeSet<u32>>,
    rules: &[Rule],
) -> Result<Option<KnobResult>, Error> {
    let Some(runner) = ctx.runner else {
        return Ok(cpus.map(|c| {
            row(
                None,
                c,
                KnobStatus::Unsupported,
                Some("no run engine in this process".into()),
            )
        }));
    };
    let before = runner.partition();
    let held = runner
        .hold_partition(cpus.map(|c| (name, c)), &pinned_cpus(rules))
        .map_err(|e| Error::Profile(format!("profile {name}: {e}")))?;
    ctx.pins.set_fence(held.as_ref().map(fence));
    Ok(held.map(|p| {
        let status = match &before {
            Some(b) if b.cpus == p.cpus => KnobStatus::Unchanged,
            _ => KnobStatus::Applied,
        };
        let reason = (status == KnobStatus::Applied).then(|| moved_text(&p));
        row(Some(&p), &p.cpus, status, reason)
    }))
}

/// The partition out of force (a revert): pinning first forgets it, then the shield comes
/// down (or stays for exclusive runs still inside it, which lower it as they end). The
/// row of the partition that was in force.
pub(super) fn release(ctx: Ctx<'_>) -> Option<KnobResult> {
    let runner = ctx.runner?;
    let before = runner.partition()?;
    ctx.pins.set_fence(None);
    // Taking a partition out of force cannot fail: at worst it stays for runs.
    let _ = runner.hold_partition(None, &BTreeSet::new());
    Some(KnobResult {
        knob: KNOB.into(),
        path: path_of(&before),
        before: Some(format_cpu_list(&before.cpus)),
        after: None,
        status: KnobStatus::Restored,
        reason: None,
    })
}

/// Verify: the partition in force against the profile's, and no task but pinned ones and
/// per-CPU kernel threads allowed on its CPUs.
pub(super) fn verify(ctx: Ctx<'_>, want: Option<&BTreeSet<u32>>) -> Option<KnobResult> {
    let want = want?;
    let Some(runner) = ctx.runner else {
        return Some(row(
            None,
            want,
            KnobStatus::Unsupported,
            Some("no run engine in this process".into()),
        ));
    };
    let Some(p) = runner.partition().filter(|p| &p.cpus == want) else {
        let mut r = row(None, want, KnobStatus::Drifted, None);
        r.reason = Some(match runner.partition() {
            Some(other) => format!("the partition in force is {}", format_cpu_list(&other.cpus)),
            None => "no partition is up (re-apply the profile)".into(),
        });
        r.before = runner.partition().map(|o| format_cpu_list(&o.cpus));
        return Some(r);
    };
    let conn = ctx.store.lock_blocking();
    let pinned: BTreeSet<i32> = crate::store::pins::placed_on(&conn, want)
        .unwrap_or_default()
        .into_iter()
        .collect();
    drop(conn);
    // The daemon's own runs live in its run cgroups (exclusive ones on the partition).
    let runs: Vec<String> = runner
        .cgroup_bases()
        .into_iter()
        .chain(p.cgroup.clone())
        .filter_map(|b| b.rsplit('/').next().map(str::to_owned))
        .collect();
    let intruders = intruders(ctx.host, want, &pinned, &runs);
    let irqs = {
        let conn = ctx.store.lock_blocking();
        crate::run::shield::drifted_irqs(ctx.host, &conn)
    };
    let mut r = row(Some(&p), want, KnobStatus::Ok, None);
    let mut why = Vec::new();
    if !intruders.is_empty() {
        let shown: Vec<String> = intruders.iter().take(5).map(i32::to_string).collect();
        why.push(format!(
            "{} task(s) neither pinned there nor bound by the kernel may run on its CPUs (tids {}{})",
            intruders.len(),
            shown.join(", "),
            if intruders.len() > 5 { ", …" } else { "" }
        ));
    }
    if !irqs.is_empty() {
        let shown: Vec<String> = irqs
            .iter()
            .take(5)
            .map(|(path, written, now)| format!("{path}: {now}, was moved to {written}"))
            .collect();
        why.push(format!(
            "{} IRQ affinity file(s) changed since the partition moved them ({}{})",
            irqs.len(),
            shown.join("; "),
            if irqs.len() > 5 { "; …" } else { "" }
        ));
    }
    if !why.is_empty() {
        r.status = KnobStatus::Drifted;
        r.reason = Some(why.join("; "));
    }
    Some(r)
}

/// Threads allowed on any of `cpus` that pin rules did not place there, the kernel lets
/// move and are not the daemon's runs (in a cgroup named in `runs`). The shield's
/// exemptions count: an admin asked for them, and verify says so.
fn intruders(
    host: &Host,
    cpus: &BTreeSet<u32>,
    pinned: &BTreeSet<i32>,
    runs: &[String],
) -> Vec<i32> {
    use nix::sched::sched_getaffinity;
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    let a_run = |pid: i32| {
        host.read(&format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
            t.lines().any(|l| {
                let path = l.splitn(3, ':').nth(2).unwrap_or("");
                path.split('/').any(|seg| runs.iter().any(|r| r == seg))
            })
        })
    };
    let mut runs_of: std::collections::HashMap<i32, bool> = std::collections::HashMap::new();
    crate::host::tasks::threads(host)
        .into_iter()
        .filter(|t| !t.fixed && t.pid != me && !pinned.contains(&t.tid))
        .filter(|t| !*runs_of.entry(t.pid).or_insert_with(|| a_run(t.pid)))
        .filter(|t| {
            sched_getaffinity(Pid::from_raw(t.tid))
                .is_ok_and(|m| !crate::host::tasks::set_of(&m).is_disjoint(cpus))
        })
        .map(|t| t.tid)
        .collect()
}

/// What pinning needs to know of a partition.
fn fence(p: &crate::run::Partition) -> crate::pin::Fence {
    crate::pin::Fence {
        cpus: p.cpus.clone(),
        cpuset: p.cpuset.clone(),
        cgroup: p.cgroup.clone(),
    }
}

/// Where the partition lives, for its row: the cgroup or cpuset that keeps others off.
fn path_of(p: &crate::run::Partition) -> String {
    match (&p.cgroup, &p.cpuset) {
        (Some(cg), _) => cg.clone(),
        (None, Some((_, dir))) => dir.clone(),
        (None, None) => "(the CPU affinity of every task)".into(),
    }
}

/// What raising it moved, for a person.
fn moved_text(p: &crate::run::Partition) -> String {
    let m = &p.moved;
    format!(
        "by {}: {} processes moved, {} threads narrowed, {} IRQs moved ({} stay: managed), {} threads the kernel binds stay",
        p.method, m.processes, m.threads, m.irqs, m.irqs_unmovable, m.unmovable
    )
}

fn row(
    p: Option<&crate::run::Partition>,
    cpus: &BTreeSet<u32>,
    status: KnobStatus,
    reason: Option<String>,
) -> KnobResult {
    KnobResult {
        knob: KNOB.into(),
        path: p.map(path_of).unwrap_or_default(),
        before: None,
        after: Some(format_cpu_list(cpus)),
        status,
        reason,
    }
}

/// The partition's row in a dry run.
pub(super) fn planned(cpus: &BTreeSet<u32>) -> KnobResult {
    row(None, cpus, KnobStatus::Planned, None)
}
