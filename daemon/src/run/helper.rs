//! Helper processes that clone a run's child from inside its cgroups (cgroup v1).
//!
//! cgroup v1 has no `CLONE_INTO_CGROUP`: a process enters a cgroup by a migration, which
//! costs ~0.3 ms per hierarchy and, after an idle spell, waits for an RCU grace period
//! (~15 ms here). A child forked by a process already inside the cgroups is born there. So
//! the daemon keeps helpers parked ahead of time, each in a prepared set of run cgroups
//! (`run/slots.rs`): the migrations happen when a helper is parked, never on a request's
//! path.
//!
//! A helper is this binary again (`cleanroomd --helper-fd FD --run-helper CGROUP.PROCS...`),
//! started with a socket on descriptor FD. It joins the cgroups, says it is ready, and waits for one
//! request: a [`spawn::Spec`] as JSON (length-prefixed). It clones the child with
//! `CLONE_PARENT` (the daemon is the child's parent, and reaps it), sends back the child's
//! pid and its pidfd, stdout, stderr and status pipe (`SCM_RIGHTS`), and exits. The child
//! waits until the helper is gone before anything else ([`spawn::Handoff`]), then resets the
//! cgroup's CPU and peak-memory accounting, so the run's task count and measures are its
//! own from the first step.
//!
//! Being a fresh process (exec'd, one thread), a helper clones without any of the care a
//! multithreaded daemon needs; it keeps the daemon's capabilities (root's exec grants the
//! bounding set, which the daemon limited to what it keeps).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use super::contain::CgroupView;
use super::spawn::{self, Handoff, Handover, Spec, Started};

/// Most bytes of a request (a spec: argv and env are bounded by the protocol's line).
const MAX_REQUEST: usize = 4 << 20;

/// What the daemon asks of a helper.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    spec: Spec,
    /// Accounting files the child resets once the helper is gone.
    reset: Vec<PathBuf>,
}

/// What a helper answers (with its descriptors when it started the child: pidfd, stdout,
/// stderr, status pipe, the end of the pipe its child waits on, and maybe the stage).
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started {
        pid: u32,
        entered: PathBuf,
        cgroup_views: Vec<CgroupView>,
        fs_ops: Vec<super::fsroom::Op>,
        /// A sixth descriptor: the clean room's stage, kept to collect from.
        #[serde(default)]
        stage: bool,
    },
    Failed {
        message: String,
        exit_code: Option<i32>,
    },
}

/// A helper parked in a run's cgroups, ready to clone its child.
#[derive(Debug)]
pub struct Helper {
    process: Child,
    sock: UnixStream,
}

impl Helper {
    /// Starts a helper that joins the cgroups of `procs` (their `cgroup.procs` files, real
    /// paths) and waits until it says it is ready. Blocking, and slow on purpose: the
    /// migrations happen here.
    pub fn park(procs: &[PathBuf]) -> io::Result<Helper> {
        let (ours, theirs) = UnixStream::pair()?;
        // The helper's end is inherited across the exec: close-on-exec is cleared on it
        // alone, just for the spawn (only one helper is parked at a time, and a run's
        // child marks every inherited descriptor close-on-exec before its exec). No
        // pre-exec hook: the spawn is then a cheap vfork-like posix_spawn instead of a
        // fork of the whole daemon.
        let fd = theirs.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--helper-fd")
            .arg(fd.to_string())
            .arg("--run-helper")
            .args(procs)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut process = cmd.spawn()?;
        drop(theirs);
        let mut helper_said = [0u8; 1];
        ours.set_read_timeout(Some(Duration::from_secs(10)))?;
        let ready = (&ours).read_exact(&mut helper_said);
        if ready.is_err() || helper_said != *b"R" {
            let _ = process.kill();
            let _ = process.wait();
            return Err(ready.err().unwrap_or_else(|| {
                io::Error::other("the run helper could not join the run's cgroups")
            }));
        }
        ours.set_read_timeout(None)?;
        Ok(Helper {
            process,
            sock: ours,
        })
    }

    /// Has the helper clone the child of `spec` (the child then resets `reset`). Blocking
    /// but bounded: the helper answers right after the clone, then exits; it is the
    /// caller's to reap ([`Exiting::reap`]), off the request's path.
    pub fn start(
        mut self,
        spec: &Spec,
        reset: Vec<PathBuf>,
    ) -> Result<(Started, Exiting), spawn::Error> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let io_err = |e: io::Error| spawn::Error::Spawn(program.clone(), e);
        let request = serde_json::to_vec(&Request {
            spec: spec.clone(),
            reset,
        })
        .map_err(|e| io_err(io::Error::other(e)))?;
        let exiting = Exiting {
            helper: self.process,
            gone: None,
        };
        if let Err(e) = write_frame(&mut self.sock, &request) {
            exiting.reap();
            return Err(spawn::Error::HelperGone(e));
        }
        let (reply, fds) = match recv_reply(&self.sock) {
            Ok(a) => a,
            Err(e) => {
                // It may have cloned the child before failing: that child is in the run's
                // cgroup, which the run's end empties.
                exiting.reap();
                return Err(io_err(e));
            }
        };
        match reply {
            Reply::Started {
                pid,
                entered,
                cgroup_views,
                fs_ops,
                stage,
            } => match split_fds(fds, stage) {
                Some(([pidfd, stdout, stderr, status, gone], stage)) => Ok((
                    Started::from_handover(
                        Handover {
                            pid,
                            fds: [pidfd, stdout, stderr, status],
                            entered,
                            cgroup_views,
                            fs_ops,
                            stage,
                        },
                        spec,
                    ),
                    Exiting {
                        helper: exiting.helper,
                        gone: Some(gone),
                    },
                )),
                None => {
                    exiting.reap();
                    Err(io_err(io::Error::other(
                        "the run helper sent the wrong descriptors",
                    )))
                }
            },
            Reply::Failed { message, exit_code } => {
                exiting.reap();
                Err(spawn::Error::Relayed { message, exit_code })
            }
        }
    }

    /// Ends a helper that will not be used (it is in a cgroup about to be removed).
    pub fn dismiss(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The five descriptors every started child comes with, and the stage when `stage` says
/// one follows; `None` for any other count.
fn split_fds(mut fds: Vec<OwnedFd>, stage: bool) -> Option<([OwnedFd; 5], Option<OwnedFd>)> {
    let stage = if stage { Some(fds.pop()?) } else { None };
    Some((<[OwnedFd; 5]>::try_from(fds).ok()?, stage))
}

/// A helper that has answered and is exiting, and the daemon's end of the pipe its
/// child waits on.
#[derive(Debug)]
pub struct Exiting {
    helper: Child,
    /// Closed once the helper is reaped: only then may the child go on (an exited helper
    /// counts against the run's `pids.max` until it is reaped).
    gone: Option<OwnedFd>,
}

impl Exiting {
    /// Waits for it (blocking, briefly: it exits right after answering), then lets its
    /// child go on.
    pub fn reap(mut self) {
        let _ = self.helper.wait();
        drop(self.gone.take());
    }
}

/// One write (the helper wakes once, with the whole request there).
fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)
}

fn read_frame(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REQUEST {
        return Err(io::Error::other(format!(
            "a frame of {len} bytes is too long"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// A reply and its descriptors: sent as one message (a small one), so the descriptors come
/// with its first bytes.
fn recv_reply(sock: &UnixStream) -> io::Result<(Reply, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 6]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors in this process for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if n < 4 {
        return Err(io::Error::other("the run helper ended without answering"));
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len + 4 != n {
        return Err(io::Error::other("the run helper's answer came in pieces"));
    }
    let reply = serde_json::from_slice(&buf[4..n]).map_err(io::Error::other)?;
    Ok((reply, fds))
}

fn send_reply(sock: &UnixStream, reply: &Reply, fds: &[RawFd]) -> io::Result<()> {
    let payload = serde_json::to_vec(reply).map_err(io::Error::other)?;
    let mut msg = (payload.len() as u32).to_le_bytes().to_vec();
    msg.extend_from_slice(&payload);
    let iov = [IoSlice::new(&msg)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    if sent != msg.len() {
        return Err(io::Error::other("the answer was cut short"));
    }
    Ok(())
}

/// The helper's side: `cleanroomd --helper-fd FD --run-helper CGROUP.PROCS...`.
pub fn serve(fd: RawFd, procs: &[PathBuf]) -> ExitCode {
    // SAFETY: the daemon left the helper's socket on this descriptor, for us alone.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // Nothing this process starts may inherit it.
    // SAFETY: fcntl on the descriptor just taken.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    match serve_on(&sock, procs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let failed = Reply::Failed {
                message: e.to_string(),
                exit_code: None,
            };
            let _ = send_reply(&sock, &failed, &[]);
            ExitCode::FAILURE
        }
    }
}

fn serve_on(sock: &UnixStream, procs: &[PathBuf]) -> io::Result<()> {
    for p in procs {
        join(p)?;
    }
    (&*sock).write_all(b"R")?;
    let request = match read_frame(&mut &*sock) {
        Ok(r) => r,
        // The daemon went away, or dismissed us.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        Err(e) => return Err(e),
    };
    let request: Request = serde_json::from_slice(&request).map_err(io::Error::other)?;
    let (gone_r, gone_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let handoff = Handoff {
        to_parent: true,
        gone: Some((gone_r.as_raw_fd(), gone_w.as_raw_fd())),
        reset: request.reset,
    };
    match spawn::start_handoff(&request.spec, &handoff).and_then(Started::into_handover) {
        Ok(h) => {
            let reply = Reply::Started {
                pid: h.pid,
                entered: h.entered.clone(),
                cgroup_views: h.cgroup_views.clone(),
                fs_ops: h.fs_ops.clone(),
                stage: h.stage.is_some(),
            };
            let mut fds: Vec<RawFd> = h.fds.iter().map(|f| f.as_fd().as_raw_fd()).collect();
            // The daemon holds `gone` open until it has reaped this helper: an exited
            // helper still counts against the run's task limit until it is reaped, and
            // the child waits for the end of `gone` before it starts.
            fds.push(gone_w.as_raw_fd());
            fds.extend(h.stage.as_ref().map(|f| f.as_fd().as_raw_fd()));
            send_reply(sock, &reply, &fds)?;
        }
        Err(e) => {
            let reply = Reply::Failed {
                message: e.to_string(),
                exit_code: e.exit_code(),
            };
            send_reply(sock, &reply, &[])?;
        }
    }
    // Exiting closes the write end of `gone`: the child goes on.
    drop(gone_w);
    Ok(())
}

/// Moves this process into the cgroup whose `cgroup.procs` is `path`.
fn join(path: &Path) -> io::Result<()> {
    std::fs::write(path, "0")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot join {}: {e}", path.display())))
}
