//! End-to-end tests of pinning: real processes and threads on this machine, matched by
//! name, command line and thread name, placed by the daemon, checked in `/proc` and with
//! util-linux's `ionice` (never through cleanroom's own reading code), and put back.
//! Every process a test starts has a name of its own, so no rule reaches anything else;
//! they are killed when the test ends, even by a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cleanroom::runs::{eventually, json_of, online_cpus};
use cleanroom::{Daemon, Procs, host_lock, is_root_or_skip};
use serde_json::Value;

/// `program` under the name `name`, so its processes have that name (`comm` is the base
/// name of the path exec is given). A symbolic link, not a copy: a copy just written can
/// fail to exec (`ETXTBSY`) while a test running beside this one forks with its write
/// descriptor inherited.
fn named_copy(dir: &Path, program: &str, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::os::unix::fs::symlink(program, &path).expect("symlink");
    path
}

/// A name no other process has: `prefix` and this test process's id.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

/// Fields of `/proc/PID/task/TID/stat` after the name: (nice, rt_priority, policy).
fn sched_of(pid: i32, tid: i32) -> (i64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // Fields 19, 40 and 41 of proc(5), counted from 1 with the pid at 1 and the name at 2.
    (
        f[19 - 3].parse().unwrap(),
        f[40 - 3].parse().unwrap(),
        f[41 - 3].parse().unwrap(),
    )
}

fn cpus(pid: i32, tid: i32) -> String {
    cleanroom::runs::cpus_of(&format!("{pid}/task/{tid}"))
}

/// What `ionice -p` says of a task.
fn ionice(tid: i32) -> String {
    let out = Command::new("ionice")
        .args(["-p", &tid.to_string()])
        .output()
        .expect("ionice (util-linux)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Thread ids of a process by thread name.
fn threads(pid: i32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim().to_owned()))
        })
        .collect();
    out.sort();
    out
}

/// A daemon whose only profile directory is `dir`.
fn daemon_with(dir: &Path) -> Daemon {
    daemon_config(dir, "").start()
}

/// The same, with `extra` in its `[tuning]` section.
fn daemon_config(dir: &Path, extra: &str) -> cleanroom::DaemonBuilder {
    Daemon::builder().config(&format!(
        "[tuning]\nprofile_dirs = [{:?}]\n{extra}",
        dir.display().to_string()
    ))
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

/// A python3 process named `name` with threads `io-0`, `io-1` and `calc` (each names
/// itself through /proc, as pthread_setname_np does), that waits on stdin.
fn threaded(procs: &mut Procs, name: &str) -> i32 {
    let script = format!(
        r#"
import os, threading, sys
open("/proc/self/comm", "w").write("{name}")
ready = threading.Barrier(4)
def worker(n):
    open(f"/proc/self/task/{{threading.get_native_id()}}/comm", "w").write(n)
    ready.wait()
    threading.Event().wait()
for n in ["io-0", "io-1", "calc"]:
    threading.Thread(target=worker, args=(n,), daemon=True).start()
ready.wait()
print("ready", flush=True)
sys.stdin.read()
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let pid = procs.spawn(&mut cmd);
    assert_eq!(read_line(procs.children.last_mut().unwrap()), "ready");
    pid
}

/// This machine's online CPUs, which must be two: the tests pin to CPU 1.
fn two_cpus() -> String {
    let online = online_cpus();
    assert_eq!(
        online, "0-1",
        "this test pins to CPU 1 of a two-CPU machine"
    );
    online
}

#[test]
fn processes_and_threads_are_placed_now_and_later_and_put_back() {
    if !is_root_or_skip("processes_and_threads_are_placed_now_and_later_and_put_back") {
        return;
    }
    let _host = host_lock();
    let online = two_cpus();
    let bin = tempfile::tempdir().unwrap();
    let sleeper = unique("crp-s");
    let threads_name = unique("crp-t");
    let sleep = named_copy(bin.path(), "/bin/sleep", &sleeper);
    let mut procs = Procs::default();
    let before = procs.spawn(Command::new(&sleep).arg("1000"));
    let py = threaded(&mut procs, &threads_name);
    let originals = (
        cpus(before, before),
        sched_of(before, before),
        ionice(before),
    );

    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("pinned.toml"),
        format!(
            r#"
[[pin]]
comm = "{sleeper}"
cpus = "1"
nice = 5
ioprio = "idle"

[[pin]]
comm = "{threads_name}"
thread = "io-*"
cpus = "1"
policy = "fifo"
priority = 7
"#
        ),
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    let applied = ok(&d.ctl(&["--json", "profile", "apply", "pinned"]));
    let pins = applied["pins"].as_array().unwrap();
    assert_eq!(pins[0]["matched"], 1, "{applied}");
    assert_eq!(pins[0]["placed"], 1, "{applied}");
    assert_eq!(pins[1]["matched"], 2, "the two io threads: {applied}");

    // What existed is placed.
    assert_eq!(cpus(before, before), "1");
    assert_eq!(sched_of(before, before).0, 5);
    assert_eq!(ionice(before), "idle");
    for (tid, name) in threads(py) {
        let (_, prio, policy) = sched_of(py, tid);
        if name.starts_with("io-") {
            assert_eq!((cpus(py, tid), prio, policy), ("1".into(), 7, 1), "{name}");
        } else {
            assert_eq!(
                (cpus(py, tid), prio, policy),
                (online.clone(), 0, 0),
                "{name}"
            );
        }
    }

    // What starts later is placed by its exec event (no scan runs after the apply).
    let later = procs.spawn(Command::new(&sleep).arg("1000"));
    assert!(
        eventually(Duration::from_secs(10), || cpus(later, later) == "1"
            && ionice(later) == "idle"),
        "a process started after the apply is placed: {} {}\n{}",
        cpus(later, later),
        ionice(later),
        d.log()
    );
    let verified = ok(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(verified["ok"], true, "{verified}");
    // `status` names the rules in force and what they changed (the first process's three
    // attributes, two for each io thread, the later process's three).
    let status = ok(&d.ctl(&["--json", "status"]));
    assert_eq!(status["pin_rules"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(status["pin_events"], true, "{status}");
    assert_eq!(status["pinned"], 10, "{status}");

    // Someone re-pins one by hand: verify says drifted, revert leaves it (a conflict) and
    // puts every other original back.
    assert!(
        Command::new("taskset")
            .args(["-p", "-c", "0", &later.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    );
    let verified = d.ctl(&["--json", "profile", "verify"]);
    let v = json_of(&verified);
    assert_eq!(v["ok"], false, "{v}");
    let text = String::from_utf8_lossy(&d.ctl(&["profile", "verify"]).stdout).into_owned();
    assert!(
        text.contains("drifted") && text.contains(&later.to_string()),
        "{text}"
    );
    let reverted = d.ctl(&["--json", "profile", "revert"]);
    let r = json_of(&reverted);
    assert_eq!(r["ok"], false, "a conflict: {r}");
    let conflicts: Vec<&Value> = r["pins"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["problems"].as_array().unwrap())
        .collect();
    assert_eq!(conflicts.len(), 1, "{r}");
    assert_eq!(conflicts[0]["status"], "conflict");
    assert_eq!(conflicts[0]["tid"], later);
    assert_eq!(cpus(later, later), "0", "left as its owner set it");
    assert_eq!(ionice(later), originals.2, "its other attributes are back");
    assert_eq!(
        (
            cpus(before, before),
            sched_of(before, before),
            ionice(before)
        ),
        originals
    );
    for (tid, name) in threads(py) {
        assert_eq!(
            (cpus(py, tid), sched_of(py, tid).1, sched_of(py, tid).2),
            (online.clone(), 0, 0),
            "{name}"
        );
    }
    let status = ok(&d.ctl(&["--json", "status"]));
    assert_eq!(status["pin_rules"], serde_json::json!([]), "{status}");
    assert_eq!(status["pin_events"], false, "{status}");
    assert_eq!(
        status["pinned"], 1,
        "the conflict stays journaled: {status}"
    );
    // Nothing is placed after the revert.
    let after = procs.spawn(Command::new(&sleep).arg("1000"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(cpus(after, after), online);
}

#[test]
fn a_child_that_inherited_a_placement_gets_its_original_back() {
    if !is_root_or_skip("a_child_that_inherited_a_placement_gets_its_original_back") {
        return;
    }
    let _host = host_lock();
    let online = online_cpus();
    let bin = tempfile::tempdir().unwrap();
    let parent_name = unique("crp-p");
    let shell = named_copy(bin.path(), "/bin/sh", &parent_name);
    let trigger = bin.path().join("go");
    let child_pid = bin.path().join("child");
    let mut procs = Procs::default();
    // Starts a `sleep` (another name: no rule takes it) once the trigger exists.
    let parent = procs.spawn(Command::new(&shell).args([
        "-c",
        &format!(
            "while [ ! -e {t} ]; do sleep 0.02; done; sleep 1000 & echo $! > {c}; wait",
            t = trigger.display(),
            c = child_pid.display()
        ),
    ]));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("parent.toml"),
        format!("[[pin]]\ncomm = \"{parent_name}\"\ncpus = \"1\"\n"),
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    ok(&d.ctl(&["--json", "profile", "apply", "parent"]));
    assert_eq!(cpus(parent, parent), "1");
    std::fs::write(&trigger, "").unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&child_pid).is_ok_and(|s| s.ends_with('\n'))
    }));
    let child: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    procs.pids.push(child);
    assert_eq!(cpus(child, child), "1", "inherited from its parent");
    let r = ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(cpus(parent, parent), online);
    assert_eq!(
        cpus(child, child),
        online,
        "the inherited placement went with the rule"
    );
}

/// A python3 process named `name` whose arguments end with `args`, with a thread named
/// `calc` that renames itself `rename` when a line comes on stdin (and says `renamed`).
fn renaming(procs: &mut Procs, name: &str, args: &[&str], rename: &str) -> i32 {
    let script = format!(
        r#"
import os, threading, sys
open("/proc/self/comm", "w").write("{name}")
ready, go, done = threading.Barrier(2), threading.Event(), threading.Event()
def worker():
    me = f"/proc/self/task/{{threading.get_native_id()}}/comm"
    open(me, "w").write("calc")
    ready.wait()
    go.wait()
    open(me, "w").write("{rename}")
    done.set()
    threading.Event().wait()
threading.Thread(target=worker, daemon=True).start()
ready.wait()
print("ready", flush=True)
sys.stdin.readline()
go.set()
done.wait()
print("renamed", flush=True)
sys.stdin.read()
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let pid = procs.spawn(&mut cmd);
    assert_eq!(read_line(procs.children.last_mut().unwrap()), "ready");
    pid
}

/// A line of a child's stdout, trimmed.
fn read_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

#[test]
fn command_lines_users_renamed_threads_and_every_policy_are_placed() {
    if !is_root_or_skip("command_lines_users_renamed_threads_and_every_policy_are_placed") {
        return;
    }
    let _host = host_lock();
    let online = two_cpus();
    let bin = tempfile::tempdir().unwrap();
    let (worker, other) = (unique("crp-w"), unique("crp-o"));
    let role = format!("--role=worker-{}", std::process::id());
    let mut procs = Procs::default();
    // By command line: the same program, one with the role among its arguments.
    let with_role = renaming(&mut procs, &worker, &[&role], &unique("late-"));
    let without = renaming(&mut procs, &worker, &["--role=other"], "calc2");
    // By user: the same name, one process nobody's, one root's.
    let named = named_copy(bin.path(), "/bin/sleep", &other);
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user nobody")
        .uid
        .as_raw();
    let theirs = procs.spawn(std::os::unix::process::CommandExt::uid(
        Command::new(&named).arg("1000"),
        nobody,
    ));
    let roots = procs.spawn(Command::new(&named).arg("1000"));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("more.toml"),
        format!(
            r#"
[[pin]]
cmdline = "{role}$"
cpus = "1"
policy = "rr"
priority = 3

[[pin]]
comm = "{worker}"
thread = "late-*"
policy = "idle"

[[pin]]
comm = "{other}"
user = "nobody"
nice = 4
ioprio = "be:6"
policy = "batch"
"#
        ),
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    let applied = ok(&d.ctl(&["--json", "profile", "apply", "more"]));
    let pins = applied["pins"].as_array().unwrap();
    // The command line takes every thread of its process (two: main and calc).
    assert_eq!(pins[0]["matched"], 2, "{applied}");
    assert_eq!(pins[2]["matched"], 1, "nobody's process alone: {applied}");
    for (tid, name) in threads(with_role) {
        assert_eq!(
            (
                cpus(with_role, tid),
                sched_of(with_role, tid).1,
                sched_of(with_role, tid).2
            ),
            ("1".into(), 3, 2),
            "{name}: SCHED_RR 3 on CPU 1"
        );
    }
    for (tid, name) in threads(without) {
        assert_eq!(
            (cpus(without, tid), sched_of(without, tid).2),
            (online.clone(), 0),
            "{name}: another command line, untouched"
        );
    }
    assert_eq!(sched_of(theirs, theirs), (4, 0, 3), "nice 4, SCHED_BATCH");
    assert_eq!(ionice(theirs), "best-effort: prio 6");
    assert_eq!(
        sched_of(roots, roots),
        (0, 0, 0),
        "root's process, untouched"
    );
    // A thread that takes a name a rule wants is placed by its rename (comm event).
    let child = procs
        .children
        .iter_mut()
        .find(|c| c.id() as i32 == with_role)
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(read_line(child), "renamed");
    let late = threads(with_role)
        .into_iter()
        .find(|(_, n)| n.starts_with("late-"))
        .expect("the renamed thread")
        .0;
    assert!(
        eventually(Duration::from_secs(10), || sched_of(with_role, late).2 == 5),
        "SCHED_IDLE after its rename: {:?}\n{}",
        sched_of(with_role, late),
        d.log()
    );
    // By hand, with the same selectors and placements.
    let io_before: Vec<(i32, String, String)> = threads(without)
        .into_iter()
        .map(|(tid, name)| (tid, name, ionice(tid)))
        .collect();
    let added = ok(&d.ctl(&[
        "--json",
        "pin",
        "add",
        "--cmdline=--role=other$",
        "--user",
        "0",
        "--thread",
        "calc*",
        "--ioprio",
        "be:2",
    ]));
    assert_eq!(added["report"]["matched"], 1, "{added}");
    for (tid, name, before) in io_before {
        let want = if name.starts_with("calc") {
            "best-effort: prio 2".to_owned()
        } else {
            before
        };
        assert_eq!(ionice(tid), want, "{name}");
    }
    let r = ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(r["ok"], true, "{r}");
    for (tid, name) in threads(with_role) {
        assert_eq!(
            (
                cpus(with_role, tid),
                sched_of(with_role, tid).1,
                sched_of(with_role, tid).2
            ),
            (online.clone(), 0, 0),
            "{name} put back"
        );
    }
    assert_eq!(sched_of(theirs, theirs), (0, 0, 0));
}

#[test]
fn bad_rules_are_refused_with_file_line_and_key() {
    let profiles = tempfile::tempdir().unwrap();
    let cases = [
        (
            "nopriority",
            "[[pin]]\ncomm = \"x\"\npolicy = \"fifo\"\n",
            "line 3: key `pin[0].policy`: policy \"fifo\" needs a priority",
        ),
        (
            "noselector",
            "[[pin]]\ncpus = \"1\"\n",
            "a rule needs a selector",
        ),
        (
            "noplacement",
            "[[pin]]\ncomm = \"x\"\n",
            "a rule needs a placement",
        ),
        (
            "badregex",
            "[[pin]]\n\ncmdline = \"(\"\nnice = 1\n",
            "line 3: key `pin[0].cmdline`: bad regex",
        ),
        (
            "badnice",
            "[[pin]]\ncomm = \"x\"\nnice = 40\n",
            "key `pin[0].nice`: bad nice value",
        ),
        (
            "twice",
            "[[pin]]\ncomm = \"x\"\nnice = 1\n[[pin]]\ncomm = \"x\"\nnice = 2\n",
            "line 5: a second rule for comm=\"x\" (the first at",
        ),
        (
            "overlap",
            "[[pin]]\ncomm = \"ng*\"\ncpus = \"0\"\n[[pin]]\ncomm = \"nginx\"\ncpus = \"1\"\n",
            "line 6: key `cpus`: comm=\"nginx\" and comm=\"ng*\" can take the same tasks",
        ),
        (
            "unknown",
            "[[pin]]\ncomm = \"x\"\nnice = 1\naffinity = \"1\"\n",
            "unknown field `affinity`",
        ),
        (
            "nouser",
            "[[pin]]\ncomm = \"x\"\nuser = \"no-such-user-here\"\nnice = 1\n",
            "no user named \"no-such-user-here\"",
        ),
    ];
    for (name, text, _) in &cases {
        std::fs::write(profiles.path().join(format!("{name}.toml")), text).unwrap();
    }
    std::fs::write(
        profiles.path().join("nocpu.toml"),
        "[[pin]]\ncomm = \"x\"\ncpus = \"0-4095\"\n",
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    let listed = String::from_utf8_lossy(&d.ctl(&["profile", "list"]).stdout).into_owned();
    // CPUs this host does not have: found at load, on this host, at the key's line.
    let nocpu = (
        "nocpu",
        "",
        "nocpu.toml: line 3: key `cpus`: CPUs 2-4095 do not exist",
    );
    for (name, _, error) in cases.iter().chain([&nocpu]) {
        let line = listed
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} listed: {listed}"));
        assert!(
            line.contains("BROKEN") && line.contains(error),
            "{name}: {line}"
        );
    }
    // And so refused at apply, before anything changes.
    let out = d.ctl(&["profile", "apply", "nocpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nocpu.toml: line 3: key `cpus`: CPUs 2-4095 do not exist"),
        "{err}"
    );
    let active = json_of(&d.ctl(&["--json", "profile", "active"]));
    assert_eq!(active["profile"], Value::Null);
}

/// A daemon killed with pins in force: restarted with `on_start = "reapply"` it places
/// again (what started meanwhile included) and follows new processes; restarted with
/// `"revert"` it puts every original back.
#[test]
fn after_a_kill_the_restart_reapplies_or_reverts_the_placements() {
    if !is_root_or_skip("after_a_kill_the_restart_reapplies_or_reverts_the_placements") {
        return;
    }
    let _host = host_lock();
    let online = online_cpus();
    let bin = tempfile::tempdir().unwrap();
    let name = unique("crp-k");
    let sleep = named_copy(bin.path(), "/bin/sleep", &name);
    let mut procs = Procs::default();
    let first = procs.spawn(Command::new(&sleep).arg("1000"));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("k.toml"),
        format!("[[pin]]\ncomm = \"{name}\"\ncpus = \"1\"\nnice = 3\n"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let start = |on_start: &str| {
        daemon_config(profiles.path(), &format!("on_start = \"{on_start}\"\n"))
            .state_dir(state.path())
            .start()
    };
    let mut d = start("reapply");
    ok(&d.ctl(&["--json", "profile", "apply", "k"]));
    assert_eq!(cpus(first, first), "1");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(d);
    // Started while no daemon runs: nobody places it.
    let meanwhile = procs.spawn(Command::new(&sleep).arg("1000"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cpus(meanwhile, meanwhile), online);
    let mut d = start("reapply");
    assert_eq!(
        cpus(meanwhile, meanwhile),
        "1",
        "placed by the restart\n{}",
        d.log()
    );
    assert_eq!(sched_of(meanwhile, meanwhile).0, 3);
    let later = procs.spawn(Command::new(&sleep).arg("1000"));
    assert!(
        eventually(Duration::from_secs(10), || cpus(later, later) == "1"),
        "followed after the restart\n{}",
        d.log()
    );
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(d);
    let d = start("revert");
    for pid in [first, meanwhile, later] {
        assert_eq!(
            (cpus(pid, pid), sched_of(pid, pid).0),
            (online.clone(), 0),
            "{pid}\n{}",
            d.log()
        );
    }
    let active = json_of(&d.ctl(&["--json", "profile", "active"]));
    assert_eq!(active["profile"], Value::Null, "{active}");
}

/// Rules added by hand: only admins add and remove them, a reader lists them; a dry run
/// changes nothing; a malformed one names its option; they win over the profile's rules,
/// outlive a restart, and `pin remove` puts back what they placed. At most
/// `pin::MAX_ADDED` at once.
#[test]
fn rules_added_by_hand_are_for_admins_outlive_restarts_and_go_back_on_remove() {
    if !is_root_or_skip("rules_added_by_hand_are_for_admins_outlive_restarts_and_go_back_on_remove")
    {
        return;
    }
    let _host = host_lock();
    let online = online_cpus();
    let bin = tempfile::tempdir().unwrap();
    let name = unique("crp-h");
    let sleep = named_copy(bin.path(), "/bin/sleep", &name);
    let mut procs = Procs::default();
    let target = procs.spawn(Command::new(&sleep).arg("1000"));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("p.toml"),
        format!("[[pin]]\ncomm = \"{name}\"\ncpus = \"0\"\nnice = 2\n"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    // Everyone may connect (as a reader); `nogroup` runs, nobody administers.
    let start = || {
        Daemon::builder()
            .config(&format!(
                "[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n[tuning]\nprofile_dirs = [{:?}]\n",
                profiles.path().display().to_string()
            ))
            .state_dir(state.path())
            .world_traversable()
            .start()
    };
    let mut d = start();
    const NOBODY: [&str; 5] = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let add = ["pin", "add", "--comm", name.as_str(), "--cpus", "1"];
    let denied = d.ctl_as(&NOBODY, &add);
    assert_eq!(denied.status.code(), Some(77), "{denied:?}");
    assert_eq!(cpus(target, target), online);
    // A dry run says what it would do and does nothing.
    let dry: Value = ok(&d.ctl(&[
        "--json",
        "pin",
        "add",
        "--comm",
        &name,
        "--cpus",
        "1",
        "--dry-run",
    ]));
    assert_eq!(
        (dry["id"].clone(), dry["report"]["matched"].clone()),
        (0.into(), 1.into()),
        "{dry}"
    );
    assert_eq!(dry["report"]["changed"], 1, "{dry}");
    assert_eq!(cpus(target, target), online);
    // A malformed rule names its option.
    let bad = d.ctl(&["pin", "add", "--comm", &name, "--policy", "rr"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--policy: policy \"rr\" needs a priority"),
        "{bad:?}"
    );
    // The profile first, then the rule by hand, which wins on cpus; the profile's nice
    // stays.
    ok(&d.ctl(&["--json", "profile", "apply", "p"]));
    assert_eq!(cpus(target, target), "0");
    let added = ok(&d.ctl(&["--json", "pin", "add", "--comm", &name, "--cpus", "1"]));
    let id = added["id"].as_u64().unwrap();
    assert_eq!(
        (cpus(target, target), sched_of(target, target).0),
        ("1".into(), 2)
    );
    let listed = json_of(&d.ctl_as(&NOBODY, &["--json", "pin", "list"]));
    let rules = listed["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{listed}");
    assert_eq!(rules[0]["source"], "profile p", "{listed}");
    assert_eq!(rules[1]["id"], id, "{listed}");
    assert_eq!(rules[1]["source"], "added by uid 0", "{listed}");
    // Across a restart (on_start = "reapply"): still in force, and followed.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(d);
    let d = start();
    let later = procs.spawn(Command::new(&sleep).arg("1000"));
    assert!(
        eventually(Duration::from_secs(10), || cpus(later, later) == "1"),
        "{}",
        d.log()
    );
    // Removed: the profile's rule decides again.
    let removed = ok(&d.ctl(&["--json", "pin", "remove", &id.to_string()]));
    assert_eq!(removed["ok"], true, "{removed}");
    assert_eq!(cpus(target, target), "0", "{removed}");
    assert_eq!(cpus(later, later), "0", "{removed}");
    let gone = d.ctl(&["pin", "remove", &id.to_string()]);
    assert!(
        String::from_utf8_lossy(&gone.stderr)
            .contains(&format!("no pin rule added by hand has id {id}")),
        "{gone:?}"
    );
    ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(
        (cpus(target, target), sched_of(target, target).0),
        (online.clone(), 0)
    );
    // Bounded: past the most there may be, refused by name.
    for i in 0..256 {
        let out = d.ctl(&[
            "pin",
            "add",
            "--comm",
            &format!("crp-none-{i}"),
            "--nice",
            "1",
        ]);
        assert!(out.status.success(), "{i}: {out:?}");
    }
    let over = d.ctl(&["pin", "add", "--comm", "crp-none-x", "--nice", "1"]);
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("256 pin rules added by hand already"),
        "{over:?}"
    );
}

/// A thread a placed process creates after the apply inherits the placement from the
/// kernel, whose fork event names the process's parent, not the creating thread, as the
/// new thread's parent: the thread is journaled from its own process's rows, so a revert
/// puts it back too. And a task that ends leaves nothing in the journal.
#[test]
fn a_thread_started_after_the_apply_gets_its_original_back() {
    if !is_root_or_skip("a_thread_started_after_the_apply_gets_its_original_back") {
        return;
    }
    let _host = host_lock();
    let online = online_cpus();
    let name = unique("crp-l");
    let script = format!(
        r#"
import threading, sys
open("/proc/self/comm", "w").write("{name}")
print("ready", flush=True)
sys.stdin.readline()
def late():
    open(f"/proc/self/task/{{threading.get_native_id()}}/comm", "w").write("late")
    print(threading.get_native_id(), flush=True)
    threading.Event().wait()
threading.Thread(target=late, daemon=True).start()
sys.stdin.read()
"#
    );
    let mut procs = Procs::default();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let py = procs.spawn(&mut cmd);
    let child = procs.children.last_mut().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::{BufRead, Write};
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("l.toml"),
        format!("[[pin]]\ncomm = \"{name}\"\ncpus = \"1\"\n"),
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    ok(&d.ctl(&["--json", "profile", "apply", "l"]));
    assert_eq!(cpus(py, py), "1");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let late: i32 = line.trim().parse().unwrap();
    assert_eq!(cpus(py, late), "1", "inherited from the process");
    // The journal has it (with the process's original) once its fork event is handled.
    assert!(
        eventually(Duration::from_secs(10), || {
            let s = json_of(&d.ctl(&["--json", "status"]));
            s["pinned"].as_u64().unwrap_or(0) >= 2
        }),
        "{}",
        d.log()
    );
    let r = ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(cpus(py, py), online);
    assert_eq!(
        cpus(py, late),
        online,
        "the new thread got its original back"
    );
    // With the rule in force again, tasks that end leave no rows behind (their exit
    // events drop them).
    ok(&d.ctl(&["--json", "profile", "apply", "l"]));
    let s = json_of(&d.ctl(&["--json", "status"]));
    assert_eq!(s["pinned"], 2, "{s}");
    drop(procs);
    assert!(
        eventually(Duration::from_secs(10), || {
            json_of(&d.ctl(&["--json", "status"]))["pinned"] == 0
        }),
        "{}",
        d.log()
    );
    ok(&d.ctl(&["--json", "profile", "revert"]));
}

/// `[cpu] max_latency_us`: every CPU's resume latency limit set (and put back), and a
/// request held open on /dev/cpu_dma_latency while the profile is in force, which the
/// kernel reports as the host's limit; released by the revert.
#[test]
fn a_latency_limit_is_held_while_the_profile_is_in_force() {
    if !is_root_or_skip("a_latency_limit_is_held_while_the_profile_is_in_force") {
        return;
    }
    let _host = host_lock();
    let dma = "/dev/cpu_dma_latency";
    let qos: Vec<String> = (0..)
        .map(|c| format!("/sys/devices/system/cpu/cpu{c}/power/pm_qos_resume_latency_us"))
        .take_while(|p| Path::new(p).exists())
        .collect();
    if !Path::new(dma).exists() || qos.is_empty() {
        eprintln!("skipping: no {dma} or per-CPU resume latency here");
        return;
    }
    let qos_refs: Vec<&str> = qos.iter().map(String::as_str).collect();
    let snapshot = cleanroom::KernelSnapshot::take(&qos_refs);
    let limit = || {
        let mut b = [0u8; 4];
        use std::io::Read;
        std::fs::File::open(dma)
            .unwrap()
            .read_exact(&mut b)
            .unwrap();
        i32::from_ne_bytes(b)
    };
    let before = limit();
    let n: i32 = if before == 7 { 8 } else { 7 };
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("lat.toml"),
        format!("[cpu]\nmax_latency_us = {n}\n"),
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    let applied = ok(&d.ctl(&["--json", "profile", "apply", "lat"]));
    assert_eq!(limit(), n.min(before), "{applied}");
    for p in &qos {
        assert_eq!(
            std::fs::read_to_string(p).unwrap().trim(),
            n.to_string(),
            "{p}"
        );
    }
    let verified = ok(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(verified["ok"], true, "{verified}");
    let reverted = ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(reverted["ok"], true, "{reverted}");
    assert_eq!(limit(), before, "the request went with the revert");
    assert_eq!(snapshot.current(), snapshot.taken().to_vec());
}

/// A cpuset cgroup of a test's own (cgroup v1), removed when the test ends.
struct Cpuset(PathBuf);

impl Cpuset {
    fn make(name: &str) -> Self {
        let dir = PathBuf::from("/sys/fs/cgroup/cpuset").join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cpuset.cpus"), online_cpus()).unwrap();
        std::fs::write(dir.join("cpuset.mems"), "0").unwrap();
        Self(dir)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A `sleep` started inside it (it moves itself in, then execs).
    fn sleeper(&self, procs: &mut Procs) -> i32 {
        procs.spawn(Command::new("sh").arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec sleep 1000",
            self.0.display()
        )))
    }
}

impl Drop for Cpuset {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A rule with only a cgroup selector places the cgroup: its cpuset's CPUs (so what
/// starts in it has them from the kernel), and task attributes task by task. A cgroup
/// made again under the same path is placed again when a process starts in it; a revert
/// puts the cpuset back, and leaves one someone changed since.
#[test]
fn a_cgroup_rule_places_the_cgroup_and_what_starts_in_it() {
    if !is_root_or_skip("a_cgroup_rule_places_the_cgroup_and_what_starts_in_it") {
        return;
    }
    let _host = host_lock();
    assert_eq!(online_cpus(), "0-1", "this test pins to CPU 1 of two");
    let name = unique("crp-cg");
    let mut procs = Procs::default();
    let cg = Cpuset::make(&name);
    let before = cg.sleeper(&mut procs);
    assert!(eventually(Duration::from_secs(5), || cg
        .read("cgroup.procs")
        .contains(&before.to_string())));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("cg.toml"),
        format!("[[pin]]\ncgroup = \"/{name}\"\ncpus = \"1\"\nmems = \"0\"\nnice = 4\n"),
    )
    .unwrap();
    let d = daemon_with(profiles.path());
    let applied = ok(&d.ctl(&["--json", "profile", "apply", "cg"]));
    assert_eq!(
        applied["pins"][0]["problems"],
        serde_json::json!([]),
        "{applied}"
    );
    assert_eq!(cg.read("cpuset.cpus"), "1");
    assert_eq!(cg.read("cpuset.mems"), "0");
    assert_eq!(
        cpus(before, before),
        "1",
        "the kernel placed it with its cpuset"
    );
    assert_eq!(sched_of(before, before).0, 4);
    let later = cg.sleeper(&mut procs);
    assert!(
        eventually(Duration::from_secs(10), || cpus(later, later) == "1"
            && sched_of(later, later).0 == 4),
        "what starts in the cgroup later: {} {:?}\n{}",
        cpus(later, later),
        sched_of(later, later),
        d.log()
    );
    let verified = ok(&d.ctl(&["--json", "profile", "verify"]));
    assert_eq!(verified["ok"], true, "{verified}");
    // `pin list` reports the whole cgroup's rule as verify does (its cpuset included).
    let listed = ok(&d.ctl(&["--json", "pin", "list"]));
    assert_eq!(
        listed["rules"][0]["report"], verified["pins"][0],
        "{listed}\n{verified}"
    );

    // The cgroup goes and comes back under its path (a service restarted by hand): the
    // first process that starts in it places it again.
    drop(procs);
    procs = Procs::default();
    assert!(eventually(Duration::from_secs(5), || cg
        .read("cgroup.procs")
        .is_empty()));
    std::fs::remove_dir(&cg.0).unwrap();
    let cg = Cpuset::make(&name);
    assert_eq!(cg.read("cpuset.cpus"), online_cpus());
    let again = cg.sleeper(&mut procs);
    assert!(
        eventually(Duration::from_secs(10), || cg.read("cpuset.cpus") == "1"
            && cpus(again, again) == "1"),
        "the cgroup made again is placed again: {}\n{}",
        cg.read("cpuset.cpus"),
        d.log()
    );

    let reverted = ok(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(reverted["ok"], true, "{reverted}");
    assert_eq!(cg.read("cpuset.cpus"), online_cpus());
    assert_eq!(cpus(again, again), online_cpus());
    assert_eq!(sched_of(again, again).0, 0);

    // Someone changes the cpuset after an apply: a revert leaves it, as a conflict.
    ok(&d.ctl(&["--json", "profile", "apply", "cg"]));
    std::fs::write(cg.0.join("cpuset.cpus"), "0").unwrap();
    let reverted = json_of(&d.ctl(&["--json", "profile", "revert"]));
    assert_eq!(reverted["ok"], false, "{reverted}");
    assert!(reverted.to_string().contains("conflict"), "{reverted}");
    assert_eq!(cg.read("cpuset.cpus"), "0");
    drop(procs);
}
