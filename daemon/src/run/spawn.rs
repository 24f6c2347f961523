//! Starting a run's process with `clone3`: inside its cgroup from its first instruction, as
//! the caller, with nothing inherited.
//!
//! The parent prepares everything the child will touch before it clones: argv and the
//! environment as C strings, the paths the program may be at (the run's `PATH` searched
//! like `execvp`), the cgroup files, `/dev/null`, the output pipes and a status pipe. Between
//! clone and exec the child is a copy of a multithreaded daemon, so it makes only
//! async-signal-safe system calls on that memory: no allocation, no locks, no panics. As
//! glibc's `fork` did not run, glibc still believes the child has the daemon's threads: its
//! wrappers that act on every thread (`setuid`, `setgroups`, ...) are bypassed with raw
//! system calls.
//!
//! `clone3` creates the child with:
//! - `CLONE_INTO_CGROUP` and the run's cgroup v2 directory: the process is born in the run's
//!   cgroup, so there is no migration to pay for and no instant it runs outside;
//! - the namespaces the run asked for (`CLONE_NEWNET`, `CLONE_NEWNS`, `CLONE_NEWUTS`,
//!   `CLONE_NEWIPC`, `CLONE_NEWPID`): with `pid` the command is PID 1 of a namespace of its
//!   own, which also gets a mount namespace with a fresh `/proc`; a root caller's run always
//!   gets a mount namespace, in which its cgroup mounts are read-only ([`contain`]);
//! - `CLONE_PIDFD`: [`Running::pidfd`] names this process and never a reused pid (where
//!   the clone gives none, `pidfd_open` does). It becomes readable when the process exits,
//!   so the daemon waits for runs without a thread per run.
//!
//! [`start`] returns right after the clone; [`Started::wait_exec`] then waits, without a
//! thread, for the status pipe: it closes when the exec succeeds (close-on-exec) and
//! carries a message when a step failed.
//!
//! A kernel without `clone3` (before 5.3, or a seccomp filter that answers ENOSYS) gets a
//! fork-like `clone` with the same namespaces and no pidfd; one whose `clone3` lacks
//! `CLONE_INTO_CGROUP` (5.3 to 5.6: E2BIG) gets `clone3` without it. Either way the child
//! then writes itself into `cgroup.procs` of the v2 directory as its first step, as it always
//! does on cgroup v1.
//!
//! The order in the child matters:
//! 0. every signal handler back to the default and no signal blocked (the parent blocks all
//!    signals around the clone, so no handler of the daemon ever runs in the child);
//! 1. enter the run's cgroup in every v1 hierarchy (writing `0` to `cgroup.procs` moves the
//!    writer), so the program's very first instruction is accounted and limited and no fork
//!    can escape;
//! 2. a new session (no controlling terminal, its own process group);
//! 3. `personality(ADDR_NO_RANDOMIZE)` for deterministic runs; then, still root, the
//!    namespaces' contents: `/` made private (nothing mounted here reaches the host); for a
//!    root caller's run every cgroup mount remounted read-only and showing the run's own
//!    cgroup, then a cgroup namespace entered (the run is in its cgroups by now, so they
//!    become its roots; see [`contain`], whose mount list the parent reads before the
//!    clone); a tmpfs on `/tmp` for `mount` that keeps a working directory below the
//!    host's `/tmp` (below), a proc of the new pid namespace on `/proc` for `pid`, the
//!    hostname `cleanroom` for `uts`, `lo` up for `net`;
//! 4. SCHED_FIFO for realtime runs, then drop the capability bounding set while still root
//!    (needs CAP_SYS_NICE and CAP_SETPCAP);
//! 5. `NO_NEW_PRIVS`, then the caller's groups, gid and uid (setres*: all three ids); not
//!    dumpable until exec;
//! 6. clear every remaining capability and the ambient set (a root caller keeps none);
//! 7. `chdir` as the caller, so the caller's own permissions decide;
//! 8. mark every inherited descriptor above 2 close-on-exec;
//! 9. `/dev/null` on 0, the output pipes on 1 and 2;
//! 10. `execve` of each candidate path in turn (ENOENT: the next one; EACCES: remembered;
//!     ENOEXEC: the file run by `/bin/sh`, like `execvp`).
//!
//! A private `/tmp` keeps the working directory when it is below the host's `/tmp`: the
//! directory itself (and what is mounted below it) is bind-mounted into the private `/tmp`
//! at its own path, and the rest of the host's `/tmp` stays hidden. The child mounts as
//! root but enters the directory as the caller (step 7), so the binding must not open a way
//! the host's permissions would close. For runs with a private `/tmp` only:
//! - the parent resolves the working directory (`realpath`; a symlink to a directory
//!   elsewhere needs no binding) and the child enters the resolved path; at most
//!   [`MAX_BELOW_TMP`] directories below `/tmp`, so the child's records fit on its stack;
//! - 3a. when the path as given is not the resolved one (a symlink, `..`) or did not
//!   resolve, the child first opens it as the caller (the caller's groups, fsgid and
//!   fsuid, then root's fsuid and fsgid again), while the host's tree is still in view: a
//!   symlink the caller could not follow on the host is not followed for them, nor does
//!   its target show in the run's `pwd`; failing is the working-directory error `chdir`
//!   gives;
//! - 3b. before the tmpfs is mounted, the child opens the host's `/tmp` and each directory
//!   down to the working directory from the one before (`openat`, `O_NOFOLLOW`: a path
//!   changed since the parent resolved it fails rather than leads elsewhere), records the
//!   owner, group, mode and POSIX ACL of each one above the working directory in
//!   fixed-size storage on its stack, and keeps the working directory open (`O_PATH`);
//! - 3c. after the tmpfs is mounted, `/tmp` takes the host `/tmp`'s recorded attributes,
//!   each directory on the way is created with its own (ACL, then mode, then owner: chown
//!   leaves a directory's set-group-ID bit alone, chmod would drop it for a foreign group),
//!   and the open directory is bind-mounted (`fchdir` to it, then `MS_BIND | MS_REC` of `.`:
//!   no `/proc` needed) onto an empty directory at its own path, then made private.
//!
//! Step 7 then walks to the working directory through copies that make the same
//! permission checks as the host's directories, into the host's directory itself.
//!
//! A failure before exec is written to a close-on-exec status pipe (step, detail, errno)
//! before the child exits, so the parent can tell a cgroup or namespace error, "the working
//! directory is not accessible", "command not found" (127) and "not executable" (126) apart.
//! The pipe closing with nothing written means the exec succeeded.
//!
//! Limitations: a working directory kept by a private `/tmp` is resolved in the parent,
//! before the clone: one on a file system that never answers blocks that start where the
//! run's timeout cannot end it (runs without a private `/tmp` resolve nothing). Only the
//! owner, group, mode and POSIX ACL of the directories above it are copied, not security
//! labels (SELinux, Smack); the copies hold nothing but the way down, so `ls ..` there
//! shows one entry; a POSIX ACL of more than 32 entries is refused. Resolving and walking
//! happen as root, so a directory root cannot look into (a user's FUSE mount without
//! `allow_other`) cannot be kept: the run fails to start. The resolution (as root) and the
//! check of 3a are two look-ups: a symlink its owner changes between them can show the
//! owner the name of the directory it resolved to, never let them into one they cannot
//! enter. In a pid namespace the command is PID 1: signals it has no handler for are
//! ignored when sent from inside (`kill $$` does nothing; the daemon's SIGKILL works), it
//! reaps orphans only if it waits for them, and when it exits the kernel kills the rest of
//! the namespace. rlimits are not set here.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use cleanroom_proto::Isolation;

use super::contain::{self, CgroupView};
use super::fsroom;

/// What to start. (Serializable: on cgroup v1 it goes to a helper process that clones
/// the child from inside the run's cgroups, see [`Handoff`].)
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory (entered as the caller).
    pub cwd: PathBuf,
    /// The whole environment (its `PATH` is where a program without `/` is looked for).
    pub env: Vec<(String, String)>,
    /// User id to run as.
    pub uid: u32,
    /// Group id to run as.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// ASLR off for the child.
    pub deterministic: bool,
    /// Namespaces of its own.
    pub isolate: Vec<Isolation>,
    /// SCHED_FIFO priority 1.
    pub realtime: bool,
    /// The run's cgroup v2 directory (real path): the child is cloned into it.
    pub cgroup_v2: Option<PathBuf>,
    /// `cgroup.procs` files (real paths) of v1 hierarchies, entered by the child before exec.
    pub cgroup_procs: Vec<PathBuf>,
    /// Resource limits: (`RLIMIT_*` resource, soft, hard), set while still privileged.
    pub rlimits: Vec<(i32, u64, u64)>,
    /// A file-system clean room ([`fsroom`]; implies a private `/tmp`).
    #[serde(default)]
    pub fs: Option<fsroom::Room>,
}

/// How a child cloned by a helper process is handed over (cgroup v1: the helper sits in the
/// run's cgroups, so the child is born there, with no cgroup migration on the request's
/// path). The default hands nothing over: the daemon clones its own child.
#[derive(Debug, Default)]
pub struct Handoff {
    /// Clone with `CLONE_PARENT`: the child's parent is the daemon, which reaps it.
    pub to_parent: bool,
    /// A pipe the helper holds the write end of: the child closes its copy of the write
    /// end and waits for end-of-file (the helper gone) before anything else, so the helper
    /// never counts against the run's task limit.
    pub gone: Option<(RawFd, RawFd)>,
    /// Files the child writes `0` to once the helper is gone (still root): v1's
    /// `cpuacct.usage` and `memory.max_usage_in_bytes`, so the run's accounting starts
    /// with it.
    pub reset: Vec<PathBuf>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such program (exit code 127, like a shell).
    #[error("command not found: {0}")]
    NotFound(String),
    /// The program exists but cannot be executed (exit code 126).
    #[error("cannot execute {0}: {1}")]
    NotExecutable(String, io::Error),
    /// The working directory is not accessible to the user.
    #[error("working directory {cwd} is not accessible to uid {uid}: {source}")]
    Cwd {
        /// The directory.
        cwd: String,
        /// The user.
        uid: u32,
        /// Why.
        source: io::Error,
    },
    /// The working directory is too deep below `/tmp` for a private `/tmp` to keep.
    #[error(
        "working directory {cwd} is more than {limit} directories below /tmp, the most \
         --isolate mount keeps in its private /tmp"
    )]
    CwdTooDeep {
        /// The directory, as given.
        cwd: String,
        /// [`MAX_BELOW_TMP`].
        limit: usize,
    },
    /// Keeping the working directory below `/tmp` in the private `/tmp` failed.
    #[error("cannot keep working directory {cwd} in the private /tmp ({step}): {source}")]
    CwdBind {
        /// The directory, resolved.
        cwd: String,
        /// What was being done.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Placing the process in its cgroup failed.
    #[error("cannot place the run in its cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory or `cgroup.procs` file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Keeping a root caller's run in its cgroup failed (see [`contain`]): the cgroup
    /// mounts could not be read, made read-only, or made to show the run's own cgroup.
    #[error("cannot keep a root caller's run in its cgroup ({what}): {source}")]
    Contain {
        /// What was being done, naming the mount.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// Building a file-system clean room failed (see [`fsroom`]).
    #[error("cannot build the file-system clean room ({what}): {source}")]
    FsRoom {
        /// What was being done, naming the directory or mount.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// Creating or setting up the run's namespaces failed.
    #[error("cannot set up the run's namespaces ({step}): {source}")]
    Namespace {
        /// What was being done.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Anything else about starting the process.
    #[error("cannot start {0}: {1}")]
    Spawn(String, io::Error),
    /// The helper that was to clone it did not take the request (it is gone).
    #[error("the run helper is gone: {0}")]
    HelperGone(io::Error),
    /// A helper process could not start it (the helper's own message).
    #[error("{message}")]
    Relayed {
        /// What the helper said.
        message: String,
        /// The exit code a shell would give, if the error has one.
        exit_code: Option<i32>,
    },
}

impl Error {
    /// The exit code a shell would give, for errors that have one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::NotFound(_) => Some(127),
            Error::NotExecutable(..) => Some(126),
            Error::Relayed { exit_code, .. } => *exit_code,
            _ => None,
        }
    }
}

/// Held while a child is cloned with pipes of its own (see [`start_with`]).
static CLONE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `CLONE_INTO_CGROUP` (Linux 5.7); libc's constant has the wrong width.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `<linux/sched.h>`, version 2 (88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where the child was when it failed (first byte of a status message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    Cgroup = 1,
    Session,
    Personality,
    Namespace,
    CgroupReadOnly,
    CgroupOwn,
    FsRoom,
    Rlimit,
    Realtime,
    NoNewPrivs,
    Ids,
    Capabilities,
    Cwd,
    Stdio,
    Exec,
}

impl Stage {
    const ALL: [Stage; 15] = [
        Stage::Cgroup,
        Stage::Session,
        Stage::Personality,
        Stage::Namespace,
        Stage::CgroupReadOnly,
        Stage::CgroupOwn,
        Stage::FsRoom,
        Stage::Rlimit,
        Stage::Realtime,
        Stage::NoNewPrivs,
        Stage::Ids,
        Stage::Capabilities,
        Stage::Cwd,
        Stage::Stdio,
        Stage::Exec,
    ];

    fn from_byte(b: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == b)
    }

    fn describe(self) -> &'static str {
        match self {
            Stage::Cgroup => "entering the cgroup",
            Stage::Session => "setsid",
            Stage::Personality => "turning ASLR off",
            Stage::Namespace => "namespaces",
            Stage::CgroupReadOnly => "making a cgroup mount read-only",
            Stage::CgroupOwn => "showing the run its own cgroup",
            Stage::FsRoom => "building the file-system clean room",
            Stage::Rlimit => "setting a resource limit",
            Stage::Realtime => "SCHED_FIFO",
            Stage::NoNewPrivs => "no_new_privs",
            Stage::Ids => "taking the caller's groups, gid and uid",
            Stage::Capabilities => "dropping capabilities",
            Stage::Cwd => "chdir",
            Stage::Stdio => "stdin, stdout and stderr",
            Stage::Exec => "exec",
        }
    }
}

/// The steps of setting up namespaces: the detail byte of a [`Stage::Namespace`] failure,
/// so the parent's error says which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum NsStep {
    PrivateRoot,
    PrivateTmp,
    Proc,
    Hostname,
    Loopback,
    CgroupNamespace,
    // Keeping a working directory below /tmp (3b, 3c); their errors name the directory.
    HostDir,
    HostAttributes,
    CopyDir,
    BindCwd,
    PrivateCwd,
}

/// Every [`NsStep`] in the order of its byte, with what an error message says of it.
const NS_STEPS: [(NsStep, &str); 11] = [
    (NsStep::PrivateRoot, "making / private"),
    (NsStep::PrivateTmp, "mounting a private /tmp"),
    (NsStep::Proc, "mounting /proc of the pid namespace"),
    (NsStep::Hostname, "setting the hostname"),
    (NsStep::Loopback, "bringing lo up"),
    (
        NsStep::CgroupNamespace,
        "entering a cgroup namespace of its own",
    ),
    (
        NsStep::HostDir,
        "opening it and the directories above it on the host, without following a symlink",
    ),
    (
        NsStep::HostAttributes,
        "reading the owner, group, mode and ACL of a directory above it",
    ),
    (
        NsStep::CopyDir,
        "recreating the directories above it with their owner, group, mode and ACL",
    ),
    (NsStep::BindCwd, "bind-mounting it"),
    (NsStep::PrivateCwd, "making its bind mount private"),
];

impl NsStep {
    /// The step of a detail byte, with its description.
    fn from_byte(b: u8) -> Option<(NsStep, &'static str)> {
        NS_STEPS.get(b as usize).copied()
    }

    /// Whether the step keeps the working directory (its error names the directory).
    fn keeps_cwd(self) -> bool {
        self as u8 >= NsStep::HostDir as u8
    }
}

/// A status message: the [`Stage`], a pad byte, the detail (which step of the stage, a
/// `u16` in native order) and the errno (an `i32` in native order).
type Msg = [u8; 8];

/// The message for `stage`, `detail` and `errno`.
fn message(stage: u8, detail: u16, errno: i32) -> Msg {
    let mut msg = [0u8; 8];
    msg[0] = stage;
    msg[2..4].copy_from_slice(&detail.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    msg
}

/// Why the child cannot go on: the status message it writes before it exits.
#[derive(Debug, Clone, Copy)]
struct Failure {
    stage: Stage,
    detail: u16,
    errno: i32,
}

impl Failure {
    /// The failure of the system call just made (its errno).
    fn now(stage: Stage, detail: u16) -> Failure {
        Failure {
            stage,
            detail,
            errno: errno(),
        }
    }

    /// A namespace step whose system call just failed.
    fn ns(step: NsStep) -> Failure {
        Failure::now(Stage::Namespace, step as u16)
    }
}

/// A mount the child makes in its own mount namespace.
struct Mount<'a> {
    source: Option<&'a CStr>,
    target: &'a CStr,
    fstype: Option<&'a CStr>,
    flags: libc::c_ulong,
    data: Option<&'a CStr>,
}

/// Nothing mounted in the run's namespace propagates to the host.
const PRIVATE_ROOT: Mount<'static> = Mount::private(c"/");

/// An empty `/tmp` of the run's own.
const PRIVATE_TMP: Mount<'static> = Mount {
    source: Some(c"tmpfs"),
    target: c"/tmp",
    fstype: Some(c"tmpfs"),
    flags: libc::MS_NOSUID | libc::MS_NODEV,
    data: Some(c"mode=1777"),
};

/// Mounts the private `/tmp`: in a clean room the copy of its stage's `private/tmp` that
/// `tree` holds (taken before the pivot; closed here), else [`PRIVATE_TMP`].
///
/// # Safety
/// Only in the child, in its own mount namespace: raw system calls on a descriptor of its
/// own and static strings.
unsafe fn mount_private_tmp(tree: RawFd) -> Result<(), Failure> {
    if tree < 0 {
        return PRIVATE_TMP.mount_as(NsStep::PrivateTmp);
    }
    // SAFETY: as the function's contract says.
    unsafe {
        let r = libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            PRIVATE_TMP.target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        );
        let errno = *libc::__errno_location();
        libc::close(tree);
        if r < 0 {
            *libc::__errno_location() = errno;
            return Err(Failure::ns(NsStep::PrivateTmp));
        }
    }
    Ok(())
}

/// `move_mount(2)`: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A proc of the pid namespace the mounting process is in.
const PROC: Mount<'static> = Mount {
    source: Some(c"proc"),
    target: c"/proc",
    fstype: Some(c"proc"),
    flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    data: None,
};

impl<'a> Mount<'a> {
    /// `target` and everything mounted below it made private: nothing propagates.
    const fn private(target: &'a CStr) -> Mount<'a> {
        Mount {
            source: None,
            target,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        }
    }

    /// The current directory, with everything mounted below it, bound onto `target`.
    const fn bind_cwd(target: &'a CStr) -> Mount<'a> {
        Mount {
            source: Some(c"."),
            target,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        }
    }

    /// The mount at `target` (not those below it) remounted read-only, given back the
    /// per-mount `flags` a bind remount would otherwise reset.
    const fn read_only(target: &'a CStr, flags: libc::c_ulong) -> Mount<'a> {
        Mount {
            source: None,
            target,
            fstype: None,
            flags: libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
            data: None,
        }
    }

    /// `source` (not what is mounted below it) bound onto `target`, with the flags of the
    /// mount it is in.
    const fn bind(source: &'a CStr, target: &'a CStr) -> Mount<'a> {
        Mount {
            source: Some(source),
            target,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        }
    }

    /// mount(2); async-signal-safe.
    fn mount(&self) -> bool {
        let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: NUL-terminated strings or null pointers, as mount(2) takes them.
        unsafe {
            libc::mount(
                ptr(self.source),
                self.target.as_ptr(),
                ptr(self.fstype),
                self.flags,
                ptr(self.data).cast(),
            ) == 0
        }
    }

    /// [`Mount::mount`], its failure that of `step`.
    fn mount_as(&self, step: NsStep) -> Result<(), Failure> {
        if self.mount() {
            Ok(())
        } else {
            Err(Failure::ns(step))
        }
    }
}

/// How deep below `/tmp` a working directory that a private `/tmp` keeps may be: the child
/// records `/tmp` and each directory above the working directory in an array of this many
/// entries on its stack (under 10 KiB).
pub const MAX_BELOW_TMP: usize = 32;

/// The extended attribute holding a file's POSIX ACL.
const ACL_XATTR: &CStr = c"system.posix_acl_access";

/// Room for a POSIX ACL of up to 32 entries as its extended attribute holds it: a 4-byte
/// header and 8 bytes an entry.
const ACL_MAX: usize = 4 + 8 * 32;

/// What the permission checks of a path walk see of a directory: recorded on the host by
/// the child (3b), given to the directory's copy in the private `/tmp` (3c).
#[derive(Clone, Copy)]
struct DirAccess {
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Permission and set-id bits.
    mode: libc::mode_t,
    /// `system.posix_acl_access`, `acl_len` bytes of it (none: no ACL).
    acl: [u8; ACL_MAX],
    acl_len: usize,
}

impl DirAccess {
    const NONE: DirAccess = DirAccess {
        uid: 0,
        gid: 0,
        mode: 0,
        acl: [0; ACL_MAX],
        acl_len: 0,
    };
}

/// A working directory below the host's `/tmp` that the private `/tmp` keeps, as the
/// parent prepares it for the child.
struct KeptCwd<'a> {
    /// The components of its resolved path below `/tmp`, opened one from the other on the
    /// host (never empty).
    names: &'a [CString],
    /// `/tmp` and each directory down to it, as paths in the private `/tmp` (`/tmp`,
    /// `/tmp/a`, `/tmp/a/b` for `/tmp/a/b`): one more than `names`; the last is the mount
    /// point.
    paths: &'a [CString],
}

/// Where the child enters, decided by the parent before the clone.
#[derive(Debug, PartialEq, Eq)]
struct WorkDir {
    /// What `chdir` takes, as the caller (step 7).
    enter: PathBuf,
    /// The path as given, when it is not `enter` (or did not resolve): opened as the caller
    /// first (3a).
    check: Option<PathBuf>,
    /// The components of `enter` below `/tmp`, which the private `/tmp` keeps (3b, 3c);
    /// none for `/tmp` itself or a directory elsewhere.
    below_tmp: Vec<OsString>,
}

impl WorkDir {
    /// For a run that sees the host's `/tmp`: the path as given, nothing resolved or kept.
    fn as_given(cwd: &Path) -> WorkDir {
        WorkDir {
            enter: cwd.to_path_buf(),
            check: None,
            below_tmp: Vec::new(),
        }
    }

    /// For a run with a private `/tmp`: from `cwd` as given and what it resolved to
    /// (`realpath` as root, in the parent). A path that did not resolve is entered as
    /// given, after the caller's own look-up (which then fails with the caller's errno).
    fn with_private_tmp(cwd: &Path, resolved: io::Result<PathBuf>) -> Result<WorkDir, Error> {
        let Ok(resolved) = resolved else {
            return Ok(WorkDir {
                check: Some(cwd.to_path_buf()),
                ..WorkDir::as_given(cwd)
            });
        };
        let below_tmp = below_tmp(&resolved);
        if below_tmp.len() > MAX_BELOW_TMP {
            return Err(Error::CwdTooDeep {
                cwd: cwd.display().to_string(),
                limit: MAX_BELOW_TMP,
            });
        }
        Ok(WorkDir {
            check: (resolved != cwd).then(|| cwd.to_path_buf()),
            enter: resolved,
            below_tmp,
        })
    }

    /// `/tmp` and each directory down to `enter`, as [`KeptCwd::paths`]; none when nothing
    /// is kept.
    fn private_paths(&self) -> Vec<PathBuf> {
        if self.below_tmp.is_empty() {
            return Vec::new();
        }
        let mut path = PathBuf::from("/tmp");
        let mut paths = vec![path.clone()];
        for name in &self.below_tmp {
            path.push(name);
            paths.push(path.clone());
        }
        paths
    }
}

/// The components of a resolved `path` below `/tmp`: none for `/tmp` itself, a path
/// elsewhere, or one with `.` or `..` (which a resolved path never has: left to `chdir`).
fn below_tmp(path: &Path) -> Vec<OsString> {
    let Ok(rest) = path.strip_prefix("/tmp") else {
        return Vec::new();
    };
    rest.components()
        .map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}

/// A [`CgroupView`] as the child takes it, its paths made C strings before the clone.
struct CgroupViewC {
    mount_point: CString,
    own: Option<CString>,
    flags: libc::c_ulong,
}

/// Detail byte of a cgroup failure on the `cgroup.procs` file of the v2 directory.
const V2_PROCS: u16 = u16::MAX;

/// How the child is created: `clone3`, or (kernels without it, and tests of that path)
/// the fork-like `clone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloneMode {
    Clone3,
    Legacy,
}

/// What the child uses between clone and exec, all prepared before the clone.
struct Plan<'a> {
    /// The helper's pipe (read end, write end), when a helper clones the child.
    gone: Option<(RawFd, RawFd)>,
    /// Files to write `0` to once the helper is gone.
    reset: &'a [CString],
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// `/bin/sh`, a slot for the script's path, the arguments: for ENOEXEC.
    sh_argv: &'a mut [*const libc::c_char],
    candidates: &'a [CString],
    procs_v1: &'a [CString],
    procs_v2: Option<&'a CStr>,
    /// Entered as the caller (step 7).
    cwd: &'a CStr,
    /// The working directory as given, opened as the caller first (3a).
    cwd_as_given: Option<&'a CStr>,
    /// A working directory below `/tmp` that the private `/tmp` keeps (3b, 3c).
    kept_cwd: Option<KeptCwd<'a>>,
    groups: &'a [libc::gid_t],
    uid: libc::uid_t,
    gid: libc::gid_t,
    deterministic: bool,
    realtime: bool,
    private_root: bool,
    /// A root caller's run: the cgroup mounts made read-only, each showing the run's own
    /// cgroup (3), and a cgroup namespace of its own. Empty and false for other runs.
    cgroup_views: &'a [CgroupViewC],
    cgroup_ns: bool,
    /// A file-system clean room: its steps, then the pivot into `fs_root`.
    fs_ops: &'a [FsOpC],
    fs_root: Option<&'a CStr>,
    /// Its stage (a detached tmpfs), attached by [`fsroom::Op::Stage`]; -1 without one.
    stage: RawFd,
    /// The stage's directory for the private `/tmp`.
    stage_tmp: Option<&'a CStr>,
    private_tmp: bool,
    proc_mount: bool,
    hostname: bool,
    loopback: bool,
    rlimits: &'a [(i32, libc::rlimit64)],
    status: RawFd,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// The clone flags of the namespaces in `isolate` (`pid` brings a mount namespace), and of
/// a mount namespace for a `contained` run (a root caller's, see [`contain`]).
fn namespace_flags(isolate: &[Isolation], contained: bool) -> u64 {
    let mut flags = if contained {
        libc::CLONE_NEWNS as u64
    } else {
        0
    };
    for i in isolate {
        let f = match i {
            Isolation::Net => libc::CLONE_NEWNET,
            Isolation::Mount => libc::CLONE_NEWNS,
            Isolation::Uts => libc::CLONE_NEWUTS,
            Isolation::Ipc => libc::CLONE_NEWIPC,
            Isolation::Pid => libc::CLONE_NEWPID | libc::CLONE_NEWNS,
            // Its own pid namespace too: the host's /proc would lead back to the host's
            // tree (/proc/PID/root of any process of the caller's).
            Isolation::Fs => libc::CLONE_NEWNS | libc::CLONE_NEWPID,
        };
        flags |= f as u64;
    }
    flags
}

/// The paths `execvp` would try for `program`, in order: `program` itself when it contains
/// a `/`; otherwise `dir/program` for each directory of `path` (an empty entry is the
/// working directory), or of `/bin:/usr/bin` when there is no `PATH`. An empty program
/// has none.
fn candidates(program: &str, path: Option<&str>) -> Vec<CString> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.contains('/') {
        return CString::new(program).into_iter().collect();
    }
    path.unwrap_or("/bin:/usr/bin")
        .split(':')
        .filter_map(|dir| match dir {
            "" => CString::new(program).ok(),
            d if d.ends_with('/') => CString::new(format!("{d}{program}")).ok(),
            d => CString::new(format!("{d}/{program}")).ok(),
        })
        .collect()
}

/// `ptrs` of `strings` followed by a null pointer (an `execve` vector).
fn nul_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Clones the process described by `spec` and returns at once, before its exec: await
/// [`Started::wait_exec`] to know whether the program runs. Stdout and stderr are pipes;
/// stdin is `/dev/null`. The clone itself is bounded work (it copies the daemon's page
/// tables); what may take long (a working directory on a file system that does not answer)
/// happens in the child.
pub fn start(spec: &Spec) -> Result<Started, Error> {
    start_with(spec, CloneMode::Clone3, &Handoff::default())
}

/// [`start`] from a helper process, handing the child over as `handoff` says.
pub fn start_handoff(spec: &Spec, handoff: &Handoff) -> Result<Started, Error> {
    start_with(spec, CloneMode::Clone3, handoff)
}

fn start_with(spec: &Spec, mode: CloneMode, handoff: &Handoff) -> Result<Started, Error> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let spawn_err = |e: io::Error| Error::Spawn(program.clone(), e);
    let cstring = |bytes: Vec<u8>| CString::new(bytes).map_err(|e| spawn_err(io::Error::other(e)));
    // A file-system clean room has its own mount namespace and a private /tmp.
    let isolated =
        |i: Isolation| spec.isolate.contains(&i) || (spec.fs.is_some() && i == Isolation::Mount);
    // A private /tmp keeps a working directory below the host's: resolved here, as root
    // (the child checks the caller's own look-up, 3a).
    let workdir = if isolated(Isolation::Mount) {
        WorkDir::with_private_tmp(&spec.cwd, std::fs::canonicalize(&spec.cwd))?
    } else {
        WorkDir::as_given(&spec.cwd)
    };

    // Everything the child reads, allocated now.
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a.clone().into_bytes()))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").into_bytes()))
        .collect::<Result<_, _>>()?;
    let path_var = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let candidates = candidates(&program, path_var);
    let argv_ptrs = nul_terminated(&argv);
    let envp_ptrs = nul_terminated(&envp);
    let mut sh_argv: Vec<*const libc::c_char> = [c"/bin/sh".as_ptr(), std::ptr::null()]
        .into_iter()
        .chain(argv.iter().skip(1).map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let procs_v1: Vec<CString> = spec
        .cgroup_procs
        .iter()
        .map(|p| cstring(p.as_os_str().as_encoded_bytes().to_vec()))
        .collect::<Result<_, _>>()?;
    let procs_v2: Option<CString> = spec
        .cgroup_v2
        .as_ref()
        .map(|d| cstring(d.join("cgroup.procs").into_os_string().into_encoded_bytes()))
        .transpose()?;
    let path_cstring = |p: &Path| cstring(p.as_os_str().as_encoded_bytes().to_vec());
    let cwd = path_cstring(&workdir.enter)?;
    let cwd_as_given = workdir.check.as_deref().map(path_cstring).transpose()?;
    // A root caller's run: what each cgroup mount shows it, from this process's mount
    // table and cgroups (read now: the child cannot parse them).
    let contained = contain::applies(spec);
    let views = if contained {
        contain::for_spec(spec).map_err(|e| Error::Contain {
            what: "reading the cgroup mounts".into(),
            source: io::Error::other(e),
        })?
    } else {
        Vec::new()
    };
    let views_c: Vec<CgroupViewC> = views
        .iter()
        .map(|v| {
            Ok(CgroupViewC {
                mount_point: path_cstring(&v.mount_point)?,
                own: v.own.as_deref().map(path_cstring).transpose()?,
                flags: v.flags as libc::c_ulong,
            })
        })
        .collect::<Result<_, Error>>()?;
    // A file-system clean room: planned from this process's mount table (the child cannot
    // parse it).
    let fs_ops = match &spec.fs {
        Some(room) => {
            // Bytes: a mount point need not be UTF-8 (mountinfo escapes only blanks).
            let table = std::fs::read("/proc/self/mountinfo").map_err(|e| Error::FsRoom {
                what: "reading the mount table".into(),
                source: e,
            })?;
            let mut mounts = fsroom::parse_mountinfo(&String::from_utf8_lossy(&table));
            for m in &mut mounts {
                // A file can be a mount point (a bind-mounted /etc/hosts): no overlay on it.
                // (Not asked of a FUSE mount: its server, anyone's, may never answer.)
                if !m.fstype.starts_with("fuse") {
                    m.dir = std::fs::symlink_metadata(&m.path).map_or(true, |md| md.is_dir());
                }
            }
            // The caller's directories as the caller resolves them (symlinks followed with
            // their permissions): the binds' targets hold no symlink that could lead them
            // out of the new root.
            let mut room = room.clone();
            {
                let mut ids = vec![spec.gid];
                ids.extend(spec.groups.iter().copied().filter(|g| *g != spec.gid));
                let Some(_as) = super::fingerprint::AsUser::become_(spec.uid, &ids) else {
                    return Err(Error::FsRoom {
                        what: format!(
                            "acting as uid {} to resolve the clean room's directories",
                            spec.uid
                        ),
                        source: io::Error::last_os_error(),
                    });
                };
                for dir in room
                    .rw
                    .iter_mut()
                    .chain(room.ro.iter_mut())
                    .chain(room.hide.iter_mut())
                {
                    *dir = std::fs::canonicalize(&*dir).map_err(|e| Error::FsRoom {
                        what: format!(
                            "resolving {} as uid {} for the file-system clean room",
                            dir.display(),
                            spec.uid
                        ),
                        source: e,
                    })?;
                    if let Some(p) = fsroom::PRIVATE.iter().find(|p| dir.starts_with(p)) {
                        return Err(Error::FsRoom {
                            what: format!(
                                "{} is below {p}, which the clean room shows empty",
                                dir.display()
                            ),
                            source: io::Error::from_raw_os_error(libc::EINVAL),
                        });
                    }
                }
            }
            fsroom::plan(&room, &mounts).map_err(|e| Error::FsRoom {
                what: "planning the file-system clean room".into(),
                source: io::Error::other(e),
            })?
        }
        None => Vec::new(),
    };
    let fs_ops_c: Vec<FsOpC> = fs_ops
        .iter()
        .map(|op| FsOpC::of(op, &path_cstring, &cstring))
        .collect::<Result<_, Error>>()?;
    let stage_tmp: Option<CString> = spec
        .fs
        .as_ref()
        .map(|room| path_cstring(&fsroom::private_source(&room.stage, "/tmp")))
        .transpose()?;
    let fs_root: Option<CString> = spec
        .fs
        .as_ref()
        .map(|room| path_cstring(&room.stage.join("root")))
        .transpose()?;
    let kept_names: Vec<CString> = workdir
        .below_tmp
        .iter()
        .map(|name| cstring(name.as_encoded_bytes().to_vec()))
        .collect::<Result<_, _>>()?;
    let kept_paths: Vec<CString> = workdir
        .private_paths()
        .iter()
        .map(|p| path_cstring(p))
        .collect::<Result<_, _>>()?;
    let groups: Vec<libc::gid_t> = spec.groups.clone();
    let cgroup_error = |path: &Path, source: io::Error| Error::Cgroup {
        path: path.display().to_string(),
        source,
    };
    let cgroup_dir: Option<OwnedFd> = match &spec.cgroup_v2 {
        Some(dir) => Some(
            nix::fcntl::open(
                dir.as_path(),
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| cgroup_error(dir, e.into()))?,
        ),
        None => None,
    };
    let devnull: OwnedFd = File::open("/dev/null").map_err(spawn_err)?.into();
    // From the pipes' creation until the parent has closed its copies of their write ends,
    // no other child may be cloned: it would hold copies too (close-on-exec only closes
    // them at its exec), and this run's exec, or its end, would be seen only when that
    // other child reaches its own exec, which a working directory on a file system that
    // never answers can postpone forever. (Go's ForkLock, for the same reason.)
    let _clone_lock = CLONE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // A clean room's stage (everything it writes outside its rw directories, /tmp
    // included, within one bound), made under the lock as the pipes are: a child cloned
    // meanwhile would hold it until its own exec.
    let stage: Option<OwnedFd> = spec
        .fs
        .as_ref()
        .map(|room| {
            make_stage(room.upper_mb.max(1)).map_err(|e| Error::FsRoom {
                what: "making the clean room's stage (a tmpfs)".into(),
                source: e,
            })
        })
        .transpose()?;
    let (status_r, status_w) = pipe().map_err(spawn_err)?;
    let (out_r, out_w) = pipe().map_err(spawn_err)?;
    let (err_r, err_w) = pipe().map_err(spawn_err)?;
    let ns_flags = namespace_flags(&spec.isolate, contained || spec.fs.is_some());
    let rlimits: Vec<(i32, libc::rlimit64)> = spec
        .rlimits
        .iter()
        .map(|&(r, soft, hard)| {
            (
                r,
                libc::rlimit64 {
                    rlim_cur: soft,
                    rlim_max: hard,
                },
            )
        })
        .collect();
    let reset: Vec<CString> = handoff
        .reset
        .iter()
        .map(|p| cstring(p.as_os_str().as_encoded_bytes().to_vec()))
        .collect::<Result<_, _>>()?;
    let mut plan = Plan {
        gone: handoff.gone,
        reset: &reset,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        sh_argv: &mut sh_argv,
        candidates: &candidates,
        procs_v1: &procs_v1,
        procs_v2: None,
        cwd: &cwd,
        cwd_as_given: cwd_as_given.as_deref(),
        kept_cwd: (!kept_names.is_empty()).then_some(KeptCwd {
            names: &kept_names,
            paths: &kept_paths,
        }),
        groups: &groups,
        uid: spec.uid,
        gid: spec.gid,
        deterministic: spec.deterministic,
        realtime: spec.realtime,
        private_root: ns_flags & libc::CLONE_NEWNS as u64 != 0,
        cgroup_views: &views_c,
        cgroup_ns: contained,
        fs_ops: &fs_ops_c,
        fs_root: fs_root.as_deref(),
        stage: stage.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        stage_tmp: stage_tmp.as_deref(),
        private_tmp: isolated(Isolation::Mount),
        proc_mount: isolated(Isolation::Pid) || spec.fs.is_some(),
        hostname: isolated(Isolation::Uts),
        loopback: isolated(Isolation::Net),
        rlimits: &rlimits,
        status: status_w.as_raw_fd(),
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
    };

    let saved = block_signals();
    // SAFETY: clone_process forks this multithreaded process; in the child (Cloned::Child)
    // only exec_child runs, which makes async-signal-safe calls on the memory prepared
    // above and never returns.
    let cloned = unsafe { clone_process(mode, ns_flags, cgroup_dir.as_ref(), handoff.to_parent) };
    if let Ok(Cloned::Child { into_cgroup }) = cloned {
        if !into_cgroup {
            plan.procs_v2 = procs_v2.as_deref();
        }
        // SAFETY: this is the child; see above.
        unsafe { exec_child(&mut plan) }
    }
    restore_signals(&saved);
    // The child's copies are the only writers left. The stage is the child's now, unless
    // the daemon collects from it after the run.
    drop((status_w, out_w, err_w, devnull, cgroup_dir));
    let stage = stage.filter(|_| spec.fs.as_ref().is_some_and(|room| room.keep));
    drop(_clone_lock);
    let (pid, pidfd, into_cgroup) = match cloned {
        Ok(Cloned::Parent {
            pid,
            pidfd,
            into_cgroup,
        }) => (pid, pidfd, into_cgroup),
        Ok(Cloned::Child { .. }) => unreachable!("the child execs or exits"),
        Err(e) => {
            let used_cgroup = spec.cgroup_v2.is_some() && mode == CloneMode::Clone3;
            return Err(clone_error(&program, spec, e, used_cgroup, ns_flags != 0));
        }
    };
    let pidfd_from_clone = pidfd.is_some();
    let pidfd = match pidfd {
        Some(fd) => fd,
        None => match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: kill on a pid we have not reaped yet, so it is still our child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let _ = wait(pid);
                return Err(spawn_err(e));
            }
        },
    };
    Ok(Started {
        pid,
        pidfd,
        pidfd_from_clone,
        stdout: out_r,
        stderr: err_r,
        status: Some(status_r),
        born_in_cgroup: into_cgroup,
        stage,
        origin: Origin::of(spec, &workdir, views).with_fs(fs_ops),
    })
}

/// A clean room's stage: a tmpfs of at most `mb` MiB (and `mb` × 256 inodes), mode 0700,
/// nosuid and nodev, made
/// detached (`fsopen`, `fsmount`: mounted nowhere until the child attaches it in its own
/// namespace). Raw system calls: the C library has no wrappers for them.
fn make_stage(mb: u64) -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    let owned = |r: libc::c_long| -> io::Result<OwnedFd> {
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us alone.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    };
    // SAFETY: a NUL-terminated name and flags.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    let size = CString::new(format!("{mb}m")).map_err(io::Error::other)?;
    // Inodes bounded too (an empty file costs no block): one per 4 KiB of the size.
    let inodes =
        CString::new((mb.saturating_mul(256)).max(4096).to_string()).map_err(io::Error::other)?;
    for (key, value) in [
        (c"size", size.as_c_str()),
        (c"nr_inodes", inodes.as_c_str()),
        (c"mode", c"0700"),
    ] {
        // SAFETY: a descriptor of ours and NUL-terminated strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: as above, with no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor of ours and flags.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        )
    })
}

/// A pidfd for `pid` (Linux 5.3), for a child cloned without `CLONE_PIDFD`.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What a start failure is described with: the program and the paths the child used.
#[derive(Debug, Clone)]
struct Origin {
    program: String,
    cgroup_v2: Option<PathBuf>,
    cgroup_procs: Vec<PathBuf>,
    /// The working directory as asked for.
    cwd: PathBuf,
    /// The directory entered (resolved, with a private `/tmp`).
    entered: PathBuf,
    /// The cgroup mounts of a root caller's run.
    cgroup_views: Vec<CgroupView>,
    /// The steps of a file-system clean room.
    fs_ops: Vec<fsroom::Op>,
    uid: u32,
}

impl Origin {
    fn of(spec: &Spec, workdir: &WorkDir, cgroup_views: Vec<CgroupView>) -> Self {
        Self::of_paths(spec, workdir.enter.clone(), cgroup_views)
    }

    fn of_paths(spec: &Spec, entered: PathBuf, cgroup_views: Vec<CgroupView>) -> Self {
        Self {
            program: spec.argv.first().cloned().unwrap_or_default(),
            cgroup_v2: spec.cgroup_v2.clone(),
            cgroup_procs: spec.cgroup_procs.clone(),
            cwd: spec.cwd.clone(),
            entered,
            cgroup_views,
            fs_ops: Vec::new(),
            uid: spec.uid,
        }
    }

    fn with_fs(mut self, ops: Vec<fsroom::Op>) -> Self {
        self.fs_ops = ops;
        self
    }
}

/// A process cloned for a run, between its clone and its exec: its program may not be
/// running yet, and may never run ([`Started::wait_exec`] says).
#[derive(Debug)]
pub struct Started {
    pid: u32,
    pidfd: OwnedFd,
    pidfd_from_clone: bool,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// Closes (close-on-exec) when the exec succeeds; carries a message when it fails.
    /// Taken when read.
    status: Option<OwnedFd>,
    born_in_cgroup: bool,
    /// The clean room's stage, when the daemon collects from it after the run.
    stage: Option<OwnedFd>,
    origin: Origin,
}

/// A process whose program runs (its exec succeeded).
#[derive(Debug)]
pub struct Running {
    /// Its pid (in the daemon's pid namespace).
    pub pid: u32,
    /// A pidfd naming it: readable once it has exited.
    pub pidfd: OwnedFd,
    /// The read end of its stdout.
    pub stdout: OwnedFd,
    /// The read end of its stderr.
    pub stderr: OwnedFd,
    /// Born in its cgroup v2 directory (`CLONE_INTO_CGROUP`) rather than moved there.
    pub born_in_cgroup: bool,
    /// The pidfd came with the clone (`CLONE_PIDFD`), not from `pidfd_open` after it.
    pub pidfd_from_clone: bool,
    /// Its clean room's stage, kept to collect from after the run.
    pub stage: Option<super::collect::Kept>,
}

/// A started child as a helper hands it to the daemon: its pid, its pidfd, stdout, stderr
/// and status pipe (in that order), the working directory it enters and the cgroup mounts
/// it makes read-only (a start failure names them).
#[derive(Debug)]
pub struct Handover {
    /// Its pid.
    pub pid: u32,
    /// Pidfd, stdout, stderr, status pipe.
    pub fds: [OwnedFd; 4],
    /// The directory it enters (resolved, with a private `/tmp`).
    pub entered: PathBuf,
    /// The cgroup mounts of a root caller's run (see [`contain`]).
    pub cgroup_views: Vec<CgroupView>,
    /// The steps of its file-system clean room (see [`fsroom`]).
    pub fs_ops: Vec<fsroom::Op>,
    /// Its clean room's stage, when kept (see [`Running::stage`]).
    pub stage: Option<OwnedFd>,
}

impl Started {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its parts, for a helper to send to the daemon.
    pub fn into_handover(mut self) -> Result<Handover, Error> {
        let status = self.status.take().ok_or_else(|| {
            Error::Spawn(
                self.origin.program.clone(),
                io::Error::other("status pipe already read"),
            )
        })?;
        Ok(Handover {
            pid: self.pid,
            entered: self.origin.entered.clone(),
            cgroup_views: std::mem::take(&mut self.origin.cgroup_views),
            fs_ops: std::mem::take(&mut self.origin.fs_ops),
            fds: [self.pidfd, self.stdout, self.stderr, status],
            stage: self.stage,
        })
    }

    /// The child a helper started for `spec`, in the daemon. Its parent is the daemon
    /// (the helper cloned it with `CLONE_PARENT`), so the daemon reaps it.
    pub fn from_handover(h: Handover, spec: &Spec) -> Started {
        let [pidfd, stdout, stderr, status] = h.fds;
        let mut origin = Origin::of_paths(spec, h.entered, h.cgroup_views).with_fs(h.fs_ops);
        origin.cgroup_procs.clear();
        Started {
            pid: h.pid,
            pidfd,
            pidfd_from_clone: true,
            stdout,
            stderr,
            status: Some(status),
            born_in_cgroup: true,
            stage: h.stage,
            origin,
        }
    }

    /// Waits, without a thread, until the program runs (the status pipe closes at its
    /// exec) or the start failed (the child wrote why, then exited; it is reaped here).
    pub async fn wait_exec(mut self) -> Result<Running, Error> {
        let status = match self.status.take() {
            Some(fd) => read_status_async(fd).await,
            None => Err(io::Error::other("the status pipe was already read")),
        };
        let program = self.origin.program.clone();
        self.finish(status.map_err(|e| Error::Spawn(program, e)))
    }

    /// The same, blocking.
    pub fn wait_exec_blocking(mut self) -> Result<Running, Error> {
        let status = match self.status.take() {
            Some(fd) => read_status(fd),
            None => Err(io::Error::other("the status pipe was already read")),
        };
        let program = self.origin.program.clone();
        self.finish(status.map_err(|e| Error::Spawn(program, e)))
    }

    fn finish(mut self, status: Result<Option<Msg>, Error>) -> Result<Running, Error> {
        match status {
            Ok(None) => Ok(Running {
                pid: self.pid,
                pidfd: self.pidfd,
                stdout: self.stdout,
                stderr: self.stderr,
                born_in_cgroup: self.born_in_cgroup,
                pidfd_from_clone: self.pidfd_from_clone,
                stage: self.stage.map(|fd| super::collect::Kept {
                    fd,
                    ops: std::mem::take(&mut self.origin.fs_ops),
                }),
            }),
            Ok(Some(msg)) => {
                // The child exits right after writing.
                let _ = wait(self.pid);
                Err(classify(&self.origin, msg))
            }
            Err(e) => {
                // SAFETY: kill on a pid we have not reaped yet, so it is still our child.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                let _ = wait(self.pid);
                Err(e)
            }
        }
    }
}

/// Reads the status pipe without blocking a thread: nothing (EOF: the exec succeeded) or a
/// whole message.
async fn read_status_async(fd: OwnedFd) -> io::Result<Option<Msg>> {
    use tokio::io::AsyncReadExt;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut msg = [0u8; 8];
    let mut n = 0;
    while n < msg.len() {
        match pipe.read(&mut msg[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    status_of(n, msg)
}

/// Blocks every signal in this thread; returns the mask to restore.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigfillset/pthread_sigmask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

fn restore_signals(saved: &libc::sigset_t) {
    // SAFETY: a valid mask from block_signals.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, saved, std::ptr::null_mut());
    }
}

/// The two sides of a clone.
#[derive(Debug)]
enum Cloned {
    /// This is the new process; `into_cgroup` says whether it was born in the v2 cgroup.
    Child { into_cgroup: bool },
    /// This is the parent; `into_cgroup` as for the child.
    Parent {
        pid: u32,
        pidfd: Option<OwnedFd>,
        into_cgroup: bool,
    },
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

/// Creates the child with `clone3` (namespaces, pidfd, and the cgroup when given), falling
/// back as the module documentation says.
///
/// # Safety
/// Forks the calling process. In [`Cloned::Child`] only async-signal-safe calls may be made
/// until exec or `_exit`.
unsafe fn clone_process(
    mode: CloneMode,
    ns_flags: u64,
    cgroup: Option<&OwnedFd>,
    to_parent: bool,
) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let parent = if to_parent {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | ns_flags | parent,
        pidfd: (&raw mut pidfd) as u64,
        // With CLONE_PARENT the kernel takes the parent's own exit signal, and clone3
        // refuses any other.
        exit_signal: if to_parent { 0 } else { libc::SIGCHLD as u64 },
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    let clone3 = |args: &CloneArgs| {
        // SAFETY: a valid clone_args of the size given; without CLONE_VM the child runs on
        // a copy of this stack, like fork.
        unsafe {
            libc::syscall(
                libc::SYS_clone3,
                args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        }
    };
    let mut r = -1;
    let mut legacy = mode == CloneMode::Legacy;
    if !legacy {
        r = clone3(&args);
        if r < 0 && errno() == libc::E2BIG && cgroup.is_some() {
            // clone3 without the cgroup field (Linux 5.3 to 5.6).
            args.flags &= !CLONE_INTO_CGROUP;
            args.cgroup = 0;
            r = clone3(&args);
        }
        legacy = r < 0 && errno() == libc::ENOSYS;
    }
    if legacy {
        args.flags &= !CLONE_INTO_CGROUP;
        pidfd = -1;
        // SAFETY: clone(flags, stack = 0, ...) is fork with namespace flags: the child runs
        // on a copy of this stack.
        r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                ns_flags | parent | libc::SIGCHLD as u64,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
    }
    let into_cgroup = args.flags & CLONE_INTO_CGROUP != 0;
    match r {
        0 => Ok(Cloned::Child { into_cgroup }),
        r if r < 0 => Err(io::Error::last_os_error()),
        pid => Ok(Cloned::Parent {
            pid: pid as u32,
            // SAFETY: the kernel returned this new descriptor for us alone.
            pidfd: (!legacy && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
            into_cgroup,
        }),
    }
}

/// Tells the parent why the child cannot go on, and ends the child.
///
/// # Safety
/// Only in the child (it exits).
unsafe fn fail(fd: RawFd, stage: Stage, detail: u16, errno: i32) -> ! {
    let msg = message(stage as u8, detail, errno);
    // SAFETY: write and _exit are async-signal-safe; msg is on the stack.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child between clone and exec: the steps of the module documentation, in order.
///
/// # Safety
/// Only in the child of [`clone_process`]. Makes only async-signal-safe calls on `p`
/// (prepared before the clone) and never returns.
unsafe fn exec_child(p: &mut Plan<'_>) -> ! {
    let status = p.status;
    // SAFETY: every call below is an async-signal-safe system call on stack values or on
    // memory prepared before the clone; nothing allocates, locks or unwinds.
    unsafe {
        let fail_now = |stage: Stage, detail: u16| -> ! { fail(status, stage, detail, errno()) };
        // 0. Signals as a new program expects them. The raw rt_sigaction reaches the
        // signals glibc keeps for itself (32, 33) too; an all-zero kernel sigaction is
        // SIG_DFL, no flags, empty mask on every layout, and 8 bytes is the kernel's
        // sigset of 64 signals.
        let dfl = [0u64; 8];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // 1. The cgroup.
        for (i, path) in p.procs_v1.iter().enumerate() {
            if !write_zero(path) {
                fail_now(Stage::Cgroup, i.min(V2_PROCS as usize - 1) as u16);
            }
        }
        if let Some(path) = p.procs_v2 {
            if !write_zero(path) {
                fail_now(Stage::Cgroup, V2_PROCS);
            }
        }
        // 1b. Cloned by a helper: it must be gone (it sits in the run's cgroups and would
        // count against the run's tasks), then the run's accounting starts afresh.
        if let Some((read, write)) = p.gone {
            libc::close(write);
            let mut byte = 0u8;
            loop {
                let r = libc::read(read, (&raw mut byte).cast(), 1);
                if r == 0 || (r < 0 && errno() != libc::EINTR) {
                    break;
                }
            }
            libc::close(read);
            for path in p.reset {
                // The counters exist where the controller is mounted; a missing one is no
                // reason to refuse the run.
                write_zero(path);
            }
        }
        // 2. A session of its own.
        if libc::setsid() < 0 {
            fail_now(Stage::Session, 0);
        }
        // 3. Personality, then the namespaces' contents, while still root.
        if p.deterministic && libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) < 0 {
            fail_now(Stage::Personality, 0);
        }
        if let Err(f) = namespaces(p) {
            fail(status, f.stage, f.detail, f.errno);
        }
        // Resource limits while privileged (raising a hard limit needs
        // CAP_SYS_RESOURCE); they survive setuid and exec.
        for (i, (resource, limit)) in p.rlimits.iter().enumerate() {
            let none: *mut libc::rlimit64 = std::ptr::null_mut();
            if libc::syscall(libc::SYS_prlimit64, 0, *resource, limit as *const _, none) < 0 {
                fail_now(Stage::Rlimit, i as u16);
            }
        }
        // 4. Realtime while privileged (CAP_SYS_NICE; the policy survives setuid and
        // exec), then the bounding set.
        if p.realtime {
            let param = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) < 0 {
                fail_now(Stage::Realtime, 0);
            }
        }
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        // 5. No new privileges, then the caller's identity.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail_now(Stage::NoNewPrivs, 0);
        }
        // Raw system calls, not glibc's wrappers: those broadcast the change to every
        // thread glibc believes the process has, taking a lock that another thread of the
        // daemon may have held at the clone (glibc's fork resets that state; clone3 does
        // not). The kernel changes the calling thread, here the whole process.
        //
        // Until exec the caller must never be able to ptrace this process: it still holds
        // a copy of the daemon's memory and its descriptors. The kernel lets a user trace
        // a process whose real, effective and saved uids are all theirs and which is
        // dumpable, and every change of the effective uid or gid resets "dumpable" to
        // fs.suid_dumpable (1 on hosts that want core dumps of setuid programs). So the
        // saved uid stays root until dumpable is cleared, and the last step changes only
        // the saved uid, which resets nothing: there is no instant at which the caller
        // could attach.
        let keep = libc::uid_t::MAX;
        if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) < 0
            || libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) < 0
            || libc::syscall(libc::SYS_setresuid, p.uid, p.uid, 0) < 0
            || libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) < 0
            || libc::syscall(libc::SYS_setresuid, keep, keep, p.uid) < 0
        {
            fail_now(Stage::Ids, 0);
        }
        // 6. A root caller keeps root's uid, not its capabilities.
        let mut header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this thread
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) < 0 {
            fail_now(Stage::Capabilities, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        // 7. The working directory, with the caller's permissions.
        if libc::chdir(p.cwd.as_ptr()) < 0 {
            fail_now(Stage::Cwd, 0);
        }
        // 8. close_range(3, ~0, CLOSE_RANGE_CLOEXEC): every other inherited fd closes at
        // exec. Kernels before 5.11 lack the flag: mark them one by one instead.
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as libc::c_int;
            for fd in 3..max {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
        // 9. Standard descriptors (dup2 leaves the copies without close-on-exec).
        if !onto(p.stdin, 0) || !onto(p.stdout, 1) || !onto(p.stderr, 2) {
            fail_now(Stage::Stdio, 0);
        }
        // 10. The program, searched like execvp.
        let mut eacces = false;
        let mut error = libc::ENOENT;
        for path in p.candidates {
            libc::execve(path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
            match errno() {
                libc::ENOEXEC => {
                    // Not a binary the kernel knows and no #!: a shell script.
                    if let Some(slot) = p.sh_argv.get_mut(1) {
                        *slot = path.as_ptr();
                    }
                    libc::execve(c"/bin/sh".as_ptr(), p.sh_argv.as_ptr(), p.envp.as_ptr());
                    fail(status, Stage::Exec, 0, libc::ENOEXEC);
                }
                libc::EACCES => eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                other => {
                    error = other;
                    break;
                }
            }
        }
        if eacces && error == libc::ENOENT {
            error = libc::EACCES;
        }
        fail(status, Stage::Exec, 0, error)
    }
}

/// Step 3 after the personality: the namespaces' contents, with the working directory
/// checked (3a) and kept (3b, 3c) as the module documentation says.
///
/// # Safety
/// Only in the child of [`clone_process`], still root: async-signal-safe system calls on
/// `p` (prepared before the clone) and on the stack.
unsafe fn namespaces(p: &Plan<'_>) -> Result<(), Failure> {
    // SAFETY: as the function's contract says.
    unsafe {
        // 3a, while the host's tree is still in view.
        if let Some(given) = p.cwd_as_given {
            open_as_caller(given, p)?;
        }
        if p.private_root {
            PRIVATE_ROOT.mount_as(NsStep::PrivateRoot)?;
        }
        // A clean room's private /tmp, a copy of its stage's directory taken before the
        // pivot (the stage is out of reach after it); a descriptor, or -1.
        let mut tmp_tree = -1;
        if let Some(root) = p.fs_root {
            tmp_tree = build_room(p, p.fs_ops, root)?;
        }
        // Before anything is mounted on the way to a cgroup mount (a kept working
        // directory's bind copies what is mounted below it, read-only by then).
        contain_cgroups(p.cgroup_views)?;
        if p.cgroup_ns && libc::unshare(libc::CLONE_NEWCGROUP) < 0 {
            return Err(Failure::ns(NsStep::CgroupNamespace));
        }
        match &p.kept_cwd {
            Some(kept) => {
                // 3b before the tmpfs hides the host's /tmp, 3c after.
                let mut above = [DirAccess::NONE; MAX_BELOW_TMP];
                let cwd = walk_host(kept, &mut above)?;
                mount_private_tmp(tmp_tree)?;
                keep_cwd(kept, &above, cwd)?;
            }
            None if p.private_tmp => mount_private_tmp(tmp_tree)?,
            None => {}
        }
        if p.proc_mount {
            PROC.mount_as(NsStep::Proc)?;
        }
        let name = b"cleanroom";
        if p.hostname && libc::sethostname(name.as_ptr().cast(), name.len()) < 0 {
            return Err(Failure::ns(NsStep::Hostname));
        }
        if p.loopback && !loopback_up() {
            return Err(Failure::ns(NsStep::Loopback));
        }
        Ok(())
    }
}

/// The status detail of the pivot (every other step of a clean room has its index).
const FS_PIVOT: u16 = u16::MAX;

/// What the child does for a step of [`fsroom::Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsStep {
    /// mount(2) with the step's fields.
    Mount,
    /// `mkdir` of `target` (an existing one is fine).
    Mkdir,
    /// `chmod` of `target`.
    Mode(libc::mode_t),
    /// `target` given the owner, group and mode of `source`.
    Like,
    /// The stage (the plan's descriptor) attached on `target`.
    Stage,
    /// A bind whose source the child opens as the caller and binds from that descriptor.
    CallerBind,
    /// `target` and every mount below it made read-only (`mount_setattr`).
    ReadOnlyTree,
}

/// A step of [`fsroom::Op`] as the child makes it.
struct FsOpC {
    step: FsStep,
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
}

impl FsOpC {
    fn of(
        op: &fsroom::Op,
        path: &dyn Fn(&Path) -> Result<CString, Error>,
        text: &dyn Fn(Vec<u8>) -> Result<CString, Error>,
    ) -> Result<FsOpC, Error> {
        let mount = |source: Option<CString>,
                     target: &Path,
                     fstype: Option<&CStr>,
                     flags: libc::c_ulong,
                     data: Option<CString>|
         -> Result<FsOpC, Error> {
            Ok(FsOpC {
                step: FsStep::Mount,
                source,
                target: path(target)?,
                fstype: fstype.map(CStr::to_owned),
                flags,
                data,
            })
        };
        let step = |step: FsStep, target: &Path| -> Result<FsOpC, Error> {
            Ok(FsOpC {
                step,
                ..mount(None, target, None, 0, None)?
            })
        };
        match op {
            fsroom::Op::Stage(dir) => step(FsStep::Stage, dir),
            fsroom::Op::Mkdir(dir) => step(FsStep::Mkdir, dir),
            fsroom::Op::Mode { path, mode } => step(FsStep::Mode(*mode as libc::mode_t), path),
            fsroom::Op::Like {
                path: target,
                model,
            } => Ok(FsOpC {
                source: Some(path(model)?),
                ..step(FsStep::Like, target)?
            }),
            fsroom::Op::Tmpfs {
                target,
                options,
                read_only,
            } => mount(
                Some(c"tmpfs".to_owned()),
                target,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV | if *read_only { libc::MS_RDONLY } else { 0 },
                Some(text(options.clone().into_bytes())?),
            ),
            fsroom::Op::Overlay {
                target,
                options,
                noexec,
            } => mount(
                Some(c"overlay".to_owned()),
                target,
                Some(c"overlay"),
                libc::MS_NOSUID | libc::MS_NODEV | if *noexec { libc::MS_NOEXEC } else { 0 },
                Some(text(options.clone().into_bytes())?),
            ),
            fsroom::Op::Bind {
                source,
                target,
                caller,
                recursive,
            } => Ok(FsOpC {
                step: if *caller {
                    FsStep::CallerBind
                } else {
                    FsStep::Mount
                },
                ..mount(
                    Some(path(source)?),
                    target,
                    None,
                    libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 },
                    None,
                )?
            }),
            fsroom::Op::ReadOnly {
                target,
                nosuid,
                nodev,
                noexec,
            } => {
                let keep = |on: bool, flag: libc::c_ulong| if on { flag } else { 0 };
                mount(
                    None,
                    target,
                    None,
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | keep(*nosuid, libc::MS_NOSUID)
                        | keep(*nodev, libc::MS_NODEV)
                        | keep(*noexec, libc::MS_NOEXEC),
                    None,
                )
            }
            fsroom::Op::ReadOnlyTree(target) => step(FsStep::ReadOnlyTree, target),
        }
    }
}

/// Step 3 for a file-system clean room, in the run's mount namespace with `/` private:
/// each step of `ops` in turn, then `root` becomes `/` (`pivot_root(".", ".")` stacks the
/// old root on the new one, which is then detached: nothing of the host's tree is left
/// that is not bound in).
///
/// # Safety
/// Only in the child, in its own mount namespace: mkdir, mount, chdir, pivot_root and
/// umount2 on paths prepared before the clone.
unsafe fn build_room(p: &Plan<'_>, ops: &[FsOpC], root: &CStr) -> Result<RawFd, Failure> {
    let ptr = |s: &Option<CString>| s.as_deref().map_or(std::ptr::null(), CStr::as_ptr);
    for (i, op) in ops.iter().enumerate() {
        let detail = i.min(FS_PIVOT as usize - 1) as u16;
        // SAFETY: NUL-terminated strings or null pointers, as the calls take them.
        let ok = unsafe {
            match op.step {
                FsStep::CallerBind => bind_as_caller(p, op),
                FsStep::ReadOnlyTree => read_only_tree(&op.target),
                FsStep::Mkdir => {
                    libc::mkdir(op.target.as_ptr(), 0o755) == 0
                        || *libc::__errno_location() == libc::EEXIST
                }
                FsStep::Mode(mode) => libc::chmod(op.target.as_ptr(), mode) == 0,
                FsStep::Like => {
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::stat(ptr(&op.source), &mut st) == 0
                        && libc::chown(op.target.as_ptr(), st.st_uid, st.st_gid) == 0
                        && libc::chmod(op.target.as_ptr(), st.st_mode & 0o7777) == 0
                }
                FsStep::Stage => {
                    libc::syscall(
                        libc::SYS_move_mount,
                        p.stage,
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        op.target.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    ) == 0
                }
                FsStep::Mount => {
                    libc::mount(
                        ptr(&op.source),
                        op.target.as_ptr(),
                        ptr(&op.fstype),
                        op.flags,
                        ptr(&op.data).cast(),
                    ) == 0
                }
            }
        };
        // A host mount point gone since the plan (unmounted, or its directory removed) is
        // left out; the caller's own directories and everything else must take.
        // SAFETY: this thread's errno, read right after the failed call.
        let gone = matches!(op.step, FsStep::Mount | FsStep::Like)
            && unsafe { *libc::__errno_location() } == libc::ENOENT;
        if !ok && !gone {
            return Err(Failure::now(Stage::FsRoom, detail));
        }
    }
    // The private /tmp, copied from the stage while it is still in this namespace.
    let tmp = match p.stage_tmp {
        // SAFETY: a NUL-terminated path and flags.
        Some(dir) => unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                dir.as_ptr(),
                libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            ) as RawFd
        },
        None => -1,
    };
    let dot = c".";
    // SAFETY: as above; pivot_root has no glibc wrapper.
    let pivoted = tmp >= 0
        && unsafe {
            libc::chdir(root.as_ptr()) == 0
                && libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0
                && libc::umount2(dot.as_ptr(), libc::MNT_DETACH) == 0
                && libc::chdir(c"/".as_ptr()) == 0
        };
    if pivoted {
        Ok(tmp)
    } else {
        Err(Failure::now(Stage::FsRoom, FS_PIVOT))
    }
}

/// `target` and every mount below it read-only (`mount_setattr` with `AT_RECURSIVE`; a
/// kernel before 5.12 gets the top mount read-only only). Whether it took.
///
/// # Safety
/// Only in the child: raw system calls on a prepared path and a struct on the stack.
unsafe fn read_only_tree(target: &CStr) -> bool {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path and a live struct of the size given.
    unsafe {
        let r = libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        );
        if r == 0 {
            return true;
        }
        *libc::__errno_location() == libc::ENOSYS
            && libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ) == 0
    }
}

/// A bind of `op.source` opened as the caller (their groups, fsgid and fsuid, then root's
/// again), from that descriptor (`/proc/self/fd/N`): what they could not reach on the
/// host, or a symlink they could not follow, fails here. Whether it took (errno set).
///
/// # Safety
/// Only in the child, in its own mount namespace: raw system calls on prepared memory and
/// a buffer on the stack.
unsafe fn bind_as_caller(p: &Plan<'_>, op: &FsOpC) -> bool {
    let Some(source) = op.source.as_deref() else {
        return false;
    };
    // SAFETY: as the function's contract says.
    unsafe {
        let Ok(fd) = open_fd_as_caller(source, 0, p) else {
            return false;
        };
        // "/proc/self/fd/" and the descriptor's digits, NUL-terminated, on the stack.
        let mut buf = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 10];
        let (mut n, mut len) = (fd as u32, 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for k in 0..len {
            buf[prefix.len() + k] = digits[len - 1 - k];
        }
        let ok = libc::mount(
            buf.as_ptr().cast(),
            op.target.as_ptr(),
            std::ptr::null(),
            op.flags,
            std::ptr::null(),
        ) == 0;
        let errno = *libc::__errno_location();
        libc::close(fd);
        *libc::__errno_location() = errno;
        ok
    }
}

/// Step 3 for a root caller's run, in its own mount namespace with `/` private: each cgroup
/// mount of `views` remounted read-only, then its own cgroup in that hierarchy bound onto
/// it (read-only too: a bind takes the flags of the mount it is in; one removed meanwhile
/// is not bound). A path that leads to no cgroup file system (another mount covers it) is
/// left alone: nothing reaches that mount by it.
///
/// # Safety
/// Only in the child, in its own mount namespace: statfs and mount(2) on paths prepared
/// before the clone.
unsafe fn contain_cgroups(views: &[CgroupViewC]) -> Result<(), Failure> {
    for (i, view) in views.iter().enumerate() {
        let detail = i.min(u16::MAX as usize) as u16;
        // SAFETY: a NUL-terminated path; a zeroed statfs is a valid value for the kernel
        // to overwrite.
        let fs_type = unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            if libc::statfs(view.mount_point.as_ptr(), &mut fs) < 0 {
                return Err(Failure::now(Stage::CgroupReadOnly, detail));
            }
            fs.f_type
        };
        if !matches!(
            fs_type,
            libc::CGROUP_SUPER_MAGIC | libc::CGROUP2_SUPER_MAGIC
        ) {
            continue;
        }
        if !Mount::read_only(&view.mount_point, view.flags).mount() {
            return Err(Failure::now(Stage::CgroupReadOnly, detail));
        }
        if let Some(own) = &view.own {
            // A cgroup gone since the views were made (the shield's cpuset, which a
            // lowering removes, held the daemon's helper) leaves the hierarchy shown
            // from its root, read-only all the same: the run cannot leave by it.
            if !Mount::bind(own, &view.mount_point).mount()
                // SAFETY: this thread's errno, read right after the failed call.
                && unsafe { *libc::__errno_location() } != libc::ENOENT
            {
                return Err(Failure::now(Stage::CgroupOwn, detail));
            }
        }
    }
    Ok(())
}

/// 3a: opens `path` as the caller (their groups, fsgid and fsuid: the ids and the file
/// capabilities permission checks use), then takes back the fsuid and fsgid of root. The
/// caller's groups stay; step 5 sets them anyway.
///
/// # Safety
/// Only in the child, which it changes: raw system calls on memory prepared before the
/// clone.
unsafe fn open_as_caller(path: &CStr, p: &Plan<'_>) -> Result<(), Failure> {
    // SAFETY: as the function's contract says.
    match unsafe { open_fd_as_caller(path, libc::O_DIRECTORY, p) } {
        Ok(fd) => {
            // SAFETY: a descriptor this function opened.
            unsafe { libc::close(fd) };
            Ok(())
        }
        Err(AsCaller::Ids) => Err(Failure::now(Stage::Ids, 0)),
        Err(AsCaller::Open) => Err(Failure::now(Stage::Cwd, 0)),
    }
}

/// Why [`open_fd_as_caller`] failed (errno says more).
enum AsCaller {
    /// Taking the caller's ids, or root's back.
    Ids,
    /// The open itself.
    Open,
}

/// Opens `path` `O_PATH` (with `flags`) as the caller: their groups, fsgid and fsuid, then
/// root's fsuid and fsgid again; the caller's groups stay (step 5 sets them anyway). On
/// an open failure errno is the open's.
///
/// # Safety
/// Only in the child, which it changes: raw system calls on memory prepared before the
/// clone.
unsafe fn open_fd_as_caller(
    path: &CStr,
    flags: libc::c_int,
    p: &Plan<'_>,
) -> Result<libc::c_int, AsCaller> {
    // SAFETY: system calls on NUL-terminated paths and the prepared group list. Raw, as in
    // step 5: glibc's wrappers would act on every thread it believes the process has.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) < 0
            || !set_fs_ids(p.uid, p.gid)
        {
            return Err(AsCaller::Ids);
        }
        let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | flags);
        let errno = *libc::__errno_location();
        if !set_fs_ids(libc::geteuid(), libc::getegid()) {
            return Err(AsCaller::Ids);
        }
        if fd < 0 {
            *libc::__errno_location() = errno;
            return Err(AsCaller::Open);
        }
        Ok(fd)
    }
}

/// Sets the fsuid and fsgid of this process; whether both took. An fsuid other than 0
/// leaves the file capabilities (CAP_DAC_OVERRIDE, ...) out of the effective set; 0 brings
/// them back.
///
/// # Safety
/// Only in the child: it changes this thread's credentials only (a raw system call).
unsafe fn set_fs_ids(uid: libc::uid_t, gid: libc::gid_t) -> bool {
    // SAFETY: plain system calls. Each returns the id before; an invalid id (-1) changes
    // nothing, so it reads the id now.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        libc::syscall(libc::SYS_setfsgid, libc::gid_t::MAX) == libc::c_long::from(gid)
            && libc::syscall(libc::SYS_setfsuid, libc::uid_t::MAX) == libc::c_long::from(uid)
    }
}

/// 3b: opens the host's `/tmp`, then each directory of `kept.names` from the one before,
/// never through a symlink, recording `/tmp` and every directory above the working
/// directory in `above` (in path order); returns the working directory, opened `O_PATH`.
/// On failure the descriptors are left to the child's exit.
///
/// # Safety
/// Only in the child: system calls on memory prepared before the clone and on `above`.
unsafe fn walk_host(
    kept: &KeptCwd<'_>,
    above: &mut [DirAccess; MAX_BELOW_TMP],
) -> Result<RawFd, Failure> {
    // Read, not O_PATH, for fgetxattr (which refuses an O_PATH descriptor before Linux
    // 6.13); root reads any directory.
    const DIR: libc::c_int =
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    const CWD: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: NUL-terminated names; descriptors this function opened.
    unsafe {
        let mut fd = libc::open(c"/tmp".as_ptr(), DIR);
        if fd < 0 {
            return Err(Failure::ns(NsStep::HostDir));
        }
        for (i, name) in kept.names.iter().enumerate() {
            let Some(record) = above.get_mut(i) else {
                // More than the parent lets through.
                return Err(Failure {
                    errno: libc::ENAMETOOLONG,
                    ..Failure::ns(NsStep::HostDir)
                });
            };
            read_access(fd, record)?;
            let last = i + 1 == kept.names.len();
            let next = libc::openat(fd, name.as_ptr(), if last { CWD } else { DIR });
            let failed = Failure::ns(NsStep::HostDir);
            libc::close(fd);
            if next < 0 {
                return Err(failed);
            }
            fd = next;
        }
        Ok(fd)
    }
}

/// Records what permission checks see of the directory open on `fd`: owner, group, mode
/// and POSIX ACL.
///
/// # Safety
/// Async-signal-safe: fstat and fgetxattr into `into`.
unsafe fn read_access(fd: RawFd, into: &mut DirAccess) -> Result<(), Failure> {
    // SAFETY: a zeroed stat is a valid value for fstat to overwrite; the ACL buffer is
    // ACL_MAX bytes long.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) < 0 {
            return Err(Failure::ns(NsStep::HostAttributes));
        }
        into.uid = st.st_uid;
        into.gid = st.st_gid;
        into.mode = st.st_mode & 0o7777;
        let n = libc::fgetxattr(
            fd,
            ACL_XATTR.as_ptr(),
            into.acl.as_mut_ptr().cast(),
            ACL_MAX,
        );
        into.acl_len = match n {
            n if n >= 0 => n as usize,
            // No ACL, or a file system without them: the mode says it all.
            _ if matches!(errno(), libc::ENODATA | libc::EOPNOTSUPP) => 0,
            // ERANGE: more entries than ACL_MAX holds.
            _ => return Err(Failure::ns(NsStep::HostAttributes)),
        };
        Ok(())
    }
}

/// 3c, in the private `/tmp`: gives `/tmp` the recorded attributes of the host's, creates
/// each directory down to the working directory with its own and an empty mount point for
/// it, and binds the working directory, open on `cwd`, there.
///
/// # Safety
/// Only in the child, in its own mount namespace with the private `/tmp` mounted: system
/// calls on memory prepared before the clone and on `above`.
unsafe fn keep_cwd(
    kept: &KeptCwd<'_>,
    above: &[DirAccess; MAX_BELOW_TMP],
    cwd: RawFd,
) -> Result<(), Failure> {
    let Some((mount_point, way)) = kept.paths.split_last() else {
        return Err(Failure {
            errno: libc::EINVAL,
            ..Failure::ns(NsStep::CopyDir)
        });
    };
    // SAFETY: NUL-terminated paths; a descriptor walk_host opened.
    unsafe {
        for (i, (path, access)) in way.iter().zip(above).enumerate() {
            // /tmp, the first, is the tmpfs itself.
            if i > 0 && libc::mkdir(path.as_ptr(), 0o700) < 0 {
                return Err(Failure::ns(NsStep::CopyDir));
            }
            copy_access(path, access)?;
        }
        if libc::mkdir(mount_point.as_ptr(), 0o700) < 0 {
            return Err(Failure::ns(NsStep::CopyDir));
        }
        // The descriptor as mount's source: `.` once it is the current directory.
        if libc::fchdir(cwd) < 0 {
            return Err(Failure::ns(NsStep::BindCwd));
        }
        Mount::bind_cwd(mount_point).mount_as(NsStep::BindCwd)?;
        Mount::private(mount_point).mount_as(NsStep::PrivateCwd)?;
        libc::close(cwd);
        Ok(())
    }
}

/// Gives the directory at `path` the recorded ACL, mode and owner, in that order: chmod
/// keeps the set-group-ID bit only while the group is root's (the daemon has no
/// CAP_FSETID), and chown leaves a directory's alone.
///
/// # Safety
/// Async-signal-safe: setxattr, chmod, chown.
unsafe fn copy_access(path: &CStr, access: &DirAccess) -> Result<(), Failure> {
    // SAFETY: a NUL-terminated path; acl_len is at most the buffer's length.
    unsafe {
        let acl = access.acl.as_ptr().cast();
        if (access.acl_len > 0
            && libc::setxattr(path.as_ptr(), ACL_XATTR.as_ptr(), acl, access.acl_len, 0) < 0)
            || libc::chmod(path.as_ptr(), access.mode) < 0
            || libc::chown(path.as_ptr(), access.uid, access.gid) < 0
        {
            return Err(Failure::ns(NsStep::CopyDir));
        }
        Ok(())
    }
}

/// Writes `0` to a `cgroup.procs` file (moving the writer).
///
/// # Safety
/// Async-signal-safe: open, write, close.
unsafe fn write_zero(path: &CStr) -> bool {
    // SAFETY: a NUL-terminated path; a one-byte buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
        libc::close(fd);
        ok
    }
}

/// Puts `src` on descriptor `dst`, without close-on-exec.
///
/// # Safety
/// Async-signal-safe: dup2 or fcntl.
unsafe fn onto(src: RawFd, dst: RawFd) -> bool {
    // SAFETY: plain descriptor calls.
    unsafe {
        if src == dst {
            libc::fcntl(dst, libc::F_SETFD, 0) >= 0
        } else {
            libc::dup2(src, dst) >= 0
        }
    }
}

/// Brings `lo` up in a fresh network namespace (only async-signal-safe calls).
///
/// # Safety
/// Only between fork and exec, or anywhere: it only issues socket and ioctl calls on
/// stack values.
unsafe fn loopback_up() -> bool {
    // SAFETY: plain system calls on a local, zero-initialised ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) >= 0;
        if ok {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            ok = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) >= 0;
        }
        libc::close(fd);
        ok
    }
}

/// What the child wrote on the status pipe, blocking: nothing (it executed its program) or
/// a whole message.
fn read_status(r: OwnedFd) -> io::Result<Option<Msg>> {
    let mut f = File::from(r);
    let mut msg = [0u8; 8];
    let mut n = 0;
    while n < msg.len() {
        match f.read(&mut msg[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    status_of(n, msg)
}

/// `n` bytes of a status message: none means the exec succeeded.
fn status_of(n: usize, msg: Msg) -> io::Result<Option<Msg>> {
    match n {
        0 => Ok(None),
        8 => Ok(Some(msg)),
        _ => Err(io::Error::other(format!(
            "the child wrote {n} bytes of a status message"
        ))),
    }
}

/// The error for a status message from the child.
fn classify(spec: &Origin, msg: Msg) -> Error {
    let program = spec.program.as_str();
    let detail = u16::from_ne_bytes([msg[2], msg[3]]);
    let code = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
    let source = io::Error::from_raw_os_error(code);
    let Some(stage) = Stage::from_byte(msg[0]) else {
        return Error::Spawn(program.to_owned(), source);
    };
    match stage {
        Stage::Cgroup => {
            let path = match detail {
                V2_PROCS => spec.cgroup_v2.as_ref().map(|d| d.join("cgroup.procs")),
                i => spec.cgroup_procs.get(i as usize).cloned(),
            };
            Error::Cgroup {
                path: path.map(|p| p.display().to_string()).unwrap_or_default(),
                source,
            }
        }
        Stage::Namespace => match u8::try_from(detail).ok().and_then(NsStep::from_byte) {
            Some((step, what)) if step.keeps_cwd() => Error::CwdBind {
                cwd: spec.entered.display().to_string(),
                step: what,
                source,
            },
            step => Error::Namespace {
                step: step.map_or("setup", |(_, what)| what),
                source,
            },
        },
        Stage::CgroupReadOnly | Stage::CgroupOwn => {
            let view = spec.cgroup_views.get(detail as usize);
            let at = |p: Option<&Path>| p.map_or("?".into(), |p| p.display().to_string());
            let mount_point = at(view.map(|v| v.mount_point.as_path()));
            let what = if stage == Stage::CgroupReadOnly {
                format!("making {mount_point} read-only")
            } else {
                let own = at(view.and_then(|v| v.own.as_deref()));
                format!("binding {own} onto {mount_point}")
            };
            Error::Contain { what, source }
        }
        Stage::FsRoom => Error::FsRoom {
            what: match spec.fs_ops.get(detail as usize) {
                _ if detail == FS_PIVOT => "copying its private /tmp and pivoting into it".into(),
                Some(op) => op.describe(),
                None => "a step of building it".into(),
            },
            source,
        },
        Stage::Cwd => Error::Cwd {
            cwd: spec.cwd.display().to_string(),
            uid: spec.uid,
            source,
        },
        Stage::Exec => match code {
            libc::ENOENT => Error::NotFound(program.to_owned()),
            libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM => {
                Error::NotExecutable(program.to_owned(), source)
            }
            _ => Error::Spawn(program.to_owned(), source),
        },
        other => Error::Spawn(format!("{program} ({})", other.describe()), source),
    }
}

/// The error for a failed clone: the cgroup (when the child was to be born in one) or the
/// namespaces, by what the kernel says; anything else is about starting at all.
fn clone_error(program: &str, spec: &Spec, e: io::Error, cgroup: bool, ns: bool) -> Error {
    let code = e.raw_os_error().unwrap_or(0);
    let cgroup_dir = || {
        spec.cgroup_v2
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    };
    match code {
        // What cgroup_css_set_fork and the migration checks return.
        libc::EBADF
        | libc::ENODEV
        | libc::EACCES
        | libc::ENOENT
        | libc::EBUSY
        | libc::EOPNOTSUPP
            if cgroup =>
        {
            Error::Cgroup {
                path: cgroup_dir(),
                source: e,
            }
        }
        // Namespaces the kernel lacks, or too many of them.
        libc::EINVAL | libc::ENOSPC | libc::EUSERS | libc::EPERM if ns => Error::Namespace {
            step: "creating them",
            source: e,
        },
        libc::EINVAL | libc::EPERM if cgroup => Error::Cgroup {
            path: cgroup_dir(),
            source: e,
        },
        _ => Error::Spawn(program.to_owned(), e),
    }
}

/// How a process ended, with its resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if a signal ended it.
    pub signal: Option<i32>,
    /// Voluntary context switches of it and its waited-for descendants.
    pub voluntary: u64,
    /// Involuntary context switches.
    pub involuntary: u64,
    /// Peak resident set of the largest of them, KiB.
    pub max_rss_kb: u64,
}

/// Waits for `pid` (blocking) and returns how it ended.
pub fn wait(pid: u32) -> io::Result<Exit> {
    loop {
        match wait4(pid, 0) {
            Ok(Some(exit)) => return Ok(exit),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// How `pid` ended, if it has (never blocks): for a process whose pidfd became readable.
pub fn try_wait(pid: u32) -> io::Result<Option<Exit>> {
    loop {
        match wait4(pid, libc::WNOHANG) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One `wait4` call: `None` when `WNOHANG` found it still running.
fn wait4(pid: u32, flags: libc::c_int) -> io::Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value the kernel overwrites.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a local int and a local rusage.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, flags, &mut ru) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Some(Exit {
        code,
        signal,
        voluntary: ru.ru_nvcsw as u64,
        involuntary: ru.ru_nivcsw as u64,
        max_rss_kb: ru.ru_maxrss as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::root_or_skip;

    fn strings(v: Vec<CString>) -> Vec<String> {
        v.into_iter().map(|c| c.into_string().unwrap()).collect()
    }

    #[test]
    fn candidates_follow_execvp() {
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            (
                "ls",
                Some("/usr/local/bin:/usr/bin::/bin/"),
                &["/usr/local/bin/ls", "/usr/bin/ls", "ls", "/bin/ls"],
            ),
            ("ls", None, &["/bin/ls", "/usr/bin/ls"]),
            ("ls", Some(""), &["ls"]),
            ("./run.sh", Some("/bin"), &["./run.sh"]),
            ("/bin/true", Some("/usr/bin"), &["/bin/true"]),
            ("sub/prog", Some("/bin"), &["sub/prog"]),
            ("", Some("/bin"), &[]),
        ];
        for (program, path, want) in cases {
            assert_eq!(
                strings(candidates(program, *path)),
                *want,
                "{program:?} with PATH {path:?}"
            );
        }
    }

    #[test]
    fn a_private_tmp_enters_the_resolved_path_and_keeps_it_when_below_tmp() {
        /// As given, resolved (None: it did not), entered, checked as the caller first, kept
        /// below /tmp.
        type Case = (
            &'static str,
            Option<&'static str>,
            &'static str,
            Option<&'static str>,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            ("/home/x", Some("/home/x"), "/home/x", None, &[]),
            ("/tmp/x", Some("/tmp/x"), "/tmp/x", None, &["x"]),
            (
                "/tmp/a/b/c",
                Some("/tmp/a/b/c"),
                "/tmp/a/b/c",
                None,
                &["a", "b", "c"],
            ),
            // Spelled differently, the same path: nothing to check.
            ("//tmp//x/", Some("/tmp/x"), "/tmp/x", None, &["x"]),
            ("/tmp/./x", Some("/tmp/x"), "/tmp/x", None, &["x"]),
            // A symlink out of /tmp: entered where it leads, nothing to keep.
            (
                "/tmp/link",
                Some("/home/x"),
                "/home/x",
                Some("/tmp/link"),
                &[],
            ),
            // A symlink into /tmp, and `..`: kept at the resolved path.
            (
                "/home/link",
                Some("/tmp/x"),
                "/tmp/x",
                Some("/home/link"),
                &["x"],
            ),
            (
                "/tmp/a/../b",
                Some("/tmp/b"),
                "/tmp/b",
                Some("/tmp/a/../b"),
                &["b"],
            ),
            // /tmp itself is the private one.
            ("/tmp", Some("/tmp"), "/tmp", None, &[]),
            ("/tmp/x/..", Some("/tmp"), "/tmp", Some("/tmp/x/.."), &[]),
            ("/tmpfoo/x", Some("/tmpfoo/x"), "/tmpfoo/x", None, &[]),
            ("/var/tmp/x", Some("/var/tmp/x"), "/var/tmp/x", None, &[]),
            ("/", Some("/"), "/", None, &[]),
            // Not resolved: left to the caller's own look-up.
            ("/tmp/gone", None, "/tmp/gone", Some("/tmp/gone"), &[]),
            ("/home/gone", None, "/home/gone", Some("/home/gone"), &[]),
        ];
        for (given, resolved, enter, check, kept) in cases {
            let resolved = resolved
                .map(PathBuf::from)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT));
            let w = WorkDir::with_private_tmp(Path::new(given), resolved).unwrap();
            let want = WorkDir {
                enter: enter.into(),
                check: check.map(PathBuf::from),
                below_tmp: kept.iter().map(OsString::from).collect(),
            };
            assert_eq!(w, want, "{given}");
        }
        let w = WorkDir::as_given(Path::new("/tmp/x"));
        assert_eq!((w.check, w.below_tmp.len()), (None, 0), "no private /tmp");
    }

    #[test]
    fn the_private_paths_lead_from_tmp_to_the_mount_point() {
        let cases: &[(&str, &[&str])] = &[
            ("/tmp/x", &["/tmp", "/tmp/x"]),
            ("/tmp/a/b/c", &["/tmp", "/tmp/a", "/tmp/a/b", "/tmp/a/b/c"]),
            (
                "/tmp/with space/é",
                &["/tmp", "/tmp/with space", "/tmp/with space/é"],
            ),
            ("/tmp", &[]),
            ("/home/x", &[]),
        ];
        for (resolved, want) in cases {
            let w = WorkDir::with_private_tmp(Path::new(resolved), Ok(resolved.into())).unwrap();
            let paths = w.private_paths();
            assert_eq!(paths, want.iter().map(PathBuf::from).collect::<Vec<_>>());
            if !paths.is_empty() {
                assert_eq!(paths.len(), w.below_tmp.len() + 1, "{resolved}");
            }
        }
    }

    #[test]
    fn a_private_tmp_keeps_at_most_max_below_tmp_directories() {
        let deep = |n: usize| format!("/tmp{}", "/d".repeat(n));
        let w = WorkDir::with_private_tmp(Path::new("/tmp/l"), Ok(deep(MAX_BELOW_TMP).into()));
        assert_eq!(w.unwrap().below_tmp.len(), MAX_BELOW_TMP);
        let e = WorkDir::with_private_tmp(Path::new("/tmp/l"), Ok(deep(MAX_BELOW_TMP + 1).into()))
            .unwrap_err();
        assert!(
            matches!(&e, Error::CwdTooDeep { cwd, limit } if cwd == "/tmp/l" && *limit == 32),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "working directory /tmp/l is more than 32 directories below /tmp, the most \
             --isolate mount keeps in its private /tmp"
        );
    }

    #[test]
    fn namespace_steps_are_told_apart_by_their_byte() {
        for (i, (step, what)) in NS_STEPS.iter().enumerate() {
            assert_eq!(*step as usize, i, "NS_STEPS in byte order: {what}");
            assert_eq!(NsStep::from_byte(i as u8), Some((*step, *what)));
        }
        assert_eq!(NsStep::from_byte(NS_STEPS.len() as u8), None);
        let keeps: Vec<NsStep> = NS_STEPS
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| s.keeps_cwd())
            .collect();
        use NsStep::*;
        assert_eq!(
            keeps,
            [HostDir, HostAttributes, CopyDir, BindCwd, PrivateCwd]
        );
        // The parent names the kept directory in their errors, and only in theirs.
        let w = WorkDir::with_private_tmp(Path::new("/tmp/l"), Ok("/tmp/a/b".into())).unwrap();
        let msg = |step: NsStep| {
            let m = message(Stage::Namespace as u8, step as u16, libc::ENOENT);
            classify(&Origin::of(&spec(&["true"]), &w, Vec::new()), m).to_string()
        };
        assert_eq!(
            msg(BindCwd),
            "cannot keep working directory /tmp/a/b in the private /tmp (bind-mounting it): \
             No such file or directory (os error 2)"
        );
        assert!(msg(Hostname).starts_with("cannot set up the run's namespaces (setting"));
    }

    #[test]
    fn every_step_of_a_large_clean_room_is_named_in_its_error() {
        // A host of many mounts: well past 255 steps.
        let ops: Vec<fsroom::Op> = (0..1000)
            .map(|i| fsroom::Op::Mkdir(format!("/s/root/m/{i}").into()))
            .collect();
        let origin = Origin::of(
            &spec(&["true"]),
            &WorkDir::as_given(Path::new("/")),
            Vec::new(),
        )
        .with_fs(ops);
        let err = |detail: u16| {
            classify(&origin, message(Stage::FsRoom as u8, detail, libc::EACCES)).to_string()
        };
        assert!(err(700).contains("creating /s/root/m/700"), "{}", err(700));
        assert!(
            err(FS_PIVOT).contains("pivoting into it"),
            "{}",
            err(FS_PIVOT)
        );
        assert!(err(1000).contains("a step of building it"), "{}", err(1000));
    }

    #[test]
    fn a_cgroup_mount_that_cannot_be_made_read_only_is_named() {
        let views = vec![
            CgroupView {
                mount_point: "/sys/fs/cgroup/cpu".into(),
                own: None,
                flags: 0,
            },
            CgroupView {
                mount_point: "/sys/fs/cgroup/pids".into(),
                own: Some("/sys/fs/cgroup/pids/svc/run-1".into()),
                flags: 0,
            },
        ];
        let origin = Origin::of(&spec(&["true"]), &WorkDir::as_given(Path::new("/")), views);
        let msg = |stage: Stage, i: u16| {
            classify(&origin, message(stage as u8, i, libc::EINVAL)).to_string()
        };
        let cannot = "cannot keep a root caller's run in its cgroup";
        assert_eq!(
            msg(Stage::CgroupReadOnly, 1),
            format!(
                "{cannot} (making /sys/fs/cgroup/pids read-only): Invalid argument (os error 22)"
            )
        );
        assert_eq!(
            msg(Stage::CgroupOwn, 1),
            format!(
                "{cannot} (binding /sys/fs/cgroup/pids/svc/run-1 onto /sys/fs/cgroup/pids): \
                 Invalid argument (os error 22)"
            )
        );
        assert!(msg(Stage::CgroupReadOnly, 0).contains("(making /sys/fs/cgroup/cpu read-only)"));
        for stage in Stage::ALL {
            assert_eq!(Stage::from_byte(stage as u8), Some(stage));
        }
    }

    #[test]
    fn pid_isolation_and_containment_bring_a_mount_namespace() {
        let (pid, ns) = (libc::CLONE_NEWPID as u64, libc::CLONE_NEWNS as u64);
        assert_eq!(namespace_flags(&[Isolation::Pid], false), pid | ns);
        assert_eq!(namespace_flags(&[Isolation::Pid], true), pid | ns);
        assert_eq!(namespace_flags(&[], true), ns);
        assert_eq!(namespace_flags(&[], false), 0);
    }

    fn spec(argv: &[&str]) -> Spec {
        Spec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: "/".into(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            deterministic: false,
            isolate: Vec::new(),
            realtime: false,
            cgroup_v2: None,
            cgroup_procs: Vec::new(),
            rlimits: Vec::new(),
            fs: None,
        }
    }

    /// What a test learns of a run: whether CLONE_PIDFD gave the pidfd, and whether it
    /// was born in its cgroup.
    #[derive(Debug)]
    struct Seen {
        pidfd_from_clone: bool,
        born_in_cgroup: bool,
    }

    /// Runs `spec` to the end: its stdout and how it exited.
    fn run(spec: &Spec, mode: CloneMode) -> Result<(String, Exit, Seen), Error> {
        let child = start_with(spec, mode, &Handoff::default())?.wait_exec_blocking()?;
        let pidfd_from_clone = child.pidfd_from_clone;
        let mut out = String::new();
        File::from(child.stdout).read_to_string(&mut out).unwrap();
        let exit = wait(child.pid).unwrap();
        let seen = Seen {
            pidfd_from_clone,
            born_in_cgroup: child.born_in_cgroup,
        };
        Ok((out, exit, seen))
    }

    #[test]
    fn both_clone_paths_run_programs_and_tell_start_failures_apart() {
        if !root_or_skip("both_clone_paths_run_programs_and_tell_start_failures_apart") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("no-shebang");
        std::fs::write(&script, "echo from a script\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "echo must not run\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        for mode in [CloneMode::Clone3, CloneMode::Legacy] {
            let (out, exit, child) = run(&spec(&["echo", "hi"]), mode).unwrap();
            assert_eq!((out.as_str(), exit.code), ("hi\n", Some(0)), "{mode:?}");
            assert_eq!(child.pidfd_from_clone, mode == CloneMode::Clone3);
            let (out, _, _) = run(&spec(&[script.to_str().unwrap()]), mode).unwrap();
            assert_eq!(
                out, "from a script\n",
                "{mode:?}: ENOEXEC runs it with /bin/sh"
            );
            let e = run(&spec(&["no-such-program-here"]), mode).unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{mode:?}: {e}");
            assert_eq!(e.exit_code(), Some(127));
            let e = run(&spec(&[plain.to_str().unwrap()]), mode).unwrap_err();
            assert!(matches!(e, Error::NotExecutable(..)), "{mode:?}: {e}");
            assert_eq!(e.exit_code(), Some(126));
            let mut s = spec(&["true"]);
            s.cwd = dir.path().join("missing");
            let e = run(&s, mode).unwrap_err();
            assert!(
                matches!(&e, Error::Cwd { cwd, uid: 0, .. } if cwd.ends_with("/missing")),
                "{mode:?}: {e}"
            );
            // Builtins only: the shell is the one process of its namespace.
            let mut s = spec(&["sh", "-c", "echo $$ /proc/[0-9]*"]);
            s.isolate = vec![Isolation::Pid];
            let (out, _, _) = run(&s, mode).unwrap();
            assert_eq!(out, "1 /proc/1\n", "{mode:?}: PID 1, alone in its /proc");
        }
    }

    /// A POSIX ACL as its extended attribute holds it, from (tag, permissions, id) entries.
    fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        acl
    }

    fn path_c(p: &Path) -> CString {
        CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
    }

    /// The ACL of `path` as hex, as Python's `os.getxattr(...).hex()` prints it.
    fn acl_hex(path: &Path) -> String {
        let mut buf = [0u8; ACL_MAX];
        let p = path_c(path);
        // SAFETY: a NUL-terminated path and a buffer of the length given.
        let n = unsafe {
            libc::getxattr(
                p.as_ptr(),
                ACL_XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n > 0, "{}: {}", path.display(), io::Error::last_os_error());
        buf[..n as usize]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_private_tmp_keeps_a_working_directory_below_tmp_and_the_way_to_it() {
        if !root_or_skip("a_private_tmp_keeps_a_working_directory_below_tmp_and_the_way_to_it") {
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let top = tempfile::tempdir_in("/tmp").unwrap();
        let a = top.path().join("a");
        let cwd = a.join("b");
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::write(cwd.join("file"), "inside\n").unwrap();
        std::os::unix::fs::symlink("a/b", top.path().join("link")).unwrap();
        // On the way down: a foreign owner, set-group-ID, and an ACL (user 1 r-x).
        let nobody = Some(65534);
        std::os::unix::fs::chown(&a, nobody, nobody).unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o2751)).unwrap();
        let none = u32::MAX;
        let acl = acl_xattr(&[
            (1, 7, none),
            (2, 5, 1),
            (4, 5, none),
            (0x10, 5, none),
            (0x20, 1, none),
        ]);
        // SAFETY: NUL-terminated strings and a buffer of the length given.
        let set = unsafe {
            libc::setxattr(
                path_c(&a).as_ptr(),
                ACL_XATTR.as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        assert_eq!(set, 0, "{}", io::Error::last_os_error());
        let host_only = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        let attrs = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            format!("{:o} {} {}", m.mode() & 0o7777, m.uid(), m.gid())
        };
        let script = format!(
            "cat file; pwd; stat -c '%a %u %g' .. ../.. /tmp; \
             python3 -c \"import os; print(os.getxattr('..', 'system.posix_acl_access').hex())\"; \
             ls -A /tmp ../..; test -e {} || echo host file hidden; echo out > made",
            host_only.path().display()
        );
        let name = top.path().file_name().unwrap().to_str().unwrap();
        let want = [
            "inside",
            cwd.to_str().unwrap(),
            &attrs(&a),
            &attrs(top.path()),
            &attrs(Path::new("/tmp")),
            &acl_hex(&a),
            // Only the way down: not the host's link beside `a` (`..` is not readable).
            &format!("../..:\na\n\n/tmp:\n{name}"),
            "host file hidden",
        ]
        .join("\n")
            + "\n";
        for mode in [CloneMode::Clone3, CloneMode::Legacy] {
            for given in [cwd.clone(), top.path().join("link")] {
                let mut s = spec(&["sh", "-c", &script]);
                s.isolate = vec![Isolation::Mount];
                s.cwd = given.clone();
                let (out, exit, _) = run(&s, mode).unwrap();
                assert_eq!(exit.code, Some(0), "{mode:?} {}: {out}", given.display());
                assert_eq!(out, want, "{mode:?} {}", given.display());
                // The host's directory itself, not a copy.
                let made = cwd.join("made");
                assert_eq!(std::fs::read_to_string(&made).unwrap(), "out\n");
                std::fs::remove_file(made).unwrap();
            }
        }
        assert_eq!(
            attrs(&a),
            "2751 65534 65534",
            "the host's directory is untouched"
        );
    }

    #[test]
    fn clone_into_cgroup_places_the_child_in_its_cgroup_at_birth() {
        if !root_or_skip("clone_into_cgroup_places_the_child_in_its_cgroup_at_birth") {
            return;
        }
        let host = crate::host::Host::new("/");
        let Some(mount) = host
            .cgroup_mounts()
            .unwrap()
            .into_iter()
            .find(|m| m.unified)
        else {
            eprintln!("skipping: no cgroup2 mount here");
            return;
        };
        let own = host.own_cgroups().unwrap();
        let own = own.iter().find(|c| c.id == 0).map_or("/", |c| &c.path);
        let name = format!("cleanroom-spawn-test-{}", std::process::id());
        let rel = format!("{}/{name}", own.trim_end_matches('/'));
        let dir = mount.mount_point.join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap();
        // As nobody: a root caller's run would see its cgroup as `/` (contain.rs).
        let mut s = spec(&["cat", "/proc/self/cgroup"]);
        (s.uid, s.gid) = (65534, 65534);
        s.cgroup_v2 = Some(dir.clone());
        let result = run(&s, CloneMode::Clone3);
        s.cgroup_v2 = Some(dir.join("missing"));
        let missing = run(&s, CloneMode::Clone3);
        std::fs::remove_dir(&dir).unwrap();
        let (out, exit, child) = result.unwrap();
        assert_eq!(exit.code, Some(0));
        assert!(child.born_in_cgroup, "CLONE_INTO_CGROUP, no migration");
        assert!(out.lines().any(|l| l == format!("0::{rel}")), "{out}");
        let e = missing.unwrap_err();
        assert!(
            matches!(&e, Error::Cgroup { path, .. } if path.ends_with("/missing")),
            "{e}"
        );
    }

    #[test]
    fn a_root_callers_child_sees_its_cgroups_as_roots_of_read_only_mounts() {
        if !root_or_skip("a_root_callers_child_sees_its_cgroups_as_roots_of_read_only_mounts") {
            return;
        }
        let host = crate::host::Host::new("/");
        let mounts = host.cgroup_mounts().unwrap();
        // Writing 0 to a cgroup.procs moves the writer (here to where it already is).
        let writes: String = mounts
            .iter()
            .map(|m| format!("echo 0 > {}/cgroup.procs; ", m.mount_point.display()))
            .collect();
        let script = format!("exec 2>&1; cat /proc/self/cgroup; {writes}true");
        for mode in [CloneMode::Clone3, CloneMode::Legacy] {
            for isolate in [vec![], vec![Isolation::Mount, Isolation::Pid]] {
                let mut s = spec(&["sh", "-c", &script]);
                s.isolate = isolate.clone();
                let (out, exit, _) = run(&s, mode).unwrap();
                assert_eq!(exit.code, Some(0), "{mode:?} {isolate:?}: {out}");
                let lines: Vec<&str> = out.lines().collect();
                let (cgroups, refused) = lines.split_at(lines.len() - mounts.len());
                assert!(cgroups.iter().all(|l| l.ends_with(":/")), "{out}");
                assert!(
                    refused.iter().all(|l| l.ends_with("Read-only file system")),
                    "{mode:?} {isolate:?}: {out}"
                );
            }
        }
        // Someone else's child is left as it was.
        let mut s = spec(&["sh", "-c", "cat /proc/self/cgroup"]);
        (s.uid, s.gid) = (65534, 65534);
        let (out, _, _) = run(&s, CloneMode::Clone3).unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(out, own);
    }
}
