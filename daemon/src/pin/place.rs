//! Matching tasks to rules and placing them: one pass over `/proc` (or over one process,
//! for an event), the originals journaled before anything changes.

use std::collections::{BTreeMap, HashMap};

use cleanroom_proto::{PinProblem, PinReport};
use rusqlite::Connection;

use super::Fence;
use super::rule::Rule;
use super::sched::{self, Attr};
use crate::host::Host;
use crate::host::tasks::{PF_KTHREAD, stat_fields};
use crate::store::pins as journal;

/// Which tasks and processes may have rows in the pin journal: a superset, kept in
/// memory so the events of the host's other tasks (most forks and exits) cost no query.
/// A task is added when its rows are recorded and removed when it ends; rows a revert
/// drops may leave it in, which only costs a query.
#[derive(Debug, Default)]
pub(super) struct Journaled {
    tids: std::sync::Mutex<std::collections::HashSet<i32>>,
    pids: std::sync::Mutex<std::collections::HashSet<i32>>,
    /// Tasks that ended with rows to drop: dropped together when the event thread is
    /// idle or many have gathered, not one commit per exit in the way of placements.
    gone: std::sync::Mutex<Vec<i32>>,
}

impl Journaled {
    /// Starts again from what the journal holds.
    pub(super) fn reload(&self, conn: &Connection) -> rusqlite::Result<()> {
        let rows = journal::rows(conn)?;
        *lock(&self.tids) = rows.iter().map(|r| r.tid).collect();
        *lock(&self.pids) = rows.iter().map(|r| r.pid).collect();
        Ok(())
    }

    fn add(&self, rows: &[journal::Row]) {
        lock(&self.tids).extend(rows.iter().map(|r| r.tid));
        lock(&self.pids).extend(rows.iter().map(|r| r.pid));
    }

    /// Whether task `tid` may have rows.
    pub(super) fn task(&self, tid: i32) -> bool {
        lock(&self.tids).contains(&tid)
    }

    /// Whether a task of process `pid` may have rows.
    pub(super) fn process(&self, pid: i32) -> bool {
        lock(&self.pids).contains(&pid)
    }

    /// Task `tid` ended (a process ends with its main thread: its id goes too). Whether
    /// it may have had rows; if so, they are dropped with the next [`Journaled::flush`].
    pub(super) fn ended(&self, tid: i32) -> bool {
        let had = lock(&self.tids).remove(&tid);
        lock(&self.pids).remove(&tid);
        if had {
            lock(&self.gone).push(tid);
        }
        had
    }

    /// How many ended tasks' rows wait to be dropped.
    pub(super) fn pending(&self) -> usize {
        lock(&self.gone).len()
    }

    /// Drops the rows of the tasks that ended, in one commit.
    pub(super) fn flush(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        let gone = std::mem::take(&mut *lock(&self.gone));
        journal::exited(conn, &gone)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records rows and notes their tasks.
fn record(conn: &mut Connection, seen: &Journaled, rows: &[journal::Row]) -> rusqlite::Result<()> {
    seen.add(rows);
    journal::record(conn, rows)
}

/// Whether a placement of CPU list `cpus` puts a task on the partition's CPUs.
fn onto(fence: &Fence, cpus: &str) -> bool {
    crate::host::format::parse_cpu_list(cpus).is_ok_and(|set| !set.is_disjoint(&fence.cpus))
}

/// cgroup v1: a thread about to be placed on the partition's CPUs leaves the shield's
/// cpuset, which does not admit them, for the root cpuset (where it was before the
/// partition went up). A thread in any other cpuset stays: its cpuset is someone's
/// choice, and the placement fails with the kernel's reason if it does not admit them.
fn admit(host: &Host, fence: &Fence, pid: i32, tid: i32) {
    let Some((mount, dir)) = &fence.cpuset else {
        return;
    };
    let shield = dir.strip_prefix(mount.as_str()).unwrap_or(dir);
    let inside = host
        .read(&format!("/proc/{pid}/task/{tid}/cpuset"))
        .is_ok_and(|c| c.trim_end() == shield);
    if inside {
        if let Err(e) = host.write(&format!("{mount}/tasks"), &tid.to_string()) {
            tracing::warn!(tid, error = %e, "cannot take a pinned thread out of the shield's cpuset");
        }
    }
}

/// Problems listed per rule; the rest are counted.
const MAX_PROBLEMS: usize = 20;

/// A process as rules see it.
#[derive(Debug, Clone)]
pub(super) struct Process {
    pub(super) comm: String,
    pub(super) cmdline: String,
    pub(super) uid: u32,
    /// Its cgroup paths, one per hierarchy (read only when a rule names a cgroup).
    pub(super) cgroups: Vec<String>,
}

impl Process {
    /// Whether `rule` takes this process (its threads are checked by name after).
    pub(super) fn taken_by(&self, rule: &Rule) -> bool {
        rule.select
            .process_matches(&self.comm, &self.cmdline, self.uid, &self.cgroups)
    }
}

/// The cgroup paths of process `pid` (`/proc/PID/cgroup`, one per hierarchy).
pub(super) fn cgroups_of(host: &Host, pid: i32) -> Vec<String> {
    host.read(&format!("/proc/{pid}/cgroup"))
        .map(|t| {
            t.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// One task of a process.
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub(super) tid: i32,
    pub(super) start: i64,
    pub(super) comm: String,
}

/// Reads a process, or `None` when it is gone (or is this daemon, which never pins
/// itself).
pub(super) fn process(host: &Host, pid: i32, rules: &[Rule]) -> Option<Process> {
    if pid == std::process::id() as i32 {
        return None;
    }
    let comm = lossy(&host.read_bytes(&format!("/proc/{pid}/comm")).ok()?);
    // The name first: when every rule names processes and none names this one, nothing
    // else needs reading (the common case, for every exec on the host).
    let name = comm.trim_end_matches('\n');
    if rules
        .iter()
        .all(|r| r.select.comm.as_ref().is_some_and(|g| !g.matches(name)))
    {
        return None;
    }
    let cmdline = host.read_bytes(&format!("/proc/{pid}/cmdline")).ok()?;
    let status = lossy(&host.read_bytes(&format!("/proc/{pid}/status")).ok()?);
    // Kernel threads are never pinned (per-CPU ones cannot be moved, and a kthreadd
    // placement would pass to every worker it starts); the partition handles them.
    let stat = host.read(&format!("/proc/{pid}/stat")).ok()?;
    if stat_fields(&stat).is_none_or(|(flags, _)| flags & PF_KTHREAD != 0) {
        return None;
    }
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())?;
    let cmdline: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cgroups = if rules
        .iter()
        .any(|r| r.select.cgroup.is_some() || r.select.unit.is_some())
    {
        cgroups_of(host, pid)
    } else {
        Vec::new()
    };
    Some(Process {
        comm: comm.trim_end_matches('\n').to_owned(),
        cmdline: cmdline.join(" "),
        uid,
        cgroups,
    })
}

/// A kernel name as text: names are bytes, and one that is not UTF-8 is still a name.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The tasks of a process.
pub(super) fn tasks(host: &Host, pid: i32) -> Vec<Task> {
    host.list(&format!("/proc/{pid}/task"))
        .iter()
        .filter_map(|t| t.parse::<i32>().ok())
        .filter_map(|tid| task(host, pid, tid))
        .collect()
}

/// One task, or `None` when it is gone.
pub(super) fn task(host: &Host, pid: i32, tid: i32) -> Option<Task> {
    let stat = host.read(&format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let (_, start) = stat_fields(&stat)?;
    let comm = lossy(
        &host
            .read_bytes(&format!("/proc/{pid}/task/{tid}/comm"))
            .ok()?,
    );
    Some(Task {
        tid,
        start: start as i64,
        comm: comm.trim_end_matches('\n').to_owned(),
    })
}

/// Every process id in `/proc`.
pub(super) fn pids(host: &Host) -> Vec<i32> {
    host.list("/proc")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What the rules want of one task: each attribute's value and the index of the rule
/// that decides it.
type Wants = BTreeMap<Attr, (String, usize)>;

/// What the rules want of one task: each attribute from the last rule that sets it, with
/// that rule's index.
fn wanted(rules: &[Rule], p: &Process, t: &Task) -> Wants {
    let mut want = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        if p.taken_by(rule) && rule.select.thread_matches(&t.comm) {
            for (attr, value) in rule.task_place() {
                want.insert(*attr, (value.clone(), i));
            }
        }
    }
    want
}

/// The tasks of processes `pids` that some rule takes, each with what the rules want of it.
fn matched(
    host: &Host,
    rules: &[Rule],
    pids: &[i32],
    only: Option<i32>,
) -> Vec<(i32, Task, Wants)> {
    let mut out = Vec::new();
    for &pid in pids {
        let Some(p) = process(host, pid, rules) else {
            continue;
        };
        if !rules.iter().any(|r| p.taken_by(r)) {
            continue;
        }
        let tasks = match only {
            Some(tid) => task(host, pid, tid).into_iter().collect(),
            None => tasks(host, pid),
        };
        for t in tasks {
            let want = wanted(rules, &p, &t);
            if !want.is_empty() {
                out.push((pid, t, want));
            }
        }
    }
    out
}

/// The reports of one pass, one per rule, built up as tasks are seen.
#[derive(Debug)]
pub(super) struct Reports(Vec<PinReport>);

impl Reports {
    pub(super) fn new(rules: &[Rule]) -> Self {
        Self(
            rules
                .iter()
                .map(|r| PinReport {
                    rule: r.text(),
                    at: r.at.clone(),
                    matched: 0,
                    placed: 0,
                    changed: 0,
                    problems: Vec::new(),
                    more_problems: 0,
                })
                .collect(),
        )
    }

    fn problem(&mut self, rule: usize, problem: PinProblem) {
        let r = &mut self.0[rule];
        if r.problems.len() < MAX_PROBLEMS {
            r.problems.push(problem);
        } else {
            r.more_problems += 1;
        }
    }

    pub(super) fn into_vec(self) -> Vec<PinReport> {
        self.0
    }

    /// The reports, by rule index.
    pub(super) fn slice(&mut self) -> &mut [PinReport] {
        &mut self.0
    }
}

/// One change a pass makes.
#[derive(Debug)]
struct Change {
    row: journal::Row,
    rule: usize,
}

/// Places the tasks of processes `pids` (only thread `only` of them, when given; onto
/// partition `fence`, when one is up) by
/// `rules`: what they want is journaled (one commit), then set. With `dry_run` nothing is
/// journaled or set, and the reports say what would change. Tasks that hold what they
/// want already are counted as placed.
pub(super) fn place(
    host: &Host,
    conn: &mut Connection,
    seen: &Journaled,
    rules: &[Rule],
    (pids, only, fence): (&[i32], Option<i32>, Option<&Fence>),
    dry_run: bool,
    reports: &mut Reports,
) -> rusqlite::Result<()> {
    let mut changes = Vec::new();
    // Per task and rule: whether every attribute of the rule it takes already holds.
    let mut holds: HashMap<(i32, usize), bool> = HashMap::new();
    for (pid, t, want) in matched(host, rules, pids, only) {
        // Every value first: a task gone meanwhile is skipped whole.
        let Ok(current) = want
            .keys()
            .map(|a| sched::get(t.tid, *a).map(|v| (*a, v)))
            .collect::<std::io::Result<HashMap<Attr, String>>>()
        else {
            continue;
        };
        for (_, i) in want.values() {
            if holds.insert((t.tid, *i), true).is_none() {
                reports.0[*i].matched += 1;
            }
        }
        for (attr, (value, i)) in want {
            let current = current[&attr].clone();
            if current == value {
                continue;
            }
            holds.insert((t.tid, i), false);
            changes.push(Change {
                row: journal::Row {
                    tid: t.tid,
                    start: t.start,
                    attr: attr.as_str().to_owned(),
                    pid,
                    comm: t.comm.clone(),
                    rule: rules[i].text(),
                    original: current,
                    written: value,
                },
                rule: i,
            });
        }
    }
    for ((_, i), ok) in &holds {
        if *ok {
            reports.0[*i].placed += 1;
        }
    }
    if dry_run {
        for c in &changes {
            reports.0[c.rule].changed += 1;
        }
        return Ok(());
    }
    // Placements onto a partition's CPUs take over what the shield journaled of those
    // threads (one commit with the rest).
    let (over, rest): (Vec<journal::Row>, Vec<journal::Row>) =
        changes.iter().map(|c| c.row.clone()).partition(|r| {
            fence.is_some_and(|f| r.attr == Attr::Affinity.as_str() && onto(f, &r.written))
        });
    record(conn, seen, &rest)?;
    if !over.is_empty() {
        seen.add(&over);
        journal::record_over_shield(conn, &over)?;
    }
    let mut failed: HashMap<(i32, usize), bool> = HashMap::new();
    for c in &changes {
        let attr = Attr::parse(&c.row.attr).expect("an attribute this pass named");
        let r = &c.row;
        if let Some(f) = fence.filter(|f| attr == Attr::Affinity && onto(f, &r.written)) {
            admit(host, f, r.pid, r.tid);
        }
        match sched::set(r.tid, attr, &r.written) {
            Ok(()) => {
                reports.0[c.rule].changed += 1;
                failed.entry((r.tid, c.rule)).or_insert(false);
                if let Ok(now) = sched::get(r.tid, attr) {
                    if now != r.written {
                        journal::rendered(conn, r.tid, r.start, &r.attr, &now)?;
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                failed.insert((r.tid, c.rule), true);
                let v2 = fence
                    .and_then(|f| f.cgroup.as_ref().filter(|_| onto(f, &r.written)))
                    .filter(|_| attr == Attr::Affinity);
                let reason = match v2 {
                    Some(cg) => format!(
                        "{e}: on cgroup v2 only tasks inside the partition's cgroup ({cg}) may run \
                         on its CPUs"
                    ),
                    None => e.to_string(),
                };
                reports.problem(
                    c.rule,
                    PinProblem {
                        pid: r.pid,
                        tid: r.tid,
                        comm: r.comm.clone(),
                        attr: r.attr.clone(),
                        expected: r.written.clone(),
                        actual: Some(r.original.clone()),
                        status: "failed".into(),
                        reason: Some(reason),
                    },
                );
            }
        }
    }
    for ((_, i), f) in failed {
        if !f {
            reports.0[i].placed += 1;
        }
    }
    Ok(())
}

/// Verify: every matched task's attributes against what its rules want.
pub(super) fn verify(host: &Host, rules: &[Rule]) -> Vec<PinReport> {
    let mut reports = Reports::new(rules);
    for (pid, t, want) in matched(host, rules, &pids(host), None) {
        let mut drifted: HashMap<usize, bool> = HashMap::new();
        for (attr, (value, i)) in want {
            let Ok(current) = sched::get(t.tid, attr) else {
                continue;
            };
            let d = drifted.entry(i).or_insert(false);
            if current != value {
                *d = true;
                reports.problem(
                    i,
                    PinProblem {
                        pid,
                        tid: t.tid,
                        comm: t.comm.clone(),
                        attr: attr.as_str().to_owned(),
                        expected: value,
                        actual: Some(current),
                        status: "drifted".into(),
                        reason: None,
                    },
                );
            }
        }
        for (i, d) in drifted {
            reports.0[i].matched += 1;
            if !d {
                reports.0[i].placed += 1;
            }
        }
    }
    reports.into_vec()
}

/// A task created by a placed one inherited its placement: the child's attributes that
/// hold what was written for its creator are journaled with the creator's originals, so a
/// revert restores them too.
///
/// Who the creator is: the kernel's fork event names the new task's parent, which for a
/// new process is the thread that forked it, and for a new thread the parent of the whole
/// process. So a new thread (`child != child_pid`) takes the rows of its own process's
/// tasks, and a new process those of the forking thread, or (the forking thread gone by
/// now) of any task of the parent process.
pub(super) fn inherit(
    host: &Host,
    conn: &mut Connection,
    seen: &Journaled,
    parent: i32,
    parent_pid: i32,
    child_pid: i32,
    child: i32,
) -> rusqlite::Result<()> {
    // The journal first: most tasks on the host descend from nothing placed, and then
    // nothing of the child needs reading.
    let mut rows = if child != child_pid {
        if !seen.process(child_pid) {
            return Ok(());
        }
        journal::of_process(conn, child_pid)?
    } else if seen.task(parent) {
        journal::of_tid(conn, parent, i64::MAX)?
    } else {
        Vec::new()
    };
    if rows.is_empty() && child == child_pid && seen.process(parent_pid) {
        rows = journal::of_process(conn, parent_pid)?;
    }
    if rows.is_empty() {
        return Ok(());
    }
    let Some(t) = task(host, child_pid, child) else {
        return Ok(());
    };
    // The creator's rows are of a task that started before the child.
    rows.retain(|r| r.start <= t.start);
    let mut inherited: BTreeMap<String, journal::Row> = BTreeMap::new();
    for r in rows {
        if inherited.contains_key(&r.attr) {
            continue;
        }
        let holds = Attr::parse(&r.attr)
            .and_then(|a| sched::get(child, a).ok())
            .is_some_and(|v| v == r.written);
        if holds {
            let attr = r.attr.clone();
            inherited.insert(
                attr,
                journal::Row {
                    tid: child,
                    start: t.start,
                    pid: child_pid,
                    comm: t.comm.clone(),
                    ..r
                },
            );
        }
    }
    let rows: Vec<journal::Row> = inherited.into_values().collect();
    record(conn, seen, &rows)
}
