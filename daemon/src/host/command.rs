//! Programs of the host: the boot loader's generators (`update-grub`, `grub-mkconfig`,
//! `grubby`, `kernel-install`), which turn configuration files into what the boot loader
//! reads.
//!
//! Each runs from its absolute path with its arguments as given (never through a shell),
//! with a clean environment (`PATH` and `LC_ALL=C` only), standard input from `/dev/null`,
//! in a process group of its own that is killed whole when it overruns its time. Below a
//! host root other than `/` it runs chrooted there, so it reads and writes that root's
//! `/etc` and `/boot`, never the machine's (that needs `CAP_SYS_CHROOT`, which the daemon
//! keeps only when started with such a root: `crate::privileges`).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{Error, Host};

/// The only environment a program gets, beside `LC_ALL=C`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of a program's output is kept (its end), for errors.
const KEPT: usize = 2048;

impl Host {
    /// Runs the host's program `program` (an absolute path below the root) with `args`,
    /// for at most `timeout`; its output (standard output and error together) on success.
    /// A failure to start, a non-zero exit and an overrun are errors naming the command
    /// and showing the end of its output.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<String, Error> {
        let shown = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let fail = |detail: String| Error::Command {
            program: shown.clone(),
            detail,
        };
        #[cfg(test)]
        if let Some(commands) = &self.commands {
            return commands.record(&shown).map_err(fail);
        }
        let below = self.path(program)?;
        if !below.is_file() {
            return Err(fail(format!("no such program: {}", below.display())));
        }
        let (mut child, output) = self.spawn(program, args).map_err(|e| fail(e.to_string()))?;
        let (status, out) = wait(&mut child, &output, timeout).map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8_lossy(&out).into_owned();
        match status {
            Some(s) if s.success() => Ok(text),
            Some(s) => Err(fail(format!("{s}; output: {}", tail(&text)))),
            None => Err(fail(format!(
                "did not finish within {} s: killed with its process group; output: {}",
                timeout.as_secs(),
                tail(&text)
            ))),
        }
    }

    /// Starts the program with its output on one non-blocking pipe.
    fn spawn(&self, program: &str, args: &[&str]) -> std::io::Result<(Child, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write))
            .process_group(0);
        if self.root() == Path::new("/") {
            cmd.current_dir("/");
        } else {
            let root = CString::new(self.root().as_os_str().as_bytes())?;
            // SAFETY: between fork and exec only chroot(2) and chdir(2) run, both
            // async-signal-safe, on a string made before the fork; nothing allocates.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn()?;
        // The write ends went with `cmd`: the pipe ends when the program's processes close it.
        drop(cmd);
        Ok((child, read))
    }
}

/// Waits for the child until `timeout`, reading its output meanwhile (a full pipe would
/// stop it). On overrun its process group is killed and the exit status is `None`.
fn wait(
    child: &mut Child,
    output: &OwnedFd,
    timeout: Duration,
) -> std::io::Result<(Option<ExitStatus>, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut ended = false;
    loop {
        let status = child.try_wait()?;
        ended |= drain(output, &mut out);
        if let Some(s) = status {
            return Ok((Some(s), out));
        }
        if Instant::now() >= deadline {
            let pid = child.id() as i32;
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            child.wait()?;
            drain(output, &mut out);
            return Ok((None, out));
        }
        if ended {
            // Output closed, process still running: nothing to wake on but time.
            std::thread::sleep(Duration::from_millis(20));
        } else {
            let mut fds = [PollFd::new(output.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(50u16)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Reads what the pipe holds now into `out` (keeping its last bytes only); true at its end.
fn drain(fd: &OwnedFd, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 4 * KEPT {
                    out.drain(..out.len() - KEPT);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// The end of a program's output, on one line.
fn tail(text: &str) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = one.chars().count();
    if n > KEPT / 4 {
        let skip = n - KEPT / 4;
        format!("...{}", one.chars().skip(skip).collect::<String>())
    } else if one.is_empty() {
        "(none)".into()
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Result<String, Error> {
        Host::new("/").run("/bin/sh", &["-c", script], timeout)
    }

    #[test]
    fn a_program_gets_a_clean_environment_and_its_output_is_returned() {
        // SAFETY: no other thread of this test reads the environment meanwhile; the
        // variable is the test's own.
        unsafe { std::env::set_var("CLEANROOM_TEST_SECRET", "leaked") };
        let out = sh(
            "echo \"path=$PATH secret=${CLEANROOM_TEST_SECRET:-none} cwd=$(pwd)\"; echo err >&2",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(
            out,
            format!("path={PATH} secret=none cwd=/\nerr\n"),
            "only PATH and LC_ALL, in /, stderr too"
        );
    }

    #[test]
    fn arguments_never_pass_through_a_shell() {
        let out = Host::new("/")
            .run(
                "/bin/echo",
                &["a b", "$(id)", "; true"],
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(out, "a b $(id) ; true\n");
    }

    #[test]
    fn a_failure_names_the_command_its_status_and_output() {
        let e = sh("echo broken config >&2; exit 3", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/bin/sh -c") && e.contains("exit status: 3") && e.contains("broken config"),
            "{e}"
        );
        let e = Host::new("/")
            .run("/nonexistent/update-grub", &[], Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such program"), "{e}");
    }

    /// An overrun kills the whole process group: the program and what it started.
    #[test]
    fn an_overrun_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let e = sh(&script, Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish within"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was killed: gone, or a zombie until its new parent reaps it (a
        // SIGKILL takes effect when the task next runs, so it is waited for).
        let dead = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            matches!(state, None | Some("Z" | "X"))
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !dead() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dead(), "sleep {pid} still runs");
    }

    #[test]
    fn below_another_root_the_program_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let e = Host::new(dir.path())
            .run("/usr/sbin/update-grub", &[], Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{}/usr/sbin/update-grub", dir.path().display())),
            "{e}"
        );
    }
}
