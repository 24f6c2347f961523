//! End-to-end test of the Ansible collection (`ansible/`, `cleanroom.host`): its modules
//! driven by `ansible-playbook` against localhost (Debian's ansible-core, installed by
//! scripts/setup) and a daemon of the test's own, on this host's real kernel values
//! (snapshotted and put back); `ansible-lint` clean over the collection and the test
//! playbooks. The role installs a package into a booted system; packaging/test-install.sh
//! runs it there.

use std::path::{Path, PathBuf};
use std::process::Command;

use cleanroom::{Daemon, KernelSnapshot, bin, host_lock, is_root_or_skip};
use serde_json::{Value, json};

const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
const DIRTY_RATIO: &str = "/proc/sys/vm/dirty_ratio";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A collections path holding the repository's `ansible/` as `cleanroom.host`.
fn collections(dir: &Path) -> PathBuf {
    let root = dir.join("collections");
    let ns = root.join("ansible_collections").join("cleanroom");
    std::fs::create_dir_all(&ns).unwrap();
    std::os::unix::fs::symlink(repo().join("ansible"), ns.join("host")).unwrap();
    root
}

/// What one `ansible-playbook` run did: the recap's counts and everything it printed.
#[derive(Debug)]
struct Played {
    ok: u32,
    changed: u32,
    failed: u32,
    output: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

fn other(current: &str, a: u32, b: u32) -> u32 {
    if current == a.to_string() { b } else { a }
}

#[test]
fn playbooks_apply_verify_revert_and_fail_on_regressions() {
    if !is_root_or_skip("playbooks_apply_verify_revert_and_fail_on_regressions") {
        return;
    }
    let _host = host_lock();
    let snap = KernelSnapshot::take(&[SWAPPINESS, DIRTY_RATIO]);
    let (swap0, dirty0) = (read(SWAPPINESS), read(DIRTY_RATIO));
    let (swap, dirty) = (other(&swap0, 33, 34), other(&dirty0, 27, 28));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("cr-ansible.toml"),
        format!("[sysctl]\n\"vm.swappiness\" = {swap}\n\"vm.dirty_ratio\" = {dirty}\n"),
    )
    .unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\n",
            profiles.path().display().to_string()
        ))
        .start();
    let dir = d.dir().to_owned();
    let coll = collections(&dir);
    let base = json!({
        "cleanroom_socket": dir.join("cleanroomd.sock"),
        "cleanroom_ctl": bin("cleanroomctl"),
        "ansible_python_interpreter": "/usr/bin/python3",
    });
    let play = |playbook: &str, vars: Value, extra: &[&str]| -> Played {
        let mut all = base.clone();
        all.as_object_mut()
            .unwrap()
            .extend(vars.as_object().unwrap().clone());
        let file = dir.join("vars.json");
        std::fs::write(&file, all.to_string()).unwrap();
        let out = Command::new("ansible-playbook")
            .args(["-i", "localhost,"])
            .arg(repo().join("tests/ansible").join(playbook))
            .arg("-e")
            .arg(format!("@{}", file.display()))
            .args(extra)
            .env("ANSIBLE_COLLECTIONS_PATH", &coll)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", dir.join("ansible-tmp"))
            .output()
            .expect("ansible-playbook (scripts/setup installs ansible-core)");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let recap = output
            .lines()
            .rev()
            .find(|l| l.starts_with("localhost") && l.contains(" ok="))
            .unwrap_or_else(|| panic!("no recap:\n{output}"))
            .to_owned();
        let count = |key: &str| -> u32 {
            recap
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{key} in {recap}"))
        };
        let played = Played {
            ok: count("ok"),
            changed: count("changed"),
            failed: count("failed"),
            output,
        };
        // ansible-playbook exits 2 when a task failed, 0 otherwise.
        assert_eq!(
            out.status.code(),
            Some(if played.failed > 0 { 2 } else { 0 }),
            "{}",
            played.output
        );
        played
    };
    let profile = |state: &str, more: Value| {
        let mut v = json!({"profile_name": "cr-ansible", "profile_state": state});
        v.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        v
    };

    // Check mode: the dry run's plan as a diff, nothing written.
    let p = play(
        "profile.yml",
        profile("applied", json!({})),
        &["--check", "--diff"],
    );
    assert_eq!((p.changed, p.failed), (1, 0), "{}", p.output);
    assert!(
        p.output
            .contains(&format!("-sysctl vm.swappiness = {swap0}"))
            && p.output
                .contains(&format!("+sysctl vm.swappiness = {swap}")),
        "{}",
        p.output
    );
    assert_eq!(read(SWAPPINESS), swap0, "check mode wrote");
    // Apply, then again: changed only the first time.
    let p = play("profile.yml", profile("applied", json!({})), &[]);
    assert_eq!((p.changed, p.failed), (1, 0), "{}", p.output);
    assert_eq!(
        (read(SWAPPINESS), read(DIRTY_RATIO)),
        (swap.to_string(), dirty.to_string())
    );
    let p = play("profile.yml", profile("applied", json!({})), &[]);
    assert_eq!((p.ok, p.changed, p.failed), (1, 0, 0), "{}", p.output);
    // Check mode of an apply already in force: nothing to change.
    let p = play("profile.yml", profile("applied", json!({})), &["--check"]);
    assert_eq!((p.changed, p.failed), (0, 0), "{}", p.output);
    // Verify holds; after a hand edit it fails naming the knob and both values.
    let p = play(
        "profile.yml",
        profile("applied", json!({"profile_verify": true})),
        &[],
    );
    assert_eq!((p.changed, p.failed), (0, 0), "{}", p.output);
    let edited = other(&swap.to_string(), 41, 42);
    std::fs::write(SWAPPINESS, edited.to_string()).unwrap();
    let p = play(
        "profile.yml",
        profile("applied", json!({"profile_verify": true})),
        &[],
    );
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output.contains(&format!(
            "sysctl vm.swappiness: drifted: holds {edited}, the profile sets {swap}"
        )),
        "{}",
        p.output
    );
    // Revert in check mode changes nothing; a plain revert leaves the hand-edited knob
    // alone and fails naming it; with force everything is back.
    let p = play(
        "profile.yml",
        profile("reverted", json!({})),
        &["--check", "--diff"],
    );
    assert_eq!((p.changed, p.failed), (1, 0), "{}", p.output);
    assert!(p.output.contains("-profile = cr-ansible"), "{}", p.output);
    assert_eq!(read(DIRTY_RATIO), dirty.to_string());
    let p = play("profile.yml", profile("reverted", json!({})), &[]);
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output.contains("sysctl vm.swappiness: conflict: holds"),
        "{}",
        p.output
    );
    assert_eq!(read(DIRTY_RATIO), dirty0, "the other knob is put back");
    let p = play(
        "profile.yml",
        profile("reverted", json!({"profile_force": true})),
        &[],
    );
    assert_eq!((p.changed, p.failed), (1, 0), "{}", p.output);
    assert_eq!(
        (read(SWAPPINESS), read(DIRTY_RATIO)),
        (swap0.clone(), dirty0.clone())
    );
    let p = play("profile.yml", profile("reverted", json!({})), &[]);
    assert_eq!((p.changed, p.failed), (0, 0), "{}", p.output);
    // Verify with no profile in force fails saying so.
    let p = play(
        "profile.yml",
        profile("applied", json!({"profile_verify": true})),
        &[],
    );
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output
            .contains("profile cr-ansible is not in force (none is)"),
        "{}",
        p.output
    );

    // Runs: a baseline saved (changed), a ten times slower command against it fails as a
    // regression with the medians and the interval, a failing command fails with its code.
    let run = |v: Value| play("run.yml", v, &[]);
    let p = run(
        json!({"run_command": ["sleep", "0.005"], "run_repeat": 10, "run_save_baseline": "quick"}),
    );
    assert_eq!((p.changed, p.failed), (1, 0), "{}", p.output);
    let p =
        run(json!({"run_command": ["sleep", "0.05"], "run_repeat": 10, "run_baseline": "quick"}));
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output.contains("regression: slower: median")
            && p.output.contains("against baseline:quick"),
        "{}",
        p.output
    );
    let p = run(json!({"run_command": ["sh", "-c", "exit 3"], "run_repeat": 1}));
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output
            .contains("sh -c exit 3: exited; runs not exiting 0: 1 (of 1), the last exit code 3"),
        "{}",
        p.output
    );
    let p = run(json!({"run_command": ["sleep", "0.001"], "run_repeat": 3}));
    assert_eq!((p.changed, p.failed), (0, 0), "{}", p.output);
    // A run that fails before the last one fails the task, naming it (the daemon goes on
    // after a run that exits with a code; only the first finds no flag file).
    let flag = format!("/var/tmp/cleanroom-ansible-test-{}", std::process::id());
    let _ = std::fs::remove_file(&flag);
    let script = format!("test -e {flag} || {{ touch {flag}; exit 4; }}");
    let p = run(json!({"run_command": ["sh", "-c", script], "run_repeat": 3}));
    let _ = std::fs::remove_file(&flag);
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output
            .contains("runs not exiting 0: 1 (of 3), the last exit code 0"),
        "{}",
        p.output
    );
    // A regression is not saved as the baseline it asked to replace.
    let baseline_batch = || {
        let out = d.ctl(&["--json", "baseline", "list"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["baselines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "quick")
            .map(|b| b["batch"].clone())
            .unwrap()
    };
    let before = baseline_batch();
    let p = run(json!({"run_command": ["sleep", "0.05"], "run_repeat": 10,
        "run_baseline": "quick", "run_save_baseline": "quick"}));
    assert_eq!((p.changed, p.failed), (0, 1), "{}", p.output);
    assert_eq!(
        baseline_batch(),
        before,
        "a regression replaced the baseline"
    );
    // Options that do not go with the state are refused, naming them.
    let p = play(
        "profile.yml",
        profile("applied", json!({"profile_force": true})),
        &[],
    );
    assert_eq!(p.failed, 1, "{}", p.output);
    assert!(
        p.output
            .contains("force is for state: reverted (state is applied)"),
        "{}",
        p.output
    );
    drop(d);
    snap.restore();

    // ansible-lint: the collection (modules, role, metadata) and the test playbooks.
    for (cwd, args) in [
        (repo().join("ansible"), vec![]),
        (repo().join("tests/ansible"), vec!["profile.yml", "run.yml"]),
    ] {
        let out = Command::new("ansible-lint")
            .args(&args)
            .current_dir(&cwd)
            .env("ANSIBLE_COLLECTIONS_PATH", &coll)
            .env("NO_COLOR", "1")
            .output()
            .expect("ansible-lint (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "ansible-lint in {}:\n{}{}",
            cwd.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
