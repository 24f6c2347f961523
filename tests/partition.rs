//! End-to-end tests of a profile's partition (`[partition] isolated`) on this machine (two
//! CPUs, cgroup v1): CPU 1 is kept for what pin rules place there. Checked in `/proc` and
//! the kernel's own files, never through cleanroom's reading code; the kernel values it
//! changes are snapshotted and put back even when a test fails.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cleanroom::runs::{eventually, json_of, online_cpus};
use cleanroom::{Daemon, KernelSnapshot, Procs, host_lock, is_root_or_skip};
use serde_json::Value;

const DEFAULT_IRQ: &str = "/proc/irq/default_smp_affinity";
const WORKQUEUE: &str = "/sys/devices/virtual/workqueue/cpumask";

/// Every IRQ's affinity file (a CPU list).
fn irq_lists() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/irq")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .map(|e| e.path().join("smp_affinity_list").display().to_string())
        .filter(|p| Path::new(p).exists())
        .collect();
    out.sort();
    out
}

/// The mask files the partition narrows, and every IRQ's affinity, as they are now.
fn snapshot() -> KernelSnapshot {
    let mut files = vec![DEFAULT_IRQ.to_owned()];
    if Path::new(WORKQUEUE).exists() {
        files.push(WORKQUEUE.to_owned());
    }
    files.extend(irq_lists());
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    KernelSnapshot::take(&refs)
}

/// A hexadecimal CPU mask file's value as a number.
fn mask(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    u64::from_str_radix(&text.trim().replace(',', ""), 16).unwrap()
}

/// `Cpus_allowed_list` of a process.
fn cpus(pid: i32) -> String {
    cleanroom::runs::cpus_of(&pid.to_string())
}

/// A process named `name` (a symbolic link to `sleep`) sleeping for long.
fn sleeper(dir: &Path, procs: &mut Procs, name: &str) -> i32 {
    let path = dir.join(name);
    if !path.exists() {
        std::os::unix::fs::symlink("/bin/sleep", &path).unwrap();
    }
    procs.spawn(Command::new(&path).arg("1000"))
}

fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(out)
}

/// A profile directory with profile `part`: CPU 1 partitioned off, processes named
/// `pinned` placed on it.
fn profiles(pinned: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("part.toml"),
        format!("[partition]\nisolated = \"1\"\n\n[[pin]]\ncomm = \"{pinned}\"\ncpus = \"1\"\n"),
    )
    .unwrap();
    dir
}

fn config(profiles: &Path, on_start: &str) -> String {
    format!(
        "[tuning]\nprofile_dirs = [{:?}]\non_start = \"{on_start}\"\n",
        profiles.display().to_string()
    )
}

/// Whether the host is as the test found it: every CPU for PID 1, kthreadd and the
/// processes, the masks back, no shield cpuset.
fn assert_all_back(snap: &KernelSnapshot, pids: &[i32], log: &str) {
    let online = online_cpus();
    for pid in [1, 2].iter().chain(pids) {
        assert_eq!(cpus(*pid), online, "pid {pid}\n{log}");
    }
    for (now, was) in snap.current().iter().zip(snap.taken()) {
        assert_eq!(now, was, "{log}");
    }
}

/// What both partition tests start from (holding the host lock): the masks snapshotted,
/// a process to pin and one to keep off, each named `PREFIX-p…` and `PREFIX-u…`, and the
/// profile directory.
struct Scene {
    snap: KernelSnapshot,
    bin: tempfile::TempDir,
    procs: Procs,
    pinned_name: String,
    free_name: String,
    pinned: i32,
    free: i32,
    dir: tempfile::TempDir,
}

fn scene(prefix: &str) -> Scene {
    assert_eq!(online_cpus(), "0-1", "this test partitions CPU 1 of two");
    let snap = snapshot();
    let bin = tempfile::tempdir().unwrap();
    let pinned_name = format!("{prefix}-p{}", std::process::id());
    let free_name = format!("{prefix}-u{}", std::process::id());
    let mut procs = Procs::default();
    let pinned = sleeper(bin.path(), &mut procs, &pinned_name);
    let free = sleeper(bin.path(), &mut procs, &free_name);
    let dir = profiles(&pinned_name);
    Scene {
        snap,
        bin,
        procs,
        pinned_name,
        free_name,
        pinned,
        free,
        dir,
    }
}

#[test]
fn a_partition_keeps_all_but_pinned_work_off_its_cpus_until_reverted() {
    if !is_root_or_skip("a_partition_keeps_all_but_pinned_work_off_its_cpus_until_reverted") {
        return;
    }
    let _host = host_lock();
    let Scene {
        snap,
        bin,
        mut procs,
        pinned_name,
        free_name,
        pinned,
        free,
        dir,
    } = scene("crpp");
    let d = Daemon::builder()
        .config(&config(dir.path(), "reapply"))
        .start();

    let applied = ok(&d.ctl(&["--json", "profile", "apply", "part"]));
    let row = applied["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["knob"] == "partition (isolated CPUs)")
        .unwrap_or_else(|| panic!("a partition row: {applied}"));
    assert_eq!(
        (&row["status"], &row["after"]),
        (&"applied".into(), &"1".into()),
        "{applied}"
    );
    // Everything else is off CPU 1: PID 1, kthreadd, a process that existed, one started
    // later (by this test, itself moved off), the default IRQ affinity and unbound work.
    assert_eq!(cpus(1), "0");
    assert_eq!(cpus(2), "0", "kthreadd moves too");
    assert_eq!(cpus(free), "0");
    assert_eq!(mask(DEFAULT_IRQ) & 0b10, 0, "no new IRQ lands on CPU 1");
    if Path::new(WORKQUEUE).exists() {
        assert_eq!(mask(WORKQUEUE) & 0b10, 0, "no unbound work on CPU 1");
    }
    // Every IRQ that was allowed on CPU 1 and elsewhere is off it, or the kernel manages
    // it (a device queue's: no one can move it; this VM's disk has one); one bound to
    // CPU 1 alone would be someone's choice, left there.
    let mut moved = 0;
    for (path, was) in snap.taken() {
        let Some(irq) = path.to_str().filter(|p| p.ends_with("smp_affinity_list")) else {
            continue;
        };
        // One that went meanwhile, or that was never on CPU 1 with another, says nothing.
        let Ok(now) = std::fs::read_to_string(irq) else {
            continue;
        };
        if was.trim() != "0-1" {
            continue;
        }
        if now.trim() == "0" {
            moved += 1;
        } else {
            assert!(
                std::fs::write(irq, "0").is_err(),
                "{irq} could move off CPU 1 but is on {}",
                now.trim()
            );
        }
    }
    assert!(moved > 0, "no IRQ was moved");
    let later_free = sleeper(bin.path(), &mut procs, &free_name);
    assert_eq!(cpus(later_free), "0");
    // What the rule pins is on it: what existed, and what starts later.
    assert_eq!(cpus(pinned), "1", "{}", d.log());
    let later_pinned = sleeper(bin.path(), &mut procs, &pinned_name);
    assert!(
        eventually(Duration::from_secs(10), || cpus(later_pinned) == "1"),
        "a pinned process started later reaches the partition: {}\n{}",
        cpus(later_pinned),
        d.log()
    );
    let status = ok(&d.ctl(&["--json", "status"]));
    assert_eq!(status["partition"]["cpus"], "1", "{status}");
    assert_eq!(status["partition"]["method"], "cpuset", "{status}");
    let text = String::from_utf8_lossy(&d.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("partition") && text.contains("CPUs 1"),
        "{text}"
    );
    let verified = ok(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(verified["ok"], true, "{verified}");

    // An exclusive run takes its core from the partition, which stays up after it.
    let run = d.ctl(&[
        "run",
        "--exclusive",
        "--",
        "grep",
        "Cpus_allowed_list",
        "/proc/self/status",
    ]);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{out}\n{}", d.log());
    assert!(out.contains("Cpus_allowed_list:\t1\n"), "{out}");
    assert_eq!(cpus(1), "0", "the partition outlives the run");
    // Only the profile takes its partition down.
    let lower = d.ctl(&["shield", "lower"]);
    let err = String::from_utf8_lossy(&lower.stderr).into_owned();
    assert!(!lower.status.success(), "{err}");
    assert!(err.contains("profile part's partition"), "{err}");

    // Someone moves a task back onto CPU 1 by hand (out of the shield's cpuset, which
    // would not let it, then its mask): verify names it.
    std::fs::write("/sys/fs/cgroup/cpuset/cgroup.procs", free.to_string()).unwrap();
    assert!(
        Command::new("taskset")
            .args(["-p", "-c", "0-1", &free.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    );
    let drifted = json_of(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(drifted["ok"], false, "{drifted}");
    assert!(drifted.to_string().contains(&free.to_string()), "{drifted}");
    assert!(
        Command::new("taskset")
            .args(["-p", "-c", "0", &free.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    );
    // Someone gives an IRQ the partition's CPU back: verify names it too.
    let irq = snap
        .taken()
        .iter()
        .find(|(p, was)| {
            p.ends_with("smp_affinity_list")
                && was.trim() == "0-1"
                && std::fs::read_to_string(p).is_ok_and(|now| now.trim() == "0")
        })
        .map(|(p, _)| p.clone())
        .expect("an IRQ the partition moved");
    std::fs::write(&irq, "0-1").unwrap();
    let drifted = json_of(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(drifted["ok"], false, "{drifted}");
    assert!(
        drifted
            .to_string()
            .contains(&format!("{}: 0-1, was moved to 0", irq.display())),
        "{drifted}"
    );
    std::fs::write(&irq, "0").unwrap();
    let verified = ok(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(verified["ok"], true, "{verified}");

    let reverted = ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(reverted["ok"], true, "{reverted}");
    assert_all_back(&snap, &[free, pinned, later_free, later_pinned], &d.log());
    let status = ok(&d.ctl(&["--json", "status"]));
    assert_eq!(status["partition"], Value::Null, "{status}");
    drop(d);
    snap.restore();
}

#[test]
fn after_a_kill_the_restart_raises_the_partition_again_or_puts_everything_back() {
    if !is_root_or_skip(
        "after_a_kill_the_restart_raises_the_partition_again_or_puts_everything_back",
    ) {
        return;
    }
    let _host = host_lock();
    let Scene {
        snap,
        bin: _bin,
        procs: _procs,
        pinned,
        free,
        dir,
        ..
    } = scene("crpk");
    let state = tempfile::tempdir().unwrap();
    let start = |on_start: &str| {
        Daemon::builder()
            .config(&config(dir.path(), on_start))
            .state_dir(state.path())
            .start()
    };
    let mut d = start("reapply");
    ok(&d.ctl(&["--json", "profile", "apply", "part"]));
    assert_eq!((cpus(pinned), cpus(free)), ("1".into(), "0".into()));
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(d);

    // The restart lowers what the dead daemon left and raises the partition again; the
    // pinned process keeps its place through both.
    let mut d = start("reapply");
    assert_eq!(cpus(pinned), "1", "{}", d.log());
    assert_eq!(
        (cpus(free), cpus(1)),
        ("0".into(), "0".into()),
        "{}",
        d.log()
    );
    let verified = ok(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(verified["ok"], true, "{verified}");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(d);

    // Reverting at start puts every original back: the pinned process's too, which the
    // shield had before pinning took it over.
    let d = start("revert");
    assert_all_back(&snap, &[free, pinned], &d.log());
    drop(d);
    snap.restore();
}

#[test]
fn a_partition_that_cannot_fit_is_refused_before_anything_changes() {
    if !is_root_or_skip("a_partition_that_cannot_fit_is_refused_before_anything_changes") {
        return;
    }
    let _host = host_lock();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("all.toml"),
        format!("[partition]\nisolated = \"{}\"\n", online_cpus()),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("absent.toml"),
        "[partition]\nisolated = \"1-4095\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("outside.toml"),
        "[isolation]\ncpus = \"0\"\n[partition]\nisolated = \"1\"\n",
    )
    .unwrap();
    let d = Daemon::builder()
        .config(&config(dir.path(), "reapply"))
        .start();
    let all = d.ctl(&["profile", "apply", "all"]);
    let err = String::from_utf8_lossy(&all.stderr).into_owned();
    assert!(
        !all.status.success() && err.contains("covers every online CPU"),
        "{err}"
    );
    let absent = d.ctl(&["profile", "apply", "absent"]);
    let err = String::from_utf8_lossy(&absent.stderr).into_owned();
    // CPUs this host lacks: the profile is broken on this host, found at load.
    assert!(
        !absent.status.success()
            && err.contains("absent.toml: key `partition.isolated`: CPUs 2-4095 do not exist"),
        "{err}"
    );
    let outside = d.ctl(&["profile", "apply", "outside"]);
    let err = String::from_utf8_lossy(&outside.stderr).into_owned();
    assert!(
        !outside.status.success()
            && err.contains("outside.toml")
            && err.contains("partition.isolated")
            && err.contains("must lie inside"),
        "{err}"
    );
    let active = json_of(&d.ctl(&["--json", "profile", "active"]));
    assert_eq!(active["profile"], Value::Null, "{active}");
    assert_eq!(cpus(1), online_cpus(), "nothing was shielded");
}
