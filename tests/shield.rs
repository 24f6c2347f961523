//! End-to-end tests of exclusive cores and the shield on this machine (cgroup v1 cpusets,
//! real processes, real affinities). The cgroup v2 partition is tested in the VM
//! (`tests/vm/v2.sh`). Every test puts back what it changed, even when it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use cleanroom::runs::{
    alive, answer, cpus_of, eventually, json_of, my_cpus, next_output, online_cpus, start_run,
    start_run_as,
};
use cleanroom::{Daemon, RawClient, host_lock, is_root_or_skip};
use serde_json::json;

const CPUSET: &str = "/sys/fs/cgroup/cpuset";

/// Whether this machine can show the v1 shield (root, two CPUs, a v1 cpuset hierarchy).
fn can_shield(test: &str) -> bool {
    if !is_root_or_skip(test) {
        return false;
    }
    if online_cpus() == "0" {
        eprintln!("skipping {test}: one CPU, nothing to isolate");
        return false;
    }
    if !Path::new(CPUSET).join("cpuset.cpus").exists() {
        eprintln!("skipping {test}: no cgroup v1 cpuset hierarchy here");
        return false;
    }
    true
}

/// A process that is killed (and reaped) when dropped.
struct Proc(Child);

impl Proc {
    fn start(program: &str, args: &[&str]) -> Proc {
        Proc(Command::new(program).args(args).spawn().unwrap())
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cpuset cgroup of the test's own, removed (after its processes) when dropped.
struct Cpuset(PathBuf);

impl Cpuset {
    fn new(name: &str, cpus: &str) -> Cpuset {
        let dir = Path::new(CPUSET).join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let c = Cpuset(dir);
        std::fs::write(c.0.join("cpuset.mems"), "0").unwrap();
        std::fs::write(c.0.join("cpuset.cpus"), cpus).unwrap();
        c
    }

    fn cpus(&self) -> String {
        std::fs::read_to_string(self.0.join("cpuset.cpus"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn add(&self, pid: &str) {
        std::fs::write(self.0.join("cgroup.procs"), pid).unwrap();
    }
}

impl Drop for Cpuset {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(CPUSET).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The cpuset a process is in.
fn cpuset_of(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cpuset"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Directories the shield made (`cleanroom-shield-*`) that still exist.
fn shield_cpusets() -> Vec<String> {
    std::fs::read_dir(CPUSET)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cleanroom-shield-"))
        .collect()
}

#[test]
fn the_v1_shield_moves_tasks_into_a_cpuset_and_narrows_other_cpusets() {
    if !can_shield("the_v1_shield_moves_tasks_into_a_cpuset_and_narrows_other_cpusets") {
        return;
    }
    let _host = host_lock(); // raises the host-wide shield
    let online = online_cpus();
    let before = my_cpus();
    // A cpuset of someone else's, with a process in it.
    let foreign = Cpuset::new("cleanroom-test-foreign", &online);
    let in_foreign = Proc::start("sleep", &["1201.1"]);
    foreign.add(&in_foreign.pid());
    // A process in the root cpuset, and one the config exempts by name.
    let plain = Proc::start("sleep", &["1201.2"]);
    // One pinned to the CPU the run will get.
    let pinned = Proc::start("taskset", &["-c", "1", "sleep", "1201.4"]);
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/comm", pinned.pid()))
            .is_ok_and(|c| c.trim() == "sleep")
    }));
    assert_eq!(cpus_of(&pinned.pid()), "1");
    let dir = tempfile::tempdir().unwrap();
    let exempt_bin = dir.path().join("cr-exempt-nap");
    std::fs::copy("/bin/sleep", &exempt_bin).unwrap();
    let exempt = Proc::start(exempt_bin.to_str().unwrap(), &["1201.3"]);
    // The same name as another user: a name exempts only root's processes.
    let poser = Proc::start(
        "setpriv",
        &[
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            exempt_bin.to_str().unwrap(),
            "1201.5",
        ],
    );
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for p in [&exempt, &poser] {
        assert!(eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{}/comm", p.pid()))
                .is_ok_and(|c| c.trim() == "cr-exempt-nap")
        }));
    }

    let d = Daemon::builder()
        .config("[runs]\nshield_exempt_pids = [1]\nshield_exempt_names = [\"cr-exempt-*\"]\n")
        .start();
    let go = d.dir().join("go");
    let mut c = RawClient::connect(&d.socket);
    let script = format!(
        "echo up; while [ ! -e {} ]; do sleep 0.01; done",
        go.display()
    );
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", script], "exclusive": true, "timeout_ms": 30000}),
    );
    assert_eq!(next_output(&mut c)["params"]["data"], "up\n");

    // The root cpuset's process moved into the shield's cpuset, off CPU 1...
    assert!(
        cpuset_of(&plain.pid()).starts_with("/cleanroom-shield-"),
        "{}",
        cpuset_of(&plain.pid())
    );
    assert_eq!(cpus_of(&plain.pid()), "0");
    // ...and widening its own affinity cannot bring CPU 1 back (the cpuset rules it).
    let mut all = nix::sched::CpuSet::new();
    all.set(0).unwrap();
    all.set(1).unwrap();
    let pid = nix::unistd::Pid::from_raw(plain.0.id() as i32);
    nix::sched::sched_setaffinity(pid, &all).unwrap();
    assert_eq!(cpus_of(&plain.pid()), "0", "a cpuset, not only a mask");
    assert_eq!(
        cpus_of(&pinned.pid()),
        "0",
        "pinned to the run's CPU: moved off too"
    );
    // The other cpuset gave up CPU 1, and so did its process.
    assert_eq!(foreign.cpus(), "0");
    assert_eq!(cpus_of(&in_foreign.pid()), "0");
    // The exempt one was left alone.
    assert_eq!(cpus_of(&exempt.pid()), online);
    assert_eq!(cpuset_of(&exempt.pid()), "/");
    assert_eq!(
        cpus_of(&poser.pid()),
        "0",
        "nobody's process of that name is shielded"
    );

    std::fs::write(&go, "").unwrap();
    let result = answer(&mut c);
    assert_eq!(result["result"]["cpus"], "1", "{result}");
    assert_eq!(result["result"]["shield"], "cpuset", "{result}");
    // Everything is back: cpusets, the moved process (with the mask it asked for), this
    // thread, and the shield's cpuset is gone.
    assert_eq!(foreign.cpus(), online);
    assert_eq!(cpuset_of(&plain.pid()), "/");
    assert_eq!(cpus_of(&plain.pid()), online);
    assert_eq!(cpus_of(&in_foreign.pid()), online);
    assert_eq!(cpus_of(&pinned.pid()), "1", "and back where it was pinned");
    assert_eq!(my_cpus(), before);
    assert!(shield_cpusets().is_empty(), "{:?}", shield_cpusets());
}

#[test]
fn exclusive_cpus_by_list_waiting_for_them_and_the_profile_pool() {
    if !can_shield("exclusive_cpus_by_list_waiting_for_them_and_the_profile_pool") {
        return;
    }
    let _host = host_lock(); // raises the host-wide shield
    let before = my_cpus();
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("cpu0-pool.toml"),
        "[profile]\nsummary = \"exclusive runs take CPU 0\"\n[isolation]\ncpus = \"0\"\n",
    )
    .unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\n[runs]\nshield_exempt_pids = [1]\n",
            profiles.path()
        ))
        .start();

    // A list outside the pool (default: every CPU but 0) is refused, naming the CPUs.
    let out = d.ctl(&["run", "--exclusive", "--cpus", "0-0", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CPUs 0 are not in the isolation pool 1"),
        "{err}"
    );
    let out = d.ctl(&["run", "--exclusive", "--cpus", "two", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = d.ctl(&[
        "--json",
        "run",
        "--exclusive",
        "--cpus",
        "1-1",
        "--",
        "true",
    ]);
    assert_eq!(json_of(&out)["cpus"], "1", "{out:?}");

    // Run A holds CPU 1; B fails at once without --wait...
    let go = d.dir().join("go");
    let mut a = RawClient::connect(&d.socket);
    let script = format!(
        "echo up; while [ ! -e {} ]; do sleep 0.01; done",
        go.display()
    );
    start_run(
        &mut a,
        json!({"argv": ["sh", "-c", script], "exclusive": true}),
    );
    assert_eq!(next_output(&mut a)["params"]["data"], "up\n");
    let out = d.ctl(&["run", "--exclusive", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--wait"),
        "{out:?}"
    );
    // ...and with it, waits (cancellable) until A lets go, then runs.
    let mut b = RawClient::connect(&d.socket);
    start_run_as(
        &mut b,
        2,
        json!({"argv": ["sh", "-c", "echo b-ran; sleep 1202.1"], "exclusive": true, "wait": true}),
    );
    let started = b.recv().unwrap();
    assert_eq!(started["method"], "run.started", "{started}");
    let mut waiter = RawClient::connect(&d.socket);
    start_run_as(
        &mut waiter,
        3,
        json!({"argv": ["true"], "exclusive": true, "wait": true}),
    );
    let waiting = waiter.recv().unwrap()["params"]["batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = d.ctl(&["--json", "runs", "cancel", &waiting]);
    assert_eq!(json_of(&out)["cancelled"], true, "{out:?}");
    let cancelled = answer(&mut waiter);
    assert!(
        cancelled["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled while waiting"),
        "{cancelled}"
    );
    assert!(
        alive("1202.1").is_empty(),
        "B started while A held the core"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(answer(&mut a)["result"]["cpus"], "1");
    assert_eq!(next_output(&mut b)["params"]["data"], "b-ran\n");
    let batch = started["params"]["batch"].as_str().unwrap().to_owned();
    d.ctl(&["runs", "cancel", &batch]);
    assert_eq!(answer(&mut b)["result"]["cpus"], "1");

    // The active profile's pool replaces the configured one, until it is reverted.
    let out = d.ctl(&["profile", "apply", "cpu0-pool"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.ctl(&["--json", "run", "--exclusive", "--", "true"]);
    assert_eq!(json_of(&out)["cpus"], "0", "{out:?}");
    let out = d.ctl(&["profile", "revert"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.ctl(&["--json", "run", "--exclusive", "--", "true"]);
    assert_eq!(json_of(&out)["cpus"], "1", "{out:?}");
    assert_eq!(my_cpus(), before);
    assert!(shield_cpusets().is_empty());
}

#[test]
fn stopping_the_daemon_mid_run_lowers_the_shield() {
    if !can_shield("stopping_the_daemon_mid_run_lowers_the_shield") {
        return;
    }
    let _host = host_lock(); // raises the host-wide shield
    let before = my_cpus();
    let mut d = Daemon::builder()
        .config("[runs]\nshield_exempt_pids = [1]\n")
        .start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", "echo up; exec sleep 1204.1"], "exclusive": true, "detach": true}),
    );
    assert!(eventually(Duration::from_secs(5), || !alive("1204.1").is_empty()));
    assert_eq!(my_cpus(), "0");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(my_cpus(), before, "lowered at the stop\n{}", d.log());
    assert!(alive("1204.1").is_empty());
    assert!(shield_cpusets().is_empty(), "{:?}", shield_cpusets());
}

/// Lowers whatever shield the state directory's journal says is up, when dropped (a
/// failed test must not leave the host on CPU 0): a daemon's start does it.
struct LowerOnDrop(PathBuf);

impl Drop for LowerOnDrop {
    fn drop(&mut self) {
        if my_cpus() != online_cpus() {
            let _ = Daemon::builder().state_dir(&self.0).try_start();
        }
    }
}

#[test]
fn an_offline_revert_lowers_a_shield_left_by_a_killed_daemon() {
    if !can_shield("an_offline_revert_lowers_a_shield_left_by_a_killed_daemon") {
        return;
    }
    let _host = host_lock(); // raises the host-wide shield
    let before = my_cpus();
    let state = tempfile::tempdir().unwrap();
    let _lowered = LowerOnDrop(state.path().to_owned());
    let mut d = Daemon::builder()
        .state_dir(state.path())
        .config("[runs]\nshield_exempt_pids = [1]\n")
        .start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sleep", "1204.2"], "exclusive": true, "detach": true}),
    );
    assert!(eventually(Duration::from_secs(5), || !alive("1204.2").is_empty()));
    assert_eq!(my_cpus(), "0");
    // The daemon dies without lowering it; its run goes on, alone.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    for p in alive("1204.2") {
        let pid = p.split(':').next().unwrap().to_owned();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert_eq!(my_cpus(), "0", "still shielded after the kill");
    // `cleanroomd --revert` (what a package removal runs) puts everything back.
    let out = Command::new(cleanroom::bin("cleanroomd"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("--revert")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(my_cpus(), before, "{out:?}");
    assert!(shield_cpusets().is_empty(), "{:?}", shield_cpusets());
    let left: Vec<_> = std::fs::read_dir(CPUSET)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cleanroom-"))
        .collect();
    assert!(
        left.is_empty(),
        "the dead daemon's run cgroups stay: {left:?}"
    );
}

/// Every IRQ's affinity file and the default one: what the shield narrows.
fn irq_files() -> Vec<String> {
    let mut files = vec!["/proc/irq/default_smp_affinity".to_owned()];
    for e in std::fs::read_dir("/proc/irq").unwrap().flatten() {
        let f = e.path().join("smp_affinity_list");
        if f.exists() {
            files.push(f.display().to_string());
        }
    }
    files
}

#[test]
fn kill_9_while_the_shield_goes_up_or_down_leaves_nothing_shielded_after_a_restart() {
    if !can_shield(
        "kill_9_while_the_shield_goes_up_or_down_leaves_nothing_shielded_after_a_restart",
    ) {
        return;
    }
    let _host = host_lock(); // raises the host-wide shield
    let irqs = irq_files();
    let irq_refs: Vec<&str> = irqs.iter().map(String::as_str).collect();
    // Puts the IRQ affinities back even if this test fails.
    let irq_snap = cleanroom::KernelSnapshot::take(&irq_refs);
    let before = my_cpus();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let _lowered = LowerOnDrop(dir.clone());
    let config = "[runs]\nshield_exempt_pids = [1]\n";
    let start = || Daemon::builder().state_dir(&dir).config(config).start();
    let exclusive = json!({"argv": ["true"], "exclusive": true});
    // How long an exclusive run takes the daemon here, shield up and down: the kills land
    // at a uniformly random moment within it.
    let window_us = {
        let d = start();
        let mut c = d.connect();
        let mut took = Vec::new();
        for i in 0..5 {
            let t = std::time::Instant::now();
            start_run_as(&mut c, i + 1, exclusive.clone());
            let a = answer(&mut c);
            took.push(t.elapsed().as_micros() as u64);
            assert_eq!(a["result"]["end_reason"], "exited", "{a}");
        }
        took.sort_unstable();
        took[2].max(1)
    };
    let mut seed: u64 = 0xd1b5_4a32_d192_ed03;
    let mut shielded_at_kill = 0;
    for i in 0..130 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut d = start();
        let mut c = d.connect();
        start_run(&mut c, exclusive.clone());
        std::thread::sleep(Duration::from_micros(seed % window_us));
        d.signal(nix::sys::signal::Signal::SIGKILL);
        d.wait_exit(Duration::from_secs(5)).expect("killed");
        if my_cpus() != before {
            shielded_at_kill += 1;
        }
        // The next start lowers what the killed daemon left raised.
        drop(start());
        assert_eq!(my_cpus(), before, "kill {i}: still shielded");
        assert!(
            shield_cpusets().is_empty(),
            "kill {i}: {:?}",
            shield_cpusets()
        );
        for (file, was) in irq_snap.current().iter().zip(irq_snap.taken()) {
            assert_eq!(file.1, was.1, "kill {i}: {} not restored", file.0.display());
        }
    }
    eprintln!("{shielded_at_kill} of 130 kills found the shield up (window {window_us} µs)");
    assert!(
        shielded_at_kill > 10,
        "the kills rarely hit a raised shield ({shielded_at_kill} of 130, window {window_us} µs)"
    );
}

#[test]
fn cleanup_after_a_killed_daemon_ends_its_runs_and_lowers_its_shield_but_keeps_the_tuning() {
    if !can_shield(
        "cleanup_after_a_killed_daemon_ends_its_runs_and_lowers_its_shield_but_keeps_the_tuning",
    ) {
        return;
    }
    const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
    let _host = host_lock(); // raises the host-wide shield
    let _restore = cleanroom::KernelSnapshot::take(&[SWAPPINESS]);
    let before = my_cpus();
    let original = std::fs::read_to_string(SWAPPINESS)
        .unwrap()
        .trim()
        .to_owned();
    let tuned = if original == "17" { "18" } else { "17" };
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("p.toml"),
        format!("[sysctl]\n\"vm.swappiness\" = {tuned}\n"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let _lowered = LowerOnDrop(state.path().to_owned());
    let config = format!(
        "[runs]\nshield_exempt_pids = [1]\n[tuning]\nprofile_dirs = [{:?}]\n",
        profiles.path()
    );
    let mut d = Daemon::builder()
        .state_dir(state.path())
        .config(&config)
        .start();
    assert!(d.ctl(&["profile", "apply", "p"]).status.success());
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sleep", "1204.3"], "exclusive": true, "detach": true}),
    );
    assert!(eventually(Duration::from_secs(5), || !alive("1204.3").is_empty()));
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(my_cpus(), "0", "still shielded after the kill");
    // What the service's ExecStopPost= runs.
    let out = Command::new(cleanroom::bin("cleanroomd"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("--cleanup")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(alive("1204.3").is_empty(), "{:?}", alive("1204.3"));
    assert_eq!(my_cpus(), before, "{out:?}");
    assert!(shield_cpusets().is_empty(), "{:?}", shield_cpusets());
    // The tuning is the next daemon's: still applied, and revertible.
    assert_eq!(std::fs::read_to_string(SWAPPINESS).unwrap().trim(), tuned);
    let d = Daemon::builder()
        .state_dir(state.path())
        .config(&config)
        .start();
    assert!(d.ctl(&["profile", "revert"]).status.success());
    assert_eq!(
        std::fs::read_to_string(SWAPPINESS).unwrap().trim(),
        original
    );
}
