//! `collect`: files a batch's last run created or changed in its file-system clean room,
//! copied out once the batch ends.
//!
//! Everything a clean room's run writes outside its `rw` directories is in its stage
//! (`run/fsroom.rs`): the overlays' upper layers (a file created or changed there, the
//! lower layer's unchanged ones are not) and the private `/tmp`, `/var/tmp`, `/run` and
//! `/dev/shm`. When a batch collects, the process that clones the run's child keeps a
//! descriptor of the stage (the detached tmpfs itself, mounted nowhere on the host), each
//! run's replacing the one before ([`Latest`]); once the batch ends the daemon walks the
//! last one and copies every regular file that matches a pattern into the caller's
//! directory, then lets the stage go.
//!
//! The copy is the caller's own: a thread of the blocking pool takes their fsuid, fsgid
//! and groups (`fingerprint::AsUser`), so a file they could not read in the room is not read, one
//! lands only where they could write, and each is theirs. The stage cannot change meanwhile
//! (the run's processes are gone, and nothing else reaches it). Bounded: at most
//! [`MAX_FILES`] files copied and [`MAX_ENTRIES`] entries looked at; the bytes are at most
//! what the stage holds (`runs.fs_write_mb`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cleanroom_proto::Collected;

use super::fingerprint::AsUser;
use super::fsroom::{self, Op};

/// Most files one batch collects.
pub const MAX_FILES: u64 = 10_000;

/// Most entries of the stage one collection looks at.
pub const MAX_ENTRIES: u64 = 200_000;

/// Most patterns a batch names.
pub const MAX_PATTERNS: usize = 32;

/// Most reasons a result lists.
const MAX_ERRORS: usize = 10;

/// A run's stage kept after it: the tmpfs's root and the steps that built the room on it.
#[derive(Debug)]
pub struct Kept {
    /// The stage's root (a descriptor of the detached tmpfs).
    pub fd: OwnedFd,
    /// The room's steps (which upper layer is which mount point's).
    pub ops: Vec<Op>,
}

/// The stage of a batch's latest run, shared by the job's copies: each run's replaces
/// (and so lets go) the one before.
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<Mutex<Option<Kept>>>);

impl Latest {
    /// Keeps `kept`, letting the previous one go.
    pub fn keep(&self, kept: Kept) {
        let old = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(kept);
        drop(old);
    }

    /// The latest stage, no longer kept here.
    pub fn take(&self) -> Option<Kept> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What a batch collects, checked.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Each pattern, and whether it is relative to the working directory.
    patterns: Vec<(glob::Pattern, bool)>,
    /// Where the files go.
    pub into: PathBuf,
}

/// The options patterns match with: `*` and `?` stay within a path component, and a
/// leading `.` is matched like any other character (`*.log` finds `.hidden.log`).
const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Rules {
    /// `patterns` and `into` as a request gives them; the message names what is wrong.
    pub fn new(patterns: &[String], into: &str) -> Result<Rules, String> {
        if patterns.len() > MAX_PATTERNS {
            return Err(format!(
                "collect: {} patterns; at most {MAX_PATTERNS}",
                patterns.len()
            ));
        }
        let patterns = patterns
            .iter()
            .map(|p| {
                if p.is_empty() || p.len() > 4096 || p.contains('\0') {
                    return Err(format!(
                        "collect: {p:?} is not a pattern (1 to 4096 bytes, no NUL)"
                    ));
                }
                if Path::new(p)
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(format!(
                        "collect: {p:?} has `..`: name paths below the room's"
                    ));
                }
                let relative = !p.starts_with('/');
                glob::Pattern::new(p)
                    .map(|g| (g, relative))
                    .map_err(|e| format!("collect: {p:?} is not a glob pattern: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let dir = Path::new(into);
        if !dir.is_absolute() || into.contains('\0') || into.len() > 4096 {
            return Err(format!(
                "collect_to: {into:?} is not an absolute path (the client resolves a relative one)"
            ));
        }
        Ok(Rules {
            patterns,
            into: dir.to_owned(),
        })
    }

    /// Where the file the run saw at `seen` goes below `into`, if a pattern takes it: the
    /// path below `cwd` for a relative pattern, the whole path for an absolute one.
    fn place(&self, seen: &Path, cwd: &Path) -> Option<PathBuf> {
        self.patterns.iter().find_map(|(pattern, relative)| {
            if *relative {
                let rel = seen.strip_prefix(cwd).ok()?;
                pattern
                    .matches_path_with(rel, MATCH)
                    .then(|| rel.to_owned())
            } else {
                pattern
                    .matches_path_with(seen, MATCH)
                    .then(|| seen.strip_prefix("/").unwrap_or(seen).to_owned())
            }
        })
    }
}

/// Creates `dir` (and its parents) as `uid` with `groups` (the first the primary one) if
/// missing: the check a request makes before anything runs. Blocking.
pub fn prepare(dir: &Path, uid: u32, groups: &[u32]) -> Result<(), String> {
    let Some(_as) = AsUser::become_(uid, groups) else {
        return Err(format!("collect_to: cannot act as uid {uid}"));
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            let md = std::fs::metadata(dir)?;
            if md.is_dir() {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::ENOTDIR))
            }
        })
        .map_err(|e| format!("collect_to: {}: {e}", dir.display()))
}

/// The places of the stage the run wrote to: (the path the run saw, the directory below
/// the stage's root that holds its writes).
fn layers(stage: &Path, ops: &[Op]) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = fsroom::PRIVATE
        .iter()
        .map(|dir| (PathBuf::from(dir), fsroom::private_source(stage, dir)))
        .collect();
    out.extend(ops.iter().filter_map(|op| match op {
        Op::Like { path, model } => Some((model.clone(), path.clone())),
        _ => None,
    }));
    out.into_iter()
        .filter_map(|(seen, held)| Some((seen, held.strip_prefix(stage).ok()?.to_owned())))
        .collect()
}

/// Copies what `rules` asks for out of `kept` (the stage at `stage` in the run's
/// namespace), as `uid` with `groups`, for a run whose working directory was `cwd`.
/// Blocking; bounded as the module documentation says.
pub fn collect(
    rules: &Rules,
    kept: Option<Kept>,
    stage: &Path,
    cwd: &Path,
    uid: u32,
    groups: &[u32],
) -> Collected {
    let mut out = Collected {
        into: rules.into.display().to_string(),
        ..Collected::default()
    };
    let Some(kept) = kept else {
        out.errors
            .push("no run of the batch started its clean room: nothing to collect".into());
        return out;
    };
    // The working directory as the room's paths name it (they are the host's real ones).
    let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_owned());
    // Each layer opened as root (the stage's root is root's only); below them, every
    // look-up is the caller's.
    let opened: Vec<(PathBuf, OwnedFd)> = layers(stage, &kept.ops)
        .into_iter()
        .filter_map(|(seen, held)| {
            let flags = nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(&kept.fd, &held, flags, nix::sys::stat::Mode::empty());
            Some((seen, fd.ok()?))
        })
        .collect();
    drop(kept);
    let Some(_as) = AsUser::become_(uid, groups) else {
        out.errors.push(format!("cannot act as uid {uid}"));
        return out;
    };
    let mut seen_entries = 0u64;
    let fail = |out: &mut Collected, what: String| {
        out.left_out += 1;
        if out.errors.len() < MAX_ERRORS {
            out.errors.push(what);
        }
    };
    for (seen, fd) in &opened {
        let top = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let walk = walkdir::WalkDir::new(&top).follow_links(false).min_depth(1);
        for entry in walk {
            seen_entries += 1;
            if seen_entries > MAX_ENTRIES {
                out.errors.push(format!(
                    "stopped after {MAX_ENTRIES} entries of the clean room"
                ));
                return out;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // A directory the caller cannot read: nothing below it is theirs to
                    // collect (it is only reported when a pattern could want it).
                    let path = e.path().and_then(|p| p.strip_prefix(&top).ok());
                    if let Some(rel) = path {
                        let at = seen.join(rel);
                        if rules.place(&at, &cwd).is_some() {
                            fail(&mut out, format!("{}: {}", at.display(), io_error(&e)));
                        }
                    }
                    continue;
                }
            };
            // Regular files only: not whiteouts (character devices), symlinks, FIFOs.
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&top) else {
                continue;
            };
            let at = seen.join(rel);
            let Some(place) = rules.place(&at, &cwd) else {
                continue;
            };
            if out.files >= MAX_FILES {
                out.left_out += 1;
                continue;
            }
            match copy(entry.path(), &rules.into.join(&place)) {
                Ok(bytes) => {
                    out.files += 1;
                    out.bytes += bytes;
                }
                Err(e) => fail(&mut out, format!("{}: {e}", at.display())),
            }
        }
    }
    if out.files >= MAX_FILES && out.left_out > 0 {
        out.errors.insert(
            0,
            format!(
                "at most {MAX_FILES} files are collected; {} more matched",
                out.left_out
            ),
        );
    }
    out
}

/// The error of a walk, as a person reads it.
fn io_error(e: &walkdir::Error) -> String {
    e.io_error()
        .map_or_else(|| e.to_string(), std::string::ToString::to_string)
}

/// Copies the regular file `from` to `to` (its directories made, the file replaced if
/// there, a symlink there not followed), with `from`'s permission bits less setuid and
/// setgid; as whoever the thread acts as. The bytes copied.
fn copy(from: &Path, to: &Path) -> io::Result<u64> {
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(from)?;
    let md = src.metadata()?;
    if !md.is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mode = md.permissions().mode() & 0o777;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(to)?;
    let bytes = io::copy(&mut src, &mut dst)?;
    // An existing file keeps its mode at open: given the source's.
    dst.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> Rules {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Rules::new(&p, "/home/u/out").unwrap()
    }

    #[test]
    fn a_pattern_places_a_file_by_the_path_it_matched() {
        let r = rules(&["/var/tmp/*.log", "build/**/*.o", "/etc/cleanroom-*"]);
        let cwd = Path::new("/home/u/proj");
        let place = |p: &str| r.place(Path::new(p), cwd);
        assert_eq!(place("/var/tmp/a.log"), Some("var/tmp/a.log".into()));
        assert_eq!(place("/var/tmp/.b.log"), Some("var/tmp/.b.log".into()));
        // `*` stays within a component.
        assert_eq!(place("/var/tmp/x/a.log"), None);
        assert_eq!(
            place("/home/u/proj/build/a/b/c.o"),
            Some("build/a/b/c.o".into())
        );
        assert_eq!(place("/home/u/proj/build/c.o"), Some("build/c.o".into()));
        assert_eq!(place("/home/u/other/build/c.o"), None);
        assert_eq!(
            place("/etc/cleanroom-test"),
            Some("etc/cleanroom-test".into())
        );
        assert_eq!(place("/etc/passwd"), None);
    }

    #[test]
    fn bad_patterns_and_directories_are_named() {
        let err = |patterns: &[&str], into: &str| {
            let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
            Rules::new(&p, into).unwrap_err()
        };
        assert!(err(&["[x"], "/o").contains("\"[x\" is not a glob pattern"));
        assert!(err(&["../x"], "/o").contains("has `..`"));
        assert!(err(&[""], "/o").contains("is not a pattern"));
        assert!(err(&["x"], "o").contains("collect_to: \"o\" is not an absolute path"));
        let many: Vec<&str> = vec!["x"; MAX_PATTERNS + 1];
        assert!(err(&many, "/o").contains("at most 32"));
    }

    #[test]
    fn the_layers_are_the_private_directories_and_the_overlays_upper_ones() {
        let stage = Path::new("/s");
        let ops = vec![
            Op::Mkdir("/s/upper/0".into()),
            Op::Like {
                path: "/s/upper/0".into(),
                model: "/".into(),
            },
            Op::Like {
                path: "/s/upper/1".into(),
                model: "/var/lib/data".into(),
            },
        ];
        let l = layers(stage, &ops);
        assert!(l.contains(&("/tmp".into(), "private/tmp".into())));
        assert!(l.contains(&("/dev/shm".into(), "private/dev-shm".into())));
        assert!(l.contains(&("/".into(), "upper/0".into())));
        assert!(l.contains(&("/var/lib/data".into(), "upper/1".into())));
        assert_eq!(l.len(), 6);
    }
}
