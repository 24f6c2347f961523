//! End-to-end tests of the control plane: the real cleanroomd on a private socket and state
//! directory, driven by the real cleanroomctl and by raw sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cleanroom::runs::eventually;
use cleanroom::{Daemon, RawClient, bin, is_root_or_skip};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn stdout_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "cleanroomctl failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The cgroup mode this host has, worked out independently of the daemon's code.
fn expected_cgroup_mode() -> &'static str {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fstypes: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(" - ").nth(1)?.split_whitespace().next())
        .collect();
    let v2 = fstypes.contains(&"cgroup2");
    let v1 = fstypes.contains(&"cgroup");
    match (v2, v1) {
        (true, true) => "hybrid",
        (true, false) => "v2",
        (false, true) => "v1",
        (false, false) => "none",
    }
}

#[test]
fn ping_status_metrics_through_cleanroomctl() {
    let d = Daemon::start();
    let out = d.ctl(&["ping"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pong from cleanroomd"));

    let status = stdout_json(&d.ctl(&["--json", "status"]));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["protocol"], cleanroom_proto::PROTOCOL_VERSION);
    assert_eq!(status["pid"], d.pid());
    assert_eq!(status["socket"], d.socket.display().to_string());
    assert_eq!(status["state_dir"], d.state_dir.display().to_string());
    assert_eq!(status["socket_activated"], false);
    assert_eq!(status["cgroup"], expected_cgroup_mode());
    assert_eq!(status["caller"]["uid"], nix::unistd::geteuid().as_raw());
    assert_eq!(status["caller"]["gid"], nix::unistd::getegid().as_raw());
    assert!(status["uptime_s"].is_u64());
    if nix::unistd::geteuid().is_root() {
        assert_eq!(status["caller"]["role"], "admin");
    }

    // Human output: aligned rows, no debug dumps.
    let human = String::from_utf8(d.ctl(&["status"]).stdout).unwrap();
    assert!(human.starts_with("cleanroomd "), "{human}");
    assert!(
        human.contains(&format!("socket       {}", d.socket.display())),
        "{human}"
    );
    assert!(!human.contains('{'), "{human}");

    // The open-connections gauge counts exactly this one and cleanroomctl's once the
    // daemon has seen the earlier cleanroomctl connections go.
    let mut held = d.connect();
    wait_for_open_connections(&mut held, 1);
    let metrics = d.ctl(&["metrics"]);
    let text = String::from_utf8(metrics.stdout).unwrap();
    assert!(
        text.contains(r#"cleanroomd_requests_total{code="ok",method="daemon.status"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"cleanroomd_requests_total{code="ok",method="daemon.ping"} 1"#));
    assert!(text.contains("# TYPE cleanroomd_request_duration_seconds histogram"));
    assert!(text.contains("cleanroomd_connections_open 2"), "{text}");
    drop(held);

    let m = stdout_json(&d.ctl(&["--json", "metrics"]));
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .contains("cleanroomd_build_info")
    );
}

#[test]
fn ping_status_metrics_through_a_raw_socket() {
    let d = Daemon::start();
    let mut c = d.connect();
    assert_eq!(
        c.call("daemon.ping", json!({})),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"pong": true}})
    );
    let status = c.call("daemon.status", json!({}));
    assert_eq!(status["result"]["pid"], d.pid());
    assert_eq!(status["result"]["connections"], 1);
    // No params at all is fine too.
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"daemon.metrics\"}\r\n")
        .unwrap();
    let m = c.recv().unwrap();
    assert_eq!(m["id"], "s");
    assert!(
        m["result"]["text"]
            .as_str()
            .unwrap()
            .contains("cleanroomd_requests_total")
    );
}

#[test]
fn garbage_then_a_valid_request_on_the_same_connection() {
    let d = Daemon::start();
    let mut c = d.connect();
    c.send_raw(b"this is not json\n").unwrap();
    let e = c.recv().unwrap();
    assert_eq!(e["id"], Value::Null);
    assert_eq!(e["error"]["code"], -32700);
    c.send_raw(b"\xff\xfe\x00garbage\n").unwrap();
    assert_eq!(c.recv().unwrap()["error"]["code"], -32700);
    assert_eq!(
        c.call("daemon.ping", json!({}))["result"],
        json!({"pong": true})
    );
}

#[test]
fn malformed_requests_get_precise_errors() {
    let d = Daemon::start();
    let mut c = d.connect();
    let cases: &[(&str, i64, &str)] = &[
        (r#"[1,2]"#, -32600, "object"),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"daemon.ping"}"#,
            -32600,
            "jsonrpc",
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, -32600, "method"),
        (
            r#"{"jsonrpc":"2.0","id":{},"method":"daemon.ping"}"#,
            -32600,
            "id",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"daemon.ping","parmas":{}}"#,
            -32600,
            "parmas",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"daemon.pong"}"#,
            -32601,
            "daemon.pong",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"daemon.ping","params":[1]}"#,
            -32602,
            "array",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"daemon.ping","params":{"verbose":true}}"#,
            -32602,
            "verbose",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"daemon.status","params":"x"}"#,
            -32602,
            "string",
        ),
    ];
    for (line, code, needle) in cases {
        c.send_raw(format!("{line}\n").as_bytes()).unwrap();
        let resp = c.recv().unwrap();
        assert_eq!(resp["error"]["code"], *code, "{line} -> {resp}");
        let msg = resp["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{line}: {msg:?} lacks {needle:?}");
    }
    // A notification (no id) is executed and not answered: the next answer is the ping's.
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"daemon.ping\"}\n")
        .unwrap();
    assert_eq!(
        c.call("daemon.ping", json!({}))["result"],
        json!({"pong": true})
    );
}

#[test]
fn pipelined_requests_are_all_answered_by_id() {
    let d = Daemon::start();
    let mut c = d.connect();
    let mut batch = String::new();
    for id in 0..200 {
        batch.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"daemon.ping\"}}\n"
        ));
    }
    c.send_raw(batch.as_bytes()).unwrap();
    let mut seen = [false; 200];
    for _ in 0..200 {
        let r = c.recv().unwrap();
        assert_eq!(r["result"]["pong"], true, "{r}");
        seen[r["id"].as_u64().unwrap() as usize] = true;
    }
    assert!(seen.iter().all(|s| *s));
}

#[test]
fn oversized_line_is_refused_and_closed_while_others_are_served() {
    let d = Daemon::start();
    let socket = d.socket.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let other = {
        let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
        std::thread::spawn(move || {
            let mut c = RawClient::connect(&socket);
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(c.call("daemon.ping", json!({}))["result"]["pong"], true);
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let big = UnixStream::connect(&d.socket).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = {
        let mut w = big.try_clone().unwrap();
        std::thread::spawn(move || {
            // 2 MiB of a JSON string, no newline until the end. The daemon closes the
            // connection part-way, so a write error here is expected.
            let chunk = vec![b'a'; 64 * 1024];
            let _ = w.write_all(
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.ping\",\"params\":{\"x\":\"",
            );
            for _ in 0..32 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"\"}}\n");
        })
    };
    let mut reader = std::io::BufReader::new(big);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    // Then the connection is closed: end of stream, or a reset because the daemon closed
    // with the rest of the line unread.
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing after the error line: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    writer.join().unwrap();
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["error"]["code"], -32002);
    assert!(e["error"]["message"].as_str().unwrap().contains("1048576"));

    let before = served.load(Ordering::Relaxed);
    while served.load(Ordering::Relaxed) < before + 50 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
    // The daemon is still well.
    assert_eq!(
        d.connect().call("daemon.ping", json!({}))["result"]["pong"],
        true
    );
}

#[test]
fn five_hundred_concurrent_connections_are_all_answered() {
    let d = Daemon::start();
    let mut clients: Vec<RawClient> = (0..500).map(|_| d.connect()).collect();
    // Every connection is open at once before any request is sent.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_raw(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"daemon.status\"}}\n").as_bytes(),
        )
        .unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.recv().unwrap();
        assert_eq!(r["id"], i, "{r}");
        assert!(r["result"]["pid"].is_u64(), "{r}");
    }
    // All 500 were served at once: the daemon counts every one of them open.
    let r = clients[0].call("daemon.status", json!({}));
    assert_eq!(r["result"]["connections"], 500, "{r}");
}

/// Waits until the daemon counts `n` open connections, `c` among them: a client that left
/// is counted until the daemon has seen it go. Asks `daemon.metrics`, whose own count no
/// test checks.
fn wait_for_open_connections(c: &mut RawClient, n: u64) {
    let mut open = None;
    let settled = eventually(Duration::from_secs(10), || {
        let metrics = c.call("daemon.metrics", json!({}));
        open = metrics["result"]["text"].as_str().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("cleanroomd_connections_open "))
                .and_then(|v| v.parse::<u64>().ok())
        });
        open == Some(n)
    });
    assert!(settled, "the daemon counts {open:?} connections, not {n}");
}

/// Asserts that `out` is cleanroomctl refused at the connection limit `limit`: exit 1 and
/// the daemon's own message.
fn assert_refused_at_the_limit(out: &std::process::Output, limit: usize) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("cleanroomctl: too many connections (limit {limit}); try again later\n"),
        "{out:?}"
    );
}

#[test]
fn connections_over_the_limit_get_an_error_line() {
    let d = Daemon::builder()
        .config("[limits]\nmax_connections = 3\n")
        .start();
    let mut held: Vec<RawClient> = (0..3).map(|_| d.connect()).collect();
    for c in &mut held {
        assert_eq!(c.call("daemon.ping", json!({}))["result"]["pong"], true);
    }
    let mut fourth = d.connect();
    let e = fourth.recv().expect("an error line");
    assert_eq!(e["error"]["code"], -32003);
    assert!(e["error"]["message"].as_str().unwrap().contains("limit 3"));
    assert!(fourth.recv().is_none(), "closed after the error");
    assert_refused_at_the_limit(&d.ctl(&["metrics"]), 3);
    drop(held.pop());
    // The slot is free again once the daemon has seen the close.
    wait_for_open_connections(&mut held[0], 2);
    let mut c = d.connect();
    assert_eq!(
        c.call("daemon.ping", json!({}))["result"]["pong"],
        true,
        "a freed slot is reusable"
    );
    let metrics = c.call("daemon.metrics", json!({}));
    let text = metrics["result"]["text"].as_str().unwrap();
    assert!(
        text.contains("cleanroomd_connections_rejected_total 2"),
        "{text}"
    );
}

#[test]
fn a_refused_client_reads_the_daemons_error_even_when_its_request_cannot_be_sent() {
    let d = Daemon::builder()
        .config("[limits]\nmax_connections = 1\n")
        .start();
    let mut held = d.connect();
    assert_eq!(held.call("daemon.ping", json!({}))["result"]["pong"], true);
    // The race made certain: the request goes out only after the daemon has written its
    // error line and closed the connection, so sending it fails (EPIPE) with the line
    // still unread.
    let mut refused = d.connect();
    refused.wait_closed_by_daemon(Duration::from_secs(10));
    let e = refused.call("daemon.status", json!({}));
    assert_eq!(e["error"]["code"], -32003, "{e}");
    assert_eq!(
        e["error"]["message"],
        "too many connections (limit 1); try again later"
    );
    // cleanroomctl sends its request before or after the daemon closed, whichever comes
    // first; it reports the daemon's error both ways (ctl/src/client.rs tests the second
    // one alone).
    for _ in 0..10 {
        assert_refused_at_the_limit(&d.ctl(&["status"]), 1);
    }
}

#[test]
fn idle_connections_are_closed() {
    let d = Daemon::builder()
        .config("[limits]\nidle_timeout_s = 1\n")
        .start();
    let mut c = d.connect();
    assert_eq!(c.call("daemon.ping", json!({}))["result"]["pong"], true);
    // Nothing sent: the daemon closes the connection (the read returns EOF, not the
    // client's own 10 s timeout).
    assert!(c.recv().is_none());
}

#[test]
fn sigterm_exits_zero_promptly_with_requests_in_flight() {
    // Not beside the test that starts and kills 150 daemons.
    let _host = cleanroom::host_lock();
    let mut d = Daemon::start();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let socket = d.socket.clone();
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || {
                let mut c = RawClient::connect(&socket);
                // Keep several requests in flight per connection.
                let mut batch = String::new();
                for id in 0..16 {
                    batch.push_str(&format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"daemon.status\"}}\n"
                    ));
                }
                while !stop.load(Ordering::Relaxed) {
                    if c.send_raw(batch.as_bytes()).is_err() {
                        return;
                    }
                    for _ in 0..16 {
                        // Every line that arrives is a whole, valid response (recv
                        // panics otherwise); the end of the stream is a clean close.
                        match c.recv() {
                            Some(r) => {
                                assert!(r.get("result").is_some() || r.get("error").is_some());
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            None => return,
                        }
                    }
                }
            })
        })
        .collect();
    let begun = std::time::Instant::now();
    while answered.load(Ordering::Relaxed) < 500 {
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "500 requests were not answered:\n{}",
            d.log()
        );
        std::thread::yield_now();
    }
    d.signal(Signal::SIGTERM);
    // Its shutdown is bounded (grace, then cleanup); the wait here only catches a hang.
    let status = d.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "{}", d.log());
    for w in workers {
        w.join().unwrap();
    }
    assert!(!d.socket.exists(), "the socket file it bound is removed");
    d.wait_notification("STOPPING=1", Duration::from_secs(1))
        .unwrap();
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody accepting
    assert!(UnixStream::connect(&path).is_err());
    let d = Daemon::builder().socket(&path).start();
    let mut c = RawClient::connect(&path);
    assert_eq!(c.call("daemon.ping", json!({}))["result"]["pong"], true);
    assert!(d.log().contains("replacing stale socket file"));
}

#[test]
fn a_second_daemon_on_a_live_socket_is_refused() {
    let first = Daemon::start();
    let out = Command::new(bin("cleanroomd"))
        .arg("--socket")
        .arg(&first.socket)
        .arg("--state-dir")
        .arg(first.dir().join("state2"))
        .arg("--config")
        .arg(first.dir().join("empty.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    assert!(err.contains(&first.socket.display().to_string()), "{err}");
    // Refused before it touched anything: no run cgroups made (and left), no recovery.
    assert!(
        !err.contains("run cgroups ready") && !err.contains("tuning recovery"),
        "{err}"
    );
    assert_eq!(
        first.connect().call("daemon.ping", json!({}))["result"]["pong"],
        true
    );
}

#[test]
fn socket_activation_serves_the_inherited_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be the daemon's pid: the shell exports its own and then execs.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(bin("cleanroomd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env_remove("CLEANROOM_SOCKET")
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) run.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(3, libc::F_GETFD);
            if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _ = &mut child;
    let mut reap = Reap(child);
    // The listener existed before the daemon: a connection is queued by the kernel and
    // answered once the daemon runs.
    let mut c = RawClient::connect(&path);
    let status = c.call("daemon.status", json!({}));
    assert_eq!(status["result"]["socket_activated"], true, "{status}");
    assert_eq!(status["result"]["socket"], path.display().to_string());
    assert_eq!(status["result"]["pid"], pid);
    drop(listener);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let code = reap.0.wait().unwrap().code();
    assert_eq!(code, Some(0));
    assert!(
        path.exists(),
        "an inherited socket belongs to systemd and is not removed"
    );
}

#[test]
fn ready_is_sent_only_once_the_socket_accepts() {
    let mut d = Daemon::builder().env("WATCHDOG_USEC", "200000").start();
    // The harness returned at the first READY=1: connecting now must work at once.
    let stream = UnixStream::connect(&d.socket).expect("socket accepts at READY");
    drop(stream);
    let ready = d
        .notifications
        .iter()
        .find(|n| n.contains("READY=1"))
        .unwrap()
        .clone();
    assert!(
        ready.contains("STATUS=no profile active, 0 runs"),
        "{ready}"
    );
    // The watchdog is petted at half of WATCHDOG_USEC.
    d.notifications.clear();
    d.wait_notification("WATCHDOG=1", Duration::from_secs(2))
        .unwrap();
    d.notifications.clear();
    d.wait_notification("WATCHDOG=1", Duration::from_secs(2))
        .unwrap();
}

#[test]
fn an_unprivileged_user_is_a_reader_and_may_not_reload() {
    if !is_root_or_skip("an_unprivileged_user_is_a_reader_and_may_not_reload") {
        return;
    }
    let d = Daemon::builder()
        .config(
            "[socket]\nmode = 0o666\n[auth]\nrunner_group = \"daemon\"\nadmin_group = \"adm\"\n",
        )
        .world_traversable()
        .start();
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let status = stdout_json(&d.ctl_as(&nobody, &["--json", "status"]));
    assert_eq!(status["caller"]["uid"], 65534);
    assert_eq!(status["caller"]["role"], "reader");

    let out = d.ctl_as(&nobody, &["reload"]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daemon.reload needs role admin"), "{err}");
    assert!(err.contains("role reader"), "{err}");
    assert!(err.contains("adm"), "names the group to join: {err}");

    // Supplementary groups count: group `daemon` (gid 1) makes a runner, `adm` (4) an admin.
    let runner = ["--reuid", "nobody", "--regid", "nogroup", "--groups", "1"];
    let status = stdout_json(&d.ctl_as(&runner, &["--json", "status"]));
    assert_eq!(status["caller"]["role"], "runner");
    let admin = ["--reuid", "nobody", "--regid", "nogroup", "--groups", "4"];
    let status = stdout_json(&d.ctl_as(&admin, &["--json", "status"]));
    assert_eq!(status["caller"]["role"], "admin");
    let out = d.ctl_as(&admin, &["reload"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_socket_mode_keeps_outsiders_out_with_exit_77() {
    if !is_root_or_skip("the_socket_mode_keeps_outsiders_out_with_exit_77") {
        return;
    }
    let d = Daemon::builder().world_traversable().start();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&d.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains(&d.socket.display().to_string()), "{err}");
}

/// The audit table of the state database in `state`, oldest first: uid, method, outcome
/// and the length of the params' digest.
fn audit_rows(state: &std::path::Path) -> Vec<(u32, String, String, i64)> {
    let db = rusqlite::Connection::open(state.join("cleanroom.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT uid, method, outcome, length(params_digest) FROM audit ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn state_changes_and_denied_attempts_are_audited() {
    if !is_root_or_skip("state_changes_and_denied_attempts_are_audited") {
        return;
    }
    let mut d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n")
        .world_traversable()
        .start();
    assert!(d.ctl(&["reload"]).status.success());
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    assert_eq!(d.ctl_as(&nobody, &["reload"]).status.code(), Some(77));
    assert!(d.ctl(&["status"]).status.success()); // not state-changing: not audited
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    let rows = audit_rows(&d.state_dir);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].2.as_str(), rows[0].3),
        (0, "daemon.reload", "ok", 64)
    );
    assert_eq!(rows[1].0, 65534);
    assert!(rows[1].2.starts_with("error -32001"), "{rows:?}");
}

/// `shield lower` is an admin's: anyone else gets the permission error (exit 77), an
/// admin a report, here of nothing (no shield is raised: a test never raises the host's
/// real shield for this; the next test and the unit tests of `run::shield` hold the refused
/// cases on a fake host root). Every call is audited, the denied one too.
#[test]
fn lowering_the_shield_is_for_admins_and_says_when_nothing_is_raised() {
    if !is_root_or_skip("lowering_the_shield_is_for_admins_and_says_when_nothing_is_raised") {
        return;
    }
    let mut d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n")
        .world_traversable()
        .start();
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["shield", "lower", "--force"]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shield.lower needs role admin"), "{err}");
    let out = d.ctl(&["shield", "lower"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no shield is journaled: nothing to lower\n"
    );
    let r = stdout_json(&d.ctl(&["--json", "shield", "lower", "--force"]));
    assert_eq!(
        r,
        json!({"was_raised": false, "restored": 0, "items": [], "partition_left": null,
               "journaled": false})
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    let rows = audit_rows(&d.state_dir);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "shield.lower"), "{rows:?}");
    assert!(
        rows[0].0 == 65534 && rows[0].2.starts_with("error -32001"),
        "{rows:?}"
    );
    assert_eq!((rows[1].0, rows[1].2.as_str()), (0, "ok"));
    assert_eq!((rows[2].0, rows[2].2.as_str()), (0, "ok"));
}

/// A fake host root whose IRQ 1 affinity file is the real, read-only
/// `/sys/devices/system/cpu/online` (a symlink): it reads back what the shield would have
/// written there, and the kernel refuses every write to it, as it refuses an IRQ whose
/// affinity can no longer be set. Nothing of the host's is changed. Returns the root and
/// what the file holds.
fn host_refusing_irq_1() -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("proc/sys/kernel/random/boot_id", "b\n");
    put("proc/self/mountinfo", "");
    put("sys/devices/system/cpu/online", "0-3\n");
    std::fs::create_dir_all(root.path().join("proc/irq/1")).unwrap();
    std::os::unix::fs::symlink(
        "/sys/devices/system/cpu/online",
        root.path().join("proc/irq/1/smp_affinity_list"),
    )
    .unwrap();
    let holds = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    (root, holds.trim().to_owned())
}

/// Journals, in `state`'s database, a shield a dead daemon left: IRQ 1 narrowed from 0-63
/// to `holds`.
fn journal_a_left_shield(state: &std::path::Path, holds: &str) {
    let db = rusqlite::Connection::open(state.join("cleanroom.db")).unwrap();
    db.execute_batch(&format!(
        "INSERT INTO shield_meta (id, raised_at, boot_id, shielded, online)
             VALUES (1, 0, 'b', '62-63', '0-63');
         INSERT INTO shield_irq (path, original, written)
             VALUES ('/proc/irq/1/smp_affinity_list', '0-63', '{holds}');"
    ))
    .unwrap();
}

/// The way out when the kernel will not take part of a shield back: `shield lower` keeps
/// it and says why (exit 1); `--force` forgets it, names the file with the value it
/// should hold and the one it holds, and audits it; the same offline with
/// `cleanroomd --revert --force`.
#[test]
fn what_the_kernel_will_not_take_back_is_kept_then_forgotten_by_force() {
    if !is_root_or_skip("what_the_kernel_will_not_take_back_is_kept_then_forgotten_by_force") {
        return;
    }
    let (root, holds) = host_refusing_irq_1();
    let state = tempfile::tempdir().unwrap();
    let start = || {
        Daemon::builder()
            .arg("--host-root")
            .arg(root.path().to_str().unwrap())
            .state_dir(state.path())
            .start()
    };
    // A first start makes the database; the shield is journaled while it is stopped.
    let mut d = start();
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(2)).unwrap();
    journal_a_left_shield(state.path(), &holds);
    let mut d = start();
    assert!(
        d.log().contains("cannot give an IRQ its CPUs back"),
        "{}",
        d.log()
    );
    let out = d.ctl(&["shield", "lower"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/proc/irq/1/smp_affinity_list  0-63") && text.contains("kept: "),
        "{text}"
    );
    let r = stdout_json(&d.ctl(&["--json", "shield", "lower", "--force"]));
    assert_eq!(r["was_raised"], true, "{r}");
    assert_eq!(r["journaled"], false, "{r}");
    let item = &r["items"][0];
    assert_eq!(
        (
            &item["kind"],
            &item["path"],
            &item["original"],
            &item["current"]
        ),
        (
            &json!("irq"),
            &json!("/proc/irq/1/smp_affinity_list"),
            &json!("0-63"),
            &json!(holds)
        ),
        "{r}"
    );
    assert_eq!(item["status"], "forgotten", "{r}");
    let again = stdout_json(&d.ctl(&["--json", "shield", "lower"]));
    assert_eq!(again["was_raised"], false, "{again}");
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(2)).unwrap();
    // The forgotten file's row, as root, then the call's own (then the last call's).
    let rows = audit_rows(state.path());
    let forgot = rows
        .iter()
        .position(|r| r.2.starts_with("forgot "))
        .expect("an audit row for the forgotten file");
    assert_eq!(
        (rows[forgot].0, rows[forgot].1.as_str(), rows[forgot].3),
        (0, "shield.lower", 64)
    );
    assert!(
        rows[forgot].2.starts_with(&format!(
            "forgot /proc/irq/1/smp_affinity_list: should hold 0-63, holds {holds}"
        )),
        "{rows:?}"
    );
    assert_eq!(
        (rows[forgot + 1].1.as_str(), rows[forgot + 1].2.as_str()),
        ("shield.lower", "ok")
    );

    // Offline: --revert keeps it (exit 1), --revert --force forgets it.
    journal_a_left_shield(state.path(), &holds);
    let empty = root.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let revert = |force: bool| {
        let mut cmd = Command::new(bin("cleanroomd"));
        cmd.arg("--config")
            .arg(&empty)
            .arg("--revert")
            .arg("--state-dir")
            .arg(state.path())
            .arg("--host-root")
            .arg(root.path());
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let out = revert(false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kept       /proc/irq/1/smp_affinity_list: should hold 0-63"),
        "{text}"
    );
    let out = revert(true);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "forgot     /proc/irq/1/smp_affinity_list: should hold 0-63, holds {holds}; set it by hand"
        )),
        "{text}"
    );
    let (_, method, outcome, _) = audit_rows(state.path()).pop().unwrap();
    assert_eq!(method, "cleanroomd --revert --force");
    assert!(
        outcome.starts_with("forgot /proc/irq/1/smp_affinity_list"),
        "{outcome}"
    );
    let out = revert(false);
    assert!(out.status.success(), "nothing left: {out:?}");
}

#[test]
fn capabilities_not_needed_are_dropped() {
    if !is_root_or_skip("capabilities_not_needed_are_dropped") {
        return;
    }
    let d = Daemon::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let mask = |name: &str| {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {status}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const CAP_SYS_MODULE: u32 = 16;
    const CAP_SYS_RAWIO: u32 = 17;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SETUID: u32 = 7;
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let m = mask(set);
        assert_eq!(m & (1 << CAP_SYS_MODULE), 0, "{set} keeps CAP_SYS_MODULE");
        assert_eq!(m & (1 << CAP_SYS_RAWIO), 0, "{set} keeps CAP_SYS_RAWIO");
        assert_ne!(m & (1 << CAP_SYS_ADMIN), 0, "{set} lost CAP_SYS_ADMIN");
        assert_ne!(m & (1 << CAP_SETUID), 0, "{set} lost CAP_SETUID");
    }
    assert_eq!(mask("CapInh:"), 0);
    assert_eq!(mask("CapAmb:"), 0);
    // Every thread has the reduced sets, not just the main one.
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
        let s = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let eff = s.lines().find(|l| l.starts_with("CapEff:")).unwrap();
        let m = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(
            m & (1 << CAP_SYS_MODULE),
            0,
            "a thread keeps CAP_SYS_MODULE"
        );
    }
}

#[test]
fn reload_applies_new_limits_and_refuses_a_bad_file() {
    if !is_root_or_skip("reload_applies_new_limits_and_refuses_a_bad_file") {
        return; // reload needs admin
    }
    let mut d = Daemon::builder().config("").start();
    let config = d.dir().join("cleanroomd.toml");
    // Held from the start, under the default limit: the daemon's connection count can be
    // asked on it once the limit is 2.
    let mut a = d.connect();

    // An invalid file via daemon.reload: a clear error naming the key; old config kept.
    // (Before the limit of 2: cleanroomctl connections the daemon has not yet seen close
    // still count, and would take the slots.)
    std::fs::write(&config, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_connections"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("unchanged"), "{err}");

    // A valid one: exactly its own change, nothing left of the refused file.
    std::fs::write(&config, "[limits]\nmax_connections = 2\n").unwrap();
    let r = stdout_json(&d.ctl(&["--json", "reload"]));
    assert_eq!(r["changed"], json!(["limits.max_connections"]));
    assert_eq!(r["restart_required"], json!([]));
    wait_for_open_connections(&mut a, 1);
    let _b = d.connect();
    let mut third = d.connect();
    assert_eq!(third.recv().unwrap()["error"]["code"], -32003);
    assert_refused_at_the_limit(&d.ctl(&["status"]), 2);

    // The invalid file through SIGHUP: logged, daemon keeps running with the old limit.
    std::fs::write(&config, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_notification("RELOADING=1", Duration::from_secs(2))
        .unwrap();
    let mut log = String::new();
    for _ in 0..200 {
        log = d.log();
        if log.contains("SIGHUP: new configuration refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.contains("SIGHUP: new configuration refused"), "{log}");
    let mut fourth = d.connect();
    assert_eq!(
        fourth.recv().unwrap()["error"]["code"],
        -32003,
        "old limit still in force"
    );
    assert_refused_at_the_limit(&d.ctl(&["status"]), 2);
}

#[test]
fn invalid_config_file_exits_1_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nmax_in_flight = -3\n").unwrap();
    let out = Command::new(bin("cleanroomd"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_in_flight"), "{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(!dir.path().join("s.sock").exists(), "nothing was bound");

    let missing = dir.path().join("missing.toml");
    let out = Command::new(bin("cleanroomd"))
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

    let out = Command::new(bin("cleanroomd"))
        .arg("--config")
        .arg(dir.path().join("bad.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(&config, "[limits]\nmax_in_flight = 3\n").unwrap();
    let out = Command::new(bin("cleanroomd"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_in_flight = 3"), "{text}");
    assert!(text.contains("max_connections = 1024"), "{text}");
}

#[test]
fn unusable_state_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |state: &std::path::Path| {
        Command::new(bin("cleanroomd"))
            .arg("--config")
            .arg(dir.path().join("empty.toml"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--state-dir")
            .arg(state)
            .output()
            .unwrap()
    };
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    // A state "directory" that is a file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = run(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-a-dir") && err.contains("not a directory"),
        "{err}"
    );
    // A state directory below a file cannot be created.
    let out = run(&file.join("state"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("state directory"));
    // A corrupt database is refused, not reset.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("cleanroom.db"), vec![7u8; 4096]).unwrap();
    let out = run(&state);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cleanroom.db") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(state.join("cleanroom.db")).unwrap(),
        vec![7u8; 4096]
    );
    assert!(!dir.path().join("s.sock").exists());
}

#[test]
fn cleanroomctl_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.sock");
    let out = Command::new(bin("cleanroomctl"))
        .arg("--socket")
        .arg(&absent)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&absent.display().to_string()), "{err}");
    assert!(err.contains("systemctl start cleanroomd.socket"), "{err}");

    let out = Command::new(bin("cleanroomctl"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin("cleanroomctl"))
        .args(["--timeout", "0", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let help = Command::new(bin("cleanroomctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Examples:") && help.contains("69"), "{help}");
    for cmd in ["status", "ping", "metrics", "reload"] {
        let out = Command::new(bin("cleanroomctl"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Examples:"),
            "{cmd}"
        );
    }
    let v = Command::new(bin("cleanroomctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));

    // CLEANROOM_SOCKET is honoured.
    let d = Daemon::start();
    let out = Command::new(bin("cleanroomctl"))
        .env("CLEANROOM_SOCKET", &d.socket)
        .arg("ping")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_client_that_never_reads_its_answers_is_dropped() {
    let d = Daemon::builder()
        .config("[limits]\nidle_timeout_s = 1\n")
        .start();
    let stream = UnixStream::connect(&d.socket).unwrap();
    let mut w = stream.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Requests whose answers are never read: the daemon's writes back block once the
        // socket buffers are full, and after the idle timeout it gives the peer up.
        let req = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.status\"}\n".repeat(100);
        let result = loop {
            if let Err(e) = w.write_all(&req) {
                break e;
            }
        };
        let _ = tx.send(result.kind());
    });
    let kind = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon closed the connection");
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{kind:?}"
    );
    drop(stream);
    assert_eq!(
        d.connect().call("daemon.ping", json!({}))["result"]["pong"],
        true
    );
    assert!(
        d.log().contains("peer stopped reading its answers"),
        "{}",
        d.log()
    );
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let first = Daemon::start();
    let out = Command::new(bin("cleanroomd"))
        .arg("--socket")
        .arg(first.dir().join("other.sock"))
        .arg("--state-dir")
        .arg(&first.state_dir)
        .arg("--config")
        .arg(first.dir().join("empty.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another cleanroomd"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(
        !first.dir().join("other.sock").exists(),
        "the second daemon bound nothing"
    );
}

#[test]
fn a_daemon_killed_at_any_moment_after_its_start_starts_again_at_once() {
    if !is_root_or_skip("a_daemon_killed_at_any_moment_after_its_start_starts_again_at_once") {
        return;
    }
    // 150 starts and kills: never beside a test that waits on a daemon's timing.
    let _host = cleanroom::host_lock();
    // A child the killed daemon was starting (a run helper) shares its lock on the state
    // directory until that child's exec: the next start must not take it for a live
    // daemon's.
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let mut seed: u64 = 0x5851_f42d_4c95_7f2d;
    for i in 0..150 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut d = Daemon::builder()
            .state_dir(&dir)
            .try_start()
            .unwrap_or_else(|e| panic!("start {i} after a kill: {e:?}"));
        std::thread::sleep(Duration::from_micros(seed % 20_000));
        d.signal(Signal::SIGKILL);
        d.wait_exit(Duration::from_secs(5)).expect("killed");
    }
    // The last start cleans up what the kills left; its stop, the rest.
    let d = Daemon::builder().state_dir(&dir).start();
    assert!(d.ctl(&["run", "--", "true"]).status.success());
}
