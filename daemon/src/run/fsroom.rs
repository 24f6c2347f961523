//! File-system clean rooms (`isolate` `fs`): the run sees the host's file system through
//! overlays whose writable layers are private to it and vanish with it.
//!
//! The child of `run/spawn.rs`, in a mount namespace of its own with `/` private, builds a
//! new root and pivots into it. This module plans that root ([`plan`], pure, from the mount
//! table the process that clones reads just before the clone):
//! 1. the run's stage (a tmpfs of its own, at most `upper_mb`, that the process that clones
//!    makes detached, with `fsopen`/`fsmount`, and the child attaches on the stage
//!    directory, a directory of the daemon's state, root's only: the host never sees it),
//!    with `root/`, `upper/N`, `work/N` for each overlay, and `private/` for the private
//!    directories;
//! 2. every mount point the run can see, parents before children (by depth; the topmost of
//!    a stack): a writable mount of a file system an overlay can stand on becomes an
//!    overlay (`lowerdir` the host's mount point, `upperdir` and `workdir` in the stage,
//!    the upper one given the owner and mode of the host's mount point, which the overlay
//!    shows for its root) at the same path below `root/`; anything else (`/proc`, `/sys`,
//!    `/dev`, a read-only mount) is bound with what is mounted below it, as it is (its own
//!    permissions and read-only flag), and nothing below it is planned again;
//! 3. `/tmp` bound from the host (the private, empty `/tmp` of `isolate` `mount`, which
//!    `fs` implies, is mounted over it later, keeping a working directory below it: a copy
//!    of the stage's `private/tmp`, taken before the pivot), and `/var/tmp`, `/run`,
//!    `/dev/shm` bound from the stage's `private/`; nothing below those four is planned;
//! 4. the caller's `rw` directories bound from the host (writes reach it), `ro` ones bound
//!    and made read-only, `hide` ones covered by an empty read-only tmpfs;
//! 5. then the child pivots into `root/` and detaches the old root.
//!
//! Everything the run writes outside its `rw` directories is in the stage, one bound for
//! all of it. The stage is gone when the run's last process is and the daemon holds no
//! descriptor of it (it keeps one only to collect files from it, `run/collect.rs`):
//! nothing is left to clean up, by the daemon or after a `kill -9` of it.
//! Permissions are the caller's: an overlay's files keep the owner and mode of the host's, and the kernel
//! checks the run's credentials against them (copying a file up is the mounter's work).

use std::path::{Path, PathBuf};

/// What a file-system clean room is asked to keep, and where it is built.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Room {
    /// The directory the run's stage is mounted on (in the run's namespace).
    pub stage: PathBuf,
    /// Most MiB the run may write outside its `rw` directories.
    pub upper_mb: u64,
    /// The daemon keeps a descriptor of the stage after the run (to collect from it).
    #[serde(default)]
    pub keep: bool,
    /// Host directories whose writes reach the host.
    pub rw: Vec<PathBuf>,
    /// Host directories shown read-only.
    pub ro: Vec<PathBuf>,
    /// Host directories hidden behind an empty directory.
    pub hide: Vec<PathBuf>,
}

/// One step of building the new root, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// The run's stage (made by the process that clones) attached here.
    Stage(PathBuf),
    /// `mkdir` (an existing directory is fine).
    Mkdir(PathBuf),
    /// `path` given `mode` (the umask left out).
    Mode { path: PathBuf, mode: u32 },
    /// `path` given the owner, group and permission bits of `model`.
    Like { path: PathBuf, model: PathBuf },
    /// A tmpfs on `target` with these options (`mode=…,size=…`), read-only if asked.
    Tmpfs {
        target: PathBuf,
        options: String,
        read_only: bool,
    },
    /// An overlay on `target`: `options` holds `lowerdir`, `upperdir`, `workdir`;
    /// `noexec` as the host's mount has it (every overlay is `nosuid`, `nodev`).
    Overlay {
        target: PathBuf,
        options: String,
        #[serde(default)]
        noexec: bool,
    },
    /// `source` bound onto `target`, with what is mounted below it. A `caller`'s source
    /// (a `rw` or `ro` directory) is opened as the caller before the clone and bound from
    /// that descriptor: the run reaches only what the caller could reach on the host (a
    /// directory below one they cannot enter is not bound, a symlink is followed with
    /// their permissions).
    Bind {
        source: PathBuf,
        target: PathBuf,
        #[serde(default)]
        caller: bool,
        /// With what is mounted below it (else the mounts below are planned on their own).
        #[serde(default)]
        recursive: bool,
    },
    /// The mount on `target` made read-only, keeping the per-mount flags `nosuid`,
    /// `nodev`, `noexec` that are true here (a bind remount would drop them).
    ReadOnly {
        target: PathBuf,
        nosuid: bool,
        nodev: bool,
        noexec: bool,
    },
    /// `target` and every mount below it made read-only (`mount_setattr`).
    ReadOnlyTree(PathBuf),
}

impl Op {
    /// The step in words, for an error.
    pub fn describe(&self) -> String {
        match self {
            Op::Stage(dir) => format!("attaching the run's stage on {}", dir.display()),
            Op::Mkdir(dir) => format!("creating {}", dir.display()),
            Op::Mode { path, mode } => format!("giving {} mode {mode:o}", path.display()),
            Op::Like { path, model } => format!(
                "giving {} the owner and mode of {}",
                path.display(),
                model.display()
            ),
            Op::Tmpfs { target, .. } => format!("mounting a tmpfs on {}", target.display()),
            Op::Overlay {
                target, options, ..
            } => format!("mounting an overlay on {} ({options})", target.display()),
            Op::Bind {
                source,
                target,
                caller,
                ..
            } => format!(
                "binding {}{} onto {}",
                source.display(),
                if *caller {
                    " (opened as the caller)"
                } else {
                    ""
                },
                target.display()
            ),
            Op::ReadOnly { target, .. } | Op::ReadOnlyTree(target) => {
                format!("making {} read-only", target.display())
            }
        }
    }
}

/// One mount of the mount table: where, what file system, whether read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// Its mount ID.
    pub id: u32,
    /// The mount it is mounted on (its parent's ID).
    pub parent: u32,
    /// Mount point.
    pub path: PathBuf,
    /// File system type (`ext4`, `proc`, ...).
    pub fstype: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Mounted `nosuid`.
    pub nosuid: bool,
    /// Mounted `nodev`.
    pub nodev: bool,
    /// Mounted `noexec`.
    pub noexec: bool,
    /// A directory (a file can be a mount point too: an overlay cannot stand on it).
    pub dir: bool,
}

/// File systems an overlay's lower layer can be: disk and memory file systems. Everything
/// else (kernel interfaces, network and FUSE file systems) is bound as it is.
const OVERLAYABLE: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "f2fs", "vfat", "exfat", "jfs",
    "reiserfs", "zfs", "bcachefs", "nilfs2",
];

/// Directories a clean room shows private and empty (`/tmp` through `isolate` `mount`).
pub const PRIVATE: &[&str] = &["/tmp", "/var/tmp", "/run", "/dev/shm"];

/// The modes of [`PRIVATE`]'s directories.
const PRIVATE_MODES: [u32; 4] = [0o1777, 0o1777, 0o755, 0o1777];

/// Where the stage holds private directory `dir` (one of [`PRIVATE`]): `private/tmp`,
/// `private/var-tmp`, ...
pub fn private_source(stage: &Path, dir: &str) -> PathBuf {
    stage
        .join("private")
        .join(dir.trim_start_matches('/').replace('/', "-"))
}

/// Kernel interfaces: bound with what is mounted below them, as they are (never an
/// overlay, and nothing below them planned again). `/dev` is bound read-only (its device
/// nodes still work; nothing is created or removed there).
const KERNEL: &[&str] = &[
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "autofs",
    "selinuxfs",
];

/// Most mount points a clean room is built from (each an overlay or a bind).
pub const MAX_MOUNTS: usize = 4096;

fn below(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// `target`'s place below the new root.
fn staged(stage: &Path, target: &Path) -> PathBuf {
    let rel = target.strip_prefix("/").unwrap_or(target);
    stage.join("root").join(rel)
}

/// A path as overlayfs reads it in its options: `\`, `,` and `:` escaped.
fn escaped(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The mounts of a `/proc/PID/mountinfo`, in its order.
pub fn parse_mountinfo(text: &str) -> Vec<Mounted> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let fields: Vec<&str> = head.split(' ').collect();
            let fstype = tail.split(' ').next()?;
            let path = unescape(fields.get(4)?);
            let options = fields.get(5)?;
            let has = |flag: &str| options.split(',').any(|o| o == flag);
            Some(Mounted {
                id: fields.first()?.parse().ok()?,
                parent: fields.get(1)?.parse().ok()?,
                path: PathBuf::from(path),
                fstype: fstype.to_owned(),
                read_only: has("ro"),
                nosuid: has("nosuid"),
                nodev: has("nodev"),
                noexec: has("noexec"),
                dir: true,
            })
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a clean room cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// More mount points than [`MAX_MOUNTS`].
    #[error(
        "the host has {0} mount points; a file-system clean room is built from at most {MAX_MOUNTS}"
    )]
    TooManyMounts(usize),
}

/// The mounts of `mounts` a process sees, by the mount tree (not by path alone, which would
/// take a mount hidden under a later one for a visible one): a mount is reachable when its
/// parent is and no other mount on the same parent covers its mount point (one on a
/// directory above it, or on the same one mounted later); it is shown when reachable and
/// not covered by a mount on its own root (a stack shows its top). The table's root (whose
/// parent is not in it) is reachable.
fn shown(mounts: &[Mounted]) -> Vec<&Mounted> {
    use std::collections::HashMap;
    let index: HashMap<u32, usize> = mounts.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    // Mounts by (parent, mount point): what covers a mount is on its parent at one of its
    // mount point's ancestors (a few look-ups, not a scan of its siblings).
    let mut at: HashMap<(u32, &Path), Vec<usize>> = HashMap::new();
    for (i, m) in mounts.iter().enumerate() {
        at.entry((m.parent, m.path.as_path())).or_default().push(i);
    }
    let covered = |i: usize| {
        let m = &mounts[i];
        m.path.ancestors().any(|a| {
            at.get(&(m.parent, a))
                .is_some_and(|js| js.iter().any(|&j| if a == m.path { j > i } else { j != i }))
        })
    };
    // Reachability up the parents, each mount's worked out once (iteratively: a chain of
    // mounts can be long).
    let mut reachable: Vec<Option<bool>> = vec![None; mounts.len()];
    for start in 0..mounts.len() {
        let mut chain = Vec::new();
        let mut i = start;
        let known = loop {
            if let Some(r) = reachable[i] {
                break r;
            }
            chain.push(i);
            match index.get(&mounts[i].parent) {
                // A parent that is itself (a namespace's root) or a loop: as the root.
                Some(&p) if p != i && !chain.contains(&p) => i = p,
                _ => break true,
            }
        };
        let mut r = known;
        for &i in chain.iter().rev() {
            r = r && !covered(i);
            reachable[i] = Some(r);
        }
    }
    mounts
        .iter()
        .enumerate()
        .filter(|&(i, m)| {
            reachable[i] == Some(true)
                && at
                    .get(&(m.id, m.path.as_path()))
                    .is_none_or(|cs| cs.iter().all(|&c| c == i))
        })
        .map(|(_, m)| m)
        .collect()
}

/// The steps that build `room`'s root from the mount table `mounts` (see the module
/// documentation).
pub fn plan(room: &Room, mounts: &[Mounted]) -> Result<Vec<Op>, PlanError> {
    // The mounts the run could see, parents before children.
    let mut visible = shown(mounts);
    visible.sort_by_key(|m| m.path.components().count());
    if visible.len() > MAX_MOUNTS {
        return Err(PlanError::TooManyMounts(visible.len()));
    }
    let stage = &room.stage;
    let mut ops = vec![
        Op::Stage(stage.clone()),
        Op::Mkdir(stage.join("root")),
        Op::Mkdir(stage.join("upper")),
        Op::Mkdir(stage.join("work")),
        Op::Mkdir(stage.join("private")),
    ];
    for (dir, mode) in PRIVATE.iter().zip(PRIVATE_MODES) {
        let path = private_source(stage, dir);
        ops.push(Op::Mkdir(path.clone()));
        ops.push(Op::Mode { path, mode });
    }
    let private: Vec<&Path> = PRIVATE.iter().map(Path::new).collect();
    let mut bound: Vec<&Path> = Vec::new();
    let mut layers = 0;
    // /tmp from the host (the private /tmp covers it later, keeping the working
    // directory): right after `/`, while the stage holds nothing else that a recursive
    // bind would copy (the stage may be below /tmp).
    let tmp = [
        Op::Mkdir(staged(stage, Path::new("/tmp"))),
        Op::Bind {
            source: "/tmp".into(),
            target: staged(stage, Path::new("/tmp")),
            caller: false,
            recursive: true,
        },
    ];
    let mut tmp_bound = false;
    for m in visible {
        let path = m.path.as_path();
        // /proc: the run's own (a clean room has its own pid namespace), mounted after
        // the pivot; the host's would lead back to the host's tree (/proc/PID/root).
        if private.iter().any(|p| below(path, p))
            || bound.iter().any(|b| below(path, b))
            || below(path, stage)
            || below(path, Path::new("/proc"))
        {
            continue;
        }
        let target = staged(stage, path);
        if KERNEL.contains(&m.fstype.as_str()) {
            ops.push(Op::Bind {
                source: path.to_owned(),
                target: target.clone(),
                caller: false,
                recursive: true,
            });
            if path == Path::new("/dev") {
                ops.push(Op::ReadOnly {
                    target,
                    nosuid: m.nosuid,
                    nodev: m.nodev,
                    noexec: m.noexec,
                });
            }
            bound.push(path);
        } else if m.dir && !m.read_only && OVERLAYABLE.contains(&m.fstype.as_str()) {
            let (upper, work) = (
                stage.join("upper").join(layers.to_string()),
                stage.join("work").join(layers.to_string()),
            );
            layers += 1;
            ops.push(Op::Mkdir(upper.clone()));
            ops.push(Op::Like {
                path: upper.clone(),
                model: path.to_owned(),
            });
            ops.push(Op::Mkdir(work.clone()));
            ops.push(Op::Overlay {
                target,
                // Every copy-up copies the data (a metadata-only one would leave a file
                // without its contents in the upper layer, which `collect` reads).
                options: format!(
                    "lowerdir={},upperdir={},workdir={},metacopy=off",
                    escaped(path),
                    escaped(&upper),
                    escaped(&work)
                ),
                noexec: m.noexec,
            });
        } else {
            // Read-only, a file system no overlay stands on (a network or FUSE one), or a
            // file: shown read-only (its writes would reach the host), the mounts below it
            // planned on their own.
            ops.push(Op::Bind {
                source: path.to_owned(),
                target: target.clone(),
                caller: false,
                recursive: false,
            });
            ops.push(Op::ReadOnly {
                target,
                nosuid: true,
                nodev: true,
                noexec: m.noexec,
            });
        }
        if !tmp_bound {
            ops.extend(tmp.iter().cloned());
            tmp_bound = true;
        }
    }
    if !tmp_bound {
        ops.extend(tmp.iter().cloned());
    }
    // The other private directories, empty, from the stage.
    for dir in &PRIVATE[1..] {
        let target = staged(stage, Path::new(dir));
        ops.push(Op::Mkdir(target.clone()));
        ops.push(Op::Bind {
            source: private_source(stage, dir),
            target,
            caller: false,
            recursive: false,
        });
    }
    // The caller's directories, parents before children (an `rw` inside an `ro` one
    // stays writable): `rw` bound with what is below it, `ro` bound and made read-only
    // to the bottom, `hide` covered.
    let mut mine: Vec<(&PathBuf, u8)> = room
        .rw
        .iter()
        .map(|d| (d, 0))
        .chain(room.ro.iter().map(|d| (d, 1)))
        .chain(room.hide.iter().map(|d| (d, 2)))
        .collect();
    mine.sort_by_key(|(d, _)| d.components().count());
    for (dir, kind) in mine {
        let target = staged(stage, dir);
        match kind {
            0 | 1 => {
                ops.push(Op::Bind {
                    source: dir.clone(),
                    target: target.clone(),
                    caller: true,
                    recursive: true,
                });
                if kind == 1 {
                    ops.push(Op::ReadOnlyTree(target));
                }
            }
            _ => ops.push(Op::Tmpfs {
                target,
                options: "mode=0755,size=4k".into(),
                read_only: true,
            }),
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This VM's mount table, abridged (`/proc` listed before `/`, stacked `/dev/pts`).
    const MOUNTINFO: &str = "\
30 25 0:5 / /proc rw,relatime - proc proc rw
31 25 0:6 / /sys rw,relatime - sysfs sysfs rw
32 25 0:7 / /dev rw,relatime - devtmpfs devtmpfs rw
34 32 0:9 / /dev/pts rw,relatime - devpts devpts rw
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 25 0:30 / /mnt/tools\\040x ro,nosuid,nodev - tmpfs tools ro
41 32 0:9 / /dev/pts rw,relatime - devpts devpts rw
42 31 0:31 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw
43 42 0:32 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
44 25 0:33 / /var/lib/data rw,relatime - xfs /dev/vdb rw
45 25 0:34 / /tmp rw - tmpfs tmpfs rw
46 45 0:35 / /tmp/inner rw - ext4 /dev/vdc rw
47 25 0:36 / /run rw - tmpfs tmpfs rw
48 47 0:37 / /run/user/0 rw - tmpfs tmpfs rw
";

    fn room() -> Room {
        Room {
            stage: "/var/lib/cleanroom/fs".into(),
            upper_mb: 256,
            keep: false,
            rw: vec!["/home/u/proj".into()],
            ro: vec!["/srv/data".into()],
            hide: vec!["/home/u/.ssh".into()],
        }
    }

    #[test]
    fn the_mount_table_is_read_with_its_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 14);
        assert_eq!(m[4].path, Path::new("/"));
        assert_eq!(m[4].fstype, "ext4");
        assert_eq!(m[5].path, Path::new("/mnt/tools x"));
        assert!(m[5].read_only && !m[4].read_only);
    }

    #[test]
    fn every_mount_is_overlaid_or_bound_parents_first() {
        let ops = plan(&room(), &parse_mountinfo(MOUNTINFO)).unwrap();
        let s = "/var/lib/cleanroom/fs";
        let overlay = |target: &str, n: u32, lower: &str| Op::Overlay {
            target: PathBuf::from(format!("{s}/root{target}")),
            options: format!(
                "lowerdir={lower},upperdir={s}/upper/{n},workdir={s}/work/{n},metacopy=off"
            ),
            noexec: false,
        };
        let bind = |source: &str, target: &str, recursive: bool| Op::Bind {
            source: source.into(),
            target: PathBuf::from(format!("{s}/root{target}")),
            caller: source.starts_with("/home") || source.starts_with("/srv"),
            recursive,
        };
        let private = |name: &str, target: &str| Op::Bind {
            source: PathBuf::from(format!("{s}/private/{name}")),
            target: PathBuf::from(format!("{s}/root{target}")),
            caller: false,
            recursive: false,
        };
        // `/` first although listed after /proc, and /tmp from the host right after it;
        // /proc left to the run's own; /sys and /dev bound with their submounts (not
        // planned again); the read-only tmpfs bound and kept read-only; the xfs overlaid;
        // what is below /tmp and /run left to the private directories, bound from the
        // stage; the caller's directories parents first.
        let mounts: Vec<&Op> = ops
            .iter()
            .filter(|o| matches!(o, Op::Overlay { .. } | Op::Bind { .. }))
            .collect();
        assert_eq!(
            mounts,
            vec![
                &overlay("", 0, "/"),
                &bind("/tmp", "/tmp", true),
                &bind("/sys", "/sys", true),
                &bind("/dev", "/dev", true),
                &bind("/mnt/tools x", "/mnt/tools x", false),
                &overlay("/var/lib/data", 1, "/var/lib/data"),
                &private("var-tmp", "/var/tmp"),
                &private("run", "/run"),
                &private("dev-shm", "/dev/shm"),
                &bind("/srv/data", "/srv/data", true),
                &bind("/home/u/proj", "/home/u/proj", true),
            ]
        );
        assert_eq!(ops[0], Op::Stage(s.into()));
        // The overlays' upper layers look like the host's mount points (an overlay shows
        // its upper layer's owner and mode for its root).
        assert!(ops.contains(&Op::Like {
            path: format!("{s}/upper/1").into(),
            model: "/var/lib/data".into()
        }));
        assert!(ops.contains(&Op::ReadOnlyTree(format!("{s}/root/srv/data").into())));
        assert!(ops.contains(&Op::ReadOnly {
            target: format!("{s}/root/dev").into(),
            nosuid: false,
            nodev: false,
            noexec: false
        }));
        assert!(ops.contains(&Op::ReadOnly {
            target: format!("{s}/root/mnt/tools x").into(),
            nosuid: true,
            nodev: true,
            noexec: false
        }));
        assert!(ops.contains(&Op::Tmpfs {
            target: format!("{s}/root/home/u/.ssh").into(),
            options: "mode=0755,size=4k".into(),
            read_only: true
        }));
        // The private directories are the stage's: one bound for everything the run
        // writes, and the daemon can collect from them.
        for (dir, name, mode) in [
            ("/tmp", "tmp", 0o1777),
            ("/var/tmp", "var-tmp", 0o1777),
            ("/run", "run", 0o755),
            ("/dev/shm", "dev-shm", 0o1777),
        ] {
            let source = PathBuf::from(format!("{s}/private/{name}"));
            assert_eq!(private_source(Path::new(s), dir), source);
            assert!(ops.contains(&Op::Mode {
                path: source.clone(),
                mode
            }));
            if dir != "/tmp" {
                assert!(
                    ops.contains(&Op::Bind {
                        source,
                        target: format!("{s}/root{dir}").into(),
                        caller: false,
                        recursive: false
                    }),
                    "{dir}"
                );
            }
        }
        assert!(
            !ops.iter().any(|o| matches!(
                o,
                Op::Tmpfs {
                    read_only: false,
                    ..
                }
            )),
            "no tmpfs of its own beside the stage"
        );
    }

    #[test]
    fn a_mount_hidden_under_another_is_not_planned() {
        // /a (ro) with /a/b on it, then an ext4 stacked on /a: /a/b and the ro /a are out
        // of sight. /c twice on / (the second covers the first) with /c/d on the first.
        // /e with /e/f, then a mount on /e's parent directory above them: /x over nothing.
        let m = parse_mountinfo(
            "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
             30 25 0:40 / /a ro - tmpfs t ro\n\
             40 30 8:2 / /a/b ro - ext4 /dev/sda2 ro\n\
             50 30 8:3 / /a rw - ext4 /dev/sda3 rw\n\
             60 25 0:41 / /c rw - tmpfs t rw\n\
             70 60 0:42 / /c/d rw - tmpfs t rw\n\
             61 25 0:43 / /c rw - tmpfs t rw\n\
             80 25 0:44 / /srv/e rw - tmpfs t rw\n\
             81 80 0:45 / /srv/e/f rw - tmpfs t rw\n\
             90 25 0:46 / /srv rw - tmpfs t rw\n",
        );
        let ids: Vec<u32> = shown(&m).iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![25, 50, 61, 90]);
        // The stacked /dev/pts of this VM's table: the later one.
        let m = parse_mountinfo(MOUNTINFO);
        let pts: Vec<u32> = shown(&m)
            .iter()
            .filter(|m| m.path == Path::new("/dev/pts"))
            .map(|m| m.id)
            .collect();
        assert_eq!(pts, vec![41]);
        assert_eq!(shown(&m).len(), 13);
    }

    #[test]
    fn overlay_options_escape_their_separators() {
        assert_eq!(escaped(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
    }

    #[test]
    fn what_no_overlay_stands_on_is_read_only_and_what_is_below_it_planned() {
        // A read-only / with a writable /home on it, an NFS mount, a bind-mounted file.
        let mut m = parse_mountinfo(
            "1 0 8:1 / / ro - ext4 /dev/sda1 ro\n\
             2 1 8:2 / /home rw,nodev,noexec - ext4 /dev/sda2 rw\n\
             3 1 0:40 / /mnt/nfs rw - nfs4 srv:/x rw\n\
             4 1 8:1 /x /etc/hosts rw - ext4 /dev/sda1 rw\n",
        );
        m[3].dir = false;
        let ops = plan(&room(), &m).unwrap();
        let s = "/var/lib/cleanroom/fs";
        let ro = |t: &str| Op::ReadOnly {
            target: format!("{s}/root{t}").into(),
            nosuid: true,
            nodev: true,
            noexec: false,
        };
        assert!(ops.contains(&ro("")), "the read-only / stays read-only");
        assert!(
            ops.contains(&ro("/mnt/nfs")),
            "NFS writes would reach the server"
        );
        assert!(ops.contains(&ro("/etc/hosts")), "a file cannot be overlaid");
        assert!(ops.contains(&Op::Overlay {
            target: format!("{s}/root/home").into(),
            options: format!("lowerdir=/home,upperdir={s}/upper/0,workdir={s}/work/0,metacopy=off"),
            noexec: true,
        }));
    }

    #[test]
    fn a_host_with_too_many_mounts_is_refused() {
        let many: Vec<Mounted> = (0..=MAX_MOUNTS)
            .map(|i| Mounted {
                id: i as u32 + 2,
                parent: 1,
                path: format!("/m/{i}").into(),
                fstype: "ext4".into(),
                read_only: false,
                nosuid: false,
                nodev: false,
                noexec: false,
                dir: true,
            })
            .collect();
        assert_eq!(
            plan(&room(), &many),
            Err(PlanError::TooManyMounts(MAX_MOUNTS + 1))
        );
    }
}
