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
//! Kernel threads the kernel lets move (kthreadd, unbound workers) are moved like any
//! other thread; per-CPU ones cannot be, and are counted. IRQs move off the pool the same
//! way (the default affinity and every IRQ the kernel lets move; managed IRQs stay and are
//! counted), and so does the workqueue cpumask (unbound kernel work).
//!
//! Everything is journaled in SQLite before it is changed, like tuning, so a crash never
//! leaves the host shielded: the next start lowers a shield it finds. Lowering is
//! compare-and-swap: a mask or cpuset someone changed since is left alone; what the kernel
//! refuses to take back stays journaled for the next lowering, and the next raise fails
//! ([`Error::PreviousLeft`]) while it cannot, rather than journal the shield's values as
//! originals. The property tests (`props.rs`) hold the journal to this over random raises,
//! lowerings, forced lowerings, outside writes, new IRQs, crashes at every step, refused
//! writes and restarts.
//!
//! The way out when the kernel refuses for good (an IRQ whose affinity can no longer be
//! set, a cpuset that cannot have its CPUs back): an admin's forced lowering
//! ([`lower_forcing`]: `cleanroomctl shield lower --force`, or `cleanroomd --revert
//! --force` with the daemon stopped) forgets what the kernel still refuses, in the commit
//! that writes one audit row per item, and reports each with its file, the value it should
//! hold and the one it holds, to be set by hand. What the kernel does take back is restored,
//! not forgotten. A v2 partition that cannot be removed yet stays journaled even then: it
//! gave its CPUs back and does not hold the next raise back.
//!
//! Exemptions ([`Exempt`]: pids, command-name globs, cgroup paths) are left alone by the v1
//! and affinity shields; a v2 partition cannot leave anyone on its CPUs, so a host that
//! needs exemptions on v2 turns it off (`runs.shield_partition = false`).
//!
//! IRQs that appear while the shield is up take its default affinity and get the original
//! default back when it comes down (every IRQ is journaled, so they are told apart).
//!
//! Limitation: threads born under the shield from a narrowed parent get every online CPU
//! back only when their mask is exactly the shield's.

use std::collections::{BTreeSet, HashMap};

use cleanroom_proto::{ShieldItem, ShieldItemStatus, ShieldKind};
use nix::sched::{sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use rusqlite::Connection;

mod cpuset;
mod irq;
mod partition;
#[cfg(test)]
mod props;
mod threads;

use cpuset::*;
use irq::*;
use partition::*;
use threads::*;

pub(crate) use crate::host::tasks::stat_fields;
use crate::host::tasks::{PF_KTHREAD, mask_of, same_thread, set_of, uptime_ticks};
pub use irq::drifted_irqs;

use crate::host::Host;
use crate::host::format::{format_cpu_list, parse_cpu_list};
use crate::store::AuditEvent;
use crate::store::shield as journal;

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
        /// Ask for an `isolated` partition first (no load balancing or scheduler domain
        /// across its CPUs: a profile's partition, whose work is pinned), `root` where
        /// the kernel refuses; exclusive runs' own shield is `root`.
        isolated: bool,
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
    /// Threads placed on the shielded CPUs by pin rules (a partition's workers): their
    /// masks are the pinning's, and on cgroup v1 their processes stay in the root cpuset.
    pub tids: Vec<i32>,
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

/// Why the shield could not go up (nothing is shielded then).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool leaves no CPU to the rest of the system.
    #[error(
        "the isolation pool {0} covers every online CPU: nothing would be left for the rest of \
         the system"
    )]
    PoolCoversAll(String),
    /// The shield's journal failed.
    #[error("cannot journal the shield: {0}")]
    Journal(#[from] rusqlite::Error),
    /// A kernel file could not be read or written (the error names it).
    #[error(transparent)]
    Host(#[from] crate::host::Error),
    /// A shield left journaled could not be lowered first: the kernel refuses to give
    /// these files (their paths, comma-separated) their originals back.
    #[error(
        "a previous shield could not be lowered completely (the kernel refuses to take back \
         {0}): `cleanroomctl shield lower` tries again and says why; \
         `cleanroomctl shield lower --force` forgets what the kernel still refuses and names \
         each file with its original value, to set by hand (with the daemon stopped: \
         `cleanroomd --revert --force`)"
    )]
    PreviousLeft(String),
    /// The kernel refused the v2 partition (the affinity shield is used instead).
    #[error("the kernel refused the partition: {0}")]
    PartitionRefused(String),
    /// The root cgroup offers no cpuset controller (v2).
    #[error("the root cgroup has no cpuset controller")]
    NoCpuset,
}

/// What raising the shield did.
#[derive(Debug, Default)]
pub struct Raised {
    /// How: `partition`, `cpuset` or `affinity`.
    pub method: &'static str,
    /// Why the cgroup method was not used, when it fell back to the affinity shield.
    pub fallback: Option<Error>,
    /// The partition exclusive runs go into (v2).
    pub partition: Option<String>,
    /// Its type as the kernel took it: `isolated` or `root` (v2).
    pub partition_type: Option<&'static str>,
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
) -> Result<Raised, Error> {
    let online = online(host);
    let rest: BTreeSet<u32> = online.difference(cpus).copied().collect();
    if rest.is_empty() {
        return Err(Error::PoolCoversAll(format_cpu_list(cpus)));
    }
    // A shield still journaled (a lowering that failed) is lowered first: its originals
    // must not be replaced by what it left.
    if journal::is_raised(conn)? {
        let lowered = lower(host, conn)?;
        if journal::has_leftovers(conn)? {
            let paths: Vec<&str> = lowered.refused.iter().map(|i| i.path.as_str()).collect();
            return Err(Error::PreviousLeft(if paths.is_empty() {
                "part of it".to_owned()
            } else {
                paths.join(", ")
            }));
        }
    }
    // The journal first: when the shield went up (threads born under it get their CPUs
    // back), and the cgroups it is about to create.
    let (partition, cpuset) = match method {
        Method::Partition { dir, .. } => (Some(dir.clone()), None),
        Method::Cpuset { mount, dir, .. } => (None, Some((dir.clone(), mount.clone()))),
        Method::Affinity => (None, None),
    };
    let (cpuset_dir, cpuset_mount) = cpuset.unzip();
    journal::begin(
        conn,
        &journal::Meta {
            raised_at: uptime_ticks(host) as i64,
            boot_id: host.boot_id().unwrap_or_default(),
            shielded: format_cpu_list(cpus),
            online: format_cpu_list(&online),
            cpuset_dir,
            cpuset_mount,
            partition,
            root_enabled: None,
        },
    )?;
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
                isolated,
            } => match partition_up(host, conn, (mount, dir, limits_from), cpus, *isolated) {
                Ok(kind) => {
                    raised.method = "partition";
                    raised.partition = Some(dir.clone());
                    raised.partition_type = Some(kind);
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "no cpuset partition: shielding by affinity");
                    journal::set_partition(conn, None)?;
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
        irqs_off(host, conn, cpus, &mut raised)?;
        affinity_off(host, conn, cpus, exempt, &mut raised)?;
        Ok::<(), Error>(())
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

/// What a lowering did.
#[derive(Debug, Default)]
pub struct Lowered {
    /// Things put back (the partition, thread masks, cpusets, IRQs).
    pub restored: usize,
    /// What the kernel refused to take back, each with the value it should hold and the
    /// one it holds: kept journaled for the next lowering, or forgotten by a forced one.
    pub refused: Vec<ShieldItem>,
    /// A v2 partition that could not be removed yet (a process the kernel cannot end
    /// holds it): it gave its CPUs back and stays journaled, forced or not, so the next
    /// lowering removes it. It does not hold the next raise back.
    pub partition_left: Option<String>,
}

impl Lowered {
    /// Whether anything the kernel refused stays journaled: the next raise fails while it
    /// does ([`Error::PreviousLeft`]).
    pub fn kept(&self) -> bool {
        self.refused
            .iter()
            .any(|i| i.status == ShieldItemStatus::Kept)
    }
}

/// A journal row the kernel refused to take back, and why.
struct Refusal {
    row: Row,
    /// The kernel's refusal (the error names the file and the value).
    reason: String,
}

/// A journal row of something the shield changed in a kernel file.
enum Row {
    /// An IRQ's affinity or the default affinity (by the file's path).
    Irq(journal::Saved<String>),
    /// A v1 cpuset's CPUs.
    Cpuset(journal::Saved<journal::Cpuset>),
}

impl Refusal {
    /// The item as reported: its file, the value it should hold in the file's own format,
    /// and the value it holds now.
    fn item(&self, host: &Host, status: ShieldItemStatus) -> ShieldItem {
        let (kind, path, original) = match &self.row {
            Row::Irq(r) => (
                ShieldKind::Irq,
                r.key.clone(),
                irq_text(&r.key, &r.original),
            ),
            Row::Cpuset(r) => (
                ShieldKind::Cpuset,
                format!("{}/cpuset.cpus", r.key.path),
                r.original.clone(),
            ),
        };
        ShieldItem {
            kind,
            current: host.read(&path).ok().map(|t| t.trim().to_owned()),
            path,
            original,
            status,
            reason: self.reason.clone(),
        }
    }
}

/// Puts back everything the journal says the shield changed (the partition, the cpusets,
/// moved processes, thread masks, IRQs) where it still holds what the shield left, and
/// says what it put back and what the kernel refused. A cpuset or IRQ whose original the
/// kernel refuses stays journaled, so the next lowering (at the next raise, stop or start,
/// or `shield.lower`) tries again, and the next raise fails while it cannot.
pub fn lower(host: &Host, conn: &mut Connection) -> rusqlite::Result<Lowered> {
    lower_with(host, conn, None)
}

/// [`lower`], but what the kernel still refuses to take back is forgotten from the
/// journal, each item written to the audit log as `actor` (the request, or
/// `cleanroomd --revert --force`) in the commit that forgets it, and reported with the
/// value it should hold, for an admin to set by hand. What the kernel does take back is
/// restored, not forgotten.
pub fn lower_forcing(
    host: &Host,
    conn: &mut Connection,
    actor: &AuditEvent,
) -> rusqlite::Result<Lowered> {
    lower_with(host, conn, Some(actor))
}

fn lower_with(
    host: &Host,
    conn: &mut Connection,
    force: Option<&AuditEvent>,
) -> rusqlite::Result<Lowered> {
    let meta = journal::meta(conn)?.unwrap_or_default();
    let mut lowered = Lowered::default();
    if let Some(dir) = &meta.partition {
        if partition_back(host, dir, meta.root_enabled.as_deref()) {
            lowered.restored += 1;
        } else {
            lowered.partition_left = Some(dir.clone());
        }
    }
    // Masks of moved threads: only those still as the move left them are given back.
    let mut give_back: Vec<(i32, BTreeSet<u32>)> = Vec::new();
    for row in journal::threads(conn, true)? {
        let tid = row.key.tid;
        let current = sched_getaffinity(Pid::from_raw(tid)).map(|m| set_of(&m));
        if let (true, Ok(current), Ok(original), Ok(written)) = (
            same_thread(host, tid, row.key.start),
            current,
            parse_cpu_list(&row.original),
            parse_cpu_list(&row.written),
        ) {
            if current == written {
                give_back.push((tid, original));
            }
        }
    }
    if let (Some(dir), Some(mount)) = (&meta.cpuset_dir, &meta.cpuset_mount) {
        cpuset_down(host, mount, dir);
    }
    for (tid, original) in give_back {
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        // Kernels since 6.2 keep the mask asked for across cpuset moves; older ones widen
        // it to the cpuset's.
        if set_of(&current) == original || set_mask(tid, &original) {
            lowered.restored += 1;
        }
    }
    let mut refusals = cpusets_back(host, conn, &mut lowered.restored)?;
    lowered.restored += threads_back(host, conn)?;
    let (irqs, complete) = journal::irqs(conn)?;
    let (restored, refused) = irqs_back(host, &irqs);
    lowered.restored += restored;
    refusals.extend(refused);
    if complete {
        let (widened, refused) = widen_new_irqs(host, &meta, &irqs);
        lowered.restored += widened;
        refusals.extend(refused);
    }
    // Threads born under the shield from a narrowed parent inherited its narrowed mask,
    // which the kernel keeps across cpuset moves (since Linux 6.2 it remembers the mask
    // asked for): whatever the method, those still exactly that mask get every CPU back.
    lowered.restored += widen_newborn(host, &meta);
    let partition_left = lowered.partition_left.is_some();
    let status = match force {
        None => ShieldItemStatus::Kept,
        Some(_) => ShieldItemStatus::Forgotten,
    };
    lowered.refused = refusals.iter().map(|r| r.item(host, status)).collect();
    match force {
        None => {
            let kept_irqs: Vec<journal::Saved<String>> = refusals
                .into_iter()
                .filter_map(|r| match r.row {
                    Row::Irq(row) => Some(row),
                    Row::Cpuset(_) => None,
                })
                .collect();
            journal::finish_lowering(conn, partition_left, journal::Refused::Keep(&kept_irqs))?;
        }
        Some(actor) => {
            let audit: Vec<AuditEvent> = lowered
                .refused
                .iter()
                .map(|item| forgotten(actor, item))
                .collect();
            journal::finish_lowering(conn, partition_left, journal::Refused::Forget(&audit))?;
        }
    }
    Ok(lowered)
}

/// The audit row of an item a forced lowering forgot, as `actor`; logged too.
fn forgotten(actor: &AuditEvent, item: &ShieldItem) -> AuditEvent {
    let current = item.current.as_deref().unwrap_or("(unreadable)");
    tracing::warn!(path = %item.path, original = %item.original, current, reason = %item.reason,
        "forgot what the kernel refuses to take back: it is the admin's to set by hand");
    AuditEvent {
        outcome: format!(
            "forgot {}: should hold {}, holds {current} ({})",
            item.path, item.original, item.reason
        ),
        ..actor.clone()
    }
}

/// v2: removes the partition, and disables the controllers the shield enabled in the root
/// cgroup; whether the partition is gone. One a run process the kernel cannot kill yet
/// (stuck in uninterruptible sleep) holds gives its CPUs back and stays journaled, so the
/// next lowering removes it.
fn partition_back(host: &Host, dir: &str, root_enabled: Option<&str>) -> bool {
    let removed = partition_down(host, dir);
    if !removed {
        let file = format!("{dir}/cpuset.cpus.partition");
        if let Err(e) = host.write(&file, "member") {
            tracing::error!(error = %e, "cannot demote the shield's partition");
        }
    }
    if let (Some(list), Some((root, _))) = (root_enabled, dir.rsplit_once('/')) {
        for c in list.split_whitespace() {
            // Refused while anyone else uses it: then it stays.
            let file = format!("{root}/cgroup.subtree_control");
            if let Err(e) = host.write(&file, &format!("-{c}")) {
                tracing::info!(controller = c, error = %e, "a controller the shield enabled stays (in use)");
            }
        }
    }
    removed
}

/// Narrowed cpusets get their CPUs back, parents first (adding to `restored`). One the
/// kernel does not let have them back stays journaled (unless it is gone), and is returned.
fn cpusets_back(
    host: &Host,
    conn: &Connection,
    restored: &mut usize,
) -> rusqlite::Result<Vec<Refusal>> {
    let mut refusals = Vec::new();
    for row in journal::cpusets(conn)? {
        let file = format!("{}/cpuset.cpus", row.key.path);
        let current = host.read(&file).ok().and_then(|t| parse_cpu_list(&t).ok());
        if current != parse_cpu_list(&row.written).ok() {
            continue; // changed by someone else since: left alone
        }
        match host.write(&file, &row.original) {
            Ok(()) => *restored += 1,
            Err(e) if host.exists(&file) => {
                tracing::error!(error = %e, "cannot give a cpuset its CPUs back: kept for the next lowering (forgotten if this one is forced)");
                refusals.push(Refusal {
                    row: Row::Cpuset(row),
                    reason: e.to_string(),
                });
            }
            Err(e) => tracing::warn!(error = %e, "a cpuset the shield narrowed is gone"),
        }
    }
    let kept: Vec<String> = refusals
        .iter()
        .filter_map(|r| match &r.row {
            Row::Cpuset(row) => Some(row.key.path.clone()),
            Row::Irq(_) => None,
        })
        .collect();
    journal::clear_cpusets_but(conn, &kept)?;
    Ok(refusals)
}

/// Narrowed thread masks (not of moved processes) still as the shield left them get their
/// originals back; every thread row is forgotten. Returns how many were restored.
fn threads_back(host: &Host, conn: &Connection) -> rusqlite::Result<usize> {
    let mut restored = 0;
    for row in journal::threads(conn, false)? {
        let tid = row.key.tid;
        if !same_thread(host, tid, row.key.start) {
            continue;
        }
        let Ok(current) = sched_getaffinity(Pid::from_raw(tid)) else {
            continue;
        };
        let (Ok(original), Ok(written)) =
            (parse_cpu_list(&row.original), parse_cpu_list(&row.written))
        else {
            continue;
        };
        if set_of(&current) != written {
            continue; // changed by someone else since: left alone
        }
        if set_mask(tid, &original) {
            restored += 1;
        }
    }
    journal::clear_threads(conn)?;
    Ok(restored)
}

/// Sets a thread's mask; a failure (the thread is gone, or pinned by a policy) is logged.
fn set_mask(tid: i32, cpus: &BTreeSet<u32>) -> bool {
    match mask_of(cpus).map(|m| sched_setaffinity(Pid::from_raw(tid), &m)) {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::debug!(tid, cpus = %format_cpu_list(cpus), error = %e, "cannot restore a thread's CPUs");
            false
        }
        None => false,
    }
}

/// Whether a shield is journaled (raised, or left by a crash).
pub fn is_raised(conn: &Connection) -> rusqlite::Result<bool> {
    journal::is_raised(conn)
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
            isolated: false,
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
            isolated: false,
        };
        let r = raise(&host, &mut conn, &[1].into(), &Exempt::default(), &method).unwrap();
        assert_eq!(r.method, "affinity");
        assert!(
            matches!(r.fallback, Some(Error::NoCpuset)),
            "{:?}",
            r.fallback
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
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("covers every online CPU")
        );
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

    // The tests below are cases the property tests (props.rs) found, minimized.

    #[test]
    fn irqs_that_appear_under_a_narrowed_default_get_its_original_back() {
        // The default was not every CPU: the shield's default is 0, not 0-1.
        let (tmp, host) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-3\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/proc/irq/default_smp_affinity", "5\n"),
            ("/proc/irq/1/smp_affinity_list", "0-3\n"),
        ]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let mut conn = store.lock_blocking();
        let cpus = [2, 3].into();
        raise(
            &host,
            &mut conn,
            &cpus,
            &Exempt::default(),
            &Method::Affinity,
        )
        .unwrap();
        assert_eq!(host.read("/proc/irq/default_smp_affinity").unwrap(), "1");
        // IRQ 2 appears meanwhile, with the shield's default.
        std::fs::create_dir_all(tmp.path().join("proc/irq/2")).unwrap();
        std::fs::write(tmp.path().join("proc/irq/2/smp_affinity_list"), "0\n").unwrap();
        lower(&host, &mut conn).unwrap();
        assert_eq!(host.read("/proc/irq/2/smp_affinity_list").unwrap(), "0,2");
        assert_eq!(host.read("/proc/irq/default_smp_affinity").unwrap(), "5");
    }

    /// A fake host with the default IRQ affinity and IRQ 1 on every CPU, a store, and
    /// the affinity shield raised over CPUs 2-3.
    fn raised_over_two_of_four() -> (
        tempfile::TempDir,
        Host,
        tempfile::TempDir,
        crate::store::Store,
    ) {
        let (tmp, host) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-3\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/proc/irq/default_smp_affinity", "f\n"),
            ("/proc/irq/1/smp_affinity_list", "0-3\n"),
        ]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let mut conn = store.lock_blocking();
        raise(
            &host,
            &mut conn,
            &[2, 3].into(),
            &Exempt::default(),
            &Method::Affinity,
        )
        .unwrap();
        drop(conn);
        (tmp, host, store_dir, store)
    }

    /// Runs `op` on a kernel that refuses its `refused`-th write.
    fn refusing<R>(
        host: &Host,
        store: &crate::store::Store,
        refused: usize,
        op: impl FnOnce(&Host, &mut Connection) -> R,
    ) -> R {
        let faults = crate::testing::Faults::refuse(refused);
        let faulty = host.clone().with_faults(std::sync::Arc::clone(&faults));
        crate::testing::until_crash(store, &faults, || op(&faulty, &mut store.lock_blocking()))
            .expect("a refusal is no crash")
    }

    /// Lowers the shield on a kernel that refuses its `refused`-th write.
    fn lower_refusing(host: &Host, store: &crate::store::Store, refused: usize) -> Lowered {
        refusing(host, store, refused, lower).unwrap()
    }

    /// Raises the affinity shield over CPUs 2-3 on a kernel that refuses its `refused`-th
    /// write (`usize::MAX`: none).
    fn raise_refusing(
        host: &Host,
        store: &crate::store::Store,
        refused: usize,
    ) -> Result<Raised, Error> {
        refusing(host, store, refused, |h, c| {
            raise(h, c, &[2, 3].into(), &Exempt::default(), &Method::Affinity)
        })
    }

    /// An admin forcing a lowering, as the audit log records them.
    fn admin() -> AuditEvent {
        AuditEvent {
            uid: 0,
            gid: 0,
            pid: 42,
            method: "shield.lower".into(),
            params_digest: "d1".into(),
            outcome: String::new(),
        }
    }

    fn audit(store: &crate::store::Store) -> Vec<AuditEvent> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.recent_audit(100))
            .unwrap()
    }

    const DEFAULT: &str = "/proc/irq/default_smp_affinity";

    #[test]
    fn an_affinity_the_kernel_refuses_to_take_back_stays_journaled() {
        let (_tmp, host, _state, store) = raised_over_two_of_four();
        // The first write of the lowering, the default's original, is refused: it is
        // reported, with the value it should hold (as a mask, the file's format), the one
        // it holds, and the kernel's words.
        let lowered = lower_refusing(&host, &store, 0);
        assert_eq!(host.read(DEFAULT).unwrap(), "3");
        assert_eq!(host.read("/proc/irq/1/smp_affinity_list").unwrap(), "0-3");
        assert_eq!(lowered.restored, 1, "IRQ 1");
        assert!(lowered.kept());
        let [item] = &lowered.refused[..] else {
            panic!("{lowered:?}")
        };
        assert_eq!(
            (item.kind, item.path.as_str(), item.original.as_str()),
            (ShieldKind::Irq, DEFAULT, "f")
        );
        assert_eq!(item.current.as_deref(), Some("3"));
        assert_eq!(item.status, ShieldItemStatus::Kept);
        assert!(item.reason.contains("busy"), "{}", item.reason);
        assert!(
            is_raised(&store.lock_blocking()).unwrap(),
            "still journaled"
        );
        // A raise lowers first; refused again, it fails rather than journal the shield's
        // value as an original, and names the file and the way out.
        let again = raise_refusing(&host, &store, 0);
        let Err(e @ Error::PreviousLeft(_)) = &again else {
            panic!("{again:?}")
        };
        let message = e.to_string();
        assert!(message.contains(DEFAULT), "{message}");
        assert!(
            message.contains("`cleanroomctl shield lower --force`")
                && message.contains("`cleanroomd --revert --force`"),
            "{message}"
        );
        // The kernel takes it now.
        let lowered = lower(&host, &mut store.lock_blocking()).unwrap();
        assert_eq!(host.read(DEFAULT).unwrap(), "f");
        assert!(lowered.refused.is_empty() && !lowered.kept());
        assert!(!is_raised(&store.lock_blocking()).unwrap());
        assert!(audit(&store).is_empty(), "nothing was forgotten");
    }

    #[test]
    fn a_forced_lowering_forgets_what_the_kernel_refuses_and_audits_it() {
        let (_tmp, host, _state, store) = raised_over_two_of_four();
        // The kernel refuses the default's original at every lowering: every raise fails.
        lower_refusing(&host, &store, 0);
        assert!(matches!(
            raise_refusing(&host, &store, 0),
            Err(Error::PreviousLeft(_))
        ));
        // Forced (and refused again): the row goes, named with its original and current
        // value, and the audit log says so as the admin who forced it.
        let lowered = refusing(&host, &store, 0, |h, c| lower_forcing(h, c, &admin())).unwrap();
        let [item] = &lowered.refused[..] else {
            panic!("{lowered:?}")
        };
        assert_eq!((item.path.as_str(), item.original.as_str()), (DEFAULT, "f"));
        assert_eq!(item.current.as_deref(), Some("3"));
        assert_eq!(item.status, ShieldItemStatus::Forgotten);
        assert!(!lowered.kept());
        assert_eq!(
            host.read(DEFAULT).unwrap(),
            "3",
            "the admin's to set by hand"
        );
        assert!(!is_raised(&store.lock_blocking()).unwrap(), "forgotten");
        let [row] = &audit(&store)[..] else {
            panic!("one audit row per forgotten file")
        };
        assert_eq!(
            (row.uid, row.pid, row.method.as_str()),
            (0, 42, "shield.lower")
        );
        assert_eq!(row.params_digest, "d1");
        assert!(
            row.outcome
                .starts_with(&format!("forgot {DEFAULT}: should hold f, holds 3")),
            "{}",
            row.outcome
        );
        // The next raise succeeds; the shield's value stands as the default's original.
        let raised = raise_refusing(&host, &store, usize::MAX).unwrap();
        assert_eq!(raised.irqs_moved, 1, "IRQ 1 (the default holds 3 already)");
        lower(&host, &mut store.lock_blocking()).unwrap();
        assert_eq!(host.read(DEFAULT).unwrap(), "3");
        assert!(!is_raised(&store.lock_blocking()).unwrap());
    }

    #[test]
    fn a_forced_lowering_restores_what_the_kernel_takes_back() {
        let (_tmp, host, _state, store) = raised_over_two_of_four();
        lower_refusing(&host, &store, 0);
        // Forced, on a kernel that takes the default back now: restored, not forgotten.
        let lowered = lower_forcing(&host, &mut store.lock_blocking(), &admin()).unwrap();
        assert_eq!(lowered.restored, 1);
        assert!(lowered.refused.is_empty(), "{lowered:?}");
        assert_eq!(host.read(DEFAULT).unwrap(), "f");
        assert!(!is_raised(&store.lock_blocking()).unwrap());
        assert!(audit(&store).is_empty(), "nothing was forgotten");
        // Raised again and forced down with the default refused: IRQ 1, which the kernel
        // takes back, is restored; only the default is forgotten.
        raise_refusing(&host, &store, usize::MAX).unwrap();
        assert_eq!(host.read("/proc/irq/1/smp_affinity_list").unwrap(), "0-1");
        let lowered = refusing(&host, &store, 0, |h, c| lower_forcing(h, c, &admin())).unwrap();
        assert_eq!(host.read("/proc/irq/1/smp_affinity_list").unwrap(), "0-3");
        let forgotten: Vec<&str> = lowered.refused.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(forgotten, [DEFAULT]);
        assert_eq!(audit(&store).len(), 1);
    }

    #[test]
    fn a_cpuset_that_cannot_have_its_cpus_back_is_forgotten_by_force() {
        const MOUNT: &str = "/sys/fs/cgroup/cpuset";
        const OTHER: &str = "/sys/fs/cgroup/cpuset/a/cpuset.cpus";
        let (tmp, _) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-3\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/sys/fs/cgroup/cpuset/cpuset.cpus", "0-3\n"),
            ("/sys/fs/cgroup/cpuset/cpuset.mems", "0\n"),
            ("/sys/fs/cgroup/cpuset/cgroup.procs", ""),
            ("/sys/fs/cgroup/cpuset/a/cgroup.procs", ""),
            (OTHER, "0-3\n"),
            ("/sys/fs/cgroup/cpuset/cleanroom/cgroup.procs", ""),
            ("/sys/fs/cgroup/cpuset/cleanroom/cpuset.cpus", "0-3\n"),
        ]);
        let host = Host::new(tmp.path()).with_cgroupfs(MOUNT);
        let store_dir = crate::testing::scratch_dir();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let method = Method::Cpuset {
            mount: MOUNT.into(),
            dir: "/sys/fs/cgroup/cpuset/cleanroom-shield-t".into(),
            keep: "/sys/fs/cgroup/cpuset/cleanroom".into(),
        };
        let pool = [2, 3].into();
        let raise_cpuset =
            |h: &Host, c: &mut Connection| raise(h, c, &pool, &Exempt::default(), &method);
        raise_cpuset(&host, &mut store.lock_blocking()).unwrap();
        assert_eq!(host.read(OTHER).unwrap(), "0-1");
        // Writes: the shield's cpuset removed, then a's CPUs back, which is refused.
        let lowered = lower_refusing(&host, &store, 1);
        let [item] = &lowered.refused[..] else {
            panic!("{lowered:?}")
        };
        assert_eq!(
            (item.kind, item.path.as_str(), item.original.as_str()),
            (ShieldKind::Cpuset, OTHER, "0-3")
        );
        assert_eq!(item.status, ShieldItemStatus::Kept);
        let again = refusing(&host, &store, 0, raise_cpuset);
        assert!(matches!(again, Err(Error::PreviousLeft(_))), "{again:?}");
        // Forced, refused again: forgotten, named with what it should hold and holds.
        let lowered = refusing(&host, &store, 0, |h, c| lower_forcing(h, c, &admin())).unwrap();
        let [item] = &lowered.refused[..] else {
            panic!("{lowered:?}")
        };
        assert_eq!((item.path.as_str(), item.original.as_str()), (OTHER, "0-3"));
        assert_eq!(item.current.as_deref(), Some("0-1"));
        assert_eq!(item.status, ShieldItemStatus::Forgotten);
        assert!(!is_raised(&store.lock_blocking()).unwrap());
        assert!(audit(&store)[0].outcome.contains(OTHER));
        raise_cpuset(&host, &mut store.lock_blocking()).unwrap();
        lower(&host, &mut store.lock_blocking()).unwrap();
        assert!(!is_raised(&store.lock_blocking()).unwrap());
    }

    #[test]
    fn an_irq_that_appeared_and_could_not_be_widened_is_journaled() {
        let (tmp, host, _state, store) = raised_over_two_of_four();
        std::fs::create_dir_all(tmp.path().join("proc/irq/2")).unwrap();
        std::fs::write(tmp.path().join("proc/irq/2/smp_affinity_list"), "0-1\n").unwrap();
        // Writes: the default, IRQ 1, then IRQ 2's widening, which is refused.
        lower_refusing(&host, &store, 2);
        assert_eq!(host.read("/proc/irq/default_smp_affinity").unwrap(), "f");
        assert_eq!(host.read("/proc/irq/2/smp_affinity_list").unwrap(), "0-1\n");
        assert!(
            is_raised(&store.lock_blocking()).unwrap(),
            "IRQ 2 is journaled"
        );
        lower(&host, &mut store.lock_blocking()).unwrap();
        assert_eq!(host.read("/proc/irq/2/smp_affinity_list").unwrap(), "0-3");
        assert!(!is_raised(&store.lock_blocking()).unwrap());
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let text =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(stat_fields(text), Some((4_194_560, 98_765)));
        assert_eq!(stat_fields("garbage"), None);
        // Found by the fuzzer: a text ending at its `)`, or with a character of more than
        // one byte after it, made the slice panic.
        assert_eq!(stat_fields("4)"), None);
        assert_eq!(stat_fields("1 (x)é 2"), None);
    }
}
