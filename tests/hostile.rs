//! The daemon holds up against its own users: what one member of group `cleanroom` can do
//! to the memory, storage, processes and cores of a root daemon shared by a team is
//! bounded, and the others (admins first) keep being served.

use std::time::{Duration, Instant};

use cleanroom::runs::{alive, eventually, start_run_as};
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
