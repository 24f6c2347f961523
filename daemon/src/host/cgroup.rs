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
}

/// The cgroup mounts listed in a mountinfo text.
pub(crate) fn parse_mountinfo(text: &[u8]) -> Result<Vec<CgroupMount>, String> {
    let infos = MountInfos::from_buf_read(Cursor::new(text)).map_err(|e| e.to_string())?;
    Ok(infos
        .into_iter()
        .filter_map(|m| match m.fs_type.as_str() {
            "cgroup2" => Some(CgroupMount {
                mount_point: m.mount_point,
                unified: true,
            }),
            "cgroup" => Some(CgroupMount {
                mount_point: m.mount_point,
                unified: false,
            }),
            _ => None,
        })
        .collect())
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
                unified: true
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_mountinfo(b"this is not mountinfo\n").is_err());
    }
}
