//! Pinning: placing the host's processes and threads (CPU affinity, scheduling policy and
//! priority, nice, I/O priority) by the `[[pin]]` rules of the active profile: what exists
//! when it is applied, and what starts later, by the kernel's process event connector
//! (netlink: exec, fork, comm changes), not by polling. Journaled and reverted like every
//! other knob.
//!
//! The order of an apply: subscribe to process events, then scan `/proc`, so nothing that
//! starts during the scan is missed (a process seen twice is placed once: the second pass
//! finds it placed). Every change's original is journaled before it is made
//! ([`crate::store::pins`]). A thread or process a placed task creates inherits its
//! placement from the kernel; its event journals it with the creator's originals, so a
//! revert puts it back too.
//!
//! Revert is compare-and-swap per task attribute, as for knobs: the original goes back
//! where the task still holds cleanroom's value; a task someone changed since is a
//! conflict, left alone (`--force` restores it); a task that exited is simply gone.
//!
//! Locks: the store's connection first, then the rules. Tuning operations hold the
//! connection throughout; the event thread takes it per event.
//!
//! Limitation: events the kernel drops (the socket's buffer overran under a storm of
//! forks) are followed by a full scan, which places what the events missed; a child that
//! inherited a placement in that window is not journaled, and keeps it after a revert.

mod cgroup;
mod events;
mod latency;
mod place;
pub mod rule;
pub mod sched;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cleanroom_proto::{PinProblem, PinReport};
use rusqlite::Connection;

use crate::host::Host;
use crate::host::tasks::same_thread;
use crate::store::pins as journal;
use rule::Rule;
use sched::Attr;

/// The rules in force (the active profile's, then those added by hand), shared by tuning
/// operations, `pin.*` requests and the event thread.
#[derive(Debug, Default)]
pub struct Pinner {
    inner: Mutex<Inner>,
    /// Which tasks may have journal rows (events of the others cost no query).
    seen: place::Journaled,
}

#[derive(Debug, Default)]
struct Inner {
    /// What is in force now: `profile` then `added`'s rules.
    rules: Arc<Vec<Rule>>,
    /// The active profile's rules.
    profile: Vec<Rule>,
    /// Rules added by hand: id, who added it, the rule.
    added: Vec<(u64, u32, Rule)>,
    events: Option<events::Listener>,
    /// Whether the event thread may be started: not before the daemon has dropped the
    /// capabilities it does not use (they are per thread, and a thread keeps those it was
    /// born with). See [`Pinner::enable_events`].
    events_enabled: bool,
    /// The CPU latency request held open (`[cpu] max_latency_us`): its value and the
    /// descriptor that holds it.
    latency: Option<(u32, std::fs::File)>,
    /// The partition in force, if any.
    fence: Option<Fence>,
}

/// A partition in force, as placing tasks sees it: placements onto its CPUs take the
/// thread over from the shield (and on cgroup v1 out of the shield's cpuset); a task's
/// original that would put it back on them is narrowed, and handed back to the shield.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    /// The partition's CPUs.
    pub cpus: BTreeSet<u32>,
    /// cgroup v1: the cpuset mount and the shield's cpuset (which excludes the CPUs).
    pub cpuset: Option<(String, String)>,
    /// cgroup v2: the partition's cgroup (only tasks inside it may run on the CPUs).
    pub cgroup: Option<String>,
}

impl Inner {
    fn combined(&self) -> Vec<Rule> {
        self.profile
            .iter()
            .cloned()
            .chain(self.added.iter().map(|(_, _, r)| r.clone()))
            .collect()
    }
}

/// Ended tasks whose rows may wait to be dropped before the event thread drops them
/// without waiting to be idle.
const GONE_BATCH: usize = 256;

/// Most rules added by hand at once.
pub const MAX_ADDED: usize = 256;

/// Errors of pinning that stop an operation before it changes anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule is malformed or does not fit this host (CPUs it does not have); names the
    /// rule's file, line and key, or the option.
    #[error("{0}")]
    Rule(String),
    /// No rule added by hand has this id.
    #[error("no pin rule added by hand has id {0} (`cleanroomctl pin list` shows them)")]
    NoSuchRule(u64),
    /// The pin journal failed.
    #[error("pin journal: {0}")]
    Journal(#[from] rusqlite::Error),
}

/// The host's CPUs and memory nodes in `state` (`online`, or `possible`: those it has,
/// online or not; a kernel without NUMA lists no nodes: node 0 alone); no CPUs when they
/// cannot be read.
pub fn cpus_and_nodes(host: &Host, state: &str) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let list = |path: String| {
        host.read(&path)
            .ok()
            .and_then(|t| crate::host::format::parse_cpu_list(t.trim()).ok())
    };
    (
        list(format!("/sys/devices/system/cpu/{state}")).unwrap_or_default(),
        list(format!("/sys/devices/system/node/{state}")).unwrap_or_else(|| [0].into()),
    )
}

impl Pinner {
    /// No rules in force.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        Arc::clone(&self.lock().rules)
    }

    /// Whether processes that start later are followed (the event thread runs).
    pub fn following(&self) -> bool {
        self.lock().events.is_some()
    }

    /// The partition in force from now on (`None`: none), for placements and restores.
    pub fn set_fence(&self, fence: Option<Fence>) {
        self.lock().fence = fence;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the rules added by hand from the store (at start, before recovery); they are
    /// put in force by the first [`Pinner::apply`] or [`Pinner::resume`]. A stored rule
    /// that no longer fits (its user is gone) is logged and left out.
    pub fn load(&self, conn: &Connection) -> Result<(), Error> {
        let mut added = Vec::new();
        for s in journal::stored_rules(conn)? {
            match serde_json::from_str::<cleanroom_proto::PinRuleSpec>(&s.spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| rule::from_spec(&spec, s.id))
            {
                Ok(r) => added.push((s.id, s.uid, r)),
                Err(e) => {
                    tracing::warn!(id = s.id, error = %e, "a pin rule added by hand is left out")
                }
            }
        }
        self.lock().added = added;
        self.seen.reload(conn)?;
        Ok(())
    }

    /// Puts the active profile's `rules` in force beside those added by hand: tasks the
    /// rules no longer want get their originals back, then every process is placed, and
    /// processes that start or change later are placed as they do. With `dry_run` nothing
    /// changes: the reports say what would. `conn` is the store's connection, held by the
    /// caller. Reports for the profile's rules.
    pub fn apply(
        self: &Arc<Self>,
        host: &Host,
        store: &crate::store::Store,
        conn: &mut Connection,
        rules: &[Rule],
        dry_run: bool,
    ) -> Result<Vec<PinReport>, Error> {
        Self::check(host, rules)?;
        let mut inner = self.lock();
        if dry_run {
            let mut all = rules.to_vec();
            all.extend(inner.added.iter().map(|(_, _, r)| r.clone()));
            let fence = inner.fence.clone();
            drop(inner);
            let reports = self.place_all(host, conn, &all, fence.as_ref(), true)?;
            return Ok(reports.into_iter().take(rules.len()).collect());
        }
        inner.profile = rules.to_vec();
        let (_, placed) = self.put_in_force(inner, host, store, conn, false)?;
        Ok(placed.into_iter().take(rules.len()).collect())
    }

    /// Puts what `inner` says in force: journaled tasks no rule wants any more get their
    /// originals back (all of them with `force`), the event thread follows the rules, and
    /// every process is placed. Reports of what went back and of each rule in force.
    fn put_in_force(
        self: &Arc<Self>,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        host: &Host,
        store: &crate::store::Store,
        conn: &mut Connection,
        force: bool,
    ) -> Result<(Vec<PinReport>, Vec<PinReport>), Error> {
        let rules = inner.combined();
        let fence = inner.fence.clone();
        let mut restored = restore(host, conn, force, fence.as_ref(), |row| {
            !still_wanted(host, &rules, row)
        })?;
        restore_cgroups(host, conn, force, &mut restored, |row| {
            !cgroup::still_wanted(host, &rules, row)
        })?;
        self.seen.reload(conn)?;
        inner.rules = Arc::new(rules.clone());
        if rules.is_empty() {
            inner.events = None;
            return Ok((restored, Vec::new()));
        }
        if !inner.events_enabled {
            // At start, before the event thread may run: placing now would let what forks
            // before it runs inherit a placement unjournaled. `enable_events` subscribes,
            // then places everything.
            return Ok((restored, place::Reports::new(&rules).into_vec()));
        }
        if inner.events.is_none() {
            inner.events = self.listen(host, store);
        }
        drop(inner);
        let placed = self.place_all(host, conn, &rules, fence.as_ref(), false)?;
        Ok((restored, placed))
    }

    /// Every process placed by `rules` (onto partition `fence`, if one is up), and the
    /// cgroups and units of the rules that place them whole; reports by rule. With
    /// `dry_run`, what would change.
    fn place_all(
        &self,
        host: &Host,
        conn: &mut Connection,
        rules: &[Rule],
        fence: Option<&Fence>,
        dry_run: bool,
    ) -> rusqlite::Result<Vec<PinReport>> {
        let mut reports = place::Reports::new(rules);
        place::place(
            host,
            conn,
            &self.seen,
            rules,
            (&place::pids(host), None, fence),
            dry_run,
            &mut reports,
        )?;
        cgroup::place(host, conn, rules, None, dry_run, reports.slice())?;
        Ok(reports.into_vec())
    }

    /// After recovery: the rules added by hand are put in force if recovery did not
    /// already (no profile was re-applied).
    pub fn resume(self: &Arc<Self>, host: &Host, store: &crate::store::Store) -> Result<(), Error> {
        let mut conn = store.lock_blocking();
        let inner = self.lock();
        if *inner.rules == inner.combined() {
            return Ok(());
        }
        self.put_in_force(inner, host, store, &mut conn, false)?;
        Ok(())
    }

    /// `pin.add`: `spec` by `uid`, in force after the profile's rules (so it wins where
    /// both set an attribute); stored, so it stays in force across restarts. With
    /// `dry_run`, what it would match and change. The rule's report.
    pub fn add(
        self: &Arc<Self>,
        host: &Host,
        store: &crate::store::Store,
        conn: &mut Connection,
        spec: &cleanroom_proto::PinRuleSpec,
        uid: u32,
        dry_run: bool,
    ) -> Result<cleanroom_proto::PinAddResult, Error> {
        let probe = rule::from_spec(spec, 0).map_err(Error::Rule)?;
        Self::check(host, std::slice::from_ref(&probe))?;
        let mut inner = self.lock();
        if dry_run {
            let fence = inner.fence.clone();
            drop(inner);
            let rules = [probe];
            let report = self
                .place_all(host, conn, &rules, fence.as_ref(), true)?
                .remove(0);
            return Ok(cleanroom_proto::PinAddResult { id: 0, report });
        }
        if inner.added.len() >= MAX_ADDED {
            return Err(Error::Rule(format!(
                "there are {MAX_ADDED} pin rules added by hand already, the most there may be; remove one first (`cleanroomctl pin remove ID`)"
            )));
        }
        // The boot the rows to come belong to: a restart after a reboot drops them (task
        // ids and start times mean nothing across boots), also when no profile ever set
        // the tuning state.
        if crate::store::journal::state(conn)?.is_none() {
            let boot = host
                .boot_id()
                .map_err(|e| Error::Rule(format!("cannot read the boot id: {e}")))?;
            crate::store::journal::set_state(
                conn,
                None,
                crate::store::journal::Phase::Idle,
                &boot,
            )?;
        }
        let text = serde_json::to_string(spec).expect("a spec serializes");
        let id = journal::add_rule(conn, &text, uid)?;
        let rule = rule::from_spec(spec, id).map_err(Error::Rule)?;
        inner.added.push((id, uid, rule));
        let (_, mut placed) = self.put_in_force(inner, host, store, conn, false)?;
        let report = placed.pop().expect("the rule just added is in force");
        Ok(cleanroom_proto::PinAddResult { id, report })
    }

    /// `pin.remove`: the rule added by hand `id` out of force; what it placed (and no
    /// other rule wants) gets its originals back, compare-and-swap.
    pub fn remove(
        self: &Arc<Self>,
        host: &Host,
        store: &crate::store::Store,
        conn: &mut Connection,
        id: u64,
    ) -> Result<cleanroom_proto::PinRemoveResult, Error> {
        let mut inner = self.lock();
        if !inner.added.iter().any(|(i, _, _)| *i == id) {
            // A stored rule left out of force (its user is gone) can still be removed.
            return if journal::remove_rule(conn, id)? {
                Ok(cleanroom_proto::PinRemoveResult {
                    id,
                    ok: true,
                    pins: Vec::new(),
                })
            } else {
                Err(Error::NoSuchRule(id))
            };
        }
        journal::remove_rule(conn, id)?;
        let text = inner
            .added
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, r)| r.text())
            .unwrap_or_default();
        inner.added.retain(|(i, _, _)| *i != id);
        let (pins, _) = self.put_in_force(inner, host, store, conn, false)?;
        // What this rule had placed; other rules' old conflicts are not its business.
        let pins: Vec<PinReport> = pins.into_iter().filter(|p| p.rule == text).collect();
        let ok = pins.iter().all(|p| p.problems.is_empty());
        Ok(cleanroom_proto::PinRemoveResult { id, ok, pins })
    }

    /// `pin.list`: every rule in force, what it matches now and what drifted; `profile`
    /// names the active profile.
    pub fn list(&self, host: &Host, profile: Option<&str>) -> cleanroom_proto::PinListResult {
        let (rules, sources) = {
            let inner = self.lock();
            let mut sources: Vec<(Option<u64>, String)> = inner
                .profile
                .iter()
                .map(|_| (None, format!("profile {}", profile.unwrap_or("?"))))
                .collect();
            sources.extend(
                inner
                    .added
                    .iter()
                    .map(|(id, uid, _)| (Some(*id), format!("added by uid {uid}"))),
            );
            (Arc::clone(&inner.rules), sources)
        };
        let mut reports = place::verify(host, &rules);
        // Whole cgroups and units too: their cpusets are what they match.
        cgroup::verify(host, &rules, &mut reports);
        cleanroom_proto::PinListResult {
            rules: reports
                .into_iter()
                .zip(sources)
                .map(|(report, (id, source))| cleanroom_proto::PinRuleInfo { id, source, report })
                .collect(),
        }
    }

    fn listen(
        self: &Arc<Self>,
        host: &Host,
        store: &crate::store::Store,
    ) -> Option<events::Listener> {
        match events::Listener::start(Arc::downgrade(self), host.clone(), store.clone()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "no process events: processes that start later are placed only by the next apply");
                None
            }
        }
    }

    /// From now on rules in force follow processes as they start and change (the daemon
    /// calls it once it has dropped its capabilities). Rules already in force (re-applied
    /// at start) start listening now, and every process is placed again, for those that
    /// started in between.
    pub fn enable_events(self: &Arc<Self>, host: &Host, store: &crate::store::Store) {
        let mut conn = store.lock_blocking();
        let mut inner = self.lock();
        inner.events_enabled = true;
        if inner.rules.is_empty() || inner.events.is_some() {
            return;
        }
        inner.events = self.listen(host, store);
        drop(inner);
        for pid in place::pids(host) {
            self.place_process(host, &mut conn, pid, None);
        }
    }

    /// Checks rules against this host before anything is applied: CPUs it does not have
    /// are an error naming the rule's file, line and key.
    pub fn check(host: &Host, rules: &[Rule]) -> Result<(), Error> {
        let (online, nodes) = cpus_and_nodes(host, "online");
        if online.is_empty() {
            // Not readable here: the writes themselves say what the kernel refuses.
            return Ok(());
        }
        if let Some(e) = rules
            .iter()
            .find_map(|r| rule::missing_cpus(r, &online, "online"))
        {
            return Err(Error::Rule(e));
        }
        match rules
            .iter()
            .find_map(|r| rule::missing_nodes(r, &nodes, "online"))
        {
            Some(e) => Err(Error::Rule(e)),
            None => Ok(()),
        }
    }

    /// `profile.revert`: the profile's rules out of force, and every original they placed
    /// back, compare-and-swap (all of them with `force`); rules added by hand stay. Reports
    /// by the rule that had placed each task.
    pub fn revert(
        self: &Arc<Self>,
        host: &Host,
        store: &crate::store::Store,
        conn: &mut Connection,
        force: bool,
    ) -> Result<Vec<PinReport>, Error> {
        let mut inner = self.lock();
        inner.profile.clear();
        Ok(self.put_in_force(inner, host, store, conn, force)?.0)
    }

    /// `cleanroomd --revert` and a restart with `on_start = "revert"`: every rule out of
    /// force, those added by hand forgotten, every original back.
    pub fn revert_all(
        &self,
        host: &Host,
        conn: &mut Connection,
        force: bool,
    ) -> Result<Vec<PinReport>, Error> {
        let mut inner = self.lock();
        inner.profile.clear();
        inner.added.clear();
        inner.rules = Arc::new(Vec::new());
        inner.events = None;
        let fence = inner.fence.clone();
        drop(inner);
        journal::clear_rules(conn)?;
        let mut restored = restore(host, conn, force, fence.as_ref(), |_| true)?;
        restore_cgroups(host, conn, force, &mut restored, |_| true)?;
        Ok(restored)
    }

    /// Task `tid` ended: its rows go, if it may have any, with others (at most
    /// [`GONE_BATCH`] wait).
    fn ended(&self, conn: &mut Connection, tid: i32) -> rusqlite::Result<()> {
        if self.seen.ended(tid) && self.seen.pending() >= GONE_BATCH {
            self.seen.flush(conn)?;
        }
        Ok(())
    }

    /// Whether ended tasks' rows wait to be dropped.
    fn rows_to_drop(&self) -> bool {
        self.seen.pending() > 0
    }

    /// Drops the rows of the tasks that ended (the event thread, when idle).
    fn drop_ended(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.seen.flush(conn)
    }

    /// A task was created: what it inherited from a placed creator is journaled.
    fn created(
        &self,
        host: &Host,
        conn: &mut Connection,
        parent: (i32, i32),
        child: (i32, i32),
    ) -> rusqlite::Result<()> {
        place::inherit(host, conn, &self.seen, parent.0, parent.1, child.0, child.1)
    }

    /// Verify: each rule in force against the tasks it matches.
    pub fn verify(&self, host: &Host) -> Vec<PinReport> {
        let rules = self.rules();
        let mut reports = place::verify(host, &rules);
        cgroup::verify(host, &rules, &mut reports);
        reports
    }

    /// Places what one event concerns (the tasks of process `pid`, or only its thread
    /// `only`), under the rules in force. Called by the event thread with the connection
    /// it took.
    fn place_process(&self, host: &Host, conn: &mut Connection, pid: i32, only: Option<i32>) {
        let (rules, fence) = {
            let inner = self.lock();
            (Arc::clone(&inner.rules), inner.fence.clone())
        };
        if rules.is_empty() {
            return;
        }
        let mut reports = place::Reports::new(&rules);
        if let Err(e) = place::place(
            host,
            conn,
            &self.seen,
            &rules,
            (&[pid], only, fence.as_ref()),
            false,
            &mut reports,
        ) {
            tracing::error!(pid, error = %e, "cannot journal a placement");
        }
        // A process that starts in a cgroup a rule places: the cgroup may be new (made
        // again under its old path), so its cpuset is checked, and placed if it is not.
        if only.is_none() && rules.iter().any(|r| r.select.whole_cgroup().is_some()) {
            let paths = place::cgroups_of(host, pid);
            if let Err(e) = cgroup::place(host, conn, &rules, Some(&paths), false, reports.slice())
            {
                tracing::error!(pid, error = %e, "cannot journal a cgroup placement");
            }
        }
        for r in reports.into_vec() {
            for p in r.problems {
                tracing::warn!(pid = p.pid, tid = p.tid, attr = %p.attr, value = %p.expected, reason = ?p.reason, rule = %r.rule, "cannot place a task");
            }
        }
    }
}

/// Puts back the journaled cgroup files `which` selects (see [`cgroup::restore`]), their
/// problems added to `reports` by rule.
fn restore_cgroups(
    host: &Host,
    conn: &Connection,
    force: bool,
    reports: &mut Vec<PinReport>,
    which: impl Fn(&journal::CgroupRow) -> bool,
) -> rusqlite::Result<()> {
    for (rule, problem) in cgroup::restore(host, conn, force, which)? {
        report_for(reports, &rule).problems.push(problem);
    }
    Ok(())
}

/// The report of rule `rule` (its text) among `reports`, added if there is none yet.
fn report_for<'a>(reports: &'a mut Vec<PinReport>, rule: &str) -> &'a mut PinReport {
    let at = match reports.iter().position(|r| r.rule == rule) {
        Some(i) => i,
        None => {
            reports.push(PinReport {
                rule: rule.to_owned(),
                at: String::new(),
                matched: 0,
                placed: 0,
                changed: 0,
                problems: Vec::new(),
                more_problems: 0,
            });
            reports.len() - 1
        }
    };
    &mut reports[at]
}

/// Whether the rules still want a journaled task attribute set.
fn still_wanted(host: &Host, rules: &[Rule], row: &journal::Row) -> bool {
    let (Some(p), Some(t)) = (
        place::process(host, row.pid, rules),
        place::task(host, row.pid, row.tid),
    ) else {
        return false;
    };
    rules.iter().any(|r| {
        p.taken_by(r)
            && r.select.thread_matches(&t.comm)
            && r.task_place().any(|(a, _)| a.as_str() == row.attr)
    })
}

/// Puts back the original of every journaled task attribute `which` selects, where the
/// task still holds cleanroom's value (every one with `force`); reports by rule.
fn restore(
    host: &Host,
    conn: &mut Connection,
    force: bool,
    fence: Option<&Fence>,
    which: impl Fn(&journal::Row) -> bool,
) -> rusqlite::Result<Vec<PinReport>> {
    let rows: Vec<journal::Row> = journal::rows(conn)?
        .into_iter()
        .filter(|r| which(r))
        .collect();
    // While a partition is up, an original that would put a task back on its CPUs is
    // narrowed, and the thread handed back to the shield (journaled there first), whose
    // lowering gives it the original.
    let targets: Vec<String> = rows
        .iter()
        .map(|r| match fence {
            Some(f) if r.attr == Attr::Affinity.as_str() => fenced(f, &r.original, host),
            _ => None,
        })
        .zip(&rows)
        .map(|(t, r)| t.unwrap_or_else(|| r.original.clone()))
        .collect();
    let handed: Vec<crate::store::shield::Saved<crate::store::shield::Thread>> = rows
        .iter()
        .zip(&targets)
        .filter(|(r, t)| **t != r.original)
        .map(|(r, t)| crate::store::shield::Saved {
            key: crate::store::shield::Thread {
                tid: r.tid,
                start: r.start,
            },
            original: r.original.clone(),
            written: t.clone(),
        })
        .collect();
    if !handed.is_empty() {
        crate::store::shield::add_threads(conn, &handed, false)?;
    }
    let mut reports: Vec<PinReport> = Vec::new();
    let mut tasks: BTreeSet<(String, i32)> = BTreeSet::new();
    let mut fates = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let report = report_for(&mut reports, &row.rule);
        if tasks.insert((row.rule.clone(), row.tid)) {
            report.matched += 1;
        }
        let (fate, problem) = restore_one(host, row, &targets[i], force);
        if fate.is_none() && problem.is_none() {
            report.changed += 1;
        }
        if let Some(p) = problem {
            if report.problems.len() < 20 {
                report.problems.push(p);
            } else {
                report.more_problems += 1;
            }
        }
        fates.push(fate);
    }
    let settled: Vec<(&journal::Row, Option<bool>)> = rows.iter().zip(fates).collect();
    journal::settle(conn, &settled)?;
    for r in &mut reports {
        let with_problems: BTreeSet<i32> = r.problems.iter().map(|p| p.tid).collect();
        r.placed = r.matched.saturating_sub(with_problems.len() as u32);
    }
    Ok(reports)
}

/// A task's original CPU list `original` narrowed off the partition's CPUs, when it
/// reaches them (to every other online CPU when it has nothing else).
fn fenced(fence: &Fence, original: &str, host: &Host) -> Option<String> {
    let set = crate::host::format::parse_cpu_list(original).ok()?;
    if set.is_disjoint(&fence.cpus) {
        return None;
    }
    let mut narrowed: BTreeSet<u32> = set.difference(&fence.cpus).copied().collect();
    if narrowed.is_empty() {
        let online = host
            .read("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| crate::host::format::parse_cpu_list(&t).ok())?;
        narrowed = online.difference(&fence.cpus).copied().collect();
    }
    Some(crate::host::format::format_cpu_list(&narrowed))
}

/// One journaled attribute back to its original (`target`: the original, or for a CPU
/// list while a partition is up, the original narrowed off it): the row's fate (see
/// [`journal::settle`]) and what went wrong, if anything.
fn restore_one(
    host: &Host,
    row: &journal::Row,
    target: &str,
    force: bool,
) -> (Option<bool>, Option<PinProblem>) {
    let Some(attr) = Attr::parse(&row.attr) else {
        return (None, None);
    };
    if !same_thread(host, row.tid, row.start) {
        return (None, None);
    }
    let problem = |status: &str, actual: Option<String>, reason: String| PinProblem {
        pid: row.pid,
        tid: row.tid,
        comm: row.comm.clone(),
        attr: row.attr.clone(),
        expected: row.original.clone(),
        actual,
        status: status.into(),
        reason: Some(reason),
    };
    let current = match sched::get(row.tid, attr) {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return (None, None),
        Err(e) => return (Some(false), Some(problem("failed", None, e.to_string()))),
    };
    if current == target {
        return (None, None);
    }
    if current != row.written && !force {
        let reason = format!(
            "changed by someone else since cleanroom set {:?}; left alone (--force restores {:?})",
            row.written, row.original
        );
        return (Some(true), Some(problem("conflict", Some(current), reason)));
    }
    match sched::set(row.tid, attr, target) {
        Ok(()) => (None, None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => (None, None),
        Err(e) => {
            let theirs = current != row.written;
            (
                Some(theirs),
                Some(problem("failed", Some(current), e.to_string())),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored rule that no longer fits (its user is gone) is left out of force at load,
    /// and can still be removed; an id never given is an error naming it.
    #[test]
    fn a_stored_rule_left_out_of_force_can_be_removed() {
        let dir = crate::testing::scratch_dir();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let spec = r#"{"comm":"x","user":"no-such-user-for-cleanroom","nice":1}"#;
        let id = journal::add_rule(&store.lock_blocking(), spec, 0).unwrap();
        let pins = Arc::new(Pinner::new());
        pins.load(&store.lock_blocking()).unwrap();
        assert!(pins.lock().added.is_empty(), "left out of force");
        let host = Host::new(dir.path());
        let mut conn = store.lock_blocking();
        let removed = pins.remove(&host, &store, &mut conn, id).unwrap();
        assert!(removed.ok && removed.pins.is_empty());
        assert!(journal::stored_rules(&conn).unwrap().is_empty());
        let again = pins.remove(&host, &store, &mut conn, id).unwrap_err();
        assert!(
            again.to_string().contains(&format!("has id {id}")),
            "{again}"
        );
    }
}
