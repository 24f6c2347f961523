//! The only code that reads kernel interfaces (/proc, /sys, cgroupfs).
//!
//! Every path goes through [`Host`], which joins it below a configurable root: `/` in
//! production, a temporary directory in tests that need a host this machine cannot show.
//!
//! One read path ([`Host::read`]) and one write path ([`Host::write`]); their errors carry
//! the path (and the value written). Parsers of kernel formats live in [`mod@format`] and are
//! pure. Boot-loader configuration files, which cleanroom creates and removes (unlike
//! kernel files), have their own small path ([`Host::read_config`], [`Host::put_config`],
//! [`Host::remove_config`]), and the programs that turn them into the boot loader's
//! configuration run through [`Host::run`] (`command.rs`), inside the root.

mod cgroup;
mod command;
pub mod format;
pub mod sysctl;
pub mod tasks;

use std::io;
use std::path::{Component, Path, PathBuf};

pub(crate) use cgroup::parse_mountinfo;
pub use cgroup::{CgroupMount, ProcCgroup, classify_mounts, parse_proc_cgroup};
use cleanroom_proto::CgroupMode;

/// Errors of the host layer; each names the kernel path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a kernel file failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file, below the host root.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Writing a kernel file failed.
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        /// The file, below the host root.
        path: PathBuf,
        /// The value written.
        value: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// A kernel file did not hold what its format promises.
    #[error("cannot parse {}: {detail}", path.display())]
    Parse {
        /// The file, below the host root.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A program of the host (a boot loader's generator) failed, timed out or could not
    /// start.
    #[error("{program}: {detail}")]
    Command {
        /// The program and its arguments, as run.
        program: String,
        /// What went wrong, with the end of its output.
        detail: String,
    },
    /// A path given to the host layer was not absolute or tried to climb out of the root.
    #[error("refused kernel path {path:?}: it must be absolute and may not contain `..`")]
    BadPath {
        /// The offending path as given.
        path: String,
    },
}

/// The host's kernel interfaces, below a root directory.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    /// Unit tests only: the faults a test injects into this fake kernel (a crash at a given
    /// step, a refused write). The daemon has no such field.
    #[cfg(test)]
    faults: Option<std::sync::Arc<crate::testing::Faults>>,
    /// Unit tests only: a directory below the root that behaves as a mounted cgroupfs
    /// does (see [`crate::testing::create_dir`]).
    #[cfg(test)]
    cgroupfs: Option<PathBuf>,
    /// Unit tests only: programs are recorded there instead of run (a fake root has none
    /// to run; see [`crate::testing::Commands`]).
    #[cfg(test)]
    commands: Option<std::sync::Arc<crate::testing::Commands>>,
}

impl Host {
    /// A host whose `/proc` and `/sys` live below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            #[cfg(test)]
            faults: None,
            #[cfg(test)]
            cgroupfs: None,
            #[cfg(test)]
            commands: None,
        }
    }

    /// This host, with the programs [`Host::run`] would start recorded in `commands`
    /// instead (unit tests on a fake root).
    #[cfg(test)]
    pub(crate) fn with_commands(
        mut self,
        commands: std::sync::Arc<crate::testing::Commands>,
    ) -> Self {
        self.commands = Some(commands);
        self
    }

    /// This host, with every change to a kernel file or directory passing through `faults`
    /// first (unit tests of crash safety).
    #[cfg(test)]
    pub(crate) fn with_faults(mut self, faults: std::sync::Arc<crate::testing::Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// This host, with the directory `abs` (and below) behaving as a mounted cgroupfs:
    /// a directory made there gets a cgroup's control files, and one holding only those
    /// can be removed (unit tests of the shield's cpusets).
    #[cfg(test)]
    pub(crate) fn with_cgroupfs(mut self, abs: &str) -> Self {
        self.cgroupfs = self.path(abs).ok();
        self
    }

    /// mkdir(2); in unit tests, cgroupfs-like below [`Host::with_cgroupfs`].
    #[cfg(test)]
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        crate::testing::create_dir(self.cgroupfs.as_deref(), path)
    }

    /// mkdir(2).
    #[cfg(not(test))]
    #[inline(always)]
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    /// rmdir(2); in unit tests, cgroupfs-like below [`Host::with_cgroupfs`].
    #[cfg(test)]
    fn delete_dir(&self, path: &Path) -> io::Result<()> {
        crate::testing::remove_dir(self.cgroupfs.as_deref(), path)
    }

    /// rmdir(2).
    #[cfg(not(test))]
    #[inline(always)]
    fn delete_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    /// Called before each change to a kernel file or directory. In unit tests, the place
    /// where an injected fault strikes: the "kernel" refuses the change, or the daemon dies
    /// before making it (see [`crate::testing::Faults`]).
    #[cfg(test)]
    fn changing(&self) -> io::Result<()> {
        match &self.faults {
            Some(f) => f.kernel_change(),
            None => Ok(()),
        }
    }

    /// Called before each change to a kernel file or directory. Nothing in the daemon:
    /// unit tests inject faults here.
    #[cfg(not(test))]
    #[inline(always)]
    fn changing(&self) -> io::Result<()> {
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the absolute kernel path `abs` lives below the root. Refuses relative paths
    /// and `..`, so no caller can leave the root.
    pub fn path(&self, abs: &str) -> Result<PathBuf, Error> {
        let p = Path::new(abs);
        let bad = || Error::BadPath {
            path: abs.to_owned(),
        };
        if !p.is_absolute() {
            return Err(bad());
        }
        let mut out = self.root.clone();
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => out.push(part),
                Component::ParentDir | Component::Prefix(_) => return Err(bad()),
            }
        }
        Ok(out)
    }

    /// The one read path: a whole kernel file as text.
    pub fn read(&self, abs: &str) -> Result<String, Error> {
        let path = self.path(abs)?;
        std::fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
    }

    /// A whole kernel file as bytes (`/proc/<pid>/cmdline`: NUL-separated, any encoding).
    pub fn read_bytes(&self, abs: &str) -> Result<Vec<u8>, Error> {
        let path = self.path(abs)?;
        std::fs::read(&path).map_err(|source| Error::Read { path, source })
    }

    /// The one write path: `value` into a kernel file, as one write(2) (the kernel parses
    /// each write on its own). The file must exist: kernel files are never created.
    pub fn write(&self, abs: &str, value: &str) -> Result<(), Error> {
        use std::io::Write;
        let path = self.path(abs)?;
        let err = |source| Error::Write {
            path: path.clone(),
            value: value.to_owned(),
            source,
        };
        self.changing().map_err(err)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(err)?;
        f.write_all(value.as_bytes()).map_err(err)?;
        Ok(())
    }

    /// A configuration file's content (a boot loader's), or `None` when there is none.
    pub fn read_config(&self, abs: &str) -> Result<Option<String>, Error> {
        let path = self.path(abs)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Read { path, source }),
        }
    }

    /// Creates or replaces a configuration file (mode 0644) with `content`, atomically: a
    /// temporary file beside it, synced, renamed over it. Its directory must exist. A
    /// reader (the boot loader's generator) sees the old content or the new, never part.
    pub fn put_config(&self, abs: &str, content: &str) -> Result<(), Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(abs)?;
        let err = |source| Error::Write {
            path: path.clone(),
            value: content.to_owned(),
            source,
        };
        self.changing().map_err(err)?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".cleanroom-new");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(content.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }

    /// Removes a configuration file; a missing one is fine.
    pub fn remove_config(&self, abs: &str) -> Result<(), Error> {
        let path = self.path(abs)?;
        match self.changing().and_then(|()| std::fs::remove_file(&path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Write {
                path,
                value: "(remove)".into(),
                source,
            }),
        }
    }

    /// Whether a kernel path exists.
    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).map(|p| p.exists()).unwrap_or(false)
    }

    /// Names in a kernel directory, sorted; empty if it does not exist.
    pub fn list(&self, abs: &str) -> Vec<String> {
        let Ok(path) = self.path(abs) else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The boot id (`/proc/sys/kernel/random/boot_id`).
    pub fn boot_id(&self) -> Result<String, Error> {
        Ok(self
            .read("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_owned())
    }

    /// Creates a directory (a cgroup); an existing one is fine.
    pub fn make_dir(&self, abs: &str) -> Result<(), Error> {
        let path = self.path(abs)?;
        match self.changing().and_then(|()| self.create_dir(&path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(Error::Write {
                path,
                value: "(mkdir)".into(),
                source,
            }),
        }
    }

    /// A directory opened for its descriptor (a cgroup, for `perf_event_open`'s cgroup
    /// mode): read-only, `O_DIRECTORY`, close-on-exec.
    pub fn open_dir(&self, abs: &str) -> Result<std::fs::File, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(abs)?;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| Error::Read { path, source })
    }

    /// Removes an empty directory (a cgroup); a missing one is fine.
    pub fn remove_dir(&self, abs: &str) -> Result<(), Error> {
        let path = self.path(abs)?;
        match self.changing().and_then(|()| self.delete_dir(&path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Write {
                path,
                value: "(rmdir)".into(),
                source,
            }),
        }
    }

    /// Renames a directory (a cgroup v1 directory, within its parent).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        let renamed = self.changing().and_then(|()| std::fs::rename(&src, &dst));
        renamed.map_err(|source| Error::Write {
            path: src,
            value: format!("(rename to {})", dst.display()),
            source,
        })
    }

    /// Every cgroup mount, from `/proc/self/mountinfo`.
    pub fn cgroup_mounts(&self) -> Result<Vec<CgroupMount>, Error> {
        let path = self.path("/proc/self/mountinfo")?;
        let text = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        cgroup::parse_mountinfo(&text).map_err(|detail| Error::Parse { path, detail })
    }

    /// The cgroups of this process, from `/proc/self/cgroup`.
    pub fn own_cgroups(&self) -> Result<Vec<ProcCgroup>, Error> {
        let text = self.read("/proc/self/cgroup")?;
        parse_proc_cgroup(&text).map_err(|detail| Error::Parse {
            path: self.path("/proc/self/cgroup").unwrap_or_default(),
            detail,
        })
    }

    /// Which cgroup hierarchies are mounted, from `/proc/self/mountinfo`.
    pub fn cgroup_mode(&self) -> Result<CgroupMode, Error> {
        let path = self.path("/proc/self/mountinfo")?;
        let text = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let mounts = cgroup::parse_mountinfo(&text).map_err(|detail| Error::Parse {
            path: path.clone(),
            detail,
        })?;
        Ok(classify_mounts(&mounts))
    }
}

/// A fake host root holding `files` (absolute kernel paths and contents), for unit tests
/// of what this machine cannot show.
#[cfg(test)]
pub(crate) fn fake_root(files: &[(&str, &str)]) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    let host = Host::new(dir.path());
    (dir, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_root() {
        let host = Host::new("/tmp/fake");
        let table: &[(&str, Option<&str>)] = &[
            (
                "/proc/sys/vm/swappiness",
                Some("/tmp/fake/proc/sys/vm/swappiness"),
            ),
            ("/sys/./block", Some("/tmp/fake/sys/block")),
            ("/", Some("/tmp/fake")),
            ("/proc/../etc/shadow", None),
            ("/sys/block/../../etc", None),
            ("proc/sys", None),
            ("", None),
        ];
        for (input, want) in table {
            let got = host.path(input).ok();
            assert_eq!(got.as_deref(), want.map(Path::new), "input {input:?}");
        }
    }

    #[test]
    fn read_names_the_path_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let err = host.read("/proc/nothing").unwrap_err().to_string();
        assert!(err.contains("proc/nothing"), "{err}");
    }

    #[test]
    fn cgroup_mode_from_a_fake_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(
            dir.path().join("proc/self/mountinfo"),
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        .unwrap();
        assert_eq!(Host::new(dir.path()).cgroup_mode().unwrap(), CgroupMode::V2);
    }
}
