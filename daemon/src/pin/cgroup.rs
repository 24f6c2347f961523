//! Rules with only a cgroup selector place the cgroup itself: their `cpus` and `mems` are
//! written to its cpuset (`cpuset.cpus`, `cpuset.mems`), so every task in it, and every
//! task that starts in it later, has them from the kernel: nothing to chase. The
//! originals are journaled first ([`journal::record_cgroup`]) and go back
//! compare-and-swap, as task attributes do.
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

/// The cgroup files a whole-cgroup rule sets, with the values it wants.
fn wants(rule: &Rule) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(cpus) = rule.cpus() {
        out.push(("cpuset.cpus", format_cpu_list(&cpus)));
    }
    if let Some(m) = &rule.mems {
        out.push(("cpuset.mems", m.clone()));
    }
    out
}

/// The whole-cgroup rules among `rules` that set a cpuset file (`only`: those whose
/// cgroup holds one of these paths), each with its index, cgroup and cpuset directory,
/// counted as matched; one with no such directory here is reported unsupported instead.
fn targets<'a>(
    host: &Host,
    rules: &'a [Rule],
    only: Option<&[String]>,
    reports: &mut [PinReport],
) -> Vec<(usize, &'a Rule, &'a str, String)> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let Some(path) = rule.select.whole_cgroup() else {
            continue;
        };
        if wants(rule).is_empty()
            || only.is_some_and(|o| !o.iter().any(|p| super::rule::is_under(p, path)))
        {
            continue;
        }
        match dir_of(host, path) {
            Ok(dir) => {
                reports[i].matched += 1;
                out.push((i, rule, path, dir));
            }
            Err(why) => {
                reports[i]
                    .problems
                    .push(problem(path, "cgroup", "", None, "unsupported", why))
            }
        }
    }
    out
}

/// A cpuset file's value in the canonical form (a list; empty stays empty).
fn read_list(host: &Host, file: &str) -> Option<String> {
    let text = host.read(file).ok()?;
    parse_cpu_list(&text).ok().map(|s| format_cpu_list(&s))
}

/// Places the cgroups of the whole-cgroup rules among `rules` (`only`: just those whose
/// cgroup holds one of these paths, for an event), journaling each original first. With
/// `dry_run` nothing changes. Reports go to `reports` by rule index.
pub(super) fn place(
    host: &Host,
    conn: &Connection,
    rules: &[Rule],
    only: Option<&[String]>,
    dry_run: bool,
    reports: &mut [PinReport],
) -> rusqlite::Result<()> {
    for (i, rule, path, dir) in targets(host, rules, only, reports) {
        let report = &mut reports[i];
        let mut placed = true;
        for (name, want) in wants(rule) {
            let file = format!("{dir}/{name}");
            let current = read_list(host, &file);
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
                    file: file.clone(),
                    rule: rule.text(),
                    original: current.clone().unwrap_or_default(),
                    written: want.clone(),
                },
            )?;
            match host.write(&file, &want) {
                Ok(()) => report.changed += 1,
                Err(e) => {
                    placed = false;
                    report.problems.push(problem(
                        path,
                        name,
                        &want,
                        current,
                        "failed",
                        e.to_string(),
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

/// Puts back the journaled cgroup files `which` selects, where they still hold what
/// cleanroom wrote (every one with `force`); a file someone changed since is a conflict,
/// kept journaled for `--force`; a cgroup that is gone is forgotten. Problems by rule
/// text.
pub(super) fn restore(
    host: &Host,
    conn: &Connection,
    force: bool,
    which: impl Fn(&CgroupRow) -> bool,
) -> rusqlite::Result<Vec<(String, PinProblem)>> {
    let mut problems = Vec::new();
    for row in journal::cgroup_rows(conn)?.into_iter().filter(|r| which(r)) {
        let Some(current) = read_list(host, &row.file) else {
            journal::forget_cgroup(conn, &row.file)?;
            continue;
        };
        let (dir, name) = row.file.rsplit_once('/').unwrap_or(("", &row.file));
        if current == row.original {
            journal::forget_cgroup(conn, &row.file)?;
            continue;
        }
        if current != row.written && !force {
            let reason = format!(
                "changed by someone else since cleanroom set {:?}; left alone (--force restores {:?})",
                row.written, row.original
            );
            problems.push((
                row.rule.clone(),
                problem(dir, name, &row.original, Some(current), "conflict", reason),
            ));
            continue;
        }
        match host.write(&row.file, &row.original) {
            Ok(()) => journal::forget_cgroup(conn, &row.file)?,
            Err(e) => problems.push((
                row.rule.clone(),
                problem(
                    dir,
                    name,
                    &row.original,
                    Some(current),
                    "failed",
                    e.to_string(),
                ),
            )),
        }
    }
    Ok(problems)
}

/// Whether the whole-cgroup rules among `rules` still want journaled file `file` at the
/// value it was written.
pub(super) fn still_wanted(host: &Host, rules: &[Rule], row: &CgroupRow) -> bool {
    rules.iter().any(|r| {
        r.select.whole_cgroup().is_some_and(|path| {
            dir_of(host, path).is_ok_and(|dir| {
                wants(r)
                    .iter()
                    .any(|(name, v)| format!("{dir}/{name}") == row.file && *v == row.written)
            })
        })
    })
}

/// Verify: each whole-cgroup rule's files against what it wants.
pub(super) fn verify(host: &Host, rules: &[Rule], reports: &mut [PinReport]) {
    for (i, rule, path, dir) in targets(host, rules, None, reports) {
        let report = &mut reports[i];
        let mut placed = true;
        for (name, want) in wants(rule) {
            let current = read_list(host, &format!("{dir}/{name}"));
            if current.as_deref() != Some(want.as_str()) {
                placed = false;
                report.problems.push(problem(
                    path,
                    name,
                    &want,
                    current,
                    "drifted",
                    String::new(),
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
