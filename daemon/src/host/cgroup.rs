//! Cgroup hierarchy detection from `/proc/self/mountinfo`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Cursor;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

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
    /// Its mount id, and that of the mount it sits on.
    pub id: i32,
    /// The mount it sits on (its parent's mount id).
    pub parent: i32,
    /// The file system's device (`major:minor`): one for every mount of a hierarchy.
    pub device: String,
    /// The cgroup shown at the mount point (`/` where the whole hierarchy is mounted).
    pub root: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, ...), sorted.
    pub mount_options: Vec<String>,
    /// Super options as written (`rw`, `cpu`, `name=systemd`, ...), sorted: a v1 line of
    /// `/proc/<pid>/cgroup` names its hierarchy with some of them.
    pub super_options: Vec<String>,
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
        .filter_map(|m| {
            let unified = match m.fs_type.as_str() {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let mut controllers: Vec<String> = m
                .super_options
                .keys()
                .filter(|k| !unified && V1_CONTROLLERS.contains(&k.as_str()))
                .cloned()
                .collect();
            controllers.sort();
            Some(CgroupMount {
                mount_point: unescape(&m.mount_point),
                unified,
                controllers,
                id: m.mnt_id,
                parent: m.pid,
                device: m.majmin,
                root: unescape(Path::new(&m.root)),
                mount_options: options(m.mount_options),
                super_options: options(m.super_options),
            })
        })
        .collect())
}

/// Mount options as written (`name` or `name=value`), sorted.
fn options(map: HashMap<String, Option<String>>) -> Vec<String> {
    let mut all: Vec<String> = map
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();
    all.sort();
    all
}

/// A mountinfo path with the kernel's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`) turned back into the bytes they stand for.
fn unescape(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
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
                id: 41,
                parent: 31,
                device: "0:38".into(),
                root: "/".into(),
                mount_options: vec!["relatime".into(), "rw".into()],
                super_options: vec!["rw".into()],
            }
        );
    }

    #[test]
    fn keeps_where_a_mount_sits_and_its_options_and_unescapes_its_paths() {
        let text = "40 31 0:37 /a\\040b /sys/fs/cgroup/my\\040name\\134x ro,nosuid,nodev \
                    shared:9 - cgroup cgroup rw,xattr,name=systemd\n";
        let m = &parse_mountinfo(text.as_bytes()).unwrap()[0];
        assert_eq!((m.id, m.parent, m.device.as_str()), (40, 31, "0:37"));
        assert_eq!(m.mount_point, Path::new("/sys/fs/cgroup/my name\\x"));
        assert_eq!(m.root, Path::new("/a b"));
        assert_eq!(m.mount_options, ["nodev", "nosuid", "ro"]);
        assert_eq!(m.super_options, ["name=systemd", "rw", "xattr"]);
        assert_eq!(
            unescape(Path::new("/no\\escape\\09")),
            Path::new("/no\\escape\\09")
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
