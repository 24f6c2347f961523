//! `collect`: files a batch's last run created or changed in its file-system clean room,
//! copied out once the batch ends.
//!
//! Everything a clean room's run writes outside its `rw` directories is in its stage
//! (`run/fsroom.rs`): the overlays' upper layers (a file created or changed there, the
//! lower layer's unchanged ones are not) and the private `/tmp`, `/var/tmp`, `/run` and
//! `/dev/shm`. When a batch collects, the process that clones each run's child keeps a
//! descriptor of its stage (the detached tmpfs itself, mounted nowhere on the host) in the
//! job's [`Latest`], which lets the previous run's go as each run starts; once the batch
//! ends the daemon walks the last run's and copies every regular file that matches a
//! pattern into the caller's directory, then lets it go.
//!
//! The copy is the caller's own: a thread of the blocking pool takes their fsuid, fsgid and
//! groups and no capability (`fingerprint::AsUser`), so a file they could not read in the
//! room is not read, one lands only where they could write, within their quotas, and each
//! is theirs. Neither side is trusted to hold still: the caller (or a process of the run
//! that got away, or a descriptor it passed out) may change the stage or the destination
//! meanwhile, so both are walked by descriptors, one component at a time, never following
//! a symlink: the destination's directories are opened below the one the request named
//! (as resolved then), and each file is written under a fresh name and renamed into place
//! (a symlink or a FIFO put there is replaced, never written through). Bounded: at most
//! [`MAX_FILES`] files and the stage's size in bytes (a sparse file or hard links cannot
//! make more of it), [`MAX_ENTRIES`] entries looked at (read one at a time, nothing
//! gathered), [`MAX_DEPTH`] directories deep, [`MAX_SECONDS`], and cancelled with the batch.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleanroom_proto::Collected;
use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::sys::stat::Mode;
use tokio_util::sync::CancellationToken;

use super::fingerprint::AsUser;
use super::fsroom::{self, Op};

/// Most files one batch collects.
pub const MAX_FILES: u64 = 10_000;

/// Most entries of the stage one collection looks at.
pub const MAX_ENTRIES: u64 = 200_000;

/// Most directories deep a collection goes below a layer's root.
pub const MAX_DEPTH: usize = 64;

/// Longest a collection copies.
pub const MAX_SECONDS: u64 = 300;

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

/// The stage of a batch's latest run, shared by the job's copies.
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<Mutex<Option<Kept>>>);

impl Latest {
    /// Keeps `kept` (the run that just ended's).
    pub fn keep(&self, kept: Kept) {
        let old = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(kept);
        drop(old);
    }

    /// The latest stage, no longer kept here: to collect from, or (as a run starts) to let
    /// the one before go, so a batch holds at most one while a run writes another, and a
    /// run that never started is not taken for the last one.
    pub fn take(&self) -> Option<Kept> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What a batch collects, checked.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Each pattern, and whether it is relative to the working directory.
    patterns: Vec<(glob::Pattern, bool)>,
    /// Where the files go (as the caller resolved it when the batch was asked for).
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

    /// The first relative pattern, if any.
    pub fn relative(&self) -> Option<&str> {
        self.patterns
            .iter()
            .find(|(_, relative)| *relative)
            .map(|(p, _)| p.as_str())
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
/// missing, and resolves it as they do: the check a request makes before anything runs,
/// and the path the files go below. Blocking.
pub fn prepare(dir: &Path, uid: u32, groups: &[u32]) -> Result<PathBuf, String> {
    let Some(_as) = AsUser::become_(uid, groups) else {
        return Err(format!("collect_to: cannot act as uid {uid}"));
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::canonicalize(dir))
        .and_then(|real| {
            if std::fs::metadata(&real)?.is_dir() {
                Ok(real)
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

/// What one collection is asked: `rules`, for a run of `uid` with `groups` whose working
/// directory was `cwd`, from a stage of at most `max_bytes` mounted at `stage` in its
/// namespace; it stops when `cancel` is.
#[derive(Debug)]
pub struct Collection<'a> {
    /// What to copy, and where.
    pub rules: &'a Rules,
    /// The stage's directory in the run's namespace (the ops' paths begin with it).
    pub stage: &'a Path,
    /// The run's working directory.
    pub cwd: &'a Path,
    /// Whose copy it is.
    pub uid: u32,
    /// Their groups, the primary one first.
    pub groups: &'a [u32],
    /// Most bytes copied (the stage's size).
    pub max_bytes: u64,
    /// The batch's cancellation.
    pub cancel: &'a CancellationToken,
}

/// Copies what `job` asks for out of `kept`. Blocking; bounded as the module
/// documentation says.
pub fn collect(job: &Collection<'_>, kept: Option<Kept>) -> Collected {
    let mut c = Copier {
        job,
        out: Collected {
            into: job.rules.into.display().to_string(),
            ..Collected::default()
        },
        entries: 0,
        over: 0,
        begun: Instant::now(),
        dirs: None,
        serial: 0,
    };
    let Some(kept) = kept else {
        c.out
            .errors
            .push("the batch's last run did not start its clean room: nothing to collect".into());
        return c.out;
    };
    // The working directory as the room's paths name it (they are the host's real ones).
    let cwd = std::fs::canonicalize(job.cwd).unwrap_or_else(|_| job.cwd.to_owned());
    // Each layer opened as root (the stage's root is root's only), without reading it:
    // from there on, every look-up is the caller's.
    let opened: Vec<(PathBuf, OwnedFd)> = layers(job.stage, &kept.ops)
        .into_iter()
        .filter_map(|(seen, held)| {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(&kept.fd, &held, flags, Mode::empty());
            Some((seen, fd.ok()?))
        })
        .collect();
    drop(kept);
    let Some(_as) = AsUser::become_(job.uid, job.groups) else {
        c.out.errors.push(format!("cannot act as uid {}", job.uid));
        return c.out;
    };
    // The destination as resolved when the batch was asked for: a symlink put on the way
    // since is refused, not followed.
    let how = nix::fcntl::OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let into = match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, &job.rules.into, how) {
        Ok(fd) => fd,
        Err(e) => {
            c.out.errors.push(format!(
                "{}: {} (changed since the batch was asked for?)",
                job.rules.into.display(),
                io::Error::from(e)
            ));
            return c.out;
        }
    };
    for (seen, top) in &opened {
        if let Err(stop) = c.walk(top, seen, &cwd, &into) {
            c.out.errors.insert(0, stop);
            break;
        }
    }
    if c.over > 0 {
        c.out.errors.insert(
            0,
            format!(
                "at most {MAX_FILES} files are collected; {} more matched",
                c.over
            ),
        );
        c.out.left_out += c.over;
    }
    c.out
}

/// A collection under way, as the caller.
struct Copier<'a> {
    job: &'a Collection<'a>,
    out: Collected,
    /// Entries looked at.
    entries: u64,
    /// Matching files past [`MAX_FILES`].
    over: u64,
    begun: Instant,
    /// The destination directory the last file went to, open.
    dirs: Option<(PathBuf, OwnedFd)>,
    /// For the temporary names.
    serial: u64,
}

/// A directory being read, and the path the run saw it at.
struct Open {
    entries: nix::dir::OwningIter,
    seen: PathBuf,
}

impl Copier<'_> {
    fn fail(&mut self, what: String) {
        self.out.left_out += 1;
        self.note(what);
    }

    fn note(&mut self, what: String) {
        if self.out.errors.len() < MAX_ERRORS {
            self.out.errors.push(what);
        }
    }

    /// Walks the layer `top` (seen by the run at `seen`), copying what matches; `Err` when
    /// a bound stops the whole collection.
    fn walk(
        &mut self,
        top: &OwnedFd,
        seen: &Path,
        cwd: &Path,
        into: &OwnedFd,
    ) -> Result<(), String> {
        let dir = |fd: BorrowedFd<'_>, name: &CStr| -> nix::Result<nix::dir::OwningIter> {
            let fd = nix::fcntl::openat(
                fd,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            Ok(nix::dir::Dir::from_fd(fd)?.into_iter())
        };
        let mut stack = match dir(top.as_fd(), c".") {
            Ok(entries) => vec![Open {
                entries,
                seen: seen.to_owned(),
            }],
            // Nothing written there, or a directory the caller cannot read.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                self.note(format!("{}: {}", seen.display(), io::Error::from(e)));
                return Ok(());
            }
        };
        while let Some(open) = stack.last_mut() {
            let entry = match open.entries.next() {
                None => {
                    stack.pop();
                    continue;
                }
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    let what = format!("{}: {}", open.seen.display(), io::Error::from(e));
                    stack.pop();
                    self.note(what);
                    continue;
                }
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(format!(
                    "stopped after {MAX_ENTRIES} entries of the clean room"
                ));
            }
            if self.job.cancel.is_cancelled() {
                return Err("stopped: the batch was cancelled".into());
            }
            if self.begun.elapsed() > Duration::from_secs(MAX_SECONDS) {
                return Err(format!("stopped after {MAX_SECONDS} s"));
            }
            let at = open.seen.join(OsStr::from_bytes(name.to_bytes()));
            // SAFETY: the directory's descriptor, open while `open` is on the stack.
            let parent = unsafe { BorrowedFd::borrow_raw(open.entries.as_raw_fd()) };
            let kind = match entry.file_type() {
                Some(t) => Some(t),
                None => {
                    nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                        .ok()
                        .map(|st| match st.st_mode & libc::S_IFMT {
                            libc::S_IFDIR => nix::dir::Type::Directory,
                            libc::S_IFREG => nix::dir::Type::File,
                            _ => nix::dir::Type::Symlink,
                        })
                }
            };
            match kind {
                Some(nix::dir::Type::Directory) => {
                    if stack.len() >= MAX_DEPTH {
                        self.note(format!(
                            "{}: more than {MAX_DEPTH} directories deep, not looked into",
                            at.display()
                        ));
                        continue;
                    }
                    match dir(parent, name) {
                        Ok(entries) => stack.push(Open { entries, seen: at }),
                        Err(e) => self.note(format!("{}: {}", at.display(), io::Error::from(e))),
                    }
                }
                // Regular files only: not whiteouts (character devices), symlinks, FIFOs.
                Some(nix::dir::Type::File) => {
                    let Some(place) = self.job.rules.place(&at, cwd) else {
                        continue;
                    };
                    if self.out.files >= MAX_FILES {
                        self.over += 1;
                        continue;
                    }
                    let left = self.job.max_bytes.saturating_sub(self.out.bytes);
                    match self.copy(parent, name, into, &place, left) {
                        Ok(bytes) => {
                            self.out.files += 1;
                            self.out.bytes += bytes;
                        }
                        Err(Copy::OverBytes) => {
                            self.out.left_out += 1;
                            return Err(format!(
                                "stopped at {} bytes, the clean room's size: {} was not copied",
                                self.job.max_bytes,
                                at.display()
                            ));
                        }
                        Err(Copy::Failed(e)) => self.fail(format!("{}: {e}", at.display())),
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The destination directory `rel` (below `into`), made and opened one component at a
    /// time, never through a symlink.
    fn dest_dir(&mut self, into: &OwnedFd, rel: &Path) -> io::Result<BorrowedFd<'_>> {
        let cached = matches!(&self.dirs, Some((p, _)) if p == rel);
        if !cached {
            let mut fd = into.try_clone()?;
            for part in rel.components() {
                let name = part.as_os_str();
                match nix::sys::stat::mkdirat(&fd, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                fd = nix::fcntl::openat(
                    &fd,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => io::Error::other(format!(
                        "{} in the destination is not a directory (a symlink is not followed)",
                        name.to_string_lossy()
                    )),
                    e => e.into(),
                })?;
            }
            self.dirs = Some((rel.to_owned(), fd));
        }
        Ok(self.dirs.as_ref().expect("just set").1.as_fd())
    }

    /// Copies the regular file `name` of directory `from` to `place` below `into`: written
    /// under a fresh name, then renamed over whatever is there. At most `left` bytes.
    fn copy(
        &mut self,
        from: BorrowedFd<'_>,
        name: &CStr,
        into: &OwnedFd,
        place: &Path,
        left: u64,
    ) -> Result<u64, Copy> {
        let src = nix::fcntl::openat(
            from,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Copy::Failed(e.into()))?;
        let src = std::fs::File::from(src);
        let md = src.metadata().map_err(Copy::Failed)?;
        if !md.is_file() {
            return Err(Copy::Failed(io::Error::other("no longer a regular file")));
        }
        let mode = Mode::from_bits_truncate(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        );
        let (Some(parent), Some(file)) = (place.parent(), place.file_name()) else {
            return Err(Copy::Failed(io::Error::other("no file name")));
        };
        self.serial += 1;
        let tmp = format!(".cleanroom-collect.{}.{}", std::process::id(), self.serial);
        let dir = self.dest_dir(into, parent).map_err(Copy::Failed)?;
        let dst = nix::fcntl::openat(
            dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Copy::Failed(e.into()))?;
        let mut dst = std::fs::File::from(dst);
        let done = (|| -> Result<u64, Copy> {
            let n = io::copy(&mut io::Read::take(&src, left.saturating_add(1)), &mut dst)
                .map_err(Copy::Failed)?;
            if n > left {
                return Err(Copy::OverBytes);
            }
            nix::sys::stat::fchmod(&dst, mode).map_err(|e| Copy::Failed(e.into()))?;
            nix::fcntl::renameat(dir, tmp.as_str(), dir, file)
                .map_err(|e| Copy::Failed(e.into()))?;
            Ok(n)
        })();
        if done.is_err() {
            let _ =
                nix::unistd::unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        done
    }
}

/// Why a file was not copied.
enum Copy {
    /// It would pass the bound on bytes.
    OverBytes,
    /// Anything else, said.
    Failed(io::Error),
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
