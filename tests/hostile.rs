//! The daemon holds up against its own users: what one member of group `cleanroom` can do
//! to the memory, storage, processes and cores of a root daemon shared by a team is
//! bounded, and the others (admins first) keep being served.

use std::time::{Duration, Instant};

use cleanroom::runs::{
    alive, eventually, json_of, next_output, slot_ready, start_run, start_run_as,
};
use cleanroom::{Daemon, RawClient, is_root_or_skip};
use serde_json::json;

/// A daemon process's peak resident set (`VmHWM`), KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_client_that_stops_reading_holds_a_bounded_amount_of_memory_and_is_dropped() {
    if !is_root_or_skip(
        "a_client_that_stops_reading_holds_a_bounded_amount_of_memory_and_is_dropped",
    ) {
        return;
    }
    const MARKER: &str = "hostile-reader-1";
    let d = Daemon::builder()
        .config("[limits]\nidle_timeout_s = 4\nmax_queued_bytes = 1048576\n")
        .start();
    // Warm the daemon up (its first run starts threads and pools), then take its peak.
    assert!(d.ctl(&["run", "--", "true"]).status.success());
    let before = peak_rss_kib(d.pid());
    // 100 MB of NUL bytes, written a MiB at a time: each becomes six bytes of JSON escape
    // (`\u0000`).
    let script = format!(": {MARKER}; dd if=/dev/zero bs=1M count=100 status=none");
    // Eight of them on one connection.
    let mut hostile = RawClient::connect(&d.socket);
    for id in 1..=8 {
        start_run_as(&mut hostile, id, json!({"argv": ["sh", "-c", &script]}));
    }
    // It never reads. Meanwhile everyone else is served at once.
    let mut other = d.connect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let r = other.call("daemon.ping", json!({}));
        assert_eq!(r["result"]["pong"], true, "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once it has read nothing for the idle timeout, it is dropped and its run ends.
    assert!(
        eventually(Duration::from_secs(30), || alive(MARKER).is_empty()),
        "{:?}",
        alive(MARKER)
    );
    hostile.wait_closed_by_daemon(Duration::from_secs(10));
    let grown = peak_rss_kib(d.pid()).saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(
        grown < 24 * 1024,
        "the daemon's peak RSS grew by {grown} KiB for one stalled client"
    );
    assert!(d.log().contains("peer stopped reading"), "{}", d.log());
    assert!(d.ctl(&["run", "--", "true"]).status.success());
}

#[test]
fn a_batch_id_is_never_given_twice_whatever_the_clock_says() {
    if !is_root_or_skip("a_batch_id_is_never_given_twice_whatever_the_clock_says") {
        return;
    }
    // A history whose ids run ahead of the clock (as after the clock stepped back): the
    // ids the daemon gives next must be new.
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::builder().state_dir(state.path()).start();
    drop(d);
    const ROWS: u64 = 20_000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let db_path = state.path().join("cleanroom.db");
    let mut db = rusqlite::Connection::open(&db_path).unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..ROWS {
        tx.execute(
            "INSERT INTO runs (batch, ts, uid, label, argv, result) VALUES (?1, 0, 0, 'old', '[]', '{}')",
            [(now_ms + i).to_string()],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(db);
    let d = Daemon::builder()
        .state_dir(state.path())
        .config("[runs]\nhistory_limit = 100000\n")
        .start();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = d.ctl(&["--json", "run", "--", "true"]);
        assert!(out.status.success(), "{out:?}");
        ids.push(
            cleanroom::runs::json_of(&out)["batch"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let listed = d.ctl(&["--json", "runs", "list", "--limit", "3"]);
    drop(d);
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let old: i64 = db
        .query_row("SELECT count(*) FROM runs WHERE label = 'old'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(old as u64, ROWS, "old batches were overwritten by {ids:?}");
    for id in &ids {
        let label: Option<String> = db
            .query_row("SELECT label FROM runs WHERE batch = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(label, None, "batch {id} is the new one: {listed:?}");
    }
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ids:?}");
}

#[test]
fn connections_are_bounded_per_uid_and_admins_keep_slots_of_their_own() {
    if !is_root_or_skip("connections_are_bounded_per_uid_and_admins_keep_slots_of_their_own") {
        return;
    }
    let d = Daemon::builder()
        .config(
            "[socket]\nmode = 0o666\n[limits]\nmax_connections = 6\n\
             [quotas]\nconnections_per_uid = 2\nadmin_connections = 2\n",
        )
        .world_traversable()
        .start();
    // nobody holds its two; a third is refused by the quota, named.
    let mut held = vec![
        RawClient::connect_as(&d.socket, 65534, &[]),
        RawClient::connect_as(&d.socket, 65534, &[]),
    ];
    let mut third = RawClient::connect_as(&d.socket, 65534, &[]);
    let refused = third.recv().expect("an error line");
    assert_eq!(refused["error"]["code"], -32009, "{refused}");
    assert_eq!(
        refused["error"]["data"]["quota"],
        "quotas.connections_per_uid"
    );
    assert_eq!(refused["error"]["data"]["limit"], 2);
    assert_eq!(refused["error"]["data"]["uid"], 65534);
    third.wait_closed_by_daemon(Duration::from_secs(5));
    // Another uid takes the last two slots not kept for admins; a third uid finds none.
    held.push(RawClient::connect_as(&d.socket, 65533, &[]));
    held.push(RawClient::connect_as(&d.socket, 65533, &[]));
    let mut late = RawClient::connect_as(&d.socket, 65532, &[]);
    let refused = late.recv().expect("an error line");
    assert_eq!(refused["error"]["code"], -32003, "{refused}");
    assert_eq!(refused["error"]["data"]["limit"], 4);
    // Root, an admin, still gets in, and is served; so does the client.
    let mut admin = d.connect();
    assert_eq!(admin.call("daemon.ping", json!({}))["result"]["pong"], true);
    let out = d.ctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    // The held connections are served too.
    for c in &mut held {
        assert_eq!(c.call("daemon.ping", json!({}))["result"]["pong"], true);
    }
    // One closes: its uid may connect again.
    drop(held.remove(0));
    assert!(eventually(Duration::from_secs(5), || {
        let mut again = RawClient::connect_as(&d.socket, 65534, &[]);
        again.call("daemon.ping", json!({})).get("result").is_some()
    }));
}

/// setpriv options that make `cleanroomctl` nobody, a runner by group `nogroup`.
const NOBODY: [&str; 5] = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];

#[test]
fn a_runner_holds_a_bounded_number_of_batches_and_admins_see_and_end_them() {
    if !is_root_or_skip("a_runner_holds_a_bounded_number_of_batches_and_admins_see_and_end_them") {
        return;
    }
    const MARKER: &str = "1013.25";
    let d = Daemon::builder()
        .config(
            "[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n\
             [quotas]\nruns_per_uid = 2\ndetached_per_uid = 1\n",
        )
        .world_traversable()
        .start();
    // A label with a terminal escape sequence (OSC 52: set the reader's clipboard).
    let evil = "evil\u{1b}]52;c;aGk=\u{7}";
    let detach = |label: &str| {
        d.ctl_as(
            &NOBODY,
            &[
                "--json", "run", "--detach", "--label", label, "--", "sleep", MARKER,
            ],
        )
    };
    let first = detach(evil);
    assert!(first.status.success(), "{first:?}");
    let first = cleanroom::runs::json_of(&first)["batch"]
        .as_str()
        .unwrap()
        .to_owned();
    // A second detached batch is over its quota: exit 75, the key named.
    let out = detach("second");
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quotas.detached_per_uid") && err.contains("= 1"),
        "{err}"
    );
    // One batch more in the foreground is within runs_per_uid = 2 ...
    // (nobody, in group nogroup: a runner)
    let mut foreground = RawClient::connect_as(&d.socket, 65534, &[65534]);
    start_run_as(
        &mut foreground,
        1,
        json!({"argv": ["sleep", MARKER], "cwd": "/"}),
    );
    assert!(eventually(Duration::from_secs(10), || alive(MARKER).len() == 2));
    // ... and a third is not.
    let out = d.ctl_as(&NOBODY, &["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("quotas.runs_per_uid"));
    // The runner sees its two batches in progress; another user none; root all, with the
    // escape sequence shown, not sent to the terminal.
    let mine = d.ctl_as(&NOBODY, &["--json", "runs", "active"]);
    let mine = cleanroom::runs::json_of(&mine);
    assert_eq!(mine["batches"].as_array().unwrap().len(), 2, "{mine}");
    assert!(
        mine["batches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["uid"] == 65534)
    );
    let other = ["--reuid", "daemon", "--regid", "daemon", "--clear-groups"];
    let theirs = cleanroom::runs::json_of(&d.ctl_as(&other, &["--json", "runs", "active"]));
    assert_eq!(theirs["batches"], json!([]), "{theirs}");
    let all = d.ctl(&["runs", "active"]);
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success(), "{all:?}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("evil\\x1b]52;c;aGk=\\x07"), "{text}");
    assert!(text.contains(&first) && text.contains("65534"), "{text}");
    // An admin ends the runner's detached batch; its place comes back.
    let out = d.ctl(&["runs", "cancel", &first]);
    assert!(out.status.success(), "{out:?}");
    assert!(eventually(Duration::from_secs(10), || alive(MARKER).len() == 1));
    assert!(eventually(Duration::from_secs(10), || detach("again")
        .status
        .success()));
    // Stored, the label is escaped in the admin's listing too.
    let listed = d.ctl(&["runs", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !text.contains('\u{1b}') && text.contains("evil\\x1b"),
        "{text}"
    );
    drop(foreground);
    d.ctl(&["runs", "active"]);
    for b in cleanroom::runs::json_of(&d.ctl(&["--json", "runs", "active"]))["batches"]
        .as_array()
        .unwrap()
    {
        d.ctl(&["runs", "cancel", b["batch"].as_str().unwrap()]);
    }
    assert!(eventually(Duration::from_secs(10), || alive(MARKER).is_empty()));
}

#[test]
fn runs_get_default_task_and_memory_limits_and_runners_cannot_exceed_the_maxima() {
    if !is_root_or_skip(
        "runs_get_default_task_and_memory_limits_and_runners_cannot_exceed_the_maxima",
    ) {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    // What the run's own cgroups say (v1 here: the pids and memory hierarchies).
    let script = "p=$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup); \
                  m=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup); \
                  cat /sys/fs/cgroup/pids$p/pids.max /sys/fs/cgroup/memory$m/memory.limit_in_bytes";
    let limits = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = d.ctl(&args);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Vec<u64> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1])
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let half = total_kib * 1024 / 100 * 50;
    let (pids, memory) = limits(&[]);
    assert_eq!(pids, 4096, "the default task limit");
    // The kernel keeps whole pages.
    assert_eq!(
        memory,
        half / 4096 * 4096,
        "half the host's memory by default"
    );
    assert_eq!(
        limits(&["--pids", "100", "--memory", "256M"]),
        (100, 256 << 20)
    );
    // A runner asking above the maxima is refused, naming them; an admin is not.
    let out = d.ctl_as(
        &NOBODY,
        &["run", "--cwd", "/", "--pids", "40000", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quotas.max_pids"),
        "{out:?}"
    );
    let too_much = format!("{}", total_kib * 1024 / 100 * 95);
    let out = d.ctl_as(
        &NOBODY,
        &["run", "--cwd", "/", "--memory", &too_much, "--", "true"],
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quotas.max_memory_percent"),
        "{out:?}"
    );
    assert_eq!(limits(&["--pids", "40000"]).0, 40000);
}

#[test]
fn a_runner_holds_exclusive_cpus_at_most_the_hold_quota() {
    if !is_root_or_skip("a_runner_holds_exclusive_cpus_at_most_the_hold_quota") {
        return;
    }
    let _host = cleanroom::host_lock();
    let d = Daemon::builder()
        .config(
            "[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n\
             [quotas]\nexclusive_hold_s = 1\n",
        )
        .world_traversable()
        .start();
    let out = d.ctl_as(
        &NOBODY,
        &[
            "--json",
            "run",
            "--cwd",
            "/",
            "--exclusive",
            "--",
            "sleep",
            "30",
        ],
    );
    let result = cleanroom::runs::json_of(&out);
    assert_eq!(result["end_reason"], "timeout", "{out:?}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("quotas.exclusive_hold_s = 1 s"), "{result}");
    // The cores came back.
    assert_eq!(cleanroom::runs::my_cpus(), cleanroom::runs::online_cpus());
    // A run that ends in time is not touched; an admin is not held to it.
    let out = d.ctl_as(&NOBODY, &["run", "--cwd", "/", "--exclusive", "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.ctl(&["--json", "run", "--exclusive", "--", "sleep", "1.5"]);
    assert_eq!(
        cleanroom::runs::json_of(&out)["end_reason"],
        "exited",
        "{out:?}"
    );
}

#[test]
fn a_resource_limit_above_the_allowed_one_is_refused_naming_both() {
    if !is_root_or_skip("a_resource_limit_above_the_allowed_one_is_refused_naming_both") {
        return;
    }
    let d = Daemon::builder().start();
    // The daemon's own hard limit on open files is the most a run may have.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .expect("a finite hard limit on open files");
    let over = format!("nofile={}", hard + 1);
    let out = d.ctl(&["run", "--rlimit", &over, "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nofile")
            && err.contains(&(hard + 1).to_string())
            && err.contains(&hard.to_string()),
        "{err}"
    );
    // The most allowed itself is fine.
    let most = format!("nofile={hard}");
    let out = d.ctl(&["run", "--rlimit", &most, "--", "sh", "-c", "ulimit -Hn"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hard.to_string(),
        "{out:?}"
    );
}

#[test]
fn a_baseline_is_private_to_its_owner_and_admins_unless_saved_public() {
    if !is_root_or_skip("a_baseline_is_private_to_its_owner_and_admins_unless_saved_public") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    let other = ["--reuid", "daemon", "--regid", "nogroup", "--clear-groups"];
    // nobody saves a private baseline and a public one.
    for (name, public) in [("secret", false), ("shared", true)] {
        let mut args = vec!["run", "--cwd", "/", "--save-baseline", name];
        if public {
            args.push("--public");
        }
        args.extend_from_slice(&["--", "true"]);
        let out = d.ctl_as(&NOBODY, &args);
        assert!(out.status.success(), "{out:?}");
    }
    // Another runner may neither compare with the private one nor read it...
    let out = d.ctl_as(
        &other,
        &["run", "--cwd", "/", "--baseline", "secret", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("baseline secret"),
        "{out:?}"
    );
    let out = d.ctl_as(&other, &["runs", "show", "baseline:secret"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let listed = cleanroom::runs::json_of(&d.ctl_as(&other, &["--json", "baseline", "list"]));
    let names: Vec<&str> = listed["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shared"], "{listed}");
    // ... but may compare with the public one; its owner with both. (Whatever the verdict
    // of one run against one run: a comparison is made.)
    let compared = |who: &[&str], name: &str| {
        let out = d.ctl_as(
            who,
            &[
                "--json",
                "run",
                "--cwd",
                "/",
                "--baseline",
                name,
                "--",
                "true",
            ],
        );
        let result = cleanroom::runs::json_of(&out);
        assert!(result["comparison"].is_object(), "{out:?}");
    };
    compared(&other, "shared");
    compared(&NOBODY, "secret");
    let out = d.ctl(&["runs", "show", "baseline:secret"]);
    assert!(out.status.success(), "{out:?}");
    let all = cleanroom::runs::json_of(&d.ctl(&["--json", "baseline", "list"]));
    assert_eq!(all["baselines"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["baselines"][0]["name"], "secret", "{all}");
    assert_eq!(all["baselines"][0]["public"], false, "{all}");
    assert_eq!(all["baselines"][1]["public"], true, "{all}");
}

#[test]
fn what_one_user_stores_is_bounded_and_never_pushes_out_anothers() {
    if !is_root_or_skip("what_one_user_stores_is_bounded_and_never_pushes_out_anothers") {
        return;
    }
    let d = Daemon::builder()
        .config(
            "[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n\
             [runs]\nhistory_limit = 3\n[quotas]\nbaselines_per_uid = 2\n",
        )
        .world_traversable()
        .start();
    let other = ["--reuid", "daemon", "--regid", "nogroup", "--clear-groups"];
    let run = |who: &[&str], extra: &[&str]| {
        let mut args = vec!["run", "--cwd", "/"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        d.ctl_as(who, &args)
    };
    assert!(run(&other, &["--label", "theirs"]).status.success());
    for i in 0..6 {
        let label = format!("mine-{i}");
        assert!(run(&NOBODY, &["--label", &label]).status.success());
    }
    // Retention is per uid: nobody keeps its newest 3, the other user's batch stays.
    let all = cleanroom::runs::json_of(&d.ctl(&["--json", "runs", "list", "--limit", "100"]));
    let labels: Vec<&str> = all["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["mine-5", "mine-4", "mine-3", "theirs"], "{all}");
    // Labels and commands are bounded, and the refusal names the field and the bound.
    let out = run(&NOBODY, &["--label", &"x".repeat(300)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("label is 300 bytes; at most 256"));
    let word = "y".repeat(99);
    let mut args = vec!["run", "--cwd", "/", "--", "echo"];
    args.extend(std::iter::repeat_n(word.as_str(), 2000));
    let out = d.ctl_as(&NOBODY, &args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 131072"),
        "{out:?}"
    );
    // Two baselines each; a third is over the quota, before the run; replacing one is not.
    assert!(run(&NOBODY, &["--save-baseline", "b1"]).status.success());
    assert!(run(&NOBODY, &["--save-baseline", "b2"]).status.success());
    let out = run(&NOBODY, &["--save-baseline", "b3"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("quotas.baselines_per_uid"));
    assert!(run(&NOBODY, &["--save-baseline", "b2"]).status.success());
    let out = run(&other, &["--save-baseline", "b3"]);
    assert!(
        out.status.success(),
        "another user has its own two: {out:?}"
    );
}

#[test]
fn a_batch_of_thousands_of_runs_is_stored_compactly_and_read_back_whole() {
    if !is_root_or_skip("a_batch_of_thousands_of_runs_is_stored_compactly_and_read_back_whole") {
        return;
    }
    const REPEAT: usize = 2500;
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::builder().state_dir(state.path()).start();
    let out = d.ctl(&[
        "--json",
        "run",
        "--repeat",
        &REPEAT.to_string(),
        "--",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = cleanroom::runs::json_of(&out);
    assert_eq!(
        result["samples"]["wall_ms"].as_array().unwrap().len(),
        REPEAT
    );
    assert_eq!(result["runs"].as_array().unwrap().len(), 100);
    assert_eq!(result["runs_omitted"], REPEAT - 100);
    let batch = result["batch"].as_str().unwrap().to_owned();
    // Read back whole, and in a person's words.
    let shown = cleanroom::runs::json_of(&d.ctl(&["--json", "runs", "show", &batch]));
    assert_eq!(shown["samples"], result["samples"]);
    let text = d.ctl(&["runs", "show", &batch]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!(" {REPEAT} runs\n")),
        "{text:?}"
    );
    // Every run's exit code is kept, compactly, past the records.
    assert_eq!(result["exit_codes"].as_array().unwrap().len(), REPEAT);
    // Listed from its summary columns.
    let listed = cleanroom::runs::json_of(&d.ctl(&["--json", "runs", "list", "--limit", "1"]));
    assert_eq!(listed["batches"][0]["runs"], REPEAT, "{listed}");
    assert_eq!(
        listed["batches"][0]["wall_ms"],
        result["stats"]["wall_ms"]["median"]
    );
    drop(d);
    // Stored in well under the 1 MiB a protocol line may have (every record would be ~1.1 MB).
    let db = rusqlite::Connection::open(state.path().join("cleanroom.db")).unwrap();
    let size: i64 = db
        .query_row(
            "SELECT length(result) FROM runs WHERE batch = ?1",
            [&batch],
            |r| r.get(0),
        )
        .unwrap();
    assert!(size < 400_000, "{size} bytes stored");
}

/// A tmpfs of `size`, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount a tmpfs");
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("fill")).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    fn unfill(&self) {
        std::fs::remove_file(self.path().join("fill")).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn with_the_state_directory_full_runs_fail_clearly_and_the_host_can_still_be_put_back() {
    if !is_root_or_skip(
        "with_the_state_directory_full_runs_fail_clearly_and_the_host_can_still_be_put_back",
    ) {
        return;
    }
    const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
    let _host = cleanroom::host_lock();
    let _restore = cleanroom::KernelSnapshot::take(&[SWAPPINESS]);
    let original = std::fs::read_to_string(SWAPPINESS)
        .unwrap()
        .trim()
        .to_owned();
    let tuned = if original == "13" { "14" } else { "13" };
    let fs = SmallFs::mount("16m");
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("full.toml"),
        format!("[sysctl]\n\"vm.swappiness\" = {tuned}\n"),
    )
    .unwrap();
    let d = Daemon::builder()
        .state_dir(&fs.path().join("state"))
        .config(&format!(
            "[tuning]\nprofile_dirs = [{:?}]\n",
            profiles.path()
        ))
        .start();
    let swappiness = || {
        std::fs::read_to_string(SWAPPINESS)
            .unwrap()
            .trim()
            .to_owned()
    };
    assert!(d.ctl(&["run", "--", "true"]).status.success());
    assert!(d.ctl(&["profile", "apply", "full"]).status.success());
    assert_eq!(swappiness(), tuned);
    fs.fill();
    // A run fails at once, saying where and how much room there is.
    let out = d.ctl(&["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state directory") && err.contains("KiB free"),
        "{err}"
    );
    // The daemon keeps serving.
    assert!(d.ctl(&["status"]).status.success());
    // The host is put back all the same: the journal's reserve is freed for it.
    let reverted = d.ctl(&["profile", "revert"]);
    assert!(reverted.status.success(), "{reverted:?}");
    assert_eq!(swappiness(), original);
    let active = cleanroom::runs::json_of(&d.ctl(&["--json", "profile", "active"]));
    assert_eq!(active["journal_entries"], 0, "{active}");
    assert!(d.log().contains("its reserve is freed"), "{}", d.log());
    fs.unfill();
    // With room again, the reserve is back; an apply on a full disk changes nothing.
    assert!(d.ctl(&["profile", "revert"]).status.success());
    assert!(fs.path().join("state/reserve").exists());
    fs.fill();
    let out = d.ctl(&["profile", "apply", "full"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(swappiness(), original, "{out:?}");
    fs.unfill();
    drop(d);
}

/// This process's mount table, a line a mount, as `/proc/self/mountinfo` has it.
fn mount_table() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().map(str::to_owned).collect()
}

/// A mountinfo line's mount point, file system type and super options.
fn mount_fields(line: &str) -> Option<(&str, &str, &str)> {
    let (ours, fs) = line.split_once(" - ")?;
    let mut fs = fs.split(' ');
    let (fstype, super_options) = (fs.next()?, fs.nth(1)?);
    Some((ours.split(' ').nth(4)?, fstype, super_options))
}

/// The cgroup file systems of this mount table: (mount point, super options).
fn cgroup_mounts() -> Vec<(String, String)> {
    mount_table()
        .iter()
        .filter_map(|l| mount_fields(l))
        .filter(|(_, fstype, _)| matches!(*fstype, "cgroup" | "cgroup2"))
        .map(|(point, _, options)| (point.to_owned(), options.to_owned()))
        .collect()
}

/// The mounts of this mount table a run's mount namespace could change if it leaked: `/`
/// (its propagation), `/proc`, `/tmp` and the cgroup file systems and what they sit on.
fn leakable_mounts() -> Vec<String> {
    mount_table()
        .into_iter()
        .filter(|l| {
            mount_fields(l).is_some_and(|(point, fstype, _)| {
                matches!(point, "/" | "/proc" | "/tmp")
                    || point.starts_with("/sys/fs/cgroup")
                    || fstype.starts_with("cgroup")
            })
        })
        .collect()
}

/// Kills, when dropped, every process whose command line has `marker` (what a test that
/// fails leaves behind).
struct KillOnDrop(&'static str);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for line in alive(self.0) {
            if let Some(pid) = line.split(':').next().and_then(|p| p.parse().ok()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// `/proc/<pid>/cgroup`, as this process (outside any run) reads it.
fn cgroups_of(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

#[test]
fn a_root_callers_run_can_neither_leave_nor_loosen_its_cgroup() {
    if !is_root_or_skip("a_root_callers_run_can_neither_leave_nor_loosen_its_cgroup") {
        return;
    }
    const MARKER: &str = "1014.25";
    let _left = KillOnDrop(MARKER);
    let d = Daemon::start();
    let before = leakable_mounts();
    // The root cgroup of every hierarchy, where the host mounts it; and the run's own task
    // limit, where pids has a v1 hierarchy (uid 0 owns the file, and needs no capability
    // to write it).
    let mounts = cgroup_mounts();
    assert!(!mounts.is_empty(), "no cgroup file system is mounted");
    let roots: Vec<&str> = mounts.iter().map(|(point, _)| point.as_str()).collect();
    let pids_v1 = mounts
        .iter()
        .find(|(_, options)| options.split(',').any(|o| o == "pids"))
        .map(|(point, _)| point.as_str());
    let lift = pids_v1.map_or(String::new(), |m| {
        format!(
            "p=$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup); \
             echo 9999 > {m}$p/pids.max && echo lifted; "
        )
    });
    // Undoing the read-only mounts: unmounting, remounting; and the system calls
    // themselves in a user namespace of its own (where it has every capability over a mount
    // namespace copied from its own; mount(8) would refuse before asking the kernel).
    let roots = roots.join(" ");
    let in_userns = "import ctypes, sys
l = ctypes.CDLL(None, use_errno=True)
if l.unshare(0x10000000 | 0x20000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS
    for m in sys.argv[1:]:
        if l.mount(None, m.encode(), None, 32 | 4096, None) == 0:  # MS_REMOUNT | MS_BIND
            print('undone: remount', m, 'read-write in a user namespace')
        if l.umount2(m.encode(), 2) == 0:  # MNT_DETACH
            print('undone: umount', m, 'in a user namespace')
    print('tried in a user namespace')
else:
    print('no user namespace')";
    let undo = format!(
        "for m in {roots}; do umount $m && echo undone: umount $m; \
         mount -o remount,rw,bind $m && echo undone: remount $m; done 2>/dev/null; \
         python3 -c \"{in_userns}\" {roots}; "
    );
    // One sleeper where the run was put; the shell tries to undo what contains it, to lift
    // its limit, then to move itself to each root; then another sleeper wherever the shell
    // now is.
    let script = format!(
        "exec 2>&1; sleep {MARKER} & placed=$!; {undo}{lift}\
         for m in {roots}; do echo $$ > $m/cgroup.procs && echo moved to $m; done; \
         sleep {MARKER} & echo pids $placed $!; wait"
    );
    let v1 = json_of(&d.ctl(&["--json", "status"]))["cgroup"] != "v2";
    // Both ways a run's process is cloned: by the helper parked in a cgroup prepared ahead
    // (cgroup v1), and by the daemon (a memory limit below what a prepared cgroup takes;
    // cgroup v2 always).
    for (how, memory) in [("prepared", None), ("made now", Some(48u64 << 20))] {
        if v1 && memory.is_none() {
            assert!(eventually(Duration::from_secs(10), || slot_ready(&d)));
        }
        let mut c = RawClient::connect(&d.socket);
        let mut params = json!({"argv": ["sh", "-c", &script], "pids": 64});
        if let Some(bytes) = memory {
            params["memory"] = json!(bytes);
        }
        start_run(&mut c, params);
        let mut said = String::new();
        let pids = loop {
            let pids = said
                .split_inclusive('\n')
                .find_map(|l| l.strip_prefix("pids ")?.strip_suffix('\n'));
            if let Some(pids) = pids {
                break pids.to_owned();
            }
            let m = next_output(&mut c);
            assert_eq!(
                m["method"], "run.output",
                "{how}: the run ended: {m}\n{said}"
            );
            said.push_str(m["params"]["data"].as_str().unwrap());
        };
        if v1 {
            // Which way it was cloned: born in its cgroups (by the helper), or moved there.
            let log = d.log();
            let started = log.lines().rfind(|l| l.contains("run started"));
            let born = format!("born_in_cgroup={}", memory.is_none());
            assert!(
                started.is_some_and(|l| l.contains(&born)),
                "{how}: {started:?}"
            );
        }
        let (placed, moved) = pids.split_once(' ').unwrap();
        // From outside: the second sleeper is where the first is, in the run's cgroups.
        let in_run = cgroups_of(placed);
        assert_ne!(in_run, cgroups_of(&d.pid().to_string()), "{how}");
        assert_eq!(
            cgroups_of(moved),
            in_run,
            "{how}: the run left its cgroup: {said}"
        );
        let refused = mounts.len() + usize::from(pids_v1.is_some());
        assert_eq!(
            said.matches("Read-only file system").count(),
            refused,
            "{how}: {said}"
        );
        assert!(
            !said.contains("undone") && !said.contains("moved to") && !said.contains("lifted"),
            "{how}: {said}"
        );
        assert!(
            said.contains("tried in a user namespace") || said.contains("no user namespace"),
            "{how}: {said}"
        );
        if let Some(m) = pids_v1 {
            let own = in_run
                .lines()
                .find_map(|l| l.split_once(":pids:"))
                .unwrap()
                .1;
            let max = std::fs::read_to_string(format!("{m}{own}/pids.max")).unwrap();
            assert_eq!(max.trim(), "64", "{how}");
        }
        // The run's end reaches both sleepers.
        drop(c);
        assert!(
            eventually(Duration::from_secs(10), || alive(MARKER).is_empty()),
            "{how}: {:?}",
            alive(MARKER)
        );
    }
    assert_eq!(leakable_mounts(), before, "a run's mounts reached the host");
}

#[test]
fn a_root_callers_run_sees_its_own_cgroups_read_only_and_the_hosts_mounts_stay() {
    if !is_root_or_skip(
        "a_root_callers_run_sees_its_own_cgroups_read_only_and_the_hosts_mounts_stay",
    ) {
        return;
    }
    let d = Daemon::start();
    let before = leakable_mounts();
    // A plain run is what it was: its output and its exit code.
    let out = d.ctl(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("err\n"),
        "{out:?}"
    );
    // Its cgroups are the roots of its cgroup namespace, and each cgroup file system shows
    // just them, read-only: with namespaces asked for or not.
    let view = r#"cat /proc/self/cgroup; awk '{for (i = 7; $i != "-"; i++);
        if ($(i + 1) ~ /^cgroup/) print $4, $5, $6}' /proc/self/mountinfo"#;
    for isolate in [None, Some("mount,pid")] {
        let mut args = vec!["run"];
        args.extend(isolate.map(|i| ["--isolate", i]).into_iter().flatten());
        args.extend(["--", "sh", "-c", view]);
        let out = d.ctl(&args);
        assert!(out.status.success(), "{isolate:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let (cgroups, mounts): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| !l.starts_with('/'));
        assert!(
            !cgroups.is_empty() && cgroups.iter().all(|l| l.ends_with(":/")),
            "{text}"
        );
        // Every mount read-only; at each mount point, the one on top (listed last) shows
        // the run's cgroup as its root.
        let mut on_top = std::collections::BTreeMap::new();
        for m in mounts {
            let [root, point, options] = m.split(' ').collect::<Vec<_>>()[..] else {
                panic!("{m}");
            };
            assert!(options.split(',').any(|o| o == "ro"), "{isolate:?}: {m}");
            on_top.insert(point, root);
        }
        let points: Vec<String> = cgroup_mounts().into_iter().map(|(p, _)| p).collect();
        assert!(
            on_top
                .keys()
                .eq(points.iter().collect::<std::collections::BTreeSet<_>>())
        );
        assert!(
            on_top.values().all(|root| *root == "/"),
            "{isolate:?}: {text}"
        );
    }
    assert_eq!(leakable_mounts(), before, "a run's mounts reached the host");
}

#[test]
fn a_runners_counters_count_its_own_run_through_its_cgroup() {
    if !is_root_or_skip("a_runners_counters_count_its_own_run_through_its_cgroup") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    // A runner's run (nobody: no containment, its own uid) is counted through its cgroup
    // like any other, and only its own tasks: its task clock is its own CPU time.
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done";
    let out = d.ctl_as(
        &NOBODY,
        &[
            "--json",
            "run",
            "--measure",
            "counters",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let r = cleanroom::runs::json_of(&out);
    let cpu = r["user_ms"].as_f64().unwrap() + r["sys_ms"].as_f64().unwrap();
    let task = r["counters"]["task_clock_ms"].as_f64().unwrap();
    assert!(cpu > 10.0, "{r}");
    assert!((task - cpu).abs() <= 0.05 * cpu + 3.0, "{r}");
    // Without a PMU (this VM) the runner is told why there are no hardware counters.
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/cpu").exists();
    if !pmu {
        let why = r["counters"]["hardware_unsupported"].as_str().unwrap();
        assert!(why.starts_with("no hardware PMU"), "{r}");
    }
}
