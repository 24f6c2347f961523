//! Starting a run's process: in its cgroup before it executes anything, as the caller, with
//! nothing inherited.
//!
//! The order in the child (between fork and exec; only async-signal-safe calls) matters:
//! 1. enter the run's cgroup in every hierarchy (writing `0` to `cgroup.procs` moves the
//!    writer), so the program's very first instruction is accounted and limited and no
//!    fork can escape;
//! 2. a new session (no controlling terminal, its own process group);
//! 3. `personality(ADDR_NO_RANDOMIZE)` for deterministic runs; namespaces asked for
//!    (`unshare`, still root): a private `/tmp` in a mount namespace, `lo` up in a network
//!    namespace, hostname `cleanroom` in a UTS namespace;
//! 4. SCHED_FIFO for realtime runs, then drop the capability bounding set while still
//!    root (needs CAP_SYS_NICE and CAP_SETPCAP);
//! 5. `NO_NEW_PRIVS`, then the caller's groups, gid and uid (setres*: all three ids);
//! 6. clear every remaining capability and the ambient set (a root caller keeps none);
//! 7. `chdir` as the caller, so the caller's own permissions decide;
//! 8. mark every inherited descriptor above 2 close-on-exec.
//!
//! A failure before exec is reported on a separate status pipe so the parent can tell "the
//! working directory is not accessible" from "command not found" (127) and "not
//! executable" (126).

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory (entered as the caller).
    pub cwd: PathBuf,
    /// The whole environment.
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
    pub isolate: Vec<cleanroom_proto::Isolation>,
    /// SCHED_FIFO priority 1.
    pub realtime: bool,
    /// `cgroup.procs` files (real paths) to enter before exec.
    pub cgroup_procs: Vec<PathBuf>,
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
    /// Placing the process in its cgroup failed.
    #[error("cannot place the run in its cgroup {path}: {source}")]
    Cgroup {
        /// The `cgroup.procs` file.
        path: String,
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

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Starts the process described by `spec`. Stdout and stderr are pipes; stdin is null.
pub fn spawn(spec: &Spec) -> Result<Child, Error> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let spawn_err = |e: io::Error| Error::Spawn(program.clone(), e);
    let (status_r, status_w) = pipe().map_err(spawn_err)?;
    let procs: Vec<CString> = spec
        .cgroup_procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| spawn_err(io::Error::other(e)))?;
    let cwd = CString::new(spec.cwd.as_os_str().as_encoded_bytes())
        .map_err(|e| spawn_err(io::Error::other(e)))?;
    let groups: Vec<libc::gid_t> = spec.groups.clone();
    let (uid, gid, deterministic, realtime) =
        (spec.uid, spec.gid, spec.deterministic, spec.realtime);
    let mut ns_flags = 0;
    for i in &spec.isolate {
        ns_flags |= match i {
            cleanroom_proto::Isolation::Net => libc::CLONE_NEWNET,
            cleanroom_proto::Isolation::Mount => libc::CLONE_NEWNS,
            cleanroom_proto::Isolation::Uts => libc::CLONE_NEWUTS,
            cleanroom_proto::Isolation::Ipc => libc::CLONE_NEWIPC,
        };
    }
    let status_w_fd = status_w.as_raw_fd();

    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls on values prepared before the fork (no allocation,
    // no locks). Each step's reason is in the module documentation.
    unsafe {
        cmd.pre_exec(move || {
            let fail = |stage: u8| -> io::Error {
                let err = io::Error::last_os_error();
                let code = err.raw_os_error().unwrap_or(0);
                let mut msg = [0u8; 5];
                msg[0] = stage;
                msg[1..].copy_from_slice(&code.to_ne_bytes());
                libc::write(status_w_fd, msg.as_ptr().cast(), msg.len());
                err
            };
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(fail(b'g'));
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(fail(b'g'));
                }
            }
            if libc::setsid() < 0 {
                return Err(fail(b's'));
            }
            if deterministic && libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) < 0 {
                return Err(fail(b'p'));
            }
            if ns_flags != 0 {
                if libc::unshare(ns_flags) < 0 {
                    return Err(fail(b'i'));
                }
                if ns_flags & libc::CLONE_NEWNS != 0 {
                    // Nothing mounted here propagates to the host, then /tmp of its own.
                    let (root, tmp, tmpfs, opts) = (c"/", c"/tmp", c"tmpfs", c"mode=1777");
                    if libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) < 0
                        || libc::mount(
                            tmpfs.as_ptr(),
                            tmp.as_ptr(),
                            tmpfs.as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV,
                            opts.as_ptr().cast(),
                        ) < 0
                    {
                        return Err(fail(b'i'));
                    }
                }
                if ns_flags & libc::CLONE_NEWUTS != 0 {
                    let name = b"cleanroom";
                    if libc::sethostname(name.as_ptr().cast(), name.len()) < 0 {
                        return Err(fail(b'i'));
                    }
                }
                if ns_flags & libc::CLONE_NEWNET != 0 && !loopback_up() {
                    return Err(fail(b'i'));
                }
            }
            if realtime {
                // While still privileged (CAP_SYS_NICE); the policy survives setuid and exec.
                let param = libc::sched_param { sched_priority: 1 };
                if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) < 0 {
                    return Err(fail(b'r'));
                }
            }
            for cap in 0..64 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(fail(b'n'));
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(fail(b'u'));
            }
            if libc::setresgid(gid, gid, gid) < 0 || libc::setresuid(uid, uid, uid) < 0 {
                return Err(fail(b'u'));
            }
            // Until exec (which resets it) the caller must not be able to ptrace this
            // process: it still holds the daemon's memory and descriptors.
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            // A root caller keeps root's uid, not its capabilities.
            let mut header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this thread
            let data = [0u32; 6];
            if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) < 0 {
                return Err(fail(b'c'));
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            if libc::chdir(cwd.as_ptr()) < 0 {
                return Err(fail(b'd'));
            }
            // close_range(3, ~0, CLOSE_RANGE_CLOEXEC): every other inherited fd closes at
            // exec. Kernels before 5.11 lack the flag: mark them one by one instead.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32) < 0 {
                let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as libc::c_int;
                for fd in 3..max {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(status_w);
    match spawned {
        Ok(c) => Ok(c),
        Err(e) => Err(classify(&program, spec, status_r, e)),
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

fn classify(program: &str, spec: &Spec, status_r: OwnedFd, e: io::Error) -> Error {
    let mut msg = [0u8; 5];
    let mut f = std::fs::File::from(status_r);
    let n = f.read(&mut msg).unwrap_or(0);
    if n == 5 {
        let code = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let source = io::Error::from_raw_os_error(code);
        return match msg[0] {
            b'g' => Error::Cgroup {
                path: spec
                    .cgroup_procs
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source,
            },
            b'i' => Error::Spawn(format!("{program} (namespaces)"), source),
            b'd' => Error::Cwd {
                cwd: spec.cwd.display().to_string(),
                uid: spec.uid,
                source,
            },
            _ => Error::Spawn(program.to_owned(), source),
        };
    }
    match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotFound(program.to_owned()),
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => {
            Error::NotExecutable(program.to_owned(), e)
        }
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
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value the kernel overwrites.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to a local int and a local rusage.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Exit {
        code,
        signal,
        voluntary: ru.ru_nvcsw as u64,
        involuntary: ru.ru_nivcsw as u64,
        max_rss_kb: ru.ru_maxrss as u64,
    })
}
