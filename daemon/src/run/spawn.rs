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
//!   own, which also gets a mount namespace with a fresh `/proc`;
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
//!    namespaces' contents: `/` made private (nothing mounted here reaches the host), a
//!    tmpfs on `/tmp` for `mount`, a proc of the new pid namespace on `/proc` for `pid`, the
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
//! A failure before exec is written to a close-on-exec status pipe (step, detail, errno)
//! before the child exits, so the parent can tell a cgroup or namespace error, "the working
//! directory is not accessible", "command not found" (127) and "not executable" (126) apart.
//! The pipe closing with nothing written means the exec succeeded.
//!
//! Limitations: with `--isolate mount` a working directory below `/tmp` is refused (the
//! private `/tmp` is empty and hides the host's; `/tmp` itself is the private one), since
//! keeping a host directory as the working directory while `/tmp` names another tree would
//! be a trap. In a pid namespace the command is PID 1: signals it has no handler for are
//! ignored when sent from inside (`kill $$` does nothing; the daemon's SIGKILL works), it
//! reaps orphans only if it waits for them, and when it exits the kernel kills the rest of
//! the namespace. rlimits are not set here.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use cleanroom_proto::Isolation;

/// What to start.
#[derive(Debug, Clone)]
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
    /// The working directory is below `/tmp`, which a private `/tmp` hides.
    #[error(
        "working directory {0} is under /tmp, which --isolate mount hides behind an empty \
         private /tmp; use a directory outside /tmp (or /tmp itself, the private one)"
    )]
    CwdHiddenByPrivateTmp(String),
    /// Placing the process in its cgroup failed.
    #[error("cannot place the run in its cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory or `cgroup.procs` file.
        path: String,
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
}

impl Error {
    /// The exit code a shell would give, for errors that have one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::NotFound(_) => Some(127),
            Error::NotExecutable(..) => Some(126),
            _ => None,
        }
    }
}

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
    const ALL: [Stage; 12] = [
        Stage::Cgroup,
        Stage::Session,
        Stage::Personality,
        Stage::Namespace,
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

/// The steps of setting up namespaces, by the detail byte of a [`Stage::Namespace`] failure.
const NS_STEPS: [&str; 5] = [
    "making / private",
    "mounting a private /tmp",
    "mounting /proc of the pid namespace",
    "setting the hostname",
    "bringing lo up",
];

/// A mount the child makes in its own mount namespace.
struct Mount {
    source: Option<&'static CStr>,
    target: &'static CStr,
    fstype: Option<&'static CStr>,
    flags: libc::c_ulong,
    data: Option<&'static CStr>,
}

/// Nothing mounted in the run's namespace propagates to the host.
const PRIVATE_ROOT: Mount = Mount {
    source: None,
    target: c"/",
    fstype: None,
    flags: libc::MS_REC | libc::MS_PRIVATE,
    data: None,
};

/// An empty `/tmp` of the run's own.
const PRIVATE_TMP: Mount = Mount {
    source: Some(c"tmpfs"),
    target: c"/tmp",
    fstype: Some(c"tmpfs"),
    flags: libc::MS_NOSUID | libc::MS_NODEV,
    data: Some(c"mode=1777"),
};

/// A proc of the pid namespace the mounting process is in.
const PROC: Mount = Mount {
    source: Some(c"proc"),
    target: c"/proc",
    fstype: Some(c"proc"),
    flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    data: None,
};

impl Mount {
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
}

/// Detail byte of a cgroup failure on the `cgroup.procs` file of the v2 directory.
const V2_PROCS: u8 = u8::MAX;

/// How the child is created: `clone3`, or (kernels without it, and tests of that path)
/// the fork-like `clone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloneMode {
    Clone3,
    Legacy,
}

/// What the child uses between clone and exec, all prepared before the clone.
struct Plan<'a> {
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// `/bin/sh`, a slot for the script's path, the arguments: for ENOEXEC.
    sh_argv: &'a mut [*const libc::c_char],
    candidates: &'a [CString],
    procs_v1: &'a [CString],
    procs_v2: Option<&'a CStr>,
    cwd: &'a CStr,
    groups: &'a [libc::gid_t],
    uid: libc::uid_t,
    gid: libc::gid_t,
    deterministic: bool,
    realtime: bool,
    private_root: bool,
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

/// The clone flags of the namespaces in `isolate` (`pid` brings a mount namespace).
fn namespace_flags(isolate: &[Isolation]) -> u64 {
    let mut flags = 0;
    for i in isolate {
        let f = match i {
            Isolation::Net => libc::CLONE_NEWNET,
            Isolation::Mount => libc::CLONE_NEWNS,
            Isolation::Uts => libc::CLONE_NEWUTS,
            Isolation::Ipc => libc::CLONE_NEWIPC,
            Isolation::Pid => libc::CLONE_NEWPID | libc::CLONE_NEWNS,
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

/// Whether `cwd` lies below `/tmp`, which the private `/tmp` of `--isolate mount` hides
/// (`/tmp` itself is the private one). Lexical: a path with `..` is left to `chdir`.
fn hidden_by_private_tmp(cwd: &Path) -> bool {
    if cwd.components().any(|c| c == Component::ParentDir) {
        return false;
    }
    let mut c = cwd.components();
    c.next() == Some(Component::RootDir)
        && c.next() == Some(Component::Normal("tmp".as_ref()))
        && c.next().is_some()
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
    start_with(spec, CloneMode::Clone3)
}

fn start_with(spec: &Spec, mode: CloneMode) -> Result<Started, Error> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let spawn_err = |e: io::Error| Error::Spawn(program.clone(), e);
    let cstring = |bytes: Vec<u8>| CString::new(bytes).map_err(|e| spawn_err(io::Error::other(e)));
    let isolated = |i: Isolation| spec.isolate.contains(&i);
    if isolated(Isolation::Mount) && hidden_by_private_tmp(&spec.cwd) {
        return Err(Error::CwdHiddenByPrivateTmp(spec.cwd.display().to_string()));
    }

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
    let cwd = cstring(spec.cwd.as_os_str().as_encoded_bytes().to_vec())?;
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
    let (status_r, status_w) = pipe().map_err(spawn_err)?;
    let (out_r, out_w) = pipe().map_err(spawn_err)?;
    let (err_r, err_w) = pipe().map_err(spawn_err)?;
    let ns_flags = namespace_flags(&spec.isolate);
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
    let mut plan = Plan {
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        sh_argv: &mut sh_argv,
        candidates: &candidates,
        procs_v1: &procs_v1,
        procs_v2: None,
        cwd: &cwd,
        groups: &groups,
        uid: spec.uid,
        gid: spec.gid,
        deterministic: spec.deterministic,
        realtime: spec.realtime,
        private_root: ns_flags & libc::CLONE_NEWNS as u64 != 0,
        private_tmp: isolated(Isolation::Mount),
        proc_mount: isolated(Isolation::Pid),
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
    let cloned = unsafe { clone_process(mode, ns_flags, cgroup_dir.as_ref()) };
    if let Ok(Cloned::Child { into_cgroup }) = cloned {
        if !into_cgroup {
            plan.procs_v2 = procs_v2.as_deref();
        }
        // SAFETY: this is the child; see above.
        unsafe { exec_child(&mut plan) }
    }
    restore_signals(&saved);
    // The child's copies are the only writers left.
    drop((status_w, out_w, err_w, devnull, cgroup_dir));
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
        origin: Origin::of(spec),
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
    cwd: PathBuf,
    uid: u32,
}

impl Origin {
    fn of(spec: &Spec) -> Self {
        Self {
            program: spec.argv.first().cloned().unwrap_or_default(),
            cgroup_v2: spec.cgroup_v2.clone(),
            cgroup_procs: spec.cgroup_procs.clone(),
            cwd: spec.cwd.clone(),
            uid: spec.uid,
        }
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
}

impl Started {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
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

    fn finish(self, status: Result<Option<[u8; 6]>, Error>) -> Result<Running, Error> {
        match status {
            Ok(None) => Ok(Running {
                pid: self.pid,
                pidfd: self.pidfd,
                stdout: self.stdout,
                stderr: self.stderr,
                born_in_cgroup: self.born_in_cgroup,
                pidfd_from_clone: self.pidfd_from_clone,
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
async fn read_status_async(fd: OwnedFd) -> io::Result<Option<[u8; 6]>> {
    use tokio::io::AsyncReadExt;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut msg = [0u8; 6];
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
) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | ns_flags,
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
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
                ns_flags | libc::SIGCHLD as u64,
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
unsafe fn fail(fd: RawFd, stage: Stage, detail: u8, errno: i32) -> ! {
    let mut msg = [0u8; 6];
    msg[0] = stage as u8;
    msg[1] = detail;
    msg[2..].copy_from_slice(&errno.to_ne_bytes());
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
        let fail_now = |stage: Stage, detail: u8| -> ! { fail(status, stage, detail, errno()) };
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
                fail_now(Stage::Cgroup, i.min(V2_PROCS as usize - 1) as u8);
            }
        }
        if let Some(path) = p.procs_v2 {
            if !write_zero(path) {
                fail_now(Stage::Cgroup, V2_PROCS);
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
        // In the order of NS_STEPS, whose index is the detail of a failure.
        let mounts = [
            (p.private_root, &PRIVATE_ROOT),
            (p.private_tmp, &PRIVATE_TMP),
            (p.proc_mount, &PROC),
        ];
        for (step, (wanted, m)) in mounts.into_iter().enumerate() {
            if wanted && !m.mount() {
                fail_now(Stage::Namespace, step as u8);
            }
        }
        if p.hostname {
            let name = b"cleanroom";
            if libc::sethostname(name.as_ptr().cast(), name.len()) < 0 {
                fail_now(Stage::Namespace, 3);
            }
        }
        if p.loopback && !loopback_up() {
            fail_now(Stage::Namespace, 4);
        }
        // Resource limits while privileged (raising a hard limit needs
        // CAP_SYS_RESOURCE); they survive setuid and exec.
        for (i, (resource, limit)) in p.rlimits.iter().enumerate() {
            let none: *mut libc::rlimit64 = std::ptr::null_mut();
            if libc::syscall(libc::SYS_prlimit64, 0, *resource, limit as *const _, none) < 0 {
                fail_now(Stage::Rlimit, i as u8);
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
        if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) < 0
            || libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) < 0
            || libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) < 0
        {
            fail_now(Stage::Ids, 0);
        }
        // Until exec (which resets it) the caller must not be able to ptrace this
        // process: it still holds the daemon's memory and descriptors.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
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
fn read_status(r: OwnedFd) -> io::Result<Option<[u8; 6]>> {
    let mut f = File::from(r);
    let mut msg = [0u8; 6];
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
fn status_of(n: usize, msg: [u8; 6]) -> io::Result<Option<[u8; 6]>> {
    match n {
        0 => Ok(None),
        6 => Ok(Some(msg)),
        _ => Err(io::Error::other(format!(
            "the child wrote {n} bytes of a status message"
        ))),
    }
}

/// The error for a status message from the child.
fn classify(spec: &Origin, msg: [u8; 6]) -> Error {
    let program = spec.program.as_str();
    let code = i32::from_ne_bytes([msg[2], msg[3], msg[4], msg[5]]);
    let source = io::Error::from_raw_os_error(code);
    let Some(stage) = Stage::from_byte(msg[0]) else {
        return Error::Spawn(program.to_owned(), source);
    };
    match stage {
        Stage::Cgroup => {
            let path = match msg[1] {
                V2_PROCS => spec.cgroup_v2.as_ref().map(|d| d.join("cgroup.procs")),
                i => spec.cgroup_procs.get(i as usize).cloned(),
            };
            Error::Cgroup {
                path: path.map(|p| p.display().to_string()).unwrap_or_default(),
                source,
            }
        }
        Stage::Namespace => Error::Namespace {
            step: NS_STEPS.get(msg[1] as usize).copied().unwrap_or("setup"),
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
    fn only_directories_below_tmp_are_hidden_by_a_private_tmp() {
        for (cwd, hidden) in [
            ("/tmp/x", true),
            ("/tmp/x/y", true),
            ("//tmp//x", true),
            ("/tmp/./x", true),
            ("/tmp", false),
            ("/tmp/", false),
            ("/tmp/.", false),
            ("/tmpfoo/x", false),
            ("/var/tmp/x", false),
            ("/tmp/../home", false),
            ("/", false),
        ] {
            assert_eq!(hidden_by_private_tmp(Path::new(cwd)), hidden, "{cwd}");
        }
    }

    #[test]
    fn pid_isolation_brings_a_mount_namespace() {
        let f = namespace_flags(&[Isolation::Pid]);
        assert_eq!(f, (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64);
        assert_eq!(namespace_flags(&[]), 0);
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
        let child = start_with(spec, mode)?.wait_exec_blocking()?;
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
        let mut s = spec(&["cat", "/proc/self/cgroup"]);
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
}
