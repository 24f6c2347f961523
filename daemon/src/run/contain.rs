//! Keeping a root caller's run in its cgroup.
//!
//! A run drops every capability, but a root caller's run keeps uid 0, and uid 0 owns the
//! cgroup files: on cgroup v1 writing a pid to a `cgroup.procs` needs no capability when
//! the writer's euid is root, so without more such a run could move itself to any cgroup
//! (escaping its limits, its accounting and the kill at its end) and raise its own limits
//! (`pids.max`, `memory.limit_in_bytes`: root's files, mode 0644). So a root caller's run
//! gets:
//! - a mount namespace in which every cgroup mount of the host's mount table is remounted
//!   read-only (`MS_REMOUNT | MS_BIND | MS_RDONLY`, per mount: the host's mounts are
//!   untouched, `/` having been made private first), and then shows the run's own cgroup
//!   in that hierarchy: the run's cgroup directory is bound onto the mount point (a bind
//!   of a read-only mount is read-only), so `/sys/fs/cgroup/pids/pids.max` is the run's
//!   own limit, as in a container;
//! - a cgroup namespace rooted at its cgroups, entered once it is in them, so
//!   `/proc/self/cgroup` shows `/` in every hierarchy (consistent with the mounts), and on
//!   cgroup v2 the kernel refuses any migration outside the namespace as well.
//!
//! Undoing any of it (remount, unmount, `setns`) needs `CAP_SYS_ADMIN`, which the run has
//! none of. A user namespace the run makes itself gives it that capability only over mounts
//! it may not unlock (the kernel locks the flags and the stacking of mounts copied into a
//! less privileged mount namespace), and over cgroup file systems it mounts afresh in a
//! cgroup namespace of that user namespace's, which show only the cgroups below the one
//! it is in: it cannot leave its cgroup that way either.
//!
//! Only root callers' runs: other users cannot write root's cgroup files (their run
//! cgroups are root's, never handed to them), and a mount namespace costs a copy of the
//! mount table at the clone and its teardown at the exit: the teardown alone adds about
//! 50 µs to the measured wall time, with 20 mounts (a 2-core VM, forks timed with and
//! without), more with more mounts.
//!
//! This module decides which mounts and what each shows ([`views`], pure, from the mount
//! table and the cgroups of the process that clones); the child of `run/spawn.rs` makes the
//! mounts between its clone and its exec.
//!
//! Limitations:
//! - A root caller's run that makes a user namespace of its own (no capability needed)
//!   can mount its cgroup v1 hierarchies afresh there, rooted at its own cgroup, and write
//!   that cgroup's limits (`pids.max`, `memory.limit_in_bytes`: root's files, and it is
//!   uid 0); on cgroup v2 the `nsdelegate` mount option (systemd's default) forbids writing
//!   a namespace root's files from inside. Closing that would take a seccomp filter
//!   refusing `CLONE_NEWUSER` (and `clone3`, whose flags a filter cannot read), or the
//!   limits one cgroup above the one the run is in.
//! - A cgroup mount that appears on the host between the moment the table is read and the
//!   clone stays writable in the run.
//! - A capability-less root process outside any run (a service that drops every capability
//!   but keeps uid 0) would let a root caller's run reach the host's mounts through
//!   `/proc/<pid>/root`; cleanroom starts no such process.

use std::path::{Path, PathBuf};

use super::spawn::Spec;
use crate::host::{CgroupMount, Host, ProcCgroup};

/// One cgroup mount as a contained run sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupView {
    /// Where the cgroup file system is mounted (the same path in the run's mount
    /// namespace, a copy of the host's): remounted read-only there.
    pub mount_point: PathBuf,
    /// The run's own cgroup in that hierarchy, below the mount point: bound onto it. None
    /// where the mount point shows it already, or does not show it at all.
    pub own: Option<PathBuf>,
    /// The per-mount flags the read-only remount keeps (`MS_NOSUID`, `MS_NODEV`,
    /// `MS_NOEXEC`; the kernel keeps the access-time flags itself).
    pub flags: u64,
}

/// Whether a run is contained: its caller is root (see the module documentation).
pub fn applies(spec: &Spec) -> bool {
    spec.uid == 0
}

/// The views for a run of `spec`, cloned by this process: from this process's mount table
/// and cgroups. Reads two kernel files.
pub fn for_spec(spec: &Spec) -> Result<Vec<CgroupView>, crate::host::Error> {
    let host = Host::new("/");
    let joins: Vec<&Path> = spec
        .cgroup_v2
        .iter()
        .map(PathBuf::as_path)
        .chain(spec.cgroup_procs.iter().filter_map(|p| p.parent()))
        .collect();
    Ok(views(&host.cgroup_mounts()?, &host.own_cgroups()?, &joins))
}

/// The views of `mounts` for a child that enters the cgroup directories `joins` (real
/// paths below mount points) and otherwise stays where its parent is (`own`, the parent's
/// `/proc/self/cgroup`). A cgroup mount with another on top of it at the same mount point
/// is left out: its path leads to the other one (the child skips one that another kind of
/// file system covers, by the type of what its path leads to).
pub fn views(mounts: &[CgroupMount], own: &[ProcCgroup], joins: &[&Path]) -> Vec<CgroupView> {
    let child = |m: &CgroupMount| -> Option<PathBuf> {
        // Where it joins wins over where its parent is, in any mount of that hierarchy.
        let joined = joins.iter().find_map(|dir| {
            let at = mounts
                .iter()
                .filter(|n| n.device == m.device && dir.starts_with(&n.mount_point))
                .max_by_key(|n| n.mount_point.components().count())?;
            Some(at.root.join(dir.strip_prefix(&at.mount_point).ok()?))
        });
        joined.or_else(|| {
            own.iter()
                .find(|line| names_hierarchy(line, m))
                .map(|line| PathBuf::from(&line.path))
        })
    };
    mounts
        .iter()
        .filter(|m| {
            !mounts
                .iter()
                .any(|top| top.parent == m.id && top.mount_point == m.mount_point)
        })
        .map(|m| {
            let below = child(m).and_then(|path| {
                let rel = path.strip_prefix(&m.root).ok()?;
                (!rel.as_os_str().is_empty()).then(|| m.mount_point.join(rel))
            });
            CgroupView {
                mount_point: m.mount_point.clone(),
                own: below,
                flags: kept_flags(&m.mount_options),
            }
        })
        .collect()
}

/// Whether a line of `/proc/<pid>/cgroup` is about the hierarchy mounted at `m`: the
/// unified one (id 0), or a v1 one whose mount's super options hold every controller and
/// `name=` the line lists.
fn names_hierarchy(line: &ProcCgroup, m: &CgroupMount) -> bool {
    if m.unified {
        return line.id == 0 && line.controllers.is_empty();
    }
    line.id != 0
        && !line.controllers.is_empty()
        && line.controllers.iter().all(|c| m.super_options.contains(c))
}

/// The `MS_*` flags of the per-mount options a read-only remount must give again (a bind
/// remount sets every one it is not given back to its default).
fn kept_flags(options: &[String]) -> u64 {
    let flag = |name: &str, flag: libc::c_ulong| {
        if options.iter().any(|o| o == name) {
            flag
        } else {
            0
        }
    };
    flag("nosuid", libc::MS_NOSUID)
        | flag("nodev", libc::MS_NODEV)
        | flag("noexec", libc::MS_NOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{parse_mountinfo, parse_proc_cgroup};

    /// A hybrid host: v1 controllers (cpu and cpuacct together), a named hierarchy, the
    /// cgroup2 mount; one hierarchy mounted a second time from a subdirectory; a cgroup
    /// mount another covers.
    const MOUNTS: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:2 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:3 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,relatime shared:4 - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime shared:5 - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:7 - cgroup2 cgroup2 rw
50 22 0:32 /svc /srv/memory rw,relatime shared:8 - cgroup cgroup rw,memory
60 22 0:33 / /mnt/cg rw,relatime - cgroup cgroup rw,pids
61 60 0:32 / /mnt/cg rw,relatime - cgroup cgroup rw,memory
";

    /// The process that clones: in the service's cgroup of every hierarchy.
    const OWN: &str = "\
9:name=systemd:/svc
8:pids:/svc
4:memory:/svc
1:cpu,cpuacct:/svc
0::/
";

    fn strip(views: &[CgroupView]) -> Vec<(&str, Option<&str>, u64)> {
        views
            .iter()
            .map(|v| {
                let own = v.own.as_deref().map(|p| p.to_str().unwrap());
                (v.mount_point.to_str().unwrap(), own, v.flags)
            })
            .collect()
    }

    #[test]
    fn every_cgroup_mount_shows_the_childs_own_cgroup() {
        let mounts = parse_mountinfo(MOUNTS.as_bytes()).unwrap();
        let own = parse_proc_cgroup(OWN).unwrap();
        let all = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // The child joins its run cgroups in memory and pids (v1: their cgroup.procs'
        // directories) and stays in its parent's elsewhere.
        let joins = [
            Path::new("/sys/fs/cgroup/memory/svc/run-1"),
            Path::new("/sys/fs/cgroup/pids/svc/run-1"),
        ];
        assert_eq!(
            strip(&views(&mounts, &own, &joins)),
            [
                (
                    "/sys/fs/cgroup/cpu,cpuacct",
                    Some("/sys/fs/cgroup/cpu,cpuacct/svc"),
                    all
                ),
                (
                    "/sys/fs/cgroup/memory",
                    Some("/sys/fs/cgroup/memory/svc/run-1"),
                    libc::MS_NOSUID
                ),
                (
                    "/sys/fs/cgroup/pids",
                    Some("/sys/fs/cgroup/pids/svc/run-1"),
                    0
                ),
                (
                    "/sys/fs/cgroup/systemd",
                    Some("/sys/fs/cgroup/systemd/svc"),
                    all
                ),
                // The child's cgroup is the root here: nothing to bind.
                ("/sys/fs/cgroup/unified", None, all),
                // The same memory hierarchy from /svc: the run cgroup below it.
                ("/srv/memory", Some("/srv/memory/run-1"), 0),
                // Memory on top of pids at /mnt/cg: that path leads to memory only.
                ("/mnt/cg", Some("/mnt/cg/svc/run-1"), 0),
            ]
        );
    }

    #[test]
    fn a_child_cloned_into_its_v2_cgroup_or_outside_a_mount_binds_what_it_can() {
        let mounts = parse_mountinfo(MOUNTS.as_bytes()).unwrap();
        let own = parse_proc_cgroup(OWN).unwrap();
        let joins = [Path::new("/sys/fs/cgroup/unified/runs/run-2")];
        let v = views(&mounts, &own, &joins);
        let unified = v
            .iter()
            .find(|v| v.mount_point.ends_with("unified"))
            .unwrap();
        assert_eq!(
            unified.own.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/runs/run-2"))
        );
        // A parent in a cgroup the /srv/memory mount does not show: left read-only as is.
        let outside = parse_proc_cgroup("4:memory:/elsewhere\n").unwrap();
        let v = views(&mounts, &outside, &[]);
        let srv = v.iter().find(|v| v.mount_point == Path::new("/srv/memory"));
        assert_eq!(srv.unwrap().own, None);
        // Without /proc/self/cgroup lines for a hierarchy (none of its controllers listed),
        // nothing is bound there either.
        let v = views(&mounts, &[], &[]);
        assert!(v.iter().all(|v| v.own.is_none()), "{v:?}");
        assert_eq!(v.len(), 7);
    }

    #[test]
    fn a_named_hierarchy_is_told_from_a_controller_by_its_name() {
        let mounts = parse_mountinfo(MOUNTS.as_bytes()).unwrap();
        let own = parse_proc_cgroup("9:name=systemd:/user.slice\n5:devices:/x\n").unwrap();
        let v = views(&mounts, &own, &[]);
        let named: Vec<_> = v.iter().filter(|v| v.own.is_some()).collect();
        // devices is not mounted here: only the named hierarchy is found, by its name.
        assert_eq!(named.len(), 1, "{v:?}");
        assert_eq!(
            named[0].own.as_deref(),
            Some(Path::new("/sys/fs/cgroup/systemd/user.slice"))
        );
    }
}
