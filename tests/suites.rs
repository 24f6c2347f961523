//! End-to-end tests of declarative suites (`cleanroomctl test`): a suite of every kind of
//! step run against a real daemon, its JSON, TAP and JUnit (validated with xmllint against
//! Jenkins' schema, fetched by scripts/setup), and malformed suites refused before anything
//! runs, naming file, line and key.

use std::path::{Path, PathBuf};
use std::process::Command;

use cleanroom::{Daemon, is_root_or_skip};
use serde_json::Value;

const SUITE: &str = r#"
[suite]
name = "e2e"
parallel = 2
timeout = "20s"

[[step]]
name = "ok"
shell = "echo hello"
[step.expect]
stdout_contains = ["hello"]

[[step]]
name = "before-its-dependency"
shell = "echo never"
depends_on = ["chain-a"]

[[step]]
name = "wrong-output"
shell = "echo hello"
[step.expect]
stdout_contains = ["goodbye"]

[[step]]
name = "too-slow"
run = ["sleep", "5"]
timeout = "300ms"

[[step]]
name = "over-critical"
shell = "true"
[step.budget.max_rss_kb]
critical = 1

[[step]]
name = "over-warning"
shell = "true"
[step.budget.max_rss_kb]
target = 1
warning = 2
critical = 100000000

[[step]]
name = "chain-a"
shell = "exit 3"

[[step]]
name = "chain-b"
shell = "echo never"
depends_on = ["chain-a"]

[[step]]
name = "chain-c"
shell = "echo never"
depends_on = ["chain-b"]

[[step]]
name = "exclusive-1"
exclusive = true
shell = "grep Cpus_allowed_list /proc/self/status"

[[step]]
name = "exclusive-2"
exclusive = true
shell = "grep Cpus_allowed_list /proc/self/status"

[[step]]
name = "writes"
shell = "echo kept > out.txt; echo gone > /etc/MARKER"
[step.expect]
files = ["out.txt"]

[[step]]
name = "stale"
shell = "true"
[step.expect]
files = ["old.txt"]

[[step]]
name = "collects"
shell = "echo log > /var/tmp/run.log; echo no > /var/tmp/run.txt"
collect = ["/var/tmp/*.log"]
[step.expect]
files = ["collected/collects/var/tmp/run.log"]
"#;

fn junit_xsd() -> PathBuf {
    let cache = std::env::var_os("CLEANROOM_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/cleanroom-test"), PathBuf::from);
    cache.join("junit-10.xsd")
}

fn write_suite(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_suite_runs_every_kind_of_step_and_reports_it() {
    if !is_root_or_skip("a_suite_runs_every_kind_of_step_and_reports_it") {
        return;
    }
    // Its exclusive steps raise the shield, host-wide.
    let _host = cleanroom::host_lock();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("/etc/cleanroom-suite-{}", std::process::id());
    let suite = write_suite(
        dir.path(),
        "e2e.toml",
        &SUITE.replace("/etc/MARKER", &marker),
    );
    // A file there before the suite runs is not one a step wrote.
    std::fs::write(dir.path().join("old.txt"), "old").unwrap();
    let junit = dir.path().join("junit.xml");
    let out = d.ctl(&[
        "--json",
        "test",
        suite.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let step = |name: &str| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {r}"))
            .clone()
    };
    let status = |name: &str| step(name)["status"].as_str().unwrap().to_owned();
    let why = |name: &str| step(name)["reasons"].to_string();
    assert_eq!(status("ok"), "passed", "{r}");
    assert_eq!(status("wrong-output"), "failed");
    assert!(
        why("wrong-output").contains("stdout does not contain \\\"goodbye\\\""),
        "{}",
        why("wrong-output")
    );
    assert_eq!(status("too-slow"), "failed");
    assert!(
        why("too-slow").contains("timed out after 300 ms"),
        "{}",
        why("too-slow")
    );
    assert_eq!(status("over-critical"), "failed");
    assert!(
        why("over-critical").contains("over its critical level 1"),
        "{}",
        why("over-critical")
    );
    assert_eq!(status("over-warning"), "warned");
    assert!(
        step("over-warning")["warnings"]
            .to_string()
            .contains("over its warning level 2")
    );
    assert_eq!(status("chain-a"), "failed");
    assert!(why("chain-a").contains("expected exit code 0: run 1 exited 3"));
    assert_eq!(status("chain-b"), "skipped");
    assert!(why("chain-b").contains("its dependency chain-a did not pass"));
    assert_eq!(status("chain-c"), "skipped");
    assert_eq!(status("before-its-dependency"), "skipped");
    assert!(
        why("before-its-dependency").contains("its dependency chain-a did not pass"),
        "{}",
        why("before-its-dependency")
    );
    assert!(why("chain-c").contains("its dependency chain-b did not pass"));
    // Both exclusive steps ran, each on its own whole core (one after the other on a host
    // whose isolation pool has one CPU, as this one's).
    for name in ["exclusive-1", "exclusive-2"] {
        assert_eq!(status(name), "passed", "{}", step(name));
        assert!(
            step(name)["stdout"]
                .as_str()
                .unwrap()
                .starts_with("Cpus_allowed_list:")
        );
    }
    // The working directory kept the step's file; the write to /etc vanished.
    assert_eq!(status("writes"), "passed", "{}", step("writes"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "kept\n"
    );
    assert!(
        !Path::new(&marker).exists(),
        "a write outside the clean room's rw reached /etc"
    );
    assert_eq!(status("stale"), "failed");
    assert!(
        why("stale").contains("old.txt was not written by the step"),
        "{}",
        why("stale")
    );
    // A step's collected files are in its directory below `collected/` (by default) when
    // it is judged.
    assert_eq!(status("collects"), "passed", "{}", step("collects"));
    let collected = dir.path().join("collected/collects/var/tmp");
    assert_eq!(
        std::fs::read_to_string(collected.join("run.log")).unwrap(),
        "log\n"
    );
    assert!(!collected.join("run.txt").exists());
    assert_eq!(r["counts"]["failed"], 5, "{r}");
    // Every step is a batch labelled SUITE/STEP.
    let batch = step("ok")["batch"].as_str().unwrap().to_owned();
    let list = d.ctl(&["--json", "runs", "list", "--limit", "50"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        list["batches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["batch"] == batch.as_str() && b["label"] == "e2e/ok")
    );

    // JUnit: valid against the schema, one testcase per step, failures and skips.
    let check = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(junit_xsd())
        .arg(&junit)
        .output()
        .expect("xmllint (scripts/setup installs libxml2-utils)");
    assert!(check.status.success(), "{check:?}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="14" failures="5""#), "{xml}");
    assert_eq!(xml.matches("<skipped").count(), 3, "{xml}");
    assert!(xml.contains("warning: max_rss_kb"), "{xml}");

    // TAP: a line per step, skips marked.
    let out = d.ctl(&[
        "test",
        suite.to_str().unwrap(),
        "--tap",
        "--step",
        "chain-b",
    ]);
    let tap = String::from_utf8_lossy(&out.stdout);
    assert!(tap.starts_with("TAP version 13\n1..14\n"), "{tap}");
    assert!(
        tap.lines().any(|l| l == "ok 8 - chain-b"),
        "--step runs the step alone: {tap}"
    );
    assert!(
        tap.contains("ok 1 - ok # SKIP --step chain-b runs that step only"),
        "{tap}"
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A directory of suites: one JSON array, one TAP plan, one JUnit document.
    let many = tempfile::tempdir().unwrap();
    write_suite(
        many.path(),
        "x.toml",
        "[[step]]\nname = \"a\"\nshell = \"true\"\n",
    );
    write_suite(
        many.path(),
        "y.toml",
        "[[step]]\nname = \"b\"\nshell = \"exit 1\"\n",
    );
    let both = dir.path().join("both.xml");
    let out = d.ctl(&[
        "--json",
        "test",
        many.path().to_str().unwrap(),
        "--junit",
        both.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(r.as_array().map(Vec::len), Some(2), "{r}");
    let check = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(junit_xsd())
        .arg(&both)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let out = d.ctl(&["test", many.path().to_str().unwrap(), "--tap"]);
    let tap = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        tap,
        "TAP version 13\n1..2\nok 1 - x/a\nnot ok 2 - y/b\n  # expected exit code 0: run 1 exited 1\n",
        "{out:?}"
    );

    // --fail-fast: nothing starts after the first failure.
    let ff = write_suite(
        dir.path(),
        "ff.toml",
        "[suite]\nparallel = 1\n[[step]]\nname = \"a\"\nshell = \"exit 1\"\n\
         [[step]]\nname = \"b\"\nshell = \"true\"\n",
    );
    let out = d.ctl(&["--json", "test", ff.to_str().unwrap(), "--fail-fast"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["steps"][1]["status"], "skipped", "{r}");
    assert!(r["steps"][1]["reasons"].to_string().contains("--fail-fast"));
}

#[test]
fn malformed_suites_are_refused_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = cleanroom::bin("cleanroomctl");
    let refused = |name: &str, text: &str, says: &str| {
        let p = write_suite(dir.path(), name, text);
        // No daemon is needed to refuse a suite (nothing runs).
        let out = Command::new(&ctl)
            .args(["--socket", "/nonexistent.sock", "test"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:", p.display())) && err.contains(says),
            "{name}: {err}"
        );
    };
    refused(
        "unknown.toml",
        "[[step]]\nname = \"a\"\nrun = [\"true\"]\ntimout = \"1s\"\n",
        ":4:1: unknown field `timout`",
    );
    refused(
        "cycle.toml",
        "[[step]]\nname = \"a\"\nrun = [\"true\"]\ndepends_on = [\"b\"]\n\
         [[step]]\nname = \"b\"\nrun = [\"true\"]\ndepends_on = [\"a\"]\n",
        ":2:8: depends_on makes a cycle: a → b → a",
    );
    refused(
        "missing.toml",
        "[[step]]\nname = \"a\"\nrun = [\"true\"]\ndepends_on = [\"zz\"]\n",
        ":4:15: step \"a\": depends_on \"zz\": no step of that name",
    );
    refused(
        "budget.toml",
        "[[step]]\nname = \"a\"\nrun = [\"true\"]\n[step.budget.latency]\ncritical = 1\n",
        "budget \"latency\": bound wall_ms, cpu_ms or max_rss_kb",
    );
    refused("syntax.toml", "[[step]\nname = 1\n", ":1:");
    refused(
        "collect.toml",
        "[[step]]\nname = \"a\"\nrun = [\"true\"]\nisolate = [\"net\"]\ncollect = [\"*.log\"]\n",
        ":5:12: step \"a\": collect \"*.log\": collect goes with isolate fs",
    );
    refused(
        "glob.toml",
        "[[step]]\nname = \"a\"\nrun = [\"true\"]\ncollect = [\"[x\"]\n",
        ":4:12: step \"a\": collect \"[x\": not a glob pattern",
    );
    // The examples a newcomer runs are valid.
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/suites");
    let out = Command::new(&ctl)
        .args(["test", "--check"])
        .arg(&examples)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("no errors")
            .count(),
        3
    );
}
