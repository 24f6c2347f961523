//! End-to-end tests of clean-room runs: real cgroups and processes on this machine (root).
//! Every test checks that nothing it started outlives it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cleanroom::runs::{alive, eventually, json_of, my_cpus, next_output, online_cpus, start_run};
use cleanroom::{Daemon, RawClient, host_lock, is_root_or_skip};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// The run cgroups the daemon has now (directories `run-*` below the bases it reports).
fn run_cgroups(d: &Daemon) -> Vec<String> {
    let out = d.ctl(&["--json", "status"]);
    let status = json_of(&out);
    let mut found = Vec::new();
    for base in status["run_cgroups"].as_array().unwrap() {
        let base = base.as_str().unwrap();
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("run-") {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

/// Every run's cgroup is gone: removed right after its answer (off the answer's path), so
/// this waits for the daemon to get there.
fn assert_no_run_cgroups(d: &Daemon) {
    assert!(
        eventually(Duration::from_secs(5), || run_cgroups(d).is_empty()),
        "{:?}",
        run_cgroups(d)
    );
}

/// With the run options `extra`: a command that does not exist exits 127, a file without
/// execute permission 126.
fn assert_start_failures(d: &Daemon, extra: &[&str]) {
    let run = |program: &str| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend(["--", program]);
        d.ctl(&args)
    };
    let out = run("no-such-command-here");
    assert_eq!(out.status.code(), Some(127), "{extra:?}: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("command not found: no-such-command-here")
    );
    let not_exec = d.dir().join("not-executable");
    std::fs::write(&not_exec, "echo should not run\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(not_exec.to_str().unwrap());
    assert_eq!(out.status.code(), Some(126), "{extra:?}: {out:?}");
}

#[test]
fn exit_codes_signals_and_start_failures_pass_through() {
    if !is_root_or_skip("exit_codes_signals_and_start_failures_pass_through") {
        return;
    }
    let d = Daemon::start();
    let out = d.ctl(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("err\n"));
    let out = d.ctl(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    assert_start_failures(&d, &[]);
    let r = json_of(&d.ctl(&["--json", "run", "--", "sh", "-c", "exit 3"]));
    for key in [
        "id",
        "exit_code",
        "signal",
        "end_reason",
        "wall_ms",
        "user_ms",
        "sys_ms",
        "max_rss_kb",
        "cpus",
        "noise",
    ] {
        assert!(r.get(key).is_some(), "{key} missing from {r}");
    }
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["end_reason"], "exited");
    assert_no_run_cgroups(&d);
}

#[test]
fn output_streams_while_the_run_is_still_going() {
    if !is_root_or_skip("output_streams_while_the_run_is_still_going") {
        return;
    }
    let d = Daemon::start();
    let go = d.dir().join("go");
    let mut c = RawClient::connect(&d.socket);
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.01; done; echo second",
        go.display()
    );
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", script], "timeout_ms": 20000}),
    );
    // The run cannot end before the test creates `go`, so "first" must arrive first.
    let first = next_output(&mut c);
    assert_eq!(first["method"], "run.output", "{first}");
    assert_eq!(first["params"]["data"], "first\n");
    assert_eq!(first["params"]["request"], 1);
    std::fs::write(&go, "").unwrap();
    let mut rest = Vec::new();
    loop {
        let m = c.recv().unwrap();
        let done = m.get("id").is_some();
        rest.push(m);
        if done {
            break;
        }
    }
    assert!(rest.iter().any(|m| m["params"]["data"] == "second\n"));
    let result = rest.last().unwrap();
    assert_eq!(result["result"]["end_reason"], "exited", "{result}");
}

#[test]
fn processes_that_escape_with_setsid_do_not_survive_the_run() {
    if !is_root_or_skip("processes_that_escape_with_setsid_do_not_survive_the_run") {
        return;
    }
    let d = Daemon::start();
    let out = d.ctl(&[
        "--json",
        "run",
        "--",
        "sh",
        "-c",
        "setsid sleep 1001.25 & sleep 1001.25 & disown; echo started",
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = json_of(&out);
    assert!(r["killed"].as_u64().unwrap() >= 2, "{r}");
    assert!(alive("1001.25").is_empty(), "{:?}", alive("1001.25"));
    assert_no_run_cgroups(&d);
}

#[test]
fn a_timeout_kills_the_whole_run() {
    if !is_root_or_skip("a_timeout_kills_the_whole_run") {
        return;
    }
    // Never beside the fork bomb or the memory hog: the kill rounds are its wall time.
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    let out = d.ctl(&[
        "--json",
        "--timeout",
        "1s",
        "run",
        "--",
        "sh",
        "-c",
        "sleep 1002.5 & sleep 1002.5",
    ]);
    assert_eq!(out.status.code(), Some(124));
    let r = json_of(&out);
    assert_eq!(r["end_reason"], "timeout");
    let wall = r["wall_ms"].as_f64().unwrap();
    // Ended by the 1 s timeout, not by its sleeps (1002.5 s): when exactly is the
    // machine's business (the kill rounds, a loaded host).
    assert!(
        (1000.0..3000.0).contains(&wall),
        "a 1 s timeout ended the run after {wall} ms"
    );
    assert!(alive("1002.5").is_empty());
}

#[test]
fn a_fork_bomb_is_contained_and_cleaned_up() {
    if !is_root_or_skip("a_fork_bomb_is_contained_and_cleaned_up") {
        return;
    }
    // It keeps both CPUs busy for seconds: never beside a test that measures.
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    let out = d.ctl(&[
        "--json",
        "--timeout",
        "2s",
        "run",
        "--pids",
        "64",
        "--",
        "sh",
        "-c",
        "bomb() { bomb | bomb & }; bomb; sleep 1003.5",
    ]);
    let r = json_of(&out);
    assert!(
        matches!(r["end_reason"].as_str(), Some("timeout" | "exited")),
        "{r}"
    );
    assert!(alive("bomb").is_empty());
    assert_no_run_cgroups(&d);
    // The daemon is fine and the host can still fork.
    assert!(d.ctl(&["run", "--", "true"]).status.success());
}

#[test]
fn a_memory_hog_ends_with_reason_oom() {
    if !is_root_or_skip("a_memory_hog_ends_with_reason_oom") {
        return;
    }
    // Reclaim and the OOM killer slow the whole host: never beside a test that measures.
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    let out = d.ctl(&[
        "--json",
        "run",
        "--memory",
        "32M",
        "--",
        "python3",
        "-c",
        "x = bytearray(256 * 1024 * 1024); print(len(x))",
    ]);
    let r = json_of(&out);
    assert_eq!(r["end_reason"], "oom", "{r}");
    assert!(r["oom_kills"].as_u64().unwrap() >= 1);
    assert_eq!(out.status.code(), Some(137));
    assert!(r["max_rss_kb"].as_u64().unwrap() <= 32 * 1024 + 64, "{r}");
}

#[test]
fn a_run_as_nobody_is_nobody() {
    if !is_root_or_skip("a_run_as_nobody_is_nobody") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = work.path().join("secret");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let made = work.path().join("made");
    let script = format!(
        "id -u; touch {}; cat {} && echo READ-IT",
        made.display(),
        secret.display()
    );
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["run", "--cwd", "/", "--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("65534\n"), "{out:?}");
    assert!(
        !stdout.contains("READ-IT"),
        "nobody read a root-only file: {out:?}"
    );
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), 65534);
    assert_eq!(std::fs::metadata(&made).unwrap().gid(), 65534);
    // Real, effective, saved and file-system ids all nobody's: no way back to root.
    let ids = "grep -E '^(Uid|Gid):' /proc/self/status";
    let out = d.ctl_as(&nobody, &["run", "--cwd", "/", "--", "sh", "-c", ids]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n",
        "{out:?}"
    );
    // A working directory nobody cannot enter is an error naming it and the user.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = d.ctl_as(
        &nobody,
        &[
            "run",
            "--cwd",
            private.path().to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(private.path().to_str().unwrap()) && err.contains("65534"),
        "{err}"
    );
}

#[test]
fn a_reader_may_not_run() {
    if !is_root_or_skip("a_reader_may_not_run") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n")
        .world_traversable()
        .start();
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run.start needs role runner"));
}

#[test]
fn a_client_that_disconnects_cancels_its_run() {
    if !is_root_or_skip("a_client_that_disconnects_cancels_its_run") {
        return;
    }
    let d = Daemon::start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", "echo up; sleep 1004.5"]}),
    );
    assert_eq!(next_output(&mut c)["params"]["data"], "up\n");
    assert!(!alive("1004.5").is_empty());
    drop(c);
    assert!(
        eventually(Duration::from_secs(5), || alive("1004.5").is_empty()),
        "{:?}",
        alive("1004.5")
    );
    assert!(eventually(Duration::from_secs(5), || run_cgroups(&d).is_empty()));
}

#[test]
fn a_restart_after_kill_9_cleans_up_the_runs_left_behind() {
    if !is_root_or_skip("a_restart_after_kill_9_cleans_up_the_runs_left_behind") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder().state_dir(&state.path().join("s")).start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", "echo up; setsid sleep 1005.5 & sleep 1005.5"]}),
    );
    assert_eq!(next_output(&mut c)["params"]["data"], "up\n");
    let before = run_cgroups(&d);
    assert!(!before.is_empty(), "{before:?}");
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).unwrap();
    drop(c);
    assert!(
        !alive("1005.5").is_empty(),
        "the run outlived the daemon, as expected"
    );
    assert!(before.iter().all(|p| Path::new(p).exists()));
    let d2 = Daemon::builder().state_dir(&state.path().join("s")).start();
    assert!(alive("1005.5").is_empty(), "{:?}", alive("1005.5"));
    assert!(before.iter().all(|p| !Path::new(p).exists()), "{before:?}");
    assert!(run_cgroups(&d2).is_empty());
    assert!(
        d2.log().contains("left by a previous daemon"),
        "{}",
        d2.log()
    );
}

#[test]
fn sigterm_ends_runs_and_the_daemon_promptly() {
    if !is_root_or_skip("sigterm_ends_runs_and_the_daemon_promptly") {
        return;
    }
    let _host = cleanroom::host_lock();
    let mut d = Daemon::start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", "echo up; sleep 1006.5"]}),
    );
    assert_eq!(next_output(&mut c)["params"]["data"], "up\n");
    let cgroups = run_cgroups(&d);
    assert!(!cgroups.is_empty());
    let bases: Vec<String> = json_of(&d.ctl(&["--json", "status"]))["run_cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    d.signal(Signal::SIGTERM);
    // Its shutdown is bounded (grace, then cleanup); the wait here only catches a hang.
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(
        !d.log().contains("runs still cleaning up at exit"),
        "the runs were not ended within the shutdown's budget:\n{}",
        d.log()
    );
    assert!(eventually(Duration::from_secs(2), || alive("1006.5").is_empty()));
    assert!(
        cgroups.iter().all(|p| !Path::new(p).exists()),
        "{cgroups:?}"
    );
    // Nothing of the daemon's is left in cgroupfs: its bases go too, with the run cgroups
    // it had prepared ahead and their parked helpers.
    assert!(bases.iter().all(|b| !Path::new(b).exists()), "{bases:?}");
    assert!(alive(&bases[0]).is_empty(), "{:?}", alive(&bases[0]));
}

#[test]
fn repeats_give_statistics() {
    if !is_root_or_skip("repeats_give_statistics") {
        return;
    }
    let d = Daemon::start();
    let out = d.ctl(&[
        "--json", "run", "--repeat", "5", "--warmup", "2", "--", "true",
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = json_of(&out);
    assert_eq!(r["runs"].as_array().unwrap().len(), 5);
    let wall = &r["stats"]["wall_ms"];
    let (min, median, max) = (
        wall["min"].as_f64().unwrap(),
        wall["median"].as_f64().unwrap(),
        wall["max"].as_f64().unwrap(),
    );
    assert!(min <= median && median <= max, "{wall}");
    assert!(wall["cv_percent"].is_number());
}

#[test]
fn a_root_callers_run_has_no_capabilities_and_deterministic_runs_repeat_addresses() {
    if !is_root_or_skip(
        "a_root_callers_run_has_no_capabilities_and_deterministic_runs_repeat_addresses",
    ) {
        return;
    }
    let d = Daemon::start();
    let out = d.ctl(&["run", "--", "grep", "^Cap", "/proc/self/status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(set))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    // Nor the daemon's signal mask or ignored signals (SIGPIPE back to its default).
    let out = d.ctl(&[
        "run",
        "--",
        "grep",
        "-E",
        "^Sig(Blk|Ign)",
        "/proc/self/status",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    let stack = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "grep", "stack", "/proc/self/maps"]);
        String::from_utf8_lossy(&d.ctl(&args).stdout).into_owned()
    };
    let (a, b) = (stack(&["--deterministic"]), stack(&["--deterministic"]));
    assert!(a.contains("[stack]"), "{a}");
    assert_eq!(a, b, "deterministic runs have the same stack address");
    let (c, e) = (stack(&[]), stack(&[]));
    assert_ne!(c, e, "without --deterministic the kernel randomises it");
}

#[test]
fn isolated_runs_see_only_loopback_a_private_tmp_and_their_own_hostname() {
    if !is_root_or_skip("isolated_runs_see_only_loopback_a_private_tmp_and_their_own_hostname") {
        return;
    }
    let d = Daemon::start();
    let marker = format!("cleanroom-isolation-{}", std::process::id());
    let script = format!("cat /proc/self/net/dev; hostname; touch /tmp/{marker}; ls -a /tmp");
    let out = d.ctl(&[
        "run",
        "--isolate",
        "net,mount,uts,ipc",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let ifaces: Vec<&str> = text
        .lines()
        .skip(2)
        .take_while(|l| l.contains(':'))
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{text}");
    assert!(text.contains("\ncleanroom\n"), "{text}");
    assert!(text.contains(&marker));
    assert!(
        !Path::new(&format!("/tmp/{marker}")).exists(),
        "the private /tmp leaked to the host"
    );
    // lo is up: a server and a client on 127.0.0.1 inside the run talk.
    let py = "import socket;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();c=socket.create_connection(s.getsockname());print('loopback ok')";
    let out = d.ctl(&["run", "--isolate", "net", "--", "python3", "-c", py]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "loopback ok\n",
        "{out:?}"
    );
}

/// How many proc file systems this process's mount table has (a run's must not leak here).
fn proc_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - proc "))
        .count()
}

#[test]
fn a_pid_namespace_makes_the_command_pid_1_alone_and_leaves_nothing_behind() {
    if !is_root_or_skip("a_pid_namespace_makes_the_command_pid_1_alone_and_leaves_nothing_behind") {
        return;
    }
    let d = Daemon::start();
    let mounts = proc_mounts();
    // Builtins only: the shell is the one process of its namespace. /tmp stays the host's.
    let host_file = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let script = format!(
        "echo $$ /proc/[0-9]*; test -e {} && echo host-tmp",
        host_file.path().display()
    );
    let out = d.ctl(&["run", "--isolate", "pid", "--", "sh", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 /proc/1\nhost-tmp\n",
        "{out:?}"
    );
    // ps sees the run's processes only.
    let out = d.ctl(&[
        "run",
        "--isolate",
        "pid",
        "--",
        "sh",
        "-c",
        "sleep 1 & ps -e -o pid=",
    ]);
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(out.status.success(), "{out:?}");
    assert!(
        pids.len() <= 3 && pids.iter().all(|p| p.parse::<u32>().unwrap() <= 3),
        "{pids:?}"
    );
    // Double-forked and setsid'd processes do not survive PID 1.
    let out = d.ctl(&[
        "--json",
        "run",
        "--isolate",
        "pid",
        "--",
        "sh",
        "-c",
        "setsid sleep 1012.5 & (sleep 1012.5 &); echo started",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(alive("1012.5").is_empty(), "{:?}", alive("1012.5"));
    // Start failures keep their meaning inside a pid namespace.
    assert_start_failures(&d, &["--isolate", "pid"]);
    let missing = d.dir().join("missing");
    let out = d.ctl(&[
        "run",
        "--isolate",
        "pid",
        "--cwd",
        missing.to_str().unwrap(),
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("uid 0"),
        "{err}"
    );
    assert_eq!(proc_mounts(), mounts, "a run's /proc leaked to the host");
    assert_no_run_cgroups(&d);
}

#[test]
fn all_five_namespaces_together() {
    if !is_root_or_skip("all_five_namespaces_together") {
        return;
    }
    let d = Daemon::start();
    let marker = format!("cleanroom-five-{}", std::process::id());
    let script = format!(
        "echo $$; hostname; cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '; \
         touch /tmp/{marker}; ls /tmp; pwd"
    );
    let out = d.ctl(&[
        "run",
        "--isolate",
        "net,pid,mount,uts,ipc",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("1\ncleanroom\nlo\n{marker}\n/tmp\n"),
        "{out:?}"
    );
    assert!(!Path::new(&format!("/tmp/{marker}")).exists());
    assert_no_run_cgroups(&d);
}

/// `cleanroomctl run [ISOLATE...] --cwd CWD -- sh -c SCRIPT`, as the caller `user` (an
/// admin's `--user`) when given.
fn run_in(d: &Daemon, isolate: &[&str], cwd: &Path, user: Option<&str>, script: &str) -> Output {
    let mut args = vec!["run"];
    if let Some(user) = user {
        args.extend(["--user", user]);
    }
    args.extend_from_slice(isolate);
    args.extend(["--cwd", cwd.to_str().unwrap(), "--", "sh", "-c", script]);
    d.ctl(&args)
}

#[test]
fn a_private_tmp_keeps_a_working_directory_below_tmp_and_hides_the_rest() {
    if !is_root_or_skip("a_private_tmp_keeps_a_working_directory_below_tmp_and_hides_the_rest") {
        return;
    }
    let d = Daemon::start();
    let work = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::write(work.path().join("file"), "from the host\n").unwrap();
    let beside = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let script = format!(
        "cat file; pwd; test -e {} || echo the rest of /tmp is hidden; ls -A /tmp; \
         echo from the run > made",
        beside.path().display()
    );
    let name = work.path().file_name().unwrap().to_str().unwrap();
    let kept = format!(
        "from the host\n{}\nthe rest of /tmp is hidden\n{name}\n",
        work.path().display()
    );
    for isolate in ["mount", "net,pid,mount,uts,ipc"] {
        let out = run_in(&d, &["--isolate", isolate], work.path(), None, &script);
        assert!(out.status.success(), "{isolate}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), kept, "{isolate}");
        // The host's directory itself: what the run writes there stays.
        let made = work.path().join("made");
        assert_eq!(std::fs::read_to_string(&made).unwrap(), "from the run\n");
        std::fs::remove_file(made).unwrap();
    }
    // The directories above keep owner, group and mode, set-group-ID included (the daemon
    // has no CAP_FSETID).
    let sgid = work.path().join("sgid");
    let inner = sgid.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::os::unix::fs::chown(&sgid, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&sgid, std::fs::Permissions::from_mode(0o2751)).unwrap();
    let out = run_in(
        &d,
        &["--isolate", "mount"],
        &inner,
        None,
        "stat -c '%a %u %g' ..",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2751 65534 65534\n",
        "{out:?}"
    );
    // A symlink to a directory elsewhere: entered where it leads, nothing to keep.
    let link = work.path().join("link");
    std::os::unix::fs::symlink("/usr", &link).unwrap();
    let out = run_in(&d, &["--isolate", "mount"], &link, None, "pwd; ls -A /tmp");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", std::fs::canonicalize("/usr").unwrap().display()),
        "{out:?}"
    );
    // Without a private /tmp the directory is the host's anyway, pid namespace or not.
    let out = run_in(
        &d,
        &["--isolate", "pid,net"],
        work.path(),
        None,
        "pwd; cat file",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\nfrom the host\n", work.path().display()),
        "{out:?}"
    );
    assert_no_run_cgroups(&d);
}

/// Gives `path` a POSIX ACL (its extended attribute) from (tag, permissions, id) entries.
fn set_acl(path: &Path, entries: &[(u16, u16, u32)]) {
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "{}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_kept_working_directory_is_entered_with_the_callers_permissions() {
    if !is_root_or_skip("a_kept_working_directory_is_entered_with_the_callers_permissions") {
        return;
    }
    let d = Daemon::start();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    // Root's, mode 0700: nobody may not pass, whether by its path or a symlink in it.
    let locked = tempfile::tempdir_in("/tmp").unwrap();
    mode(locked.path(), 0o700);
    let work = locked.path().join("work");
    std::fs::create_dir(&work).unwrap();
    mode(&work, 0o755);
    let link = locked.path().join("link");
    std::os::unix::fs::symlink("/usr", &link).unwrap();
    // Mode 0755, but an ACL that denies nobody (user 65534 ---, mask r-x).
    let denied = tempfile::tempdir_in("/tmp").unwrap();
    mode(denied.path(), 0o755);
    let none = u32::MAX;
    set_acl(
        denied.path(),
        &[
            (1, 7, none),
            (2, 0, 65534),
            (4, 5, none),
            (0x10, 5, none),
            (0x20, 5, none),
        ],
    );
    let behind_acl = denied.path().join("work");
    std::fs::create_dir(&behind_acl).unwrap();
    mode(&behind_acl, 0o755);
    // The same refusal as without a private /tmp: the binding opens no way round it.
    for cwd in [&work, &link, &behind_acl] {
        for isolate in [&[][..], &["--isolate", "mount"]] {
            let out = run_in(&d, isolate, cwd, Some("nobody"), "pwd");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{} {isolate:?}: {out:?}",
                cwd.display()
            );
            assert!(
                out.stdout.is_empty(),
                "{} {isolate:?}: {out:?}",
                cwd.display()
            );
            assert!(
                err.contains(&format!(
                    "working directory {} is not accessible to uid 65534: Permission denied",
                    cwd.display()
                )),
                "{} {isolate:?}: {err}",
                cwd.display()
            );
        }
    }
    // Root enters both; nobody too once the way is open.
    for cwd in [&work, &behind_acl] {
        let out = run_in(&d, &["--isolate", "mount"], cwd, None, "pwd");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n", cwd.display()),
            "{out:?}"
        );
    }
    mode(locked.path(), 0o711);
    for isolate in [&[][..], &["--isolate", "mount"]] {
        let out = run_in(&d, isolate, &work, Some("nobody"), "pwd; id -u");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n65534\n", work.display()),
            "{isolate:?}: {out:?}"
        );
    }
    assert_no_run_cgroups(&d);
}

#[test]
fn baselines_catch_a_regression_and_history_keeps_the_runs() {
    if !is_root_or_skip("baselines_catch_a_regression_and_history_keeps_the_runs") {
        return;
    }
    // Sequential batches: nothing else of this file runs meanwhile.
    let _host = cleanroom::host_lock();
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    let out = d.ctl(&[
        "--json",
        "run",
        "--repeat",
        "12",
        "--save-baseline",
        "quick",
        "--label",
        "before",
        "--",
        "sleep",
        "0.02",
    ]);
    assert!(out.status.success(), "{out:?}");
    let base = json_of(&out);
    let out = d.ctl(&[
        "--json",
        "run",
        "--repeat",
        "12",
        "--baseline",
        "quick",
        "--",
        "sleep",
        "0.08",
    ]);
    assert_eq!(out.status.code(), Some(1), "a regression exits 1: {out:?}");
    let slow = json_of(&out);
    assert_eq!(slow["comparison"]["verdict"], "slower", "{slow}");
    assert!(
        slow["comparison"]["ratio"].as_f64().unwrap() > 2.0,
        "{slow}"
    );
    // Twelve repeats and no history: the baseline's own drift stands in for the
    // between-batch spread (tests/verdicts.rs covers the rest).
    assert_eq!(slow["comparison"]["between_batch"]["source"], "baseline");
    let list = json_of(&d.ctl(&["--json", "runs", "list"]));
    let batches: Vec<&str> = list["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch"].as_str().unwrap())
        .collect();
    assert_eq!(
        batches,
        vec![
            slow["batch"].as_str().unwrap(),
            base["batch"].as_str().unwrap()
        ]
    );
    let shown = json_of(&d.ctl(&["--json", "runs", "show", "baseline:quick"]));
    assert_eq!(shown["runs"].as_array().unwrap().len(), 12);
    let out = d.ctl(&[
        "--json",
        "runs",
        "compare",
        slow["batch"].as_str().unwrap(),
        "baseline:quick",
    ]);
    assert!(out.status.success());
    assert_eq!(json_of(&out)["verdict"], "faster");
    // Another runner sees neither root's runs nor may delete its baseline.
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let theirs = json_of(&d.ctl_as(&nobody, &["--json", "runs", "list"]));
    assert!(theirs["batches"].as_array().unwrap().is_empty(), "{theirs}");
    let out = d.ctl_as(&nobody, &["baseline", "delete", "quick"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(d.ctl(&["baseline", "delete", "quick"]).status.success());
    let out = d.ctl(&["run", "--baseline", "quick", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no baseline named \"quick\""));
}

/// The default IRQ affinity and every IRQ's CPU list.
fn irq_affinities() -> Vec<(String, String)> {
    let mut v = vec![(
        "default".to_owned(),
        std::fs::read_to_string("/proc/irq/default_smp_affinity").unwrap(),
    )];
    for e in std::fs::read_dir("/proc/irq").unwrap().flatten() {
        let p = e.path().join("smp_affinity_list");
        if let Ok(t) = std::fs::read_to_string(&p) {
            v.push((p.display().to_string(), t));
        }
    }
    v.sort();
    v
}

#[test]
fn an_exclusive_run_keeps_everything_else_off_its_cpu() {
    if !is_root_or_skip("an_exclusive_run_keeps_everything_else_off_its_cpu") {
        return;
    }
    if online_cpus() == "0" {
        eprintln!("skipping: one CPU, nothing to isolate");
        return;
    }
    let _host = host_lock();
    let before = my_cpus();
    let irqs_before = irq_affinities();
    // PID 1 is exempt: this machine's init is not ours to move (the VM test covers it).
    let d = Daemon::builder()
        .config("[runs]\nshield_exempt_pids = [1]\n")
        .start();
    let go = d.dir().join("go");
    let mut c = RawClient::connect(&d.socket);
    let script = format!(
        "grep Cpus_allowed_list /proc/self/status; while [ ! -e {} ]; do sleep 0.01; done",
        go.display()
    );
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", script], "exclusive": true, "timeout_ms": 20000}),
    );
    let first = next_output(&mut c);
    let inside = first["params"]["data"].as_str().unwrap().to_owned();
    assert!(
        inside.trim().ends_with('1'),
        "the run has CPU 1: {inside:?}"
    );
    // A process started outside now has CPU 1 excluded (it inherits this thread's mask).
    let outside = std::process::Command::new("grep")
        .args(["Cpus_allowed_list", "/proc/self/status"])
        .output()
        .unwrap();
    let outside = String::from_utf8_lossy(&outside.stdout).to_string();
    assert!(!outside.contains('1'), "CPU 1 is shielded: {outside}");
    assert_eq!(my_cpus(), "0");
    // A thread born under the shield (it inherits the reduced mask) gets CPU 1 back after.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<(String, String)>();
    let newborn = std::thread::spawn(move || {
        let during = my_cpus();
        rx.recv().unwrap();
        back_tx.send((during, my_cpus())).unwrap();
    });
    // IRQs are kept off CPU 1 too (the default affinity is a mask: CPU 0 only is "1").
    assert_eq!(
        std::fs::read_to_string("/proc/irq/default_smp_affinity")
            .unwrap()
            .trim_start_matches('0')
            .trim(),
        "1"
    );
    std::fs::write(&go, "").unwrap();
    let result = loop {
        let m = c.recv().unwrap();
        if m.get("id").is_some() {
            break m;
        }
    };
    assert_eq!(result["result"]["cpus"], "1", "{result}");
    assert_eq!(my_cpus(), before, "the shield is lowered after the run");
    tx.send(()).unwrap();
    let (during, after) = back_rx.recv().unwrap();
    newborn.join().unwrap();
    assert_eq!(during, "0", "a thread born under the shield is off CPU 1");
    assert_eq!(
        after, before,
        "and gets its CPUs back when the shield comes down"
    );
    assert_eq!(irq_affinities(), irqs_before, "IRQ affinities are put back");
    // A second exclusive run at once is refused (one CPU in the pool here)...
    drop(c);
}

#[test]
fn a_crash_never_leaves_the_host_shielded() {
    if !is_root_or_skip("a_crash_never_leaves_the_host_shielded") {
        return;
    }
    if online_cpus() == "0" {
        return;
    }
    let _host = host_lock();
    let before = my_cpus();
    let irqs_before = irq_affinities();
    let state = tempfile::tempdir().unwrap();
    let config = "[runs]\nshield_exempt_pids = [1]\n";
    let mut d = Daemon::builder()
        .config(config)
        .state_dir(&state.path().join("s"))
        .start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", "echo up; sleep 1007.5"], "exclusive": true}),
    );
    assert_eq!(next_output(&mut c)["params"]["data"], "up\n");
    assert_eq!(my_cpus(), "0");
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).unwrap();
    drop(c);
    assert_eq!(my_cpus(), "0", "the dead daemon left the shield up");
    let d2 = Daemon::builder()
        .config(config)
        .state_dir(&state.path().join("s"))
        .start();
    assert_eq!(my_cpus(), before, "the next start lowered it\n{}", d2.log());
    assert_eq!(irq_affinities(), irqs_before);
    assert!(alive("1007.5").is_empty());
    assert!(
        d2.log()
            .contains("lowered a shield left by a previous daemon")
    );
}

#[test]
fn a_realtime_run_is_sched_fifo_and_needs_exclusive_cores() {
    if !is_root_or_skip("a_realtime_run_is_sched_fifo_and_needs_exclusive_cores") {
        return;
    }
    if online_cpus() == "0" {
        return;
    }
    let _host = host_lock();
    let d = Daemon::builder()
        .config("[runs]\nshield_exempt_pids = [1]\n")
        .start();
    let py = "import os; print(os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)";
    let out = d.ctl(&[
        "run",
        "--exclusive",
        "--realtime",
        "--",
        "python3",
        "-c",
        py,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 1\n",
        "SCHED_FIFO priority 1"
    );
    // With a CPU quota too: on v1 with RT group scheduling its cpu cgroup needs RT time.
    let out = d.ctl(&[
        "run",
        "--exclusive",
        "--realtime",
        "--cpu-percent",
        "50",
        "--",
        "python3",
        "-c",
        py,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 1\n");
    let out = d.ctl(&["run", "--", "python3", "-c", py]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 0\n",
        "others stay SCHED_OTHER"
    );
    let r = RawClient::connect(&d.socket)
        .call("run.start", json!({"argv": ["true"], "realtime": true}));
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("realtime needs exclusive")
    );
}

/// A thread spinning on one CPU until dropped, so it stops even when an assertion fails.
struct Spinner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn on(cpu: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut set = nix::sched::CpuSet::new();
            let pinned = set.set(cpu).is_ok()
                && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok();
            let _ = tx.send(pinned);
            // Pinned or not, the thread (and its mask) ends with the spinner.
            while pinned && !flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let spinner = Self {
            stop,
            thread: Some(thread),
        };
        assert_eq!(
            rx.recv().ok(),
            Some(true),
            "cannot pin a thread to CPU {cpu}"
        );
        spinner
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_noise_report_sees_a_busy_loop_on_the_runs_cpus() {
    if !is_root_or_skip("the_noise_report_sees_a_busy_loop_on_the_runs_cpus") {
        return;
    }
    if online_cpus() == "0" {
        eprintln!("skipping: one CPU, no exclusive control run");
        return;
    }
    // No shield from another test may move the spinner while it runs.
    let _host = host_lock();
    let d = Daemon::builder()
        .config("[runs]\nshield_exempt_pids = [1]\n")
        .start();
    let foreign = |r: &Value| {
        let noise = &r["noise"];
        for key in [
            "foreign_cpu_ms",
            "irq_ms",
            "steal_ms",
            "freq_min_khz",
            "freq_max_khz",
            "throttle_events",
            "cpu_pressure_us",
        ] {
            assert!(noise.get(key).is_some(), "{key} missing from {r}");
        }
        noise["foreign_cpu_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no foreign CPU time on this host: {r}"))
    };
    // CPU 0 stays busy the whole time: a plain run (every CPU of the daemon, CPU 0
    // among them) sees about its wall time of foreign work; an exclusive run on CPU 1
    // does not.
    let spinner = Spinner::on(0);
    let plain = json_of(&d.ctl(&["--json", "run", "--", "sleep", "0.5"]));
    let exclusive = json_of(&d.ctl(&["--json", "run", "--exclusive", "--", "sleep", "0.5"]));
    drop(spinner);
    assert!(
        plain["cpus"].as_str().unwrap().contains('0'),
        "the plain run may use CPU 0: {plain}"
    );
    assert_eq!(exclusive["cpus"], "1", "{exclusive}");
    let (busy, quiet) = (foreign(&plain), foreign(&exclusive));
    let wall = plain["wall_ms"].as_f64().unwrap();
    assert!(
        busy >= 0.5 * wall,
        "a CPU kept busy for the whole run is foreign work: {busy} ms of {wall} ms\n{plain}"
    );
    assert!(
        quiet < busy / 4.0,
        "the exclusive run's CPU had no spinner: {quiet} ms vs {busy} ms\n{exclusive}"
    );
    // The human summary says it too.
    let out = d.ctl(&["run", "--", "true"]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("noise") && summary.contains("foreign ") && summary.contains(" on CPU"),
        "{summary}"
    );
}

#[test]
fn only_an_admin_may_run_as_another_user() {
    if !is_root_or_skip("only_an_admin_may_run_as_another_user") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    // In a directory nobody may enter: by default a run starts in the client's, the
    // checkout, which may be under /root.
    let out = d.ctl(&["run", "--user", "nobody", "--cwd", "/", "--", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "65534\n", "{out:?}");
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["run", "--user", "root", "--", "id", "-u"]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs role admin"));
    let out = d.ctl(&["run", "--user", "no-such-user-here", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user \"no-such-user-here\""));
}

#[test]
fn run_cancel_ends_a_batch_by_its_id() {
    if !is_root_or_skip("run_cancel_ends_a_batch_by_its_id") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    let mut c = RawClient::connect(&d.socket);
    start_run(
        &mut c,
        json!({"argv": ["sh", "-c", "echo up; sleep 1010.5"]}),
    );
    let started = c.recv().unwrap();
    assert_eq!(started["method"], "run.started", "{started}");
    let batch = started["params"]["batch"].as_str().unwrap().to_owned();
    assert_eq!(next_output(&mut c)["params"]["data"], "up\n");
    // Not someone else's to cancel.
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["runs", "cancel", &batch]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!alive("1010.5").is_empty());
    let out = d.ctl(&["--json", "runs", "cancel", &batch]);
    assert_eq!(json_of(&out)["cancelled"], true);
    let result = loop {
        let m = c.recv().unwrap();
        if m.get("id").is_some() {
            break m;
        }
    };
    assert_eq!(result["result"]["end_reason"], "cancelled", "{result}");
    assert_eq!(result["result"]["batch"], batch.as_str());
    assert!(alive("1010.5").is_empty());
    let out = d.ctl(&["--json", "runs", "cancel", &batch]);
    assert_eq!(json_of(&out)["cancelled"], false, "no longer running");
}

#[test]
fn rlimits_are_the_daemons_original_or_those_asked_for() {
    if !is_root_or_skip("rlimits_are_the_daemons_original_or_those_asked_for") {
        return;
    }
    let d = Daemon::builder().start();
    // The daemon raised its own open-files limit; a run gets the one it started with (this
    // test's, which the daemon inherited).
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let out = d.ctl(&["run", "--", "sh", "-c", "ulimit -n"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        soft.to_string()
    );
    let out = d.ctl(&[
        "run",
        "--rlimit",
        "nofile=77",
        "--rlimit",
        "core=unlimited",
        "--rlimit",
        "fsize=1M",
        "--",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; ulimit -c; ulimit -f",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "77\n77\nunlimited\n2048\n",
        "ulimit -f counts 512-byte blocks"
    );
    let out = d.ctl(&["run", "--rlimit", "files=3", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown limit \"files\""));
    let out = d.ctl(&["run", "--rlimit", "nofile", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
