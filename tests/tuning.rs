//! End-to-end tests of tuning against real kernel values on this machine (root), and a fake
//! host root for what it cannot show (cpufreq, a new boot). Every test that touches real
//! values holds a snapshot that puts them back when it ends, even by a panic, and the host
//! lock ([`cleanroom::host_lock`]): they share the kernel with each other and with the
//! other test files.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cleanroom::{Daemon, KernelSnapshot, LoopDevice, host_lock, is_root_or_skip};
use nix::sys::signal::Signal;
use serde_json::Value;

const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
const DIRTY_RATIO: &str = "/proc/sys/vm/dirty_ratio";
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

fn selected(path: &str) -> String {
    let raw = std::fs::read_to_string(path).unwrap();
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap()
        .to_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn status_of(result: &Value, knob_path: &str) -> String {
    result["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == knob_path)
        .unwrap_or_else(|| panic!("{knob_path} not in {result}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A daemon whose only profile directory is `dir`, with `extra` configuration.
fn profiles_config(dir: &Path, extra: &str) -> cleanroom::DaemonBuilder {
    Daemon::builder().config(&format!(
        "[tuning]\nprofile_dirs = [{:?}]\n{extra}",
        dir.display().to_string()
    ))
}

/// A daemon whose only profile directory is `dir`.
fn daemon_with_profiles(dir: &Path, extra: &str) -> Daemon {
    profiles_config(dir, extra).start()
}

/// The same on state directory `state` (kept across restarts).
fn daemon_on(dir: &Path, state: &Path, extra: &str) -> Daemon {
    profiles_config(dir, extra).state_dir(state).start()
}

/// Every value of [`MANY`], put back when dropped.
fn many_snapshot() -> KernelSnapshot {
    let paths: Vec<String> = MANY.iter().map(|(k, _, _)| sysctl_path(k)).collect();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    KernelSnapshot::take(&path_refs)
}

fn write_profile(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

/// A value different from the current one, within the knob's range.
fn other(current: &str, a: u32, b: u32) -> String {
    if current == a.to_string() {
        b.to_string()
    } else {
        a.to_string()
    }
}

#[test]
fn apply_verify_drift_conflict_and_byte_exact_revert() {
    if !is_root_or_skip("apply_verify_drift_conflict_and_byte_exact_revert") {
        return;
    }
    let _host = host_lock();
    let dev = LoopDevice::attach();
    let sched = format!("/sys/block/{}/queue/scheduler", dev.name);
    let ra = format!("/sys/block/{}/queue/read_ahead_kb", dev.name);
    let snap = KernelSnapshot::take(&[SWAPPINESS, DIRTY_RATIO, SOMAXCONN, &sched, &ra, THP]);

    let swappiness = other(&read(SWAPPINESS), 13, 14);
    let dirty = other(&read(DIRTY_RATIO), 17, 18);
    let somaxconn = other(&read(SOMAXCONN), 1999, 2001);
    let scheduler = if selected(&sched) == "mq-deadline" {
        "none"
    } else {
        "mq-deadline"
    };
    let read_ahead = other(&read(&ra), 1024, 2048);
    let thp = if selected(THP) == "never" {
        "madvise"
    } else {
        "never"
    };
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "t",
        &format!(
            "[sysctl]\n\"vm.swappiness\" = {swappiness}\n\"vm/dirty_ratio\" = {dirty}\n\"net.core.somaxconn\" = {somaxconn}\n\
             [block.\"{}\"]\nscheduler = [\"{scheduler}\"]\nread_ahead_kb = {read_ahead}\n\
             [vm]\ntransparent_hugepage = \"{thp}\"\n\
             [cpu]\ngovernor = \"performance\"\n",
            dev.name
        ),
    );
    let d = daemon_with_profiles(profiles.path(), "");

    let out = d.ctl(&["--json", "profile", "apply", "t"]);
    assert!(out.status.success(), "{out:?}");
    let r = json(&out);
    assert_eq!(read(SWAPPINESS), swappiness);
    assert_eq!(read(DIRTY_RATIO), dirty);
    assert_eq!(read(SOMAXCONN), somaxconn);
    assert_eq!(selected(&sched), scheduler);
    assert_eq!(read(&ra), read_ahead);
    assert_eq!(selected(THP), thp);
    assert_eq!(status_of(&r, SWAPPINESS), "applied");
    assert_eq!(status_of(&r, &sched), "applied");
    // No cpufreq on this machine: unsupported with a reason, and the apply succeeded.
    let gov = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["knob"] == "cpu governor")
        .unwrap();
    assert_eq!(gov["status"], "unsupported");
    assert!(gov["reason"].as_str().unwrap().contains("cpufreq"));
    assert_eq!(r["journal_entries"], 6);

    let v = d.ctl(&["--json", "profile", "verify"]);
    assert!(v.status.success(), "{v:?}");
    assert_eq!(status_of(&json(&v), DIRTY_RATIO), "ok");

    // An admin changes one value by hand.
    let by_hand = other(&dirty, 21, 22);
    std::fs::write(DIRTY_RATIO, &by_hand).unwrap();
    let v = d.ctl(&["--json", "profile", "verify"]);
    assert_eq!(v.status.code(), Some(1), "drift exits 1");
    let vr = json(&v);
    assert_eq!(status_of(&vr, DIRTY_RATIO), "drifted");
    assert_eq!(status_of(&vr, SWAPPINESS), "ok");
    assert!(
        d.ctl(&["metrics"])
            .stdout
            .windows(32)
            .any(|w| w == b"cleanroomd_tuning_drift_items 1\n".as_slice()
                || w.starts_with(b"cleanroomd_tuning_drift_items 1")),
        "drift metric"
    );

    // Revert leaves the admin's value alone and restores the rest byte-exact.
    let out = d.ctl(&["--json", "profile", "revert"]);
    assert_eq!(out.status.code(), Some(1), "conflicts exit 1");
    let r = json(&out);
    assert_eq!(status_of(&r, DIRTY_RATIO), "conflict");
    assert_eq!(read(DIRTY_RATIO), by_hand);
    for (path, before) in snap.current().iter().zip(snap.taken()) {
        if path.0 != Path::new(DIRTY_RATIO) {
            assert_eq!(
                path.1,
                before.1,
                "{} not restored byte-exact",
                path.0.display()
            );
        }
    }
    assert_eq!(r["journal_entries"], 1, "the conflict stays journaled");
    // --force puts the original back.
    let out = d.ctl(&["--json", "profile", "revert", "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(status_of(&json(&out), DIRTY_RATIO), "forced");
    assert_eq!(snap.current(), snap.taken());
    assert_eq!(
        json(&d.ctl(&["--json", "profile", "active"]))["journal_entries"],
        0
    );
}

#[test]
fn switching_profiles_then_reverting_gives_the_pre_a_host_back() {
    if !is_root_or_skip("switching_profiles_then_reverting_gives_the_pre_a_host_back") {
        return;
    }
    let _host = host_lock();
    let snap = KernelSnapshot::take(&[SWAPPINESS, DIRTY_RATIO, SOMAXCONN, THP]);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "a",
        &format!(
            "[sysctl]\n\"vm.swappiness\" = {}\n\"vm.dirty_ratio\" = {}\n",
            other(&read(SWAPPINESS), 11, 12),
            other(&read(DIRTY_RATIO), 31, 32)
        ),
    );
    write_profile(
        profiles.path(),
        "b",
        &format!(
            "[sysctl]\n\"vm.dirty_ratio\" = {}\n\"net.core.somaxconn\" = {}\n[vm]\ntransparent_hugepage = \"{}\"\n",
            other(&read(DIRTY_RATIO), 33, 34),
            other(&read(SOMAXCONN), 3001, 3002),
            if selected(THP) == "always" {
                "never"
            } else {
                "always"
            }
        ),
    );
    let d = daemon_with_profiles(profiles.path(), "");
    assert!(d.ctl(&["profile", "apply", "a"]).status.success());
    let out = d.ctl(&["--json", "profile", "apply", "b"]);
    assert!(out.status.success(), "{out:?}");
    // b does not set swappiness: the switch put its original back.
    assert_eq!(status_of(&json(&out), SWAPPINESS), "restored");
    assert_eq!(read(SWAPPINESS), snap.taken()[0].1.trim());
    let out = d.ctl(&["profile", "revert"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        snap.current(),
        snap.taken(),
        "revert after A→B restores the pre-A values"
    );
}

#[test]
fn a_failed_write_rolls_the_apply_back_unless_best_effort() {
    if !is_root_or_skip("a_failed_write_rolls_the_apply_back_unless_best_effort") {
        return;
    }
    let _host = host_lock();
    let snap = KernelSnapshot::take(&[SWAPPINESS, DIRTY_RATIO]);
    let profiles = tempfile::tempdir().unwrap();
    // vm.dirty_ratio accepts 0..=100: 250 fails with EINVAL. Whatever was written before
    // it (in plan order) must be rolled back; the statuses below accept either order.
    write_profile(
        profiles.path(),
        "bad",
        &format!(
            "[sysctl]\n\"vm.swappiness\" = {}\n\"vm.dirty_ratio\" = 250\n\"vm.dirty_background_ratio\" = 7\n",
            other(&read(SWAPPINESS), 9, 8)
        ),
    );
    let d = daemon_with_profiles(profiles.path(), "");
    let out = d.ctl(&["--json", "profile", "apply", "bad"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = json(&out);
    assert_eq!(r["ok"], false);
    assert_eq!(status_of(&r, DIRTY_RATIO), "failed");
    assert_eq!(
        snap.current(),
        snap.taken(),
        "nothing this apply wrote stays"
    );
    assert_eq!(r["journal_entries"], 0);
    let statuses: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"rolled_back"), "{statuses:?}");

    let out = d.ctl(&["--json", "profile", "apply", "bad", "--best-effort"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(status_of(&r, SWAPPINESS), "applied");
    assert_eq!(status_of(&r, DIRTY_RATIO), "failed");
    assert_ne!(read(SWAPPINESS), snap.taken()[0].1.trim());
    assert!(d.ctl(&["profile", "revert"]).status.success());
    assert_eq!(snap.current(), snap.taken());
}

/// Sysctl knobs that are safe to change on this machine, with two values each.
const MANY: &[(&str, &str, &str)] = &[
    ("vm.swappiness", "41", "42"),
    ("vm.dirty_ratio", "23", "24"),
    ("vm.dirty_background_ratio", "6", "7"),
    ("vm.dirty_expire_centisecs", "2900", "3100"),
    ("vm.dirty_writeback_centisecs", "490", "510"),
    ("vm.vfs_cache_pressure", "90", "110"),
    ("vm.stat_interval", "2", "3"),
    ("net.core.somaxconn", "3000", "3100"),
    ("net.core.netdev_max_backlog", "1500", "1600"),
    ("net.core.rmem_max", "300000", "310000"),
    ("net.core.wmem_max", "300000", "310000"),
    (
        "net.ipv4.tcp_rmem",
        "4096 100000 5000000",
        "4096 110000 5100000",
    ),
    (
        "net.ipv4.tcp_wmem",
        "4096 20000 4000000",
        "4096 21000 4100000",
    ),
    ("net.ipv4.tcp_fin_timeout", "45", "50"),
    ("net.ipv4.tcp_keepalive_time", "7000", "7100"),
    ("net.ipv4.tcp_keepalive_intvl", "60", "70"),
    ("net.ipv4.tcp_max_syn_backlog", "2000", "2100"),
    ("net.ipv4.ip_local_port_range", "33000 60000", "34000 61000"),
    ("fs.inotify.max_user_watches", "120000", "130000"),
    ("fs.inotify.max_user_instances", "300", "310"),
];

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Profiles `many-a` (every knob of [`MANY`]) and `many-b` (another value for two thirds of
/// them, so a switch also restores some) in a fresh directory.
fn many_profiles() -> tempfile::TempDir {
    let profiles = tempfile::tempdir().unwrap();
    for (name, pick) in [("many-a", 1), ("many-b", 2)] {
        let mut text = String::from("[sysctl]\n");
        for (i, (k, a, b)) in MANY.iter().enumerate() {
            if pick == 2 && i % 3 == 0 {
                continue;
            }
            text.push_str(&format!(
                "\"{k}\" = \"{}\"\n",
                if pick == 1 { a } else { b }
            ));
        }
        write_profile(profiles.path(), name, &text);
    }
    profiles
}

/// A small xorshift generator: kill moments that differ from one kill to the next, the
/// same in every run of the test.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Starts `cleanroomctl ARGS` against `d` without waiting for it.
fn ctl_in_background(d: &Daemon, args: &[&str]) -> std::process::Child {
    std::process::Command::new(cleanroom::bin("cleanroomctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Restarts a daemon on `state` (recovery runs), reverts, and checks that every value of
/// `snap` is back and the journal is empty.
fn restart_revert_and_check(
    profiles: &Path,
    state: &Path,
    config: &str,
    snap: &KernelSnapshot,
    what: &str,
) {
    let d = daemon_on(profiles, state, config);
    let out = d.ctl(&["--json", "profile", "revert"]);
    assert!(out.status.success(), "{what}: {out:?}\n{}", d.log());
    for (cur, before) in snap.current().iter().zip(snap.taken()) {
        assert_eq!(
            cur.1,
            before.1,
            "{what}: {} not restored\n{}",
            cur.0.display(),
            d.log()
        );
    }
    assert_eq!(json(&out)["journal_entries"], 0, "{what}");
}

#[test]
fn kill_9_at_any_moment_loses_no_original() {
    if !is_root_or_skip("kill_9_at_any_moment_loses_no_original") {
        return;
    }
    let _host = host_lock();
    let snap = many_snapshot();
    let profiles = many_profiles();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().join("state");
    let mut rand = xorshift(0x9e37_79b9_7f4a_7c15);
    let mut kills_mid_apply = 0;
    for iteration in 0..60 {
        let on_start = if iteration % 2 == 0 {
            "reapply"
        } else {
            "revert"
        };
        let config = format!("on_start = \"{on_start}\"\n");
        let mut d = daemon_on(profiles.path(), &state_arg, &config);
        // Sometimes apply A first so the kill lands in a switch.
        if iteration % 3 == 1 {
            assert!(d.ctl(&["profile", "apply", "many-a"]).status.success());
        }
        let target = if iteration % 3 == 1 {
            "many-b"
        } else {
            "many-a"
        };
        let mut child = ctl_in_background(&d, &["profile", "apply", target]);
        std::thread::sleep(Duration::from_micros(rand() % 6000));
        d.signal(Signal::SIGKILL);
        d.wait_exit(Duration::from_secs(5)).expect("killed");
        let _ = child.wait();
        if snap.current() != snap.taken() {
            kills_mid_apply += 1;
        }
        let what = format!("iteration {iteration} ({on_start})");
        restart_revert_and_check(profiles.path(), &state_arg, &config, &snap, &what);
    }
    assert!(
        kills_mid_apply > 10,
        "the kills rarely hit an apply ({kills_mid_apply} of 60)"
    );
}

#[test]
fn kill_9_during_a_revert_loses_no_original() {
    if !is_root_or_skip("kill_9_during_a_revert_loses_no_original") {
        return;
    }
    let _host = host_lock();
    let snap = many_snapshot();
    let profiles = many_profiles();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().join("state");
    let mut rand = xorshift(0x2545_f491_4f6c_dd1d);
    let (mut mid_revert, mut tuned) = (0, snap.taken().to_vec());
    // How long a revert takes the daemon here, from its request to its answer: the kills
    // land at a uniformly random moment within it, however fast or loaded this machine is.
    let window_us = {
        let d = daemon_on(profiles.path(), &state_arg, "");
        let mut c = d.connect();
        let mut took = Vec::new();
        for _ in 0..5 {
            let r = c.call("profile.apply", serde_json::json!({"name": "many-a"}));
            assert!(r.get("result").is_some(), "{r}");
            let t = std::time::Instant::now();
            let r = c.call("profile.revert", serde_json::json!({}));
            took.push(t.elapsed().as_micros() as u64);
            assert!(r.get("result").is_some(), "{r}");
        }
        took.sort_unstable();
        took[2].max(1)
    };
    for iteration in 0..70 {
        let on_start = if iteration % 2 == 0 {
            "reapply"
        } else {
            "revert"
        };
        let config = format!("on_start = \"{on_start}\"\n");
        let mut d = daemon_on(profiles.path(), &state_arg, &config);
        let profile = if iteration % 3 == 2 {
            "many-b"
        } else {
            "many-a"
        };
        assert!(d.ctl(&["profile", "apply", profile]).status.success());
        tuned = snap.current();
        let mut c = d.connect();
        let line = r#"{"jsonrpc":"2.0","id":1,"method":"profile.revert","params":{}}"#;
        c.send_raw(format!("{line}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_micros(rand() % window_us));
        d.signal(Signal::SIGKILL);
        d.wait_exit(Duration::from_secs(5)).expect("killed");
        // The kill landed inside the revert: the journal says it was under way, or some
        // knobs are back and some not.
        let now = snap.current();
        let db = rusqlite::Connection::open(state_arg.join("cleanroom.db")).unwrap();
        let phase: String = db
            .query_row("SELECT phase FROM tuning_state", [], |r| r.get(0))
            .unwrap();
        if phase == "reverting" || (now != snap.taken() && now != tuned) {
            mid_revert += 1;
        }
        let what = format!("iteration {iteration} ({on_start}, {profile})");
        restart_revert_and_check(profiles.path(), &state_arg, &config, &snap, &what);
    }
    eprintln!("{mid_revert} of 70 kills landed in a revert (window {window_us} µs)");
    assert_ne!(tuned, snap.taken(), "the profiles changed the host");
    assert!(
        mid_revert > 5,
        "the kills rarely hit a revert midway ({mid_revert} of 70, window {window_us} µs)"
    );
}

#[test]
fn a_new_boot_recaptures_the_originals() {
    let fake = tempfile::tempdir().unwrap();
    let root = fake.path();
    let put = |p: &str, v: &str| {
        let path = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, v).unwrap();
    };
    let get = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap();
    put(
        "/proc/sys/kernel/random/boot_id",
        "11111111-1111-1111-1111-111111111111\n",
    );
    put("/proc/sys/vm/swappiness", "60\n");
    put("/proc/self/mountinfo", "");
    let cpufreq = "/sys/devices/system/cpu/cpufreq/policy0";
    put(&format!("{cpufreq}/scaling_governor"), "powersave\n");
    put(
        &format!("{cpufreq}/scaling_available_governors"),
        "performance powersave\n",
    );
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "p",
        "[sysctl]\n\"vm.swappiness\" = 5\n[cpu]\ngovernor = \"performance\"\n",
    );
    let state = tempfile::tempdir().unwrap();
    let start = || {
        Daemon::builder()
            .config(&format!(
                "[tuning]\nprofile_dirs = [{:?}]\n",
                profiles.path().display().to_string()
            ))
            .arg("--host-root")
            .arg(root.to_str().unwrap())
            .state_dir(&state.path().join("s"))
            .start()
    };
    let mut d = start();
    let out = d.ctl(&["--json", "profile", "apply", "p"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(get("/proc/sys/vm/swappiness"), "5");
    assert_eq!(get(&format!("{cpufreq}/scaling_governor")), "performance");
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(2)).unwrap();

    // Reboot: a new boot id, and the kernel's defaults back (a different value, so the
    // test can tell old originals from new ones).
    put(
        "/proc/sys/kernel/random/boot_id",
        "22222222-2222-2222-2222-222222222222\n",
    );
    put("/proc/sys/vm/swappiness", "70\n");
    put(&format!("{cpufreq}/scaling_governor"), "powersave\n");
    let d = start();
    assert!(d.log().contains("new boot"), "{}", d.log());
    // Re-applied (on_start = reapply) with the originals captured again.
    assert_eq!(get("/proc/sys/vm/swappiness"), "5");
    let out = d.ctl(&["--json", "profile", "revert"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        get("/proc/sys/vm/swappiness"),
        "70",
        "the new boot's value, not the stale 60"
    );
    assert_eq!(get(&format!("{cpufreq}/scaling_governor")), "powersave");
}

#[test]
fn refused_keys_and_broken_profiles_give_their_errors() {
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "evil",
        "[profile]\nsummary = \"x\"\n[sysctl]\n\"kernel.core_pattern\" = \"|/tmp/x\"\n",
    );
    write_profile(
        profiles.path(),
        "cycle-a",
        "[profile]\ninclude = [\"cycle-b\"]\n",
    );
    write_profile(
        profiles.path(),
        "cycle-b",
        "[profile]\ninclude = [\"cycle-a\"]\n",
    );
    write_profile(
        profiles.path(),
        "typo",
        "[sysctl]\n\"vm.swappiness\" = 10\n[cpu]\ngovernour = \"performance\"\n",
    );
    write_profile(profiles.path(), "fine", "[profile]\nsummary = \"usable\"\n");
    let d = daemon_with_profiles(profiles.path(), "");
    let list = json(&d.ctl(&["--json", "profile", "list"]));
    let by_name = |n: &str| {
        list["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()
            .clone()
    };
    let evil = by_name("evil")["error"].as_str().unwrap().to_owned();
    assert!(
        evil.contains("evil.toml")
            && evil.contains("line 4")
            && evil.contains("kernel.core_pattern"),
        "{evil}"
    );
    assert!(
        by_name("cycle-a")["error"]
            .as_str()
            .unwrap()
            .contains("cycle-a -> cycle-b -> cycle-a")
    );
    let typo = by_name("typo")["error"].as_str().unwrap().to_owned();
    assert!(
        typo.contains("line 4") && typo.contains("governour"),
        "{typo}"
    );
    assert_eq!(by_name("fine")["error"], Value::Null);

    let out = d.ctl(&["profile", "apply", "evil"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("always refused"));
    let out = d.ctl(&["profile", "apply", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no profile named \"nope\""));
    let out = d.ctl(&["profile", "apply", "fine"]);
    assert!(out.status.success(), "the others stay usable: {out:?}");
    let human = String::from_utf8(d.ctl(&["profile", "list"]).stdout).unwrap();
    assert!(human.contains("* fine"), "{human}");
    assert!(human.contains("BROKEN"), "{human}");
}

/// The shipped profiles, built into cleanroomd, as `profile list` names them.
const BUILT_IN: [&str; 7] = [
    "balanced",
    "benchmark",
    "latency-performance",
    "network-latency",
    "network-throughput",
    "throughput-performance",
    "virtual-guest",
];

/// `(name, origin, path, error)` of every listed profile.
fn listed(d: &Daemon) -> Vec<(String, String, String, Value)> {
    let list = json(&d.ctl(&["--json", "profile", "list"]));
    list["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap().to_owned();
            (
                text("name"),
                text("origin"),
                text("path"),
                p["error"].clone(),
            )
        })
        .collect()
}

/// The words of each line of the human `profile list`.
fn human_rows(d: &Daemon) -> Vec<Vec<String>> {
    let out = d.ctl(&["profile", "list"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A daemon with no profile directory (as from the build tree, or installed without the
/// package) has the shipped profiles, built in; a file in a directory replaces one. Only
/// reads and a dry run: nothing is written to the kernel.
#[test]
fn shipped_profiles_are_built_in_and_files_override_them() {
    let d = Daemon::builder()
        .config("[tuning]\nprofile_dirs = []\n")
        .start();
    let want: Vec<_> = BUILT_IN
        .iter()
        .map(|n| {
            (
                n.to_string(),
                "built-in".to_owned(),
                "(built-in)".to_owned(),
                Value::Null,
            )
        })
        .collect();
    assert_eq!(listed(&d), want);
    let rows = human_rows(&d);
    assert_eq!(rows[0][..3], ["NAME", "SOURCE", "SUMMARY"], "{rows:?}");
    assert_eq!(rows[2][..2], ["benchmark", "built-in"], "{rows:?}");

    let show = json(&d.ctl(&["--json", "profile", "show", "benchmark"]));
    assert_eq!(
        (&show["name"], &show["origin"], &show["path"]),
        (
            &Value::from("benchmark"),
            &Value::from("built-in"),
            &Value::from("(built-in)")
        )
    );
    let settings = show["settings"].as_array().unwrap();
    assert!(!settings.is_empty(), "{show}");
    for s in settings {
        assert_eq!(s["source"], "benchmark (built-in)", "{s}");
    }
    let out = d.ctl(&["profile", "show", "network-throughput"]);
    let human = String::from_utf8(out.stdout).unwrap();
    assert!(human.contains("\n  source   built-in\n"), "{human}");
    assert!(
        human.contains("throughput-performance (built-in)"),
        "{human}"
    );
    if nix::unistd::geteuid().is_root() {
        let plan = json(&d.ctl(&["--json", "profile", "apply", "benchmark", "--dry-run"]));
        assert_eq!(plan["dry_run"], true, "{plan}");
        assert_eq!(plan["profile"], "benchmark", "{plan}");
        let active = json(&d.ctl(&["--json", "profile", "active"]));
        assert_eq!(active["profile"], Value::Null, "a dry run applies nothing");
    }
    drop(d);

    // An empty directory changes nothing; a file replaces the built-in of its name, for
    // the profiles that include it too.
    let profiles = tempfile::tempdir().unwrap();
    let d = daemon_with_profiles(profiles.path(), "");
    assert_eq!(listed(&d), want);
    drop(d);
    write_profile(
        profiles.path(),
        "throughput-performance",
        "[profile]\nsummary = \"mine\"\n[sysctl]\n\"vm.swappiness\" = 7\n",
    );
    let file = profiles.path().join("throughput-performance.toml");
    let d = daemon_with_profiles(profiles.path(), "");
    let tp = listed(&d)
        .into_iter()
        .find(|p| p.0 == "throughput-performance")
        .unwrap();
    assert_eq!(
        (tp.1.as_str(), tp.2.as_str()),
        ("file", file.to_str().unwrap())
    );
    let rows = human_rows(&d);
    assert!(
        rows.contains(&vec![
            "throughput-performance".to_owned(),
            file.display().to_string(),
            "mine".to_owned()
        ]),
        "{rows:?}"
    );
    let show = json(&d.ctl(&["--json", "profile", "show", "network-throughput"]));
    assert_eq!(show["origin"], "built-in");
    let from = |id: &str| {
        show["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["setting"] == id)
            .map(|s| s["source"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        from("sysctl.vm.swappiness").as_deref(),
        file.to_str(),
        "{show}"
    );
    assert_eq!(
        from("cpu.governor"),
        None,
        "the built-in is replaced: {show}"
    );
}

#[test]
fn a_reader_cannot_apply_or_revert() {
    if !is_root_or_skip("a_reader_cannot_apply_or_revert") {
        return;
    }
    let profiles = tempfile::tempdir().unwrap();
    write_profile(profiles.path(), "fine", "[profile]\nsummary = \"usable\"\n");
    let d = Daemon::builder()
        .config(&format!(
            "[socket]\nmode = 0o666\n[tuning]\nprofile_dirs = [{:?}]\n",
            profiles.path().display().to_string()
        ))
        .world_traversable()
        .start();
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    for args in [
        &["profile", "apply", "fine"][..],
        &["profile", "revert"][..],
    ] {
        let out = d.ctl_as(&nobody, args);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs role admin"));
    }
    // Reading is allowed.
    assert!(d.ctl_as(&nobody, &["profile", "list"]).status.success());
    assert!(d.ctl_as(&nobody, &["profile", "verify"]).status.success());
}

#[test]
fn revert_works_when_the_profile_file_is_gone() {
    if !is_root_or_skip("revert_works_when_the_profile_file_is_gone") {
        return;
    }
    let _host = host_lock();
    let snap = KernelSnapshot::take(&[SWAPPINESS]);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "gone",
        &format!(
            "[sysctl]\n\"vm.swappiness\" = {}\n",
            other(&read(SWAPPINESS), 3, 4)
        ),
    );
    let d = daemon_with_profiles(profiles.path(), "");
    assert!(d.ctl(&["profile", "apply", "gone"]).status.success());
    std::fs::remove_file(profiles.path().join("gone.toml")).unwrap();
    assert!(d.ctl(&["reload"]).status.success());
    let out = d.ctl(&["profile", "revert"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(snap.current(), snap.taken());
}

#[test]
fn irqs_the_kernel_will_not_move_are_reported_not_fatal() {
    if !is_root_or_skip("irqs_the_kernel_will_not_move_are_reported_not_fatal") {
        return;
    }
    let _host = host_lock();
    let mut paths = vec!["/proc/irq/default_smp_affinity".to_owned()];
    for e in std::fs::read_dir("/proc/irq").unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().parse::<u32>().is_ok() {
            paths.push(e.path().join("smp_affinity_list").display().to_string());
        }
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let snap = KernelSnapshot::take(&refs);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(profiles.path(), "irq0", "[irq]\naffinity = \"0\"\n");
    let d = daemon_with_profiles(profiles.path(), "");
    let out = d.ctl(&["--json", "profile", "apply", "irq0"]);
    assert!(out.status.success(), "a refused IRQ is not fatal: {out:?}");
    let r = json(&out);
    assert_eq!(read("/proc/irq/default_smp_affinity"), "1");
    let items = r["items"].as_array().unwrap();
    let refused: Vec<&Value> = items
        .iter()
        .filter(|i| i["status"] == "unsupported")
        .collect();
    for i in &refused {
        assert!(
            i["reason"].as_str().unwrap().contains("the kernel refused"),
            "{i}"
        );
    }
    let moved = items.iter().filter(|i| i["status"] == "applied").count();
    assert!(moved >= 1, "{r}");
    // verify does not call a refused IRQ drift.
    let v = d.ctl(&["--json", "profile", "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert!(d.ctl(&["profile", "revert"]).status.success());
    assert_eq!(snap.current(), snap.taken());
}

fn fake_host(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (p, v) in files {
        let path = root.path().join(p.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, v).unwrap();
    }
    root
}

#[test]
fn periodic_drift_checks_update_the_metric_and_log() {
    let root = fake_host(&[
        ("/proc/sys/kernel/random/boot_id", "b\n"),
        ("/proc/sys/vm/swappiness", "60\n"),
        ("/proc/self/mountinfo", ""),
    ]);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(profiles.path(), "p", "[sysctl]\n\"vm.swappiness\" = 5\n");
    let d = Daemon::builder()
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\ndrift_check_interval_s = 1\n",
            profiles.path().display().to_string()
        ))
        .arg("--host-root")
        .arg(root.path().to_str().unwrap())
        .start();
    assert!(d.ctl(&["profile", "apply", "p"]).status.success());
    std::fs::write(root.path().join("proc/sys/vm/swappiness"), "9\n").unwrap();
    let mut seen = false;
    for _ in 0..100 {
        let m = String::from_utf8(d.ctl(&["metrics"]).stdout).unwrap();
        if m.contains("cleanroomd_tuning_drift_items 1") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen, "drift metric never rose\n{}", d.log());
    assert!(d.log().contains("tuning drift"), "{}", d.log());
}

#[test]
fn revert_on_stop_puts_the_originals_back() {
    let root = fake_host(&[
        ("/proc/sys/kernel/random/boot_id", "b\n"),
        ("/proc/sys/vm/swappiness", "60\n"),
        ("/proc/self/mountinfo", ""),
    ]);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(profiles.path(), "p", "[sysctl]\n\"vm.swappiness\" = 5\n");
    let mut d = Daemon::builder()
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\nrevert_on_stop = true\n",
            profiles.path().display().to_string()
        ))
        .arg("--host-root")
        .arg(root.path().to_str().unwrap())
        .start();
    assert!(d.ctl(&["profile", "apply", "p"]).status.success());
    let swappiness = root.path().join("proc/sys/vm/swappiness");
    assert_eq!(std::fs::read_to_string(&swappiness).unwrap(), "5");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert_eq!(std::fs::read_to_string(&swappiness).unwrap(), "60");
}

#[test]
fn concurrent_applies_queue_and_reload_finds_new_profiles() {
    let root = fake_host(&[
        ("/proc/sys/kernel/random/boot_id", "b\n"),
        ("/proc/sys/vm/swappiness", "60\n"),
        ("/proc/sys/vm/dirty_ratio", "20\n"),
        ("/proc/self/mountinfo", ""),
    ]);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "a",
        "[sysctl]\n\"vm.swappiness\" = 1\n\"vm.dirty_ratio\" = 11\n",
    );
    write_profile(
        profiles.path(),
        "b",
        "[sysctl]\n\"vm.swappiness\" = 2\n\"vm.dirty_ratio\" = 12\n",
    );
    let d = Daemon::builder()
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\n",
            profiles.path().display().to_string()
        ))
        .arg("--host-root")
        .arg(root.path().to_str().unwrap())
        .start();
    std::thread::scope(|s| {
        for i in 0..8 {
            let d = &d;
            s.spawn(move || {
                let name = if i % 2 == 0 { "a" } else { "b" };
                let out = d.ctl(&["profile", "apply", name]);
                assert!(out.status.success(), "{out:?}");
            });
        }
    });
    // Whichever came last, the host holds one profile's values, never a mix.
    let sw = std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap();
    let dr = std::fs::read_to_string(root.path().join("proc/sys/vm/dirty_ratio")).unwrap();
    assert!(
        matches!((sw.as_str(), dr.as_str()), ("1", "11") | ("2", "12")),
        "{sw} {dr}"
    );
    let active = json(&d.ctl(&["--json", "profile", "active"]));
    assert_eq!(active["journal_entries"], 2);

    // A profile added later appears after a reload (SIGHUP does the same).
    write_profile(profiles.path(), "late", "[profile]\nsummary = \"new\"\n");
    assert!(d.ctl(&["profile", "show", "late"]).status.code() == Some(1));
    d.signal(Signal::SIGHUP);
    let mut found = false;
    for _ in 0..100 {
        if d.ctl(&["profile", "show", "late"]).status.success() {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(found, "SIGHUP reloads the profiles");
    let out = d.ctl(&["profile", "revert"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(),
        "60"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sys/vm/dirty_ratio")).unwrap(),
        "20"
    );
}

#[test]
fn a_write_the_kernel_half_takes_is_rolled_back_too() {
    if !is_root_or_skip("a_write_the_kernel_half_takes_is_rolled_back_too") {
        return;
    }
    let _host = host_lock();
    let rmem = "/proc/sys/net/ipv4/tcp_rmem";
    let snap = KernelSnapshot::take(&[rmem, SWAPPINESS]);
    let profiles = tempfile::tempdir().unwrap();
    // The kernel stores a vector element by element: the first two elements are written
    // before the third (-5) is refused with EINVAL.
    write_profile(
        profiles.path(),
        "half",
        &format!(
            "[sysctl]\n\"net.ipv4.tcp_rmem\" = \"4095 87381 -5\"\n\"vm.swappiness\" = {}\n",
            other(&read(SWAPPINESS), 17, 18)
        ),
    );
    let d = daemon_with_profiles(profiles.path(), "");
    let out = d.ctl(&["--json", "profile", "apply", "half"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = json(&out);
    assert!(
        matches!(status_of(&r, rmem).as_str(), "failed" | "rolled_back"),
        "{r}"
    );
    assert_eq!(
        snap.current(),
        snap.taken(),
        "the half-written vector was put back: {r}"
    );
    assert_eq!(r["journal_entries"], 0);
}

#[test]
fn the_service_status_follows_the_profile_and_the_runs() {
    if !is_root_or_skip("the_service_status_follows_the_profile_and_the_runs") {
        return;
    }
    let _host = host_lock();
    let snap = KernelSnapshot::take(&[SWAPPINESS]);
    let profiles = tempfile::tempdir().unwrap();
    let value = other(&read(SWAPPINESS), 21, 22);
    write_profile(
        profiles.path(),
        "status-test",
        &format!("[sysctl]\n\"vm.swappiness\" = {value}\n"),
    );
    let mut d = daemon_with_profiles(profiles.path(), "");
    assert!(
        d.notifications
            .iter()
            .any(|n| n.contains("READY=1") && n.contains("STATUS=no profile active, 0 runs")),
        "{:?}",
        d.notifications
    );

    d.notifications.clear();
    assert!(d.ctl(&["profile", "apply", "status-test"]).status.success());
    d.wait_notification(
        "STATUS=profile status-test active, 0 runs",
        Duration::from_secs(5),
    )
    .unwrap();
    d.notifications.clear();
    let out = d.ctl(&["--json", "run", "--detach", "--", "sleep", "1207.3"]);
    assert!(out.status.success(), "{out:?}");
    let batch = json(&out)["batch"].as_str().unwrap().to_owned();
    d.wait_notification(
        "STATUS=profile status-test active, 1 run\n",
        Duration::from_secs(5),
    )
    .unwrap();
    d.notifications.clear();
    assert!(d.ctl(&["runs", "cancel", &batch]).status.success());
    d.wait_notification(
        "STATUS=profile status-test active, 0 runs",
        Duration::from_secs(10),
    )
    .unwrap();
    d.notifications.clear();
    assert!(d.ctl(&["profile", "revert"]).status.success());
    d.wait_notification("STATUS=no profile active, 0 runs", Duration::from_secs(5))
        .unwrap();
    // A reload reports the same line with READY=1.
    d.notifications.clear();
    d.signal(Signal::SIGHUP);
    d.wait_notification("RELOADING=1", Duration::from_secs(5))
        .unwrap();
    d.wait_notification(
        "READY=1\nSTATUS=no profile active, 0 runs",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(read(SWAPPINESS), snap.taken()[0].1.trim());
}

#[test]
fn offline_revert_puts_the_host_back_when_the_daemon_cannot_start() {
    if !is_root_or_skip("offline_revert_puts_the_host_back_when_the_daemon_cannot_start") {
        return;
    }
    let _host = host_lock();
    let snap = KernelSnapshot::take(&[SWAPPINESS, DIRTY_RATIO]);
    let original = (read(SWAPPINESS), read(DIRTY_RATIO));
    let swappiness = other(&original.0, 23, 24);
    let dirty = other(&original.1, 27, 28);
    let profiles = tempfile::tempdir().unwrap();
    write_profile(
        profiles.path(),
        "offline",
        &format!("[sysctl]\n\"vm.swappiness\" = {swappiness}\n\"vm.dirty_ratio\" = {dirty}\n"),
    );
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder()
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\n",
            profiles.path().display().to_string()
        ))
        .state_dir(state.path())
        .start();
    assert!(d.ctl(&["profile", "apply", "offline"]).status.success());
    assert_eq!(read(SWAPPINESS), swappiness);
    let offline = |extra: &[&str]| {
        std::process::Command::new(cleanroom::bin("cleanroomd"))
            .arg("--revert")
            .arg("--state-dir")
            .arg(state.path())
            .args(extra)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };

    // Not beside a live daemon: the state directory is taken, and the error says what to use.
    let out = offline(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cleanroomctl profile revert"), "{err}");
    assert_eq!(read(SWAPPINESS), swappiness, "nothing touched");

    // The daemon gone (the default is to keep the tuning on stop) and its configuration
    // broken: the journal still puts the host back.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(0));
    assert_eq!(read(SWAPPINESS), swappiness);
    let bad = state.path().join("broken.toml");
    std::fs::write(&bad, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    // Someone else changes one knob meanwhile: a conflict, left alone without --force.
    std::fs::write(DIRTY_RATIO, "33").unwrap();
    let out = offline(&["--config", bad.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("limits.max_connections"), "{stderr}");
    assert!(
        stdout.contains("restored") && stdout.contains("vm.swappiness"),
        "{stdout}"
    );
    assert!(
        stdout.contains("conflict") && stdout.contains("vm.dirty_ratio"),
        "{stdout}"
    );
    assert!(stdout.contains("1 knob(s) left"), "{stdout}");
    assert_eq!(read(SWAPPINESS), original.0);
    assert_eq!(read(DIRTY_RATIO), "33");

    let out = offline(&["--config", bad.to_str().unwrap(), "--force"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("forced") && stdout.contains("0 knob(s) left"),
        "{stdout}"
    );
    assert_eq!(read(DIRTY_RATIO), original.1);
    drop(snap);
}
