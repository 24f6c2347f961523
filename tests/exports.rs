//! End-to-end tests of the exports: hyperfine's JSON, CSV and Markdown, checked against
//! what hyperfine itself writes on this machine (Debian's `hyperfine`), and JUnit XML,
//! validated with xmllint against Jenkins' schema (junit-10.xsd, fetched by scripts/setup).

use std::path::{Path, PathBuf};
use std::process::Command;

use cleanroom::{Daemon, is_root_or_skip};
use serde_json::Value;

/// Where scripts/setup keeps the JUnit schema.
fn junit_xsd() -> PathBuf {
    let cache = std::env::var_os("CLEANROOM_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/cleanroom-test"), PathBuf::from);
    cache.join("junit-10.xsd")
}

/// xmllint's verdict on `xml` against the JUnit schema: `Ok` or its complaint.
fn validate_junit(xml: &Path) -> Result<(), String> {
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(junit_xsd())
        .arg(xml)
        .output()
        .expect("xmllint (scripts/setup installs libxml2-utils)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A JSON value's kind, for comparing shapes (a number and an integer are alike).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[test]
fn exports_read_like_hyperfines_and_junit_validates() {
    if !is_root_or_skip("exports_read_like_hyperfines_and_junit_validates") {
        return;
    }
    let d = Daemon::start();
    let dir = d.dir().to_owned();
    let p = |name: &str| dir.join(name);
    // hyperfine's own exports of a short command, as the reference (without a shell, and
    // long enough that hyperfine can compare speeds: it refuses its Markdown for a command
    // whose time is all shell start-up).
    let out = Command::new("hyperfine")
        .args(["--runs", "3", "--style", "none", "-N"])
        .arg("--export-json")
        .arg(p("h.json"))
        .arg("--export-csv")
        .arg(p("h.csv"))
        .arg("--export-markdown")
        .arg(p("h.md"))
        .arg("sleep 0.01")
        .output()
        .expect("hyperfine (scripts/setup installs it)");
    assert!(out.status.success(), "{out:?}");
    let out = d.ctl(&[
        "run",
        "--repeat",
        "5",
        "--export-json",
        p("c.json").to_str().unwrap(),
        "--export-csv",
        p("c.csv").to_str().unwrap(),
        "--export-markdown",
        p("c.md").to_str().unwrap(),
        "--junit",
        p("c.xml").to_str().unwrap(),
        "--",
        "sleep",
        "0.01",
    ]);
    assert!(out.status.success(), "{out:?}");
    // JSON: every field hyperfine writes, of the same kind, in seconds.
    let (h, c) = (json_file(&p("h.json")), json_file(&p("c.json")));
    let (h, c) = (&h["results"][0], &c["results"][0]);
    for (key, value) in h.as_object().unwrap() {
        if key == "parameters" {
            continue; // hyperfine's parameter scans; cleanroom has none
        }
        assert_eq!(
            kind(&c[key]),
            kind(value),
            "{key}: ours {c}, hyperfine's {h}"
        );
    }
    assert_eq!(c["command"], "sleep 0.01");
    assert_eq!(c["times"].as_array().unwrap().len(), 5, "{c}");
    assert_eq!(c["exit_codes"], serde_json::json!([0, 0, 0, 0, 0]));
    let mean = c["mean"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 1.0, "seconds: {c}");
    // CSV and Markdown: hyperfine's header lines.
    let first_lines = |f: &str, n: usize| -> Vec<String> {
        std::fs::read_to_string(p(f))
            .unwrap()
            .lines()
            .take(n)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(first_lines("c.csv", 1), first_lines("h.csv", 1));
    assert_eq!(first_lines("c.md", 2), first_lines("h.md", 2));
    assert!(first_lines("c.md", 3)[2].starts_with("| `sleep 0.01` | "));
    // JUnit: valid, one passing testcase.
    validate_junit(&p("c.xml")).unwrap();
    let xml = std::fs::read_to_string(p("c.xml")).unwrap();
    assert!(xml.contains(r#"tests="1" failures="0""#), "{xml}");

    // A comparison whose second command fails: one testcase a command, the failing one a
    // failure with its exit code; written although the comparison exits 1.
    let out = d.ctl(&[
        "compare",
        "--rounds",
        "5",
        "--junit",
        p("cmp.xml").to_str().unwrap(),
        "--export-json",
        p("cmp.json").to_str().unwrap(),
        "--",
        "true",
        "::",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    validate_junit(&p("cmp.xml")).unwrap();
    let xml = std::fs::read_to_string(p("cmp.xml")).unwrap();
    assert!(xml.contains(r#"tests="2" failures="1""#), "{xml}");
    assert!(xml.contains(r#"<failure message="exit code 3""#), "{xml}");
    // The reference either ran its rounds or, stopped before its turn, is skipped: never
    // a failure of its own.
    assert!(!xml.contains(r#"<failure message="cancelled"#), "{xml}");
    let doc = json_file(&p("cmp.json"));
    assert_eq!(doc["results"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(doc["results"][1]["command"], "sh -c 'exit 3'");

    // The schema check can fail: a testcase without its name is refused.
    std::fs::write(
        p("bad.xml"),
        xml.replacen(r#"<testcase name="true""#, "<testcase", 1),
    )
    .unwrap();
    assert!(validate_junit(&p("bad.xml")).is_err());
}

#[test]
fn exports_need_the_results_and_say_which_file_failed() {
    if !is_root_or_skip("exports_need_the_results_and_say_which_file_failed") {
        return;
    }
    let d = Daemon::start();
    // A detached run answers before it has results.
    let out = d.ctl(&["run", "--detach", "--junit", "/tmp/x.xml", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--junit"));
    // A file that cannot be written is named with its flag; the run itself happened.
    let out = d.ctl(&[
        "run",
        "--export-csv",
        "/nonexistent-dir/r.csv",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--export-csv /nonexistent-dir/r.csv"),
        "{said}"
    );
}

#[test]
fn the_summary_reads_like_hyperfines_in_colour_only_on_request_or_a_terminal() {
    if !is_root_or_skip("the_summary_reads_like_hyperfines_in_colour_only_on_request_or_a_terminal")
    {
        return;
    }
    let d = Daemon::start();
    let summary = |env: &[(&str, &str)]| {
        let mut c = Command::new(cleanroom::bin("cleanroomctl"));
        c.arg("--socket")
            .arg(&d.socket)
            .args(["run", "--repeat", "5", "--", "true"])
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Piped: hyperfine's lines, no colour, and no table of every series (a system time
    // of zeros has no spread worth showing).
    let plain = summary(&[]);
    assert!(plain.contains("  Time (mean ± σ):  "), "{plain}");
    assert!(plain.contains("[User: "), "{plain}");
    assert!(plain.contains("  Range (min … max):  "), "{plain}");
    assert!(plain.contains("5 runs"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "{plain}");
    assert!(!plain.contains("sys_ms"), "{plain}");
    // Asked for (CLICOLOR_FORCE), in colour; NO_COLOR wins over it.
    let forced = summary(&[("CLICOLOR_FORCE", "1")]);
    assert!(forced.contains("\u{1b}[1mTime (mean ± σ):"), "{forced}");
    let refused = summary(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]);
    assert!(!refused.contains('\u{1b}'), "{refused}");
}
