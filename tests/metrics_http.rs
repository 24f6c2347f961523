//! End-to-end tests of the Prometheus scrape endpoint (`[metrics] listen`): both formats
//! parsed by the Prometheus client library's own parsers (python3-prometheus-client), the
//! metrics a run and a tuning operation move, what else the endpoint answers, and what a
//! hostile HTTP client can do to it (real daemon, real TCP).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use cleanroom::{Daemon, is_root_or_skip};

/// A daemon serving metrics on an ephemeral loopback port, and that port's address.
fn serving(extra: &str) -> (Daemon, String) {
    let d = Daemon::builder()
        .config(&format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}"))
        .start();
    let log = d.log();
    let addr = log
        .lines()
        .find(|l| l.contains("serving metrics over HTTP"))
        .and_then(|l| l.split("address=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    (d, addr)
}

/// One HTTP/1.1 request, raw; the whole answer (status line, headers, body).
fn http(addr: &str, head: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A connection closed at once (over the cap) may refuse the write.
    let _ = s.write_all(head.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: &str, path: &str, accept: Option<&str>) -> String {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"),
    )
}

/// The body of an answer.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The families and samples the Prometheus client library parses out of `text`
/// (`openmetrics`: its OpenMetrics parser, which requires `# EOF`), as
/// `name TYPE` and `sample{labels} value` lines; the parser's error on bad input.
fn parse(text: &str, openmetrics: bool) -> Result<String, String> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
parse = om if sys.argv[1] == "om" else text
for f in parse(sys.stdin.read()):
    print(f.name, f.type)
    for s in f.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    // Debian's python3, where scripts/setup installs the library (PATH may find another).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, if openmetrics { "om" } else { "text" }])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A sample's value in parsed output (`name{labels}` as `parse` prints it).
fn sample(parsed: &str, name: &str) -> Option<f64> {
    parsed
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_are_served_over_http_in_both_formats_and_move_with_runs() {
    if !is_root_or_skip("metrics_are_served_over_http_in_both_formats_and_move_with_runs") {
        return;
    }
    let (d, addr) = serving("");
    assert!(d.ctl(&["run", "--", "true"]).status.success());
    assert!(!d.ctl(&["run", "--", "false"]).status.success());
    let verify = d.ctl(&["profile", "verify"]);
    assert!(verify.status.success(), "{verify:?}");

    let answer = get(&addr, "/metrics", None);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("content-type: text/plain; version=0.0.4"),
        "{answer}"
    );
    let text = parse(body(&answer), false).unwrap_or_else(|e| panic!("{e}\n{answer}"));
    // Two executions ended, both exited (one with code 1); their wall times observed.
    assert_eq!(
        sample(&text, r#"cleanroomd_runs_total{end_reason="exited"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cleanroomd_run_duration_seconds_count{}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"cleanroomd_tuning_operations_total{operation="verify",outcome="ok"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for gauge in [
        "cleanroomd_exclusive_cpus{}",
        "cleanroomd_shielded_cpus{}",
        "cleanroomd_pin_rules{}",
    ] {
        assert_eq!(sample(&text, gauge), Some(0.0), "{gauge}: {text}");
    }
    // The daemon's own process: its resident memory and open descriptors.
    assert!(sample(&text, "process_resident_memory_bytes{}").unwrap() > 0.0);
    assert!(sample(&text, "process_open_fds{}").unwrap() > 0.0);

    // OpenMetrics when asked as Prometheus asks, parsed by its strict parser.
    let answer = get(
        &addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert!(
        answer.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{answer}"
    );
    assert!(body(&answer).ends_with("# EOF\n"), "{answer}");
    let om = parse(body(&answer), true).unwrap_or_else(|e| panic!("{e}\n{answer}"));
    assert!(om.lines().any(|l| l == "cleanroomd_runs counter"), "{om}");
    assert_eq!(
        sample(&om, r#"cleanroomd_runs_total{end_reason="exited"}"#),
        Some(2.0),
        "{om}"
    );

    // Nothing else is served.
    let answer = get(&addr, "/", None);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = http(
        &addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("allow: GET, HEAD"), "{answer}");
}

#[test]
fn a_hostile_http_client_holds_a_bounded_slot_for_a_bounded_time() {
    if !is_root_or_skip("a_hostile_http_client_holds_a_bounded_slot_for_a_bounded_time") {
        return;
    }
    let (d, addr) = serving("max_connections = 2\ntimeout_ms = 1000\n");
    // Two clients that connect and send nothing hold both slots ...
    // (the daemon accepts connections in the order they came, so they take the slots
    // before the third comes).
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // A third is closed at once, unanswered, and counted; the control socket is not
    // touched by any of it.
    let third = get(&addr, "/metrics", None);
    assert_eq!(third, "", "over the cap, yet answered");
    assert!(d.ctl(&["ping"]).status.success());
    let text = String::from_utf8_lossy(&d.ctl(&["metrics"]).stdout).into_owned();
    assert!(
        text.contains("cleanroomd_metrics_http_rejected_total 1"),
        "{text}"
    );
    // The silent ones are closed by the daemon (read sees the end) within their bound
    // plus slack, and their slots come back.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let said = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    said.starts_with("HTTP/1.1 408"),
                    "a silent client got {said:?}"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a silent client was not closed: {e}"),
        }
    }
    let answer = get(&addr, "/metrics", None);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A request head past 8 KiB is refused, not buffered.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(huge.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let said = String::from_utf8_lossy(&out);
    assert!(!said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(d.ctl(&["ping"]).status.success());
}

#[test]
fn a_remote_address_needs_allow_remote_and_a_taken_port_stops_the_start() {
    if !is_root_or_skip("a_remote_address_needs_allow_remote_and_a_taken_port_stops_the_start") {
        return;
    }
    let Err(refused) = Daemon::builder()
        .config("[metrics]\nlisten = \"0.0.0.0:9469\"\n")
        .try_start()
    else {
        panic!("a non-loopback address without allow_remote was accepted");
    };
    let said = format!("{refused:?}");
    assert!(said.contains("metrics.listen"), "{said}");
    assert!(said.contains("metrics.allow_remote = true"), "{said}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let Err(refused) = Daemon::builder()
        .config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
        .try_start()
    else {
        panic!("a taken port was accepted");
    };
    let said = format!("{refused:?}");
    assert!(said.contains("cannot listen for metrics"), "{said}");
}
