//! Helpers shared by the unit tests of this crate (compiled for tests only).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::store::Store;

/// Whether this process is root; prints why `test` skips when it is not. Every unit test
/// that needs root starts with it.
pub(crate) fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping {test}: needs root (CI runs as root)");
    }
    root
}

/// A temporary directory for fake host roots and stores that many test cases make and
/// drop: on tmpfs (`/dev/shm`) where there is one, so the store's `synchronous=FULL`
/// commits do not wait for a disk. The crashes these tests simulate are of the process,
/// not of the machine, so what reaches the disk is the same either way.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.expect("temporary directory")
}

/// Faults injected into a fake host ([`crate::host::Host::with_faults`]) and its store
/// ([`until_crash`]), to test crash safety step by step. A step is a change to a kernel
/// file or directory, or a commit of the state database, in the order the operation makes
/// them.
///
/// A death before step N is what a SIGKILL at that point leaves on disk: steps 0 to N-1
/// made, step N and everything after it not. The operation is stopped by unwinding from
/// the kernel change it was about to make (with `resume_unwind`, which prints nothing);
/// the destructors that unwinding runs on these paths roll back open SQLite transactions,
/// which is what a killed process's uncommitted transaction amounts to. A commit cannot
/// unwind (SQLite calls back through C), so a death there vetoes the commit (SQLite rolls
/// it back) and the operation carries on without a future: from then on every kernel
/// change unwinds and every commit is vetoed, so nothing else it does reaches the disk.
///
/// There is no half-written kernel file to simulate: a write(2) to a kernel file is
/// handled whole by the kernel, and a SIGKILL takes effect only when it returns.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// The daemon dies before this step.
    crash_at: Option<usize>,
    /// The kernel refuses this change (counted among kernel changes only).
    refuse_at: Option<usize>,
    /// Steps made so far.
    steps: AtomicUsize,
    /// Kernel changes asked for so far.
    changes: AtomicUsize,
    /// The daemon has died.
    dead: AtomicBool,
}

/// What goes wrong during one operation of a property test.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Nothing.
    None,
    /// The daemon dies before this step (kernel change or journal commit).
    Crash(usize),
    /// The kernel refuses this change.
    Refuse(usize),
}

impl Fault {
    /// The faults to run the operation with.
    pub(crate) fn faults(self) -> Arc<Faults> {
        match self {
            Fault::None => Faults::none(),
            Fault::Crash(step) => Faults::crash_before(step),
            Fault::Refuse(change) => Faults::refuse(change),
        }
    }

    /// Mostly a crash, often nothing, sometimes a refusal: crashes before one of the first
    /// `steps` steps (points past an operation's end let it finish), refusals of one of the
    /// first `changes` kernel changes.
    pub(crate) fn strategy(
        steps: usize,
        changes: usize,
    ) -> impl proptest::strategy::Strategy<Value = Fault> + Clone {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Fault::None),
            4 => (0..steps).prop_map(Fault::Crash),
            2 => (0..changes).prop_map(Fault::Refuse),
        ]
    }
}

/// What a tuning operation needs, on a fake host root: the root holding `files`, a store,
/// and profiles (name, TOML text) loaded under the default sysctl allowlist.
pub(crate) struct Tuning {
    pub(crate) _root: tempfile::TempDir,
    pub(crate) host: crate::host::Host,
    pub(crate) _state: tempfile::TempDir,
    pub(crate) store: Store,
    pub(crate) _profiles: tempfile::TempDir,
    pub(crate) profiles: crate::tune::profile::ProfileSet,
    pub(crate) allow: Vec<String>,
    pub(crate) pins: Arc<crate::pin::Pinner>,
}

impl Tuning {
    /// The fake host, a fresh store, the profiles.
    pub(crate) fn new(files: &[(&str, &str)], profiles: &[(&str, &str)]) -> Self {
        let (root, host) = crate::host::fake_root(files);
        let state = scratch_dir();
        let store = Store::open(state.path()).expect("store");
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in profiles {
            std::fs::write(dir.path().join(format!("{name}.toml")), text).expect("profile");
        }
        let allow: Vec<String> = crate::host::sysctl::DEFAULT_ALLOW
            .iter()
            .map(|s| s.to_string())
            .collect();
        let profiles = crate::tune::profile::ProfileSet::load(&[dir.path().to_owned()], &allow);
        Self {
            _root: root,
            host,
            _state: state,
            store,
            _profiles: dir,
            profiles,
            allow,
            pins: Arc::new(crate::pin::Pinner::new()),
        }
    }

    /// The context of a tuning operation on it.
    pub(crate) fn ctx(&self) -> crate::tune::Ctx<'_> {
        crate::tune::Ctx {
            host: &self.host,
            store: &self.store,
            profiles: &self.profiles,
            allow: &self.allow,
            pins: &self.pins,
            runner: None,
        }
    }
}

/// The programs a fake host would have run ([`crate::host::Host::with_commands`]): a fake
/// root has no `update-grub` to run, so tests check which commands were asked for, and
/// can make them fail.
#[derive(Debug, Default)]
pub(crate) struct Commands {
    ran: std::sync::Mutex<Vec<String>>,
    failing: std::sync::Mutex<Option<String>>,
}

impl Commands {
    /// Every command succeeds, with no output.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next command fails with `why`.
    pub(crate) fn fail_next(&self, why: &str) {
        *self.failing.lock().unwrap() = Some(why.to_owned());
    }

    /// Records a command line; its result.
    pub(crate) fn record(&self, command: &str) -> Result<String, String> {
        self.ran.lock().unwrap().push(command.to_owned());
        match self.failing.lock().unwrap().take() {
            Some(why) => Err(why),
            None => Ok(String::new()),
        }
    }

    /// The command lines asked for so far, and forgets them.
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.ran.lock().unwrap())
    }
}

/// What a simulated death unwinds with.
#[derive(Debug)]
pub(crate) struct Crashed;

impl Faults {
    /// No fault: the steps are only counted.
    pub(crate) fn none() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The daemon dies before step `step` (0: before its first).
    pub(crate) fn crash_before(step: usize) -> Arc<Self> {
        Arc::new(Self {
            crash_at: Some(step),
            ..Self::default()
        })
    }

    /// The kernel refuses change `change` (0: the first) with `EBUSY`.
    pub(crate) fn refuse(change: usize) -> Arc<Self> {
        Arc::new(Self {
            refuse_at: Some(change),
            ..Self::default()
        })
    }

    /// Whether the daemon died.
    pub(crate) fn crashed(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Steps made (kernel changes and commits).
    pub(crate) fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }

    /// Whether the next step may be made; false once the daemon is dead.
    fn step(&self) -> bool {
        if self.crashed() {
            return false;
        }
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        if Some(n) == self.crash_at {
            self.dead.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Before a kernel change: unwinds if the daemon dies here, fails if the kernel
    /// refuses it.
    pub(crate) fn kernel_change(&self) -> io::Result<()> {
        if !self.step() {
            std::panic::resume_unwind(Box::new(Crashed));
        }
        let n = self.changes.fetch_add(1, Ordering::SeqCst);
        if Some(n) == self.refuse_at {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Ok(())
    }

    /// Before a commit: whether SQLite must roll it back (the daemon is dead).
    fn veto_commit(&self) -> bool {
        !self.step()
    }
}

/// Opens the store in `dir` again, as the next daemon would after the last one ended.
///
/// Other unit tests of this process clone children (runs) that hold copies of every
/// descriptor until they exec, among them the state directory's lock of a store just
/// dropped here: while one does, the directory stays locked (`flock` belongs to the open
/// file, not the process). A restarted daemon is a new process and would not meet that,
/// so the open is retried while the lock is held, for at most ten seconds.
pub(crate) fn reopen_store(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Err(crate::store::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            opened => return opened.expect("the store opens again"),
        }
    }
}

/// The control files a directory made in a fake cgroupfs gets: those the shield uses,
/// empty, as a new v1 cpuset's are.
const CGROUP_FILES: &[&str] = &["cgroup.procs", "cpuset.cpus", "cpuset.mems"];

/// mkdir(2) on a fake host root; below `cgroupfs` (a fake mount), the new directory gets a
/// cgroup's control files, as the kernel's cgroupfs makes them.
pub(crate) fn create_dir(
    cgroupfs: Option<&std::path::Path>,
    path: &std::path::Path,
) -> io::Result<()> {
    std::fs::create_dir(path)?;
    if cgroupfs.is_some_and(|mount| path.starts_with(mount)) {
        for f in CGROUP_FILES {
            std::fs::write(path.join(f), "")?;
        }
    }
    Ok(())
}

/// rmdir(2) on a fake host root; below `cgroupfs`, as the kernel's cgroupfs does it: busy
/// while the cgroup has child cgroups or processes, and its control files go with it.
pub(crate) fn remove_dir(
    cgroupfs: Option<&std::path::Path>,
    path: &std::path::Path,
) -> io::Result<()> {
    if cgroupfs.is_some_and(|mount| path.starts_with(mount)) && path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?.path();
            if entry.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            files.push(entry);
        }
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        for f in files {
            std::fs::remove_file(f)?;
        }
    }
    std::fs::remove_dir(path)
}

/// Runs `op` (which uses a host made `with_faults(faults)` and `store`) with `faults`
/// watching the store's commits. `None` when the daemon died in it: the caller then drops
/// the store, as the process's death would have closed it.
pub(crate) fn until_crash<R>(
    store: &Store,
    faults: &Arc<Faults>,
    op: impl FnOnce() -> R,
) -> Option<R> {
    let watcher = Arc::clone(faults);
    store
        .lock_blocking()
        .commit_hook(Some(move || watcher.veto_commit()))
        .expect("commit hook");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(op));
    store
        .lock_blocking()
        .commit_hook(None::<fn() -> bool>)
        .expect("commit hook");
    match outcome {
        Ok(_) if faults.crashed() => None,
        Ok(r) => Some(r),
        Err(payload) if payload.is::<Crashed>() => None,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Runs the property `test` over cases drawn from `strategy`, with proptest's
/// configuration from the environment (`PROPTEST_CASES`: 256 by default) and its
/// persistence of failing cases beside `source_file` (under `proptest-regressions/`, whose
/// cases run first). Prints what it did on one line, which `benches/props.sh` reads; a
/// failure panics with the minimized case.
pub(crate) fn check_property<S>(
    name: &str,
    source_file: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S: proptest::strategy::Strategy,
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::Cell;
    let config = Config {
        source_file: Some(source_file),
        ..Config::default()
    };
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let (ran, failing) = (Cell::new(0u64), Cell::new(0u64));
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |value| {
        ran.set(ran.get() + 1);
        let r = test(value);
        if r.is_err() {
            failing.set(failing.get() + 1);
        }
        r
    });
    // After the first failure every case run is a step of shrinking it.
    eprintln!(
        "property {name}: {} cases run (asked {cases}), {} failures, {} failing while shrinking, {:.1} s",
        ran.get(),
        u64::from(result.is_err()),
        failing.get().saturating_sub(1),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("property {name} does not hold: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_a_change(store: &Store, path: &str) -> rusqlite::Result<()> {
        let change = crate::store::journal::Change {
            path,
            knob: path,
            kind: "text",
            current: "0",
            desired: "1",
        };
        crate::store::journal::begin_apply(&mut store.lock_blocking(), "p", "b", &[change])
    }

    #[test]
    fn a_death_stops_kernel_changes_and_commits_from_its_step_on() {
        let (_root, host) = crate::host::fake_root(&[("/proc/sys/vm/a", "0\n")]);
        let dir = scratch_dir();
        let store = Store::open(dir.path()).unwrap();
        // Step 0 a write, step 1 a commit, step 2 a write: the daemon dies before step 2.
        let faults = Faults::crash_before(2);
        let host = host.with_faults(Arc::clone(&faults));
        let ran = until_crash(&store, &faults, || {
            host.write("/proc/sys/vm/a", "1").unwrap();
            journal_a_change(&store, "/x").unwrap();
            host.write("/proc/sys/vm/a", "2").unwrap();
            unreachable!("the daemon died before this write");
        });
        assert!(ran.is_none());
        assert_eq!(host.read("/proc/sys/vm/a").unwrap(), "1");
        assert_eq!(
            crate::store::journal::count(&store.lock_blocking()).unwrap(),
            1
        );

        // Dying before a commit: it is rolled back, and nothing after it happens.
        let (_root, host) = crate::host::fake_root(&[("/proc/sys/vm/a", "0\n")]);
        let dir = scratch_dir();
        let store = Store::open(dir.path()).unwrap();
        let faults = Faults::crash_before(1);
        let host = host.with_faults(Arc::clone(&faults));
        let ran = until_crash(&store, &faults, || {
            host.write("/proc/sys/vm/a", "1").unwrap();
            let vetoed = journal_a_change(&store, "/x");
            let _ = host.write("/proc/sys/vm/a", "2");
            vetoed
        });
        assert!(ran.is_none());
        assert_eq!(host.read("/proc/sys/vm/a").unwrap(), "1");
        assert_eq!(
            crate::store::journal::count(&store.lock_blocking()).unwrap(),
            0
        );
    }

    #[test]
    fn steps_are_kernel_changes_and_commits_and_a_refused_change_is_an_error() {
        let (_root, host) = crate::host::fake_root(&[("/proc/sys/vm/a", "0\n")]);
        let dir = scratch_dir();
        let store = Store::open(dir.path()).unwrap();
        let faults = Faults::none();
        let counted = host.clone().with_faults(Arc::clone(&faults));
        until_crash(&store, &faults, || {
            crate::store::journal::rows(&store.lock_blocking()).unwrap();
            counted.read("/proc/sys/vm/a").unwrap();
            counted.write("/proc/sys/vm/a", "1").unwrap();
            journal_a_change(&store, "/x").unwrap();
        })
        .expect("no fault, no crash");
        assert_eq!(
            faults.steps(),
            2,
            "a write and a commit; reads are not steps"
        );

        let faults = Faults::refuse(1);
        let refusing = host.with_faults(Arc::clone(&faults));
        let ran = until_crash(&store, &faults, || {
            refusing.write("/proc/sys/vm/a", "2").unwrap();
            refusing
                .write("/proc/sys/vm/a", "3")
                .unwrap_err()
                .to_string()
        });
        assert!(
            ran.unwrap().contains("busy"),
            "the kernel's EBUSY, with the path"
        );
        assert_eq!(refusing.read("/proc/sys/vm/a").unwrap(), "2");
    }
}
