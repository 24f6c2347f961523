//! Test support for cleanroom's end-to-end tests and benchmarks: start the real
//! `cleanroomd` on a private socket and state directory, wait for its READY, drive it with
//! the real `cleanroomctl` or a raw socket, and stop it — even when a test fails.
//!
//! The binaries are found next to the test executable (`target/<profile>/`), or in
//! `CLEANROOM_BIN_DIR`. `cargo test` does not build another package's binaries, so the test
//! command builds them first (`scripts/test`).
//!
//! Tests that change host-wide state (kernel knobs, IRQ affinities, the CPU shield) hold
//! [`host_lock`] while they do, so they never overlap, whether they are in one test binary
//! or in several running at once.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

/// Path of a workspace binary (`cleanroomd`, `cleanroomctl`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CLEANROOM_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let mut dir = exe.parent().expect("exe dir").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins), \
         or set CLEANROOM_BIN_DIR",
        path.display()
    );
    path
}

/// Whether this process is root; prints why a test skips when it is not.
pub fn is_root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping {test}: needs root (CI runs as root)");
    }
    root
}

/// The file every test binary locks before it changes host-wide state: in /run/lock,
/// else /tmp. Not `/tmp/cleanroom-test.lock`: the package tests hold that one for minutes.
const HOST_LOCK_FILE: &str = "cleanroom-host-tests.lock";

fn host_lock_path() -> PathBuf {
    let run_lock = Path::new("/run/lock");
    let dir = if run_lock.is_dir() {
        run_lock
    } else {
        Path::new("/tmp")
    };
    dir.join(HOST_LOCK_FILE)
}

/// Held by a test while it changes host-wide state (kernel knobs, IRQ affinities, the CPU
/// shield) or needs the host left alone: no other holder runs meanwhile, neither in this
/// test binary nor in another one running at the same time (nextest, two `cargo test`
/// runs). Released when dropped, also when the test panics.
#[derive(Debug)]
pub struct HostLock {
    // Field order is drop order: the file lock goes before the in-process one.
    _across_processes: Flock<std::fs::File>,
    _in_process: MutexGuard<'static, ()>,
}

/// Takes the host lock: a mutex against the other tests of this binary, then an `flock` on
/// one file against other test binaries. Says on stderr when it has to wait for another
/// binary.
pub fn host_lock() -> HostLock {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    lock_host(&IN_PROCESS, &host_lock_path())
}

fn lock_host(in_process: &'static Mutex<()>, path: &Path) -> HostLock {
    // A test that panicked while holding it has put the host back on the way out (its
    // snapshots and guards drop before the lock does); the lock is usable again.
    let in_process = in_process.lock().unwrap_or_else(|p| p.into_inner());
    // Opened without O_CREAT when it exists: in a sticky directory that would fail on a
    // file someone else created (fs.protected_regular). flock needs no write access.
    let file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
        other => other,
    }
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((file, Errno::EWOULDBLOCK)) => {
            eprintln!(
                "waiting for {}: another test binary is changing host-wide state",
                path.display()
            );
            flock_waiting(file, path)
        }
        Err((_, e)) => panic!("flock {}: {e}", path.display()),
    };
    HostLock {
        _across_processes: locked,
        _in_process: in_process,
    }
}

/// An exclusive flock on `file`, waiting as long as it takes.
fn flock_waiting(mut file: std::fs::File, path: &Path) -> Flock<std::fs::File> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(locked) => return locked,
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => panic!("flock {}: {e}", path.display()),
        }
    }
}

/// How to start a daemon.
#[derive(Debug, Default)]
pub struct DaemonBuilder {
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    world_traversable: bool,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl DaemonBuilder {
    /// Writes `text` as the config file and passes `--config`.
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_owned());
        self
    }

    /// Serves this socket path instead of one in the temporary directory.
    pub fn socket(mut self, path: &Path) -> Self {
        self.socket = Some(path.to_owned());
        self
    }

    /// Keeps state in this directory instead of one in the temporary directory (for
    /// restarts on the same state).
    pub fn state_dir(mut self, path: &Path) -> Self {
        self.state_dir = Some(path.to_owned());
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Makes the temporary directory traversable by every user (for tests that connect
    /// as another user).
    pub fn world_traversable(mut self) -> Self {
        self.world_traversable = true;
        self
    }

    /// Starts the daemon and waits for READY=1. Panics with the daemon's log if it exits
    /// or stays silent.
    pub fn start(self) -> Daemon {
        match self.try_start() {
            Ok(d) => d,
            Err((status, log)) => panic!("cleanroomd did not become ready ({status}):\n{log}"),
        }
    }

    /// Starts the daemon; on failure returns its exit status (or why it was killed) and
    /// its log.
    pub fn try_start(self) -> Result<Daemon, (String, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        if self.world_traversable {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod tempdir");
        }
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| dir.path().join("cleanroomd.sock"));
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let log_path = dir.path().join("cleanroomd.log");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut cmd = Command::new(bin("cleanroomd"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir);
        if let Some(text) = &self.config {
            let path = dir.path().join("cleanroomd.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        } else {
            // Never read the host's /etc/cleanroom/cleanroomd.toml in tests.
            let path = dir.path().join("empty.toml");
            std::fs::write(&path, "").expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.args)
            .env_remove("CLEANROOM_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log file"));
        let child = cmd.spawn().expect("spawn cleanroomd");
        let mut daemon = Daemon {
            child,
            socket,
            state_dir,
            log_path,
            notify,
            notifications: Vec::new(),
            dir,
        };
        match daemon.wait_notification("READY=1", Duration::from_secs(10)) {
            Ok(()) => Ok(daemon),
            Err(why) => {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                Err((why, daemon.log()))
            }
        }
    }
}

/// A running `cleanroomd`, killed and reaped on drop.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    log_path: PathBuf,
    notify: UnixDatagram,
    /// Every datagram received on NOTIFY_SOCKET so far.
    pub notifications: Vec<String>,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// A builder with defaults (empty config file, private socket and state dir).
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// Starts a daemon with defaults.
    pub fn start() -> Daemon {
        Self::builder().start()
    }

    /// The temporary directory holding socket, state and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until a NOTIFY_SOCKET datagram contains `needle` (or one already did).
    pub fn wait_notification(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        if self.notifications.iter().any(|n| n.contains(needle)) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let hit = msg.contains(needle);
                    self.notifications.push(msg);
                    if hit {
                        return Ok(());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("notify socket: {e}")),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} before {needle}"));
            }
        }
        Err(format!("no {needle} within {timeout:?}"))
    }

    /// Runs `cleanroomctl --socket <ours> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("cleanroomctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("CLEANROOM_SOCKET")
            .output()
            .expect("run cleanroomctl")
    }

    /// Runs `cleanroomctl` through `setpriv` with the given setpriv options (as another
    /// user). Needs root.
    ///
    /// It runs in `/`: the other user may not be able to enter this test's working
    /// directory (a checkout under `/root`), and a run starts in the client's unless it
    /// passes `--cwd`. (setpriv drops root's capabilities only when it executes the
    /// binary, so the binary itself is found wherever the checkout is.)
    pub fn ctl_as(&self, setpriv: &[&str], args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(setpriv)
            .arg(bin("cleanroomctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("CLEANROOM_SOCKET")
            .current_dir("/")
            .output()
            .expect("run setpriv cleanroomctl")
    }

    /// A raw line-oriented connection.
    pub fn connect(&self) -> RawClient {
        RawClient::connect(&self.socket)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: the daemon ends its runs and removes their cgroups, so a test
        // leaves nothing behind; SIGKILL only if it does not stop.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A raw connection speaking newline-delimited JSON.
#[derive(Debug)]
pub struct RawClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl RawClient {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Self {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        }
    }

    /// Connects to `socket` as effective uid `uid` with supplementary groups `groups` (what
    /// the daemon reads as the peer's), from a thread of its own that changes only its own
    /// credentials: the raw system calls, not glibc's wrappers, which would change every
    /// thread's. Needs root.
    pub fn connect_as(socket: &Path, uid: u32, groups: &[u32]) -> Self {
        let socket = socket.to_owned();
        let groups: Vec<nix::libc::gid_t> = groups.to_vec();
        std::thread::spawn(move || {
            use nix::libc::{SYS_setgroups, SYS_setresuid, c_long, syscall};
            let keep = -1 as c_long;
            // SAFETY: setgroups and setresuid on this thread alone, with a live buffer of
            // `groups.len()` ids; the thread ends right after the connect.
            let rc = unsafe { syscall(SYS_setgroups, groups.len() as c_long, groups.as_ptr()) };
            assert_eq!(rc, 0, "setgroups: {}", std::io::Error::last_os_error());
            // SAFETY: as above.
            let rc = unsafe { syscall(SYS_setresuid, keep, uid as c_long, keep) };
            assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            Self::connect(&socket)
        })
        .join()
        .expect("connecting thread")
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one line as JSON; `None` at end of stream.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad line from daemon {line:?}: {e}")),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read from daemon: {e}"),
        }
    }

    /// Sends one request and returns its response object: the answer to it, or the error
    /// line (id null) of a connection the daemon refused.
    ///
    /// A refused connection gets its error line and is closed before the daemon reads
    /// anything, so sending may fail with EPIPE while that line waits unread; it is still
    /// the answer.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = self.send_raw(format!("{line}\n").as_bytes()) {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "send request: {e}"
            );
            let said = self
                .recv()
                .unwrap_or_else(|| panic!("send request: {e}; the daemon closed without a word"));
            assert!(
                said["id"].is_null() && said.get("error").is_some(),
                "{said}"
            );
            return said;
        }
        let resp = self.recv().expect("response");
        let refused = resp["id"].is_null() && resp.get("error").is_some();
        assert!(resp["id"] == json!(id) || refused, "{resp}");
        resp
    }

    /// Waits until the daemon has closed its end (POLLHUP), without reading anything;
    /// panics after `timeout`.
    pub fn wait_closed_by_daemon(&self, timeout: Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(self.writer.as_fd(), PollFlags::empty())];
            let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) if fds[0].any() == Some(true) => {
                    let seen = fds[0].revents().unwrap_or(PollFlags::empty());
                    if seen.contains(PollFlags::POLLHUP) {
                        return;
                    }
                    panic!("unexpected poll events {seen:?}");
                }
                Ok(_) => panic!("the daemon kept the connection open for {timeout:?}"),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("poll: {e}"),
            }
        }
    }

    /// The underlying stream (for shutdown, timeouts).
    pub fn stream(&self) -> &UnixStream {
        &self.writer
    }
}

/// The values of some kernel files, put back when dropped (also when a test panics).
#[derive(Debug)]
pub struct KernelSnapshot {
    values: Vec<(PathBuf, String)>,
}

impl KernelSnapshot {
    /// Reads every file now.
    pub fn take(paths: &[&str]) -> Self {
        let values = paths
            .iter()
            .map(|p| {
                let v = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {p}: {e}"));
                (PathBuf::from(p), v)
            })
            .collect();
        Self { values }
    }

    /// The current contents of the same files.
    pub fn current(&self) -> Vec<(PathBuf, String)> {
        self.values
            .iter()
            .map(|(p, _)| (p.clone(), std::fs::read_to_string(p).unwrap_or_default()))
            .collect()
    }

    /// The contents when the snapshot was taken.
    pub fn taken(&self) -> &[(PathBuf, String)] {
        &self.values
    }

    /// Puts every value back.
    pub fn restore(&self) {
        for (path, raw) in &self.values {
            let value = restorable(raw);
            if std::fs::read_to_string(path)
                .ok()
                .map(|c| restorable(&c))
                .as_ref()
                == Some(&value)
            {
                continue;
            }
            if let Err(e) = std::fs::write(path, &value) {
                eprintln!("cannot restore {} to {value:?}: {e}", path.display());
            }
        }
    }
}

/// What to write to get a file's content back: the bracketed option of a selector file,
/// else the content.
fn restorable(raw: &str) -> String {
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_owned)
        .unwrap_or_else(|| raw.trim().to_owned())
}

impl Drop for KernelSnapshot {
    fn drop(&mut self) {
        self.restore();
    }
}

/// A loop device over a small temporary file, detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    /// `loopN`.
    pub name: String,
    _file: tempfile::NamedTempFile,
}

impl LoopDevice {
    /// Attaches a new loop device (needs root).
    pub fn attach() -> Self {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(8 << 20).expect("size");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap();
        let name = dev.trim().trim_start_matches("/dev/").to_owned();
        Self { name, _file: file }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(format!("/dev/{}", self.name))
            .status();
    }
}

/// Processes a test started (and pids of their children), killed when it ends, even by a
/// panic.
#[derive(Debug, Default)]
pub struct Procs {
    /// Processes started with [`Procs::spawn`].
    pub children: Vec<std::process::Child>,
    /// Other processes to kill (children of those).
    pub pids: Vec<i32>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Starts `cmd`; its pid.
    pub fn spawn(&mut self, cmd: &mut std::process::Command) -> i32 {
        let child = cmd.spawn().expect("spawn");
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }
}

/// Helpers for tests of runs: starting them on a raw connection, reading their
/// notifications, and looking at processes and CPUs.
pub mod runs {
    use std::process::Output;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use crate::RawClient;

    /// The JSON object `cleanroomctl --json` printed (panics with both streams if not).
    pub fn json_of(out: &Output) -> Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Processes whose command line contains `marker`.
    pub fn alive(marker: &str) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if e.file_name().to_string_lossy().parse::<u32>().is_err() {
                continue;
            }
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(marker) {
                    found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
                }
            }
        }
        found
    }

    /// Sends `run.start` with `params` as request `id`, without waiting for anything.
    pub fn start_run_as(c: &mut RawClient, id: u64, params: Value) {
        let line = json!({"jsonrpc": "2.0", "id": id, "method": "run.start", "params": params});
        c.send_raw(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Sends `run.start` with `params` as request 1, without waiting for anything.
    pub fn start_run(c: &mut RawClient, params: Value) {
        start_run_as(c, 1, params);
    }

    /// The next `run.output` notification or answer (skipping `run.started` and
    /// `run.progress`).
    pub fn next_output(c: &mut RawClient) -> Value {
        loop {
            let m = c.recv().expect("a notification");
            if m["method"] == "run.output" || m.get("id").is_some() {
                return m;
            }
        }
    }

    /// The answer to the request in flight (skipping notifications).
    pub fn answer(c: &mut RawClient) -> Value {
        loop {
            let m = c.recv().expect("an answer");
            if m.get("id").is_some() {
                return m;
            }
        }
    }

    /// The run cgroups `d` has prepared ahead (cgroup v1: `ready-<id>` in every hierarchy),
    /// each counted once.
    fn prepared(d: &crate::Daemon) -> usize {
        let mut names: Vec<String> = json_of(&d.ctl(&["--json", "status"]))["run_cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|base| {
                std::fs::read_dir(base.as_str().unwrap())
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("ready-"))
            .collect();
        names.sort();
        names.dedup();
        names.len()
    }

    /// Whether `d` has a prepared run cgroup ready to take, its helper parked inside. Its
    /// directories exist before the helper has joined them, but the pool is filled one
    /// after another: once a second is being made, the first is in the pool.
    pub fn slot_ready(d: &crate::Daemon) -> bool {
        prepared(d) >= 2
    }

    /// Waits up to `limit` for `cond`.
    pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    /// `Cpus_allowed_list` of a task's status file (`self`, `thread-self` or a pid).
    pub fn cpus_of(task: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{task}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// This thread's CPUs.
    pub fn my_cpus() -> String {
        cpus_of("thread-self")
    }

    /// The online CPUs, as the kernel lists them.
    pub fn online_cpus() -> String {
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap()
            .trim()
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether another process could take the lock on `path` now (`flock -n`).
    fn free_for_another_process(path: &Path) -> bool {
        let status = Command::new("flock")
            .arg("-n")
            .arg(path)
            .arg("true")
            .status()
            .expect("run flock (util-linux)");
        match status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("flock -n {}: {status}", path.display()),
        }
    }

    #[test]
    fn the_host_lock_keeps_other_processes_out_until_dropped() {
        static IN_PROCESS: Mutex<()> = Mutex::new(());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_LOCK_FILE);
        let held = lock_host(&IN_PROCESS, &path);
        assert!(IN_PROCESS.try_lock().is_err(), "other threads wait too");
        assert!(!free_for_another_process(&path));
        drop(held);
        assert!(free_for_another_process(&path));
        // Taken again on the file that exists now.
        let _again = lock_host(&IN_PROCESS, &path);
        assert!(!free_for_another_process(&path));
    }
}
