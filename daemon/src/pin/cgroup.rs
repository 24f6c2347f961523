//! Rules with only a cgroup or unit selector place the cgroup itself: their `cpus` and
//! `mems` are written to its cpuset (`cpuset.cpus`, `cpuset.mems`), or for a unit set as
//! its `AllowedCPUs=` and `AllowedMemoryNodes=` at runtime through systemd's D-Bus API
//! (systemd keeps them across restarts of the unit), so every task in it, and every task
//! that starts in it later, has them from the kernel: nothing to chase. The originals are
//! journaled first ([`journal::record_cgroup`], keyed by file, or `unit:NAME/PROPERTY`)
//! and go back compare-and-swap, as task attributes do.
//!
//! Where the cpuset is: on cgroup v1 the cpuset hierarchy's directory of that path; on v2
//! the unified directory, if its parent gives it the cpuset controller (otherwise the rule
//! is reported unsupported there, and says what to do). A cgroup removed and made again
//! (a service restarted by hand, on a host without systemd) is placed again when a
//! process execs in it.

use cleanroom_proto::{PinProblem, PinReport};
use rusqlite::Connection;

use super::rule::Rule;
use crate::host::Host;
use crate::host::format::{format_cpu_list, parse_cpu_list};
use crate::store::pins::{self as journal, CgroupRow};
use crate::systemd::units::{self, SetProperty};

/// The cpuset directory of cgroup `path` on this host, or why there is none.
pub(super) fn dir_of(host: &Host, path: &str) -> Result<String, String> {
    let mounts = host.cgroup_mounts().map_err(|e| e.to_string())?;
    let rel = if path == "/" { "" } else { path };
    if let Some(m) = mounts
        .iter()
        .find(|m| !m.unified && m.controllers.iter().any(|c| c == "cpuset"))
    {
        let dir = format!("{}{rel}", m.mount_point.display());
        return if host.exists(&format!("{dir}/cpuset.cpus")) {
            Ok(dir)
        } else {
            Err(format!("no cgroup {path} in the cpuset hierarchy ({dir})"))
        };
    }
    let Some(m) = mounts.iter().find(|m| m.unified) else {
        return Err("this host has no cpuset controller".into());
    };
    let dir = format!("{}{rel}", m.mount_point.display());
    if !host.exists(&format!("{dir}/cgroup.procs")) {
        return Err(format!("no cgroup {path} ({dir})"));
    }
    if !host.exists(&format!("{dir}/cpuset.cpus")) {
        return Err(format!(
            "cgroup {path} has no cpuset controller: its parent must enable it \
             (`+cpuset` in the parent's cgroup.subtree_control; on a systemd host, \
             AllowedCPUs= on the unit does that)"
        ));
    }
    Ok(dir)
}

/// What a whole rule places: a cpuset directory, or a systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A cgroup's cpuset directory.
    Dir(String),
    /// A unit, through systemd.
    Unit(String),
}

/// The journal key of a target's CPUs (`cpus`) or memory nodes: a cpuset file, or
/// `unit:NAME/PROPERTY`.
fn key(target: &Target, cpus: bool) -> String {
    let property = if cpus {
        SetProperty::Cpus
    } else {
        SetProperty::Mems
    };
    match target {
        Target::Dir(dir) if cpus => format!("{dir}/cpuset.cpus"),
        Target::Dir(dir) => format!("{dir}/cpuset.mems"),
        Target::Unit(unit) => units::key(unit, property),
    }
}

/// What a key holds now, as a list (`None`: its cgroup or unit is gone; a unit's error
/// otherwise).
fn read_key(host: &Host, key: &str) -> Result<Option<String>, String> {
    match units::parse_key(key) {
        Some((unit, property)) => units::read_list(unit, property).map_err(|e| e.to_string()),
        None => Ok(read_list(host, key)),
    }
}

/// Writes a list to a key.
fn write_key(host: &Host, key: &str, value: &str) -> Result<(), String> {
    match units::parse_key(key) {
        Some((unit, property)) => {
            units::write_list(host, unit, property, value).map_err(|e| e.to_string())
        }
        None => host.write(key, value).map_err(|e| e.to_string()),
    }
}

/// The keys a whole rule sets on `target`, with the values it wants.
fn wants(rule: &Rule, target: &Target) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(cpus) = rule.cpus() {
        out.push((key(target, true), format_cpu_list(&cpus)));
    }
    if let Some(m) = &rule.mems {
        out.push((key(target, false), m.clone()));
    }
    out
}

/// Whether a whole rule places anything through its cgroup.
fn places(rule: &Rule) -> bool {
    rule.cpus().is_some() || rule.mems.is_some()
}

/// Where a whole rule's cgroup is placed on this host, or why it cannot be.
fn target_of(host: &Host, rule: &Rule) -> Option<Result<Target, String>> {
    if let Some(unit) = rule.select.whole_unit() {
        return Some(if units::booted(host) {
            Ok(Target::Unit(unit.to_owned()))
        } else {
            Err(format!(
                "this host does not run systemd: name the cgroup of {unit} (`cgroup = \"/system.slice/{unit}\"`)"
            ))
        });
    }
    let path = rule.select.whole_cgroup()?;
    Some(dir_of(host, path).map(Target::Dir))
}

/// The whole rules among `rules` that place their cgroup (`only`: those whose cgroup
/// holds one of these paths), each with its index, what it names and its target,
/// counted as matched; one whose target is missing here is reported unsupported instead.
fn targets<'a>(
    host: &Host,
    rules: &'a [Rule],
    only: Option<&[String]>,
    reports: &mut [PinReport],
) -> Vec<(usize, &'a Rule, String, Target)> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let Some(name) = rule.select.whole_cgroup().or(rule.select.whole_unit()) else {
            continue;
        };
        // For an event, cgroups only: systemd keeps a unit's properties across restarts,
        // and a D-Bus call per exec in the unit would be the cost of nothing.
        let skip = only.is_some_and(|o| {
            rule.select.whole_unit().is_some() || !o.iter().any(|p| rule.select.in_cgroup(p))
        });
        if !places(rule) || skip {
            continue;
        }
        match target_of(host, rule) {
            Some(Ok(target)) => {
                reports[i].matched += 1;
                out.push((i, rule, name.to_owned(), target));
            }
            Some(Err(why)) => {
                reports[i]
                    .problems
                    .push(problem(name, "cgroup", "", None, "unsupported", why))
            }
            None => {}
        }
    }
    out
}

/// A cpuset file's value in the canonical form (a list; empty stays empty).
fn read_list(host: &Host, file: &str) -> Option<String> {
    let text = host.read(file).ok()?;
    parse_cpu_list(&text).ok().map(|s| format_cpu_list(&s))
}

/// The attribute a key sets, for reports: the file or property name.
fn attr_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, a)| a)
}

/// Places the cgroups of the whole rules among `rules` (`only`: just those whose cgroup
/// holds one of these paths, for an event), journaling each original first. With
/// `dry_run` nothing changes. Reports go to `reports` by rule index.
pub(super) fn place(
    host: &Host,
    conn: &Connection,
    rules: &[Rule],
    only: Option<&[String]>,
    dry_run: bool,
    reports: &mut [PinReport],
) -> rusqlite::Result<()> {
    for (i, rule, name, target) in targets(host, rules, only, reports) {
        let report = &mut reports[i];
        let mut placed = true;
        for (key, want) in wants(rule, &target) {
            let current = match read_key(host, &key) {
                Ok(c) => c,
                Err(why) => {
                    placed = false;
                    report
                        .problems
                        .push(problem(&name, attr_of(&key), &want, None, "failed", why));
                    continue;
                }
            };
            if current.as_deref() == Some(want.as_str()) {
                continue;
            }
            if dry_run {
                report.changed += 1;
                continue;
            }
            journal::record_cgroup(
                conn,
                &CgroupRow {
                    file: key.clone(),
                    rule: rule.text(),
                    original: current.clone().unwrap_or_default(),
                    written: want.clone(),
                },
            )?;
            match write_key(host, &key, &want) {
                Ok(()) => report.changed += 1,
                Err(why) => {
                    placed = false;
                    report.problems.push(problem(
                        &name,
                        attr_of(&key),
                        &want,
                        current,
                        "failed",
                        why,
                    ));
                }
            }
        }
        if placed {
            report.placed += 1;
        }
    }
    Ok(())
}

/// Puts back the journaled cgroup files and unit properties `which` selects, where they
/// still hold what cleanroom wrote (every one with `force`); one someone changed since is
/// a conflict, kept journaled for `--force`; a cgroup or unit that is gone is forgotten.
/// Problems by rule text.
pub(super) fn restore(
    host: &Host,
    conn: &Connection,
    force: bool,
    which: impl Fn(&CgroupRow) -> bool,
) -> rusqlite::Result<Vec<(String, PinProblem)>> {
    let mut problems = Vec::new();
    for row in journal::cgroup_rows(conn)?.into_iter().filter(|r| which(r)) {
        let (owner, attr) = row.file.rsplit_once('/').unwrap_or(("", &row.file));
        let owner = owner.strip_prefix("unit:").unwrap_or(owner);
        let mut fail = |current: Option<String>, status: &str, why: String| {
            problems.push((
                row.rule.clone(),
                problem(owner, attr, &row.original, current, status, why),
            ));
        };
        let current = match read_key(host, &row.file) {
            Ok(Some(c)) => c,
            Ok(None) => {
                journal::forget_cgroup(conn, &row.file)?;
                continue;
            }
            Err(why) => {
                fail(None, "failed", why);
                continue;
            }
        };
        if current == row.original {
            journal::forget_cgroup(conn, &row.file)?;
            continue;
        }
        if current != row.written && !force {
            let why = format!(
                "changed by someone else since cleanroom set {:?}; left alone (--force restores {:?})",
                row.written, row.original
            );
            fail(Some(current), "conflict", why);
            continue;
        }
        match write_key(host, &row.file, &row.original) {
            Ok(()) => journal::forget_cgroup(conn, &row.file)?,
            Err(why) => fail(Some(current), "failed", why),
        }
    }
    Ok(problems)
}

/// Whether the whole rules among `rules` still want journaled key `row.file` at the value
/// it was written.
pub(super) fn still_wanted(host: &Host, rules: &[Rule], row: &CgroupRow) -> bool {
    rules.iter().any(|r| {
        places(r)
            && target_of(host, r).is_some_and(|t| {
                t.is_ok_and(|t| {
                    wants(r, &t)
                        .iter()
                        .any(|(k, v)| *k == row.file && *v == row.written)
                })
            })
    })
}

/// Verify: each whole rule's cgroup against what it wants.
pub(super) fn verify(host: &Host, rules: &[Rule], reports: &mut [PinReport]) {
    for (i, rule, name, target) in targets(host, rules, None, reports) {
        let report = &mut reports[i];
        let mut placed = true;
        for (key, want) in wants(rule, &target) {
            let (current, why) = match read_key(host, &key) {
                Ok(c) => (c, String::new()),
                Err(why) => (None, why),
            };
            if current.as_deref() != Some(want.as_str()) {
                placed = false;
                report.problems.push(problem(
                    &name,
                    attr_of(&key),
                    &want,
                    current,
                    "drifted",
                    why,
                ));
            }
        }
        if placed {
            report.placed += 1;
        }
    }
}

/// A problem of a cgroup (named where a task's name would be; no task ids).
fn problem(
    path: &str,
    attr: &str,
    expected: &str,
    actual: Option<String>,
    status: &str,
    reason: String,
) -> PinProblem {
    PinProblem {
        pid: 0,
        tid: 0,
        comm: path.to_owned(),
        attr: attr.to_owned(),
        expected: expected.to_owned(),
        actual,
        status: status.into(),
        reason: (!reason.is_empty()).then_some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        let doc: crate::pin::rule::PinDoc = toml::from_str(text).unwrap();
        doc.rule(0, "t.toml", &|_| 1).unwrap()
    }

    fn reports(rules: &[Rule]) -> Vec<PinReport> {
        super::super::place::Reports::new(rules).into_vec()
    }

    /// On a cgroup v1 host (a fake tree): a whole-cgroup rule writes the cgroup's cpuset,
    /// journaled first; a second pass changes nothing; a revert puts the originals back,
    /// and leaves a file someone changed since (a conflict, kept for `--force`).
    #[test]
    fn a_cgroup_rule_places_its_cpuset_and_goes_back_compare_and_swap() {
        let cs = "/sys/fs/cgroup/cpuset";
        let (_tmp, host) = crate::host::fake_root(&[
            (
                "/proc/self/mountinfo",
                "30 25 0:26 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset\n",
            ),
            ("/sys/fs/cgroup/cpuset/cpuset.cpus", "0-3\n"),
            ("/sys/fs/cgroup/cpuset/db/cpuset.cpus", "0-3\n"),
            ("/sys/fs/cgroup/cpuset/db/cpuset.mems", "0\n"),
            ("/sys/fs/cgroup/cpuset/web/cpuset.cpus", "0-3\n"),
        ]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(store_dir.path()).unwrap();
        let conn = store.lock_blocking();
        let rules = vec![
            rule("cgroup = \"/db\"\ncpus = \"2-3\"\nmems = \"0\"\n"),
            rule("cgroup = \"/web/\"\ncpus = \"1\"\n"),
            rule("cgroup = \"/gone\"\ncpus = \"1\"\n"),
        ];
        let mut r = reports(&rules);
        place(&host, &conn, &rules, None, false, &mut r).unwrap();
        assert_eq!(host.read(&format!("{cs}/db/cpuset.cpus")).unwrap(), "2-3");
        assert_eq!(host.read(&format!("{cs}/web/cpuset.cpus")).unwrap(), "1");
        assert_eq!(
            (r[0].matched, r[0].placed, r[0].changed),
            (1, 1, 1),
            "{r:?}"
        );
        assert_eq!(r[2].problems[0].status, "unsupported");
        assert!(
            r[2].problems[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("no cgroup /gone"),
            "{r:?}"
        );
        let rows = journal::cgroup_rows(&conn).unwrap();
        assert_eq!(rows.len(), 2, "mems held its value already: {rows:?}");
        assert_eq!(
            (rows[0].original.as_str(), rows[0].written.as_str()),
            ("0-3", "2-3")
        );
        let mut again = reports(&rules);
        place(&host, &conn, &rules, None, false, &mut again).unwrap();
        assert_eq!(again[0].changed, 0);
        let mut v = reports(&rules);
        verify(&host, &rules, &mut v);
        assert!(v[0].problems.is_empty() && v[0].placed == 1, "{v:?}");
        // Someone narrows web by hand: verify says drifted, a revert leaves it.
        host.write(&format!("{cs}/web/cpuset.cpus"), "0").unwrap();
        let mut v = reports(&rules);
        verify(&host, &rules, &mut v);
        assert_eq!(v[1].problems[0].status, "drifted");
        let problems = restore(&host, &conn, false, |_| true).unwrap();
        assert_eq!(host.read(&format!("{cs}/db/cpuset.cpus")).unwrap(), "0-3");
        assert_eq!(host.read(&format!("{cs}/web/cpuset.cpus")).unwrap(), "0");
        let [(rule_text, p)] = &problems[..] else {
            panic!("{problems:?}")
        };
        assert!(rule_text.contains("/web"), "{rule_text}");
        assert_eq!(p.status, "conflict");
        assert_eq!(
            journal::cgroup_rows(&conn).unwrap().len(),
            1,
            "kept for --force"
        );
        restore(&host, &conn, true, |_| true).unwrap();
        assert_eq!(host.read(&format!("{cs}/web/cpuset.cpus")).unwrap(), "0-3");
        assert!(journal::cgroup_rows(&conn).unwrap().is_empty());
    }

    /// cgroup v2 without the cpuset controller for the cgroup: unsupported, and the
    /// report says how to get it.
    #[test]
    fn a_v2_cgroup_without_cpuset_is_unsupported_and_says_why() {
        let (_tmp, host) = crate::host::fake_root(&[
            (
                "/proc/self/mountinfo",
                "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
            ),
            ("/sys/fs/cgroup/svc/cgroup.procs", ""),
        ]);
        let why = dir_of(&host, "/svc").unwrap_err();
        assert!(
            why.contains("+cpuset") && why.contains("AllowedCPUs"),
            "{why}"
        );
    }
}
