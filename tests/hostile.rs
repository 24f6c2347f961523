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
        RawClient::connect_as(&d.socket, 65534),
        RawClient::connect_as(&d.socket, 65534),
    ];
    let mut third = RawClient::connect_as(&d.socket, 65534);
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
    held.push(RawClient::connect_as(&d.socket, 65533));
    held.push(RawClient::connect_as(&d.socket, 65533));
    let mut late = RawClient::connect_as(&d.socket, 65532);
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
        let mut again = RawClient::connect_as(&d.socket, 65534);
        again.call("daemon.ping", json!({})).get("result").is_some()
    }));
}
