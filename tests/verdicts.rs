//! End-to-end tests of verdicts: interleaved comparisons (`compare`), the verdict of a run
//! against a baseline, fingerprints, noisy repeats measured again, and a label's history
//! with its change points (real daemon, real processes).
//!
//! The programs compared do a fixed amount of work (a shell loop), and the margin δ is set
//! wide (20 %) where a test needs an outcome that cannot flip by chance: twice the work is
//! `slower` and the same work is not, whatever the machine's noise.

use cleanroom::runs::alive;
use cleanroom::runs::json_of;
use cleanroom::{Daemon, Procs, is_root_or_skip};

/// A shell loop of `n` iterations: work proportional to `n`.
fn busy(n: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("i=0; while [ $i -lt {n} ]; do i=$((i+1)); done"),
    ]
}

/// `cleanroomctl compare` arguments: options, then the commands separated by `::`.
fn compare_args(options: &[&str], commands: &[Vec<String>]) -> Vec<String> {
    let mut args: Vec<String> = ["--json", "compare"]
        .iter()
        .chain(options)
        .map(|s| s.to_string())
        .collect();
    args.push("--".into());
    for (i, c) in commands.iter().enumerate() {
        if i > 0 {
            args.push("::".into());
        }
        args.extend(c.iter().cloned());
    }
    args
}

fn wide_margin() -> Daemon {
    Daemon::builder()
        .config("[runs]\ncompare_threshold_percent = 20.0\n")
        .start()
}

#[test]
fn compare_runs_the_commands_alternately_in_a_random_order_and_stores_each() {
    if !is_root_or_skip("compare_runs_the_commands_alternately_in_a_random_order_and_stores_each") {
        return;
    }
    // Noisy repeats measured again would run a command twice in a round: off here
    // (a_noisy_repeat_is_measured_again_within_its_budget tests them).
    let d = Daemon::builder()
        .config("[runs]\nnoisy_percent = 0.0\n")
        .start();
    let log = d.dir().join("order");
    let say = |who: &str| {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo {who} >> {}", log.display()),
        ]
    };
    let args = compare_args(
        &[
            "--rounds", "8", "--warmup", "1", "--label", "a-side", "--label", "b-side",
        ],
        &[say("A"), say("B")],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    // Two identical commands: most often not `slower`, but a 2 % margin on a few
    // milliseconds of wall time can be (exit 1, said so); the order is what is tested.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || (out.status.code() == Some(1) && said.contains("regression")),
        "{out:?}"
    );
    let r = json_of(&out);
    assert_eq!(r["rounds"], 8, "{r}");
    assert_eq!(r["stopped"], "rounds", "{r}");
    // One round is one run of each, in either order; both orders happen (seeded: the
    // default seed's order over 9 rounds has both).
    let order = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(lines.len(), 18, "a warm-up round and 8 rounds: {order}");
    let rounds: Vec<String> = lines.chunks(2).map(|c| c.concat()).collect();
    assert!(rounds.iter().all(|r| r == "AB" || r == "BA"), "{rounds:?}");
    assert!(rounds.iter().any(|r| r == "AB") && rounds.iter().any(|r| r == "BA"));
    // Each side is a batch of its own, stored under its label; the second carries its
    // comparison with the first, paired over the rounds.
    let sides = r["sides"].as_array().unwrap();
    assert_eq!(sides.len(), 2);
    let (a, b) = (&sides[0], &sides[1]);
    assert!(a.get("comparison").is_none(), "{a}");
    let c = &b["comparison"];
    assert_eq!(c["against"], a["batch"], "{c}");
    assert_eq!(c["design"], "paired", "{c}");
    assert_eq!(c["n"], 8, "{c}");
    assert_eq!(a["samples"]["wall_ms"].as_array().unwrap().len(), 8);
    let shown = json_of(&d.ctl(&["--json", "runs", "show", b["batch"].as_str().unwrap()]));
    assert_eq!(shown["comparison"]["against"], a["batch"], "{shown}");
    let list = json_of(&d.ctl(&["--json", "runs", "list"]));
    let labels: Vec<&str> = list["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["label"].as_str())
        .collect();
    assert!(
        labels.contains(&"a-side") && labels.contains(&"b-side"),
        "{list}"
    );
    // Each side's fingerprint names its executable and the environment; the two ran in
    // the same one.
    assert!(a["fingerprint"]["kernel"].is_string(), "{a}");
    assert_eq!(a["fingerprint"]["executable"], "/usr/bin/sh", "{a}");
    assert_eq!(c["environment_differs"], serde_json::json!([]), "{c}");
    assert_eq!(c["same_executable"], true, "{c}");
}

#[test]
fn twice_the_work_is_slower_and_the_same_work_is_not() {
    if !is_root_or_skip("twice_the_work_is_slower_and_the_same_work_is_not") {
        return;
    }
    let _host = cleanroom::host_lock();
    let d = wide_margin();
    let args = compare_args(
        &["--rounds", "10", "--metric", "cpu"],
        &[busy(20_000), busy(40_000), busy(20_000)],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a slower command fails: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("regression"),
        "{out:?}"
    );
    let r = json_of(&out);
    let verdict = |i: usize| {
        r["sides"][i]["comparison"]["verdict"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(verdict(1), "slower", "{r}");
    assert_ne!(verdict(2), "slower", "{r}");
    assert_ne!(verdict(2), "faster", "{r}");
    let c = &r["sides"][1]["comparison"];
    assert_eq!(c["metric"], "cpu_ms", "{c}");
    assert!(c["ratio"].as_f64().unwrap() > 1.2, "{c}");
    // Two comparisons made together: Holm's levels, one above the configured 95 %.
    let levels: Vec<f64> = (1..3)
        .map(|i| r["sides"][i]["comparison"]["level"].as_f64().unwrap())
        .collect();
    assert!(levels.iter().any(|l| *l > 0.96), "{levels:?}");

    // The same work, until decided: equivalent within the margin, and it says so.
    let args = compare_args(
        &[
            "--rounds",
            "5",
            "--metric",
            "cpu",
            "--until-decided",
            "--max-rounds",
            "60",
        ],
        &[busy(20_000), busy(20_000)],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    assert!(out.status.success(), "{out:?}");
    let r = json_of(&out);
    assert_eq!(r["stopped"], "decided", "{r}");
    assert_eq!(r["sides"][1]["comparison"]["verdict"], "equivalent", "{r}");
    // The human summary shows the verdict.
    let args = compare_args(
        &["--rounds", "5", "--metric", "cpu"],
        &[busy(20_000), busy(20_000)],
    );
    let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let out = d.ctl(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 vs 1: cpu_ms against"), "{text}");
    assert!(text.contains("MEDIAN CPU"), "{text}");
}

#[test]
fn too_few_rounds_are_inconclusive_and_fail_only_when_asked() {
    if !is_root_or_skip("too_few_rounds_are_inconclusive_and_fail_only_when_asked") {
        return;
    }
    let d = Daemon::start();
    let args = compare_args(&["--rounds", "3", "--warmup", "0"], &[busy(10), busy(10)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    assert!(out.status.success(), "{out:?}");
    let c = &json_of(&out)["sides"][1]["comparison"];
    assert_eq!(c["verdict"], "inconclusive", "{c}");
    assert_eq!(c["more_repeats"], 2, "{c}");
    assert!(c["reason"].as_str().unwrap().contains("3 rounds"), "{c}");
    let mut strict = args.clone();
    strict.insert(2, "--fail-inconclusive");
    let out = d.ctl(&strict);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn a_command_that_fails_ends_the_comparison_and_is_named() {
    if !is_root_or_skip("a_command_that_fails_ends_the_comparison_and_is_named") {
        return;
    }
    let d = Daemon::start();
    // It fails in the warm-up round: no round is measured, and still every side is
    // stored, readable, with numbers JSON can hold.
    let out = d.ctl(&[
        "--json", "compare", "--warmup", "1", "--", "true", "::", "sh", "-c", "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("command 2 failed: exit code 7"), "{err}");
    let r = json_of(&out);
    assert_eq!(r["stopped"], "failed", "{r}");
    assert_eq!(r["rounds"], 0, "{r}");
    let c = &r["sides"][1]["comparison"];
    assert_eq!(c["verdict"], "inconclusive", "{c}");
    assert!(c["ratio"].is_number(), "{c}");
    for side in r["sides"].as_array().unwrap() {
        let out = d.ctl(&["--json", "runs", "show", side["batch"].as_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn bad_comparisons_are_refused_with_their_reason() {
    if !is_root_or_skip("bad_comparisons_are_refused_with_their_reason") {
        return;
    }
    let d = Daemon::start();
    let usage = |args: &[&str], says: &str| {
        let out = d.ctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    usage(&["compare", "--", "true"], "compare needs two or more");
    usage(
        &["compare", "--", "true", "::", "::", "true"],
        "command 2 is empty",
    );
    usage(
        &["compare", "--label", "x", "--", "true", "::", "true"],
        "1 --label given for 2 commands",
    );
    usage(
        &["compare", "--max-rounds", "5", "--", "true", "::", "true"],
        "--until-decided",
    );
    // The separator can be another word, for commands that take `::`.
    let out = d.ctl(&[
        "--json",
        "compare",
        "--rounds",
        "1",
        "--separator",
        "VS",
        "--",
        "echo",
        "::",
        "VS",
        "true",
    ]);
    assert!(out.status.success(), "{out:?}");
    // What the daemon refuses, it names (a raw client can send anything).
    let mut c = d.connect();
    let bad = |c: &mut cleanroom::RawClient, params: serde_json::Value, says: &str| {
        let r = c.call("run.compare", params);
        let msg = r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(msg.contains(says), "{r}");
    };
    bad(
        &mut c,
        serde_json::json!({"commands": [["true"]]}),
        "commands: 1 given",
    );
    let many: Vec<Vec<&str>> = (0..17).map(|_| vec!["true"]).collect();
    bad(
        &mut c,
        serde_json::json!({"commands": many}),
        "commands: 17 given",
    );
    bad(
        &mut c,
        serde_json::json!({"commands": [["true"], ["true"]], "options": {"baseline": "x"}}),
        "options.baseline does not apply",
    );
    bad(
        &mut c,
        serde_json::json!({"commands": [["true"], [""]]}),
        "command 2: argv must name a program",
    );
    bad(
        &mut c,
        serde_json::json!({"commands": [["true"], ["true"]], "until_decided": true, "max_seconds": 0}),
        "max_seconds must be 1 to",
    );
}

#[test]
fn a_run_against_a_baseline_gets_a_verdict_or_says_why_it_cannot() {
    if !is_root_or_skip("a_run_against_a_baseline_gets_a_verdict_or_says_why_it_cannot") {
        return;
    }
    // Sequential batches carry whatever changed between them: nothing else of this
    // file's runs at the same time (the noisy-repeat test's busy loops above all).
    let _host = cleanroom::host_lock();
    let d = wide_margin();
    let run = |extra: &[&str], cmd: &[String]| {
        let mut args = vec!["--json", "run"];
        args.extend(extra);
        args.push("--");
        args.extend(cmd.iter().map(String::as_str));
        d.ctl(&args)
    };
    // A baseline of five repeats and no history: the between-batch spread is unknown.
    assert!(
        run(
            &["--repeat", "5", "--save-baseline", "small"],
            &busy(20_000)
        )
        .status
        .success()
    );
    let out = run(
        &["--repeat", "5", "--baseline", "small", "--metric", "cpu"],
        &busy(40_000),
    );
    assert!(out.status.success(), "{out:?}");
    let c = &json_of(&out)["comparison"];
    assert_eq!(c["verdict"], "inconclusive", "{c}");
    assert_eq!(c["design"], "independent", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("between-batch spread"),
        "{c}"
    );
    let out = run(
        &[
            "--repeat",
            "5",
            "--baseline",
            "small",
            "--fail-inconclusive",
        ],
        &busy(40_000),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // A baseline of twelve repeats: its own drift stands in for the spread (widening the
    // interval by as much as its halves differ), and four times the work is slower (exit
    // 1), the same work is not.
    assert!(
        run(
            &["--repeat", "12", "--save-baseline", "main"],
            &busy(20_000)
        )
        .status
        .success()
    );
    let out = run(
        &["--repeat", "12", "--baseline", "main", "--metric", "cpu"],
        &busy(80_000),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let c = &json_of(&out)["comparison"];
    assert_eq!(c["verdict"], "slower", "{c}");
    assert_eq!(c["metric"], "cpu_ms", "{c}");
    assert_eq!(c["between_batch"]["source"], "baseline", "{c}");
    assert_eq!(c["against"], "baseline:main", "{c}");
    let out = run(
        &[
            "--repeat",
            "12",
            "--baseline",
            "main",
            "--metric",
            "cpu",
            "--strict",
        ],
        &busy(20_000),
    );
    assert!(
        out.status.success(),
        "the same environment passes --strict: {out:?}"
    );
    let c = &json_of(&out)["comparison"];
    assert_ne!(c["verdict"], "slower", "{c}");
    assert_eq!(c["same_executable"], true, "{c}");
    // `runs compare` of two stored batches: the same kind of comparison (sequential
    // batches, independent samples), and a verdict (which one is the machine's: two
    // batches minutes apart may differ by a third in wall time here, and nothing but a
    // label's history tells the comparison how much batches differ).
    let out = d.ctl(&[
        "--json",
        "runs",
        "compare",
        "baseline:main",
        "baseline:small",
    ]);
    let c = json_of(&out);
    assert_eq!(c["design"], "independent", "{c}");
    let verdict = c["verdict"].as_str().unwrap_or_default();
    assert!(
        ["slower", "faster", "equivalent", "inconclusive"].contains(&verdict),
        "{c}"
    );
    assert_eq!(
        out.status.code(),
        Some(if verdict == "slower" { 1 } else { 0 }),
        "exit 1 on slower alone: {out:?}"
    );
}

#[test]
fn a_baseline_from_another_environment_is_refused_under_strict() {
    if !is_root_or_skip("a_baseline_from_another_environment_is_refused_under_strict") {
        return;
    }
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    // Exclusive and shielded, then not: the shield and the CPUs differ.
    let out = d.ctl(&[
        "--json",
        "run",
        "--exclusive",
        "--repeat",
        "5",
        "--save-baseline",
        "pinned",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = d.ctl(&[
        "run",
        "--repeat",
        "5",
        "--baseline",
        "pinned",
        "--strict",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused (strict)"), "{err}");
    assert!(err.contains("exclusive_cpus"), "{err}");
    // Without --strict it compares, and says what differs.
    let out = d.ctl(&[
        "--json",
        "run",
        "--repeat",
        "5",
        "--baseline",
        "pinned",
        "--",
        "true",
    ]);
    let c = &json_of(&out)["comparison"];
    let fields: Vec<&str> = c["environment_differs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"exclusive_cpus") && fields.contains(&"shield"),
        "{c}"
    );
}

#[test]
fn a_noisy_repeat_is_measured_again_within_its_budget() {
    if !is_root_or_skip("a_noisy_repeat_is_measured_again_within_its_budget") {
        return;
    }
    let _host = cleanroom::host_lock();
    let d = Daemon::builder()
        .config("[runs]\nnoisy_percent = 10.0\nmax_reruns = 2\n")
        .start();
    // Something else busy on every CPU the run may use, for as long as the test lasts.
    let mut procs = Procs::default();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..cpus {
        procs.spawn(std::process::Command::new("sh").args(["-c", "while :; do :; done"]));
    }
    let out = d.ctl(&[
        "--json",
        "run",
        "--repeat",
        "4",
        "--",
        "sh",
        "-c",
        "sleep 0.05",
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = json_of(&out);
    let reruns = r["reruns"].as_array().unwrap();
    assert_eq!(reruns.len(), 2, "at most max_reruns: {r}");
    assert!(
        reruns[0]["reason"]
            .as_str()
            .unwrap()
            .contains("foreign CPU time"),
        "{r}"
    );
    assert_eq!(r["samples"]["wall_ms"].as_array().unwrap().len(), 4, "{r}");
    let out = d.ctl(&["run", "--repeat", "4", "--", "sh", "-c", "sleep 0.05"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("noisy repeats measured again"),
        "{out:?}"
    );
    drop(procs);
}

#[test]
fn a_labels_history_shows_where_it_changed() {
    if !is_root_or_skip("a_labels_history_shows_where_it_changed") {
        return;
    }
    // Its batches are measured one after another: a change point is only where the work
    // changed if nothing of this file burns CPU meanwhile (a CI run without the lock saw
    // the same loop take 9 to 34 ms while the counter tests' busy children ran).
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    for n in [10_000; 6].into_iter().chain([40_000; 6]) {
        let mut args = vec!["run", "--label", "nightly", "--repeat", "3", "--"];
        let cmd = busy(n);
        args.extend(cmd.iter().map(String::as_str));
        assert!(d.ctl(&args).status.success());
    }
    // Another label's batches are not in it.
    assert!(
        d.ctl(&["run", "--label", "other", "--", "true"])
            .status
            .success()
    );
    let r = json_of(&d.ctl(&["--json", "runs", "history", "nightly", "--metric", "cpu"]));
    assert_eq!(r["batches"].as_array().unwrap().len(), 12, "{r}");
    let cps = r["change_points"].as_array().unwrap();
    assert_eq!(cps.len(), 1, "{r}");
    assert_eq!(cps[0]["index"], 6, "{r}");
    assert_eq!(cps[0]["batch"], r["batches"][6]["batch"], "{r}");
    assert!(cps[0]["magnitude"].as_f64().unwrap() > 2.0, "{r}");
    assert!(cps[0]["confidence"].as_f64().unwrap() >= 0.95, "{r}");
    let text = String::from_utf8_lossy(&d.ctl(&["runs", "history", "nightly"]).stdout).into_owned();
    assert!(text.contains("1 change point"), "{text}");
    let none = json_of(&d.ctl(&["--json", "runs", "history", "nobody-uses-this"]));
    assert_eq!(none["batches"], serde_json::json!([]), "{none}");
}

#[test]
fn instructions_counted_under_cachegrind_decide_with_few_rounds() {
    if !is_root_or_skip("instructions_counted_under_cachegrind_decide_with_few_rounds") {
        return;
    }
    // Valgrind keeps a CPU busy for seconds: never beside a test that measures time.
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    // Twice the loop and the same loop, five rounds: instruction counts barely move, so
    // five rounds decide both.
    let args = compare_args(
        &["--rounds", "5", "--metric", "instructions"],
        &[busy(2_000), busy(4_000), busy(2_000)],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    assert_eq!(out.status.code(), Some(1), "the slower one fails: {out:?}");
    let r = json_of(&out);
    let side = |i: usize| &r["sides"][i];
    assert_eq!(side(1)["comparison"]["verdict"], "slower", "{r}");
    assert_eq!(side(2)["comparison"]["verdict"], "equivalent", "{r}");
    assert_eq!(side(1)["comparison"]["metric"], "instructions", "{r}");
    let counts = side(0)["samples"]["instructions"].as_array().unwrap();
    assert_eq!(counts.len(), 5, "{r}");
    assert!(counts.iter().all(|n| n.as_f64().unwrap() > 1e5), "{r}");
    // The warm-up ran plain: what counting cost, in wall time.
    assert!(side(0)["cost_factor"].as_f64().unwrap() > 1.0, "{r}");
    // A run counts them too, and says so.
    let out = d.ctl(&["run", "--measure", "instructions", "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(cachegrind"),
        "{out:?}"
    );
    // Without valgrind in the run's PATH: refused before anything runs, naming it.
    let out = d.ctl(&[
        "run",
        "--measure",
        "instructions",
        "--env",
        "PATH=/nowhere",
        "--",
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs valgrind in the run's PATH"),
        "{out:?}"
    );
}

/// Nothing ran: the daemon stored no batch.
fn assert_nothing_stored(d: &Daemon) {
    let listed = json_of(&d.ctl(&["--json", "runs", "list"]));
    let n = listed["batches"].as_array().map(Vec::len);
    assert_eq!(n, Some(0), "{listed}");
}

/// Whether this host has a hardware PMU, by the kernel's own list of event sources (the
/// core PMU is `cpu` on x86, `cpu_core`/`cpu_atom` on hybrid Intel, `armv8_pmuv3*` on Arm).
fn host_has_pmu() -> bool {
    std::fs::read_dir("/sys/bus/event_source/devices")
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n == "cpu" || n.starts_with("cpu_") || n.starts_with("armv")
            })
        })
        .unwrap_or(false)
}

#[test]
fn counters_count_every_process_of_the_run_through_its_cgroup() {
    if !is_root_or_skip("counters_count_every_process_of_the_run_through_its_cgroup") {
        return;
    }
    // Its busy children keep both CPUs busy: never beside a test that measures time.
    let _host = cleanroom::host_lock();
    let d = Daemon::builder()
        .config("[runs]\nnoisy_percent = 0.0\n")
        .start();
    // Two busy children at once, then ten sleeps: work in several processes, and at least
    // one context switch for each sleep.
    let script = "w() { i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; }; w & w & wait; \
                  n=0; while [ $n -lt 10 ]; do sleep 0.01; n=$((n+1)); done";
    let out = d.ctl(&[
        "--json",
        "run",
        "--measure",
        "counters",
        "--repeat",
        "3",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = json_of(&out);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{r}");
    let pmu = host_has_pmu();
    for run in runs {
        let c = &run["counters"];
        let f = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{k}: {run}"));
        // The task clock (perf's software event on the cgroup) against the CPU time the
        // cgroup's CPU accounting counted: two kernel mechanisms, one amount of work.
        let cpu = run["user_ms"].as_f64().unwrap() + run["sys_ms"].as_f64().unwrap();
        let task = f("task_clock_ms");
        assert!(cpu > 10.0, "{run}");
        assert!(
            (task - cpu).abs() <= 0.05 * cpu + 3.0,
            "task clock {task} vs CPU {cpu}: {run}"
        );
        // Every sleep switches out at least once; the processes the program waited for
        // switched as often as their rusage says (a few before a child joined its cgroup
        // aside).
        let waited = run["voluntary_ctxt_switches"].as_f64().unwrap()
            + run["involuntary_ctxt_switches"].as_f64().unwrap();
        assert!(f("context_switches") >= 10.0, "{run}");
        assert!(f("context_switches") + 3.0 >= waited, "{run}");
        assert!(f("page_faults") > 0.0, "{run}");
        if pmu {
            assert!(f("instructions") > 0.0 && f("cycles") > 0.0, "{run}");
        } else {
            assert!(
                c["cycles"].is_null() && c["instructions"].is_null(),
                "{run}"
            );
            let why = c["hardware_unsupported"].as_str().unwrap();
            assert!(why.starts_with("no hardware PMU"), "{run}");
        }
    }
    // Every counter is a series of its own, one value a run.
    for k in [
        "task_clock_ms",
        "context_switches",
        "cpu_migrations",
        "page_faults",
    ] {
        assert_eq!(
            r["samples"][k].as_array().map(Vec::len),
            Some(3),
            "{k}: {r}"
        );
    }
    // The PMU's instructions never share cachegrind's series.
    assert!(r["samples"]["instructions"].is_null(), "{r}");
    for k in ["cycles", "pmu_instructions"] {
        let n = r["samples"][k].as_array().map(Vec::len);
        assert_eq!(n, pmu.then_some(3), "{k}: {r}");
    }
    // The summary says what the counters saw, and why there are no hardware ones.
    let out = d.ctl(&["run", "--measure", "counters", "--", "true"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("task clock"),
        "{out:?}"
    );
    assert_eq!(
        said.contains("unsupported: no hardware PMU"),
        !pmu,
        "{said}"
    );
}

#[test]
fn cycles_are_compared_where_there_is_a_pmu_and_refused_plainly_where_not() {
    if !is_root_or_skip("cycles_are_compared_where_there_is_a_pmu_and_refused_plainly_where_not") {
        return;
    }
    // Equal work must measure equal: nothing of this file burns CPU meanwhile.
    let _host = cleanroom::host_lock();
    let d = wide_margin();
    let args = compare_args(
        &["--metric", "cycles", "--rounds", "5"],
        &[busy(2000), busy(2000)],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    if host_has_pmu() {
        assert!(out.status.success(), "{out:?}");
        let r = json_of(&out);
        assert_eq!(r["sides"][1]["comparison"]["metric"], "cycles", "{r}");
        for side in r["sides"].as_array().unwrap() {
            let cycles = side["samples"]["cycles"].as_array().unwrap();
            assert_eq!(cycles.len(), 5, "{r}");
            assert!(cycles.iter().all(|c| c.as_f64().unwrap() > 0.0), "{r}");
        }
        return;
    }
    // Refused before anything runs, saying why and what counts instead.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("metric cycles: unsupported on this host: no hardware PMU"),
        "{said}"
    );
    assert!(said.contains("--metric instructions"), "{said}");
    assert_nothing_stored(&d);
}

#[test]
fn a_measure_that_contradicts_the_metric_is_refused_before_anything_runs() {
    if !is_root_or_skip("a_measure_that_contradicts_the_metric_is_refused_before_anything_runs") {
        return;
    }
    let d = Daemon::start();
    for (metric, measure, says) in [
        (
            "instructions",
            "counters",
            "metric instructions compares the instructions cachegrind counts",
        ),
        ("cycles", "instructions", "they would be valgrind's"),
    ] {
        let args = compare_args(
            &["--metric", metric, "--measure", measure, "--rounds", "5"],
            &[busy(10), busy(10)],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.ctl(&args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(says), "{said}");
    }
    assert_nothing_stored(&d);
}

#[test]
fn counters_hold_no_more_descriptors_than_their_budget_and_the_daemon_goes_on() {
    if !is_root_or_skip(
        "counters_hold_no_more_descriptors_than_their_budget_and_the_daemon_goes_on",
    ) {
        return;
    }
    let d = Daemon::builder().start();
    // A run that counts holds 10 descriptors a CPU it may use; counters may hold a quarter
    // of the daemon's open-files limit. Lowered (on the running daemon) to six runs' worth,
    // the budget has room for one run that counts and not two.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let limit = 60 * cpus;
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &d.pid().to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let held = d.dir().join("held");
    let script = format!("touch {}; sleep 1207.5", held.display());
    // Runs get an open-files limit under the daemon's new one (the start-up limit they get
    // by default is above it now).
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rlimit", "nofile=64"];
        all.extend_from_slice(args);
        d.ctl(&all)
    };
    let out = d.ctl(&[
        "--json",
        "run",
        "--rlimit",
        "nofile=64",
        "--detach",
        "--measure",
        "counters",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let first = json_of(&out)["batch"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !held.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never started: {:?} {}",
            d.ctl(&["runs", "show", &first]),
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The second is refused, saying why; one that does not count runs as ever.
    let out = run(&["--measure", "counters", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?} {}", d.log());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("too many runs count at once"), "{said}");
    assert!(run(&["--", "true"]).status.success());
    // Its descriptors come back when it ends: the next run that counts runs.
    assert!(d.ctl(&["runs", "cancel", &first]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = run(&["--measure", "counters", "--", "true"]);
        if out.status.success() {
            break;
        }
        // Until the cancelled run is gone, its counters are still held.
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("too many runs count at once"), "{said}");
        assert!(
            std::time::Instant::now() < deadline,
            "never given back: {said}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(alive("1207.5").is_empty());
}
