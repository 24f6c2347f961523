//! Cgroup hierarchy detection from `/proc/self/mountinfo`.

use std::io::Cursor;
use std::path::PathBuf;

use cleanroom_proto::CgroupMode;
use procfs_core::FromBufRead;
use procfs_core::process::MountInfos;

/// One cgroup file system mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// `true` for cgroup2 (unified), `false` for a v1 hierarchy.
    pub unified: bool,
    /// The v1 controllers of this hierarchy (`cpu`, `memory`, ...); empty for cgroup2.
    pub controllers: Vec<String>,
}

/// The v1 controllers cleanroom knows (mount options name them).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "freezer",
    "blkio",
    "devices",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// The cgroup mounts listed in a mountinfo text.
pub(crate) fn parse_mountinfo(text: &[u8]) -> Result<Vec<CgroupMount>, String> {
    let infos = MountInfos::from_buf_read(Cursor::new(text)).map_err(|e| e.to_string())?;
    Ok(infos
        .into_iter()
        .filter_map(|m| match m.fs_type.as_str() {
            "cgroup2" => Some(CgroupMount {
                mount_point: m.mount_point,
                unified: true,
                controllers: Vec::new(),
            }),
            "cgroup" => {
                let mut controllers: Vec<String> = m
                    .super_options
                    .keys()
                    .filter(|k| V1_CONTROLLERS.contains(&k.as_str()))
                    .cloned()
                    .collect();
                controllers.sort();
                Some(CgroupMount {
                    mount_point: m.mount_point,
                    unified: false,
                    controllers,
                })
            }
            _ => None,
        })
        .collect())
}

/// One line of `/proc/<pid>/cgroup`: hierarchy id, its v1 controllers (empty for the
/// unified hierarchy, `0::/path`), and the cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Hierarchy id (0 for cgroup2).
    pub id: u32,
    /// Controllers (`name=systemd` style named hierarchies included as written).
    pub controllers: Vec<String>,
    /// Path inside the hierarchy, starting with `/`.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("bad /proc/<pid>/cgroup line {line:?}"));
            };
            let id = id
                .parse()
                .map_err(|_| format!("bad hierarchy id in {line:?}"))?;
            let controllers = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Ok(ProcCgroup {
                id,
                controllers,
                path: path.to_owned(),
            })
        })
        .collect()
}

/// v2 when the only hierarchy is a cgroup2 mount; hybrid when v1 hierarchies and a cgroup2
/// mount coexist; v1 when there are only v1 hierarchies; none when nothing is mounted.
pub fn classify_mounts(mounts: &[CgroupMount]) -> CgroupMode {
    let unified = mounts.iter().any(|m| m.unified);
    let legacy = mounts.iter().any(|m| !m.unified);
    match (unified, legacy) {
        (true, false) => CgroupMode::V2,
        (true, true) => CgroupMode::Hybrid,
        (false, true) => CgroupMode::V1,
        (false, false) => CgroupMode::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 253:1 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2: &str = "\
22 1 253:1 / / rw,relatime - ext4 /dev/vda rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V1: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
    const NONE: &str = "22 1 253:1 / / rw,relatime - ext4 /dev/vda rw\n";

    #[test]
    fn classifies_each_layout() {
        let table = [
            (HYBRID, CgroupMode::Hybrid, 3),
            (V2, CgroupMode::V2, 1),
            (V1, CgroupMode::V1, 2),
            (NONE, CgroupMode::None, 0),
            ("", CgroupMode::None, 0),
        ];
        for (text, mode, count) in table {
            let mounts = parse_mountinfo(text.as_bytes()).unwrap();
            assert_eq!(mounts.len(), count, "{text}");
            assert_eq!(classify_mounts(&mounts), mode, "{text}");
        }
    }

    #[test]
    fn keeps_mount_points() {
        let mounts = parse_mountinfo(HYBRID.as_bytes()).unwrap();
        assert_eq!(
            mounts.last().unwrap(),
            &CgroupMount {
                mount_point: "/sys/fs/cgroup/unified".into(),
                unified: true,
                controllers: vec![],
            }
        );
    }

    #[test]
    fn v1_controllers_come_from_mount_options() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n";
        let m = parse_mountinfo(text.as_bytes()).unwrap();
        assert_eq!(m[0].controllers, vec!["cpu", "cpuacct"]);
        assert!(m[1].controllers.is_empty());
    }

    #[test]
    fn proc_cgroup_lines() {
        let text = "9:name=systemd:/\n4:memory:/process_api/5a7d\n1:cpu,cpuacct:/a/b\n0::/user.slice/x.scope\n";
        let p = parse_proc_cgroup(text).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[1],
            ProcCgroup {
                id: 4,
                controllers: vec!["memory".into()],
                path: "/process_api/5a7d".into()
            }
        );
        assert_eq!(p[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(
            p[3],
            ProcCgroup {
                id: 0,
                controllers: vec![],
                path: "/user.slice/x.scope".into()
            }
        );
        assert!(parse_proc_cgroup("garbage").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_mountinfo(b"this is not mountinfo\n").is_err());
    }
}
