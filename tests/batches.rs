//! End-to-end tests of batches beyond one connection: detached runs and baselines saved
//! from the history (real daemon, real processes; nothing outlives a test).

use std::time::Duration;

use cleanroom::runs::{alive, answer, eventually, json_of, start_run_as};
use cleanroom::{Daemon, RawClient, is_root_or_skip};
use serde_json::json;

#[test]
fn a_detached_run_goes_on_without_its_client_and_is_stored() {
    if !is_root_or_skip("a_detached_run_goes_on_without_its_client_and_is_stored") {
        return;
    }
    let d = Daemon::builder().start();
    let go = d.dir().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; exit 3",
        go.display()
    );
    let out = d.ctl(&["--json", "run", "--detach", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let started = json_of(&out);
    assert_eq!(started["detached"], true, "{started}");
    assert_eq!(started["end_reason"], "running", "{started}");
    let batch = started["batch"].as_str().unwrap().to_owned();
    // The client is gone; the batch is not, and says so.
    let out = d.ctl(&["runs", "show", &batch]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still running"),
        "{out:?}"
    );
    std::fs::write(&go, "").unwrap();
    assert!(eventually(Duration::from_secs(10), || d
        .ctl(&["runs", "show", &batch])
        .status
        .success()));
    let done = json_of(&d.ctl(&["--json", "runs", "show", &batch]));
    assert_eq!(done["exit_code"], 3, "{done}");
    assert_eq!(done["end_reason"], "exited", "{done}");

    // Cancelled by id, at once: a detached batch is listed before its answer; and the
    // daemon stopping ends one too.
    let out = d.ctl(&["--json", "run", "--detach", "--", "sleep", "1203.1"]);
    let batch = json_of(&out)["batch"].as_str().unwrap().to_owned();
    let out = d.ctl(&["--json", "runs", "cancel", &batch]);
    assert_eq!(json_of(&out)["cancelled"], true, "{out:?}");
    assert!(eventually(Duration::from_secs(10), || d
        .ctl(&["runs", "show", &batch])
        .status
        .success()));
    let done = json_of(&d.ctl(&["--json", "runs", "show", &batch]));
    assert_eq!(done["end_reason"], "cancelled", "{done}");
    assert!(alive("1203.1").is_empty());
    // A detached batch that cannot start is stored as such (nobody waits for its answer).
    let out = d.ctl(&[
        "--json",
        "run",
        "--detach",
        "--exclusive",
        "--cpus",
        "0-0",
        "--",
        "true",
    ]);
    let batch = json_of(&out)["batch"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(10), || d
        .ctl(&["runs", "show", &batch])
        .status
        .success()));
    let failed = json_of(&d.ctl(&["--json", "runs", "show", &batch]));
    assert_eq!(failed["end_reason"], "failed_to_start", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("not in the isolation pool"),
        "{failed}"
    );
    d.ctl(&["run", "--detach", "--", "sleep", "1203.2"]);
    assert!(eventually(Duration::from_secs(5), || !alive("1203.2").is_empty()));
    drop(d);
    assert!(alive("1203.2").is_empty(), "{:?}", alive("1203.2"));
}

#[test]
fn a_stored_batch_becomes_a_baseline_only_its_owner_may_replace() {
    if !is_root_or_skip("a_stored_batch_becomes_a_baseline_only_its_owner_may_replace") {
        return;
    }
    let d = Daemon::builder()
        .config("[socket]\nmode = 0o666\n[auth]\nrunner_group = \"nogroup\"\n")
        .world_traversable()
        .start();
    let out = d.ctl(&["--json", "run", "--repeat", "3", "--", "true"]);
    let batch = json_of(&out)["batch"].as_str().unwrap().to_owned();
    let out = d.ctl(&["--json", "baseline", "save", "main", &batch]);
    let saved = json_of(&out);
    assert_eq!(saved["batch"], batch.as_str(), "{saved}");
    assert_eq!(saved["uid"], 0, "{saved}");
    let list = json_of(&d.ctl(&["--json", "baseline", "list"]));
    assert_eq!(list["baselines"][0]["name"], "main", "{list}");
    let out = d.ctl(&[
        "--json",
        "run",
        "--repeat",
        "3",
        "--baseline",
        "main",
        "--",
        "true",
    ]);
    assert!(
        json_of(&out)["comparison"].is_object(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Bad names and unknown batches are refused by name.
    let out = d.ctl(&["baseline", "save", "no/slash", &batch]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"no/slash\" is not a name"));
    let out = d.ctl(&["baseline", "save", "other", "4242"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stored batch 4242"));

    // Another user may neither replace root's baseline nor name root's batch.
    let nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
    let out = d.ctl_as(&nobody, &["--json", "run", "--cwd", "/", "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    let mine = json_of(&out)["batch"].as_str().unwrap().to_owned();
    let out = d.ctl_as(&nobody, &["baseline", "save", "main", &mine]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to uid 0"),
        "{out:?}"
    );
    let out = d.ctl_as(
        &nobody,
        &["run", "--cwd", "/", "--save-baseline", "main", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = d.ctl_as(&nobody, &["baseline", "save", "theirs", &batch]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = d.ctl_as(&nobody, &["baseline", "save", "mine", &mine]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_batch_is_in_the_history_as_soon_as_its_answer_came() {
    if !is_root_or_skip("a_batch_is_in_the_history_as_soon_as_its_answer_came") {
        return;
    }
    // The history row is written after the answer; every read of the history waits for
    // the rows of the answers given before it.
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder().state_dir(state.path()).start();
    let mut runner = RawClient::connect(&d.socket);
    let mut reader = RawClient::connect(&d.socket);
    for i in 0..40 {
        start_run_as(
            &mut runner,
            i + 1,
            json!({"argv": ["true"], "label": format!("n{i}")}),
        );
        let done = answer(&mut runner);
        let batch = done["result"]["batch"]
            .as_str()
            .expect("a batch id")
            .to_owned();
        let shown = reader.call("runs.show", json!({"batch": batch}));
        assert_eq!(shown["result"]["batch"], batch.as_str(), "{shown}");
        let listed = reader.call("runs.list", json!({"limit": 1}));
        assert_eq!(
            listed["result"]["batches"][0]["batch"],
            batch.as_str(),
            "{listed}"
        );
    }
    // While the database is locked from outside, the row waits: the answer does not, and
    // a read waits for the row.
    let db = state.path().join("cleanroom.db");
    let (locked, go) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let holder = std::thread::spawn(move || {
        let mut db = rusqlite::Connection::open(db).unwrap();
        let lock = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .unwrap();
        locked.0.send(()).unwrap();
        go.1.recv().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        lock.rollback().unwrap();
    });
    locked.1.recv().unwrap();
    start_run_as(&mut runner, 99, json!({"argv": ["true"]}));
    let done = answer(&mut runner);
    let batch = done["result"]["batch"].as_str().unwrap().to_owned();
    go.0.send(()).unwrap();
    let shown = reader.call("runs.show", json!({"batch": batch}));
    assert_eq!(shown["result"]["batch"], batch.as_str(), "{shown}");
    holder.join().unwrap();
    // And they outlive the daemon's stop right after the answer.
    start_run_as(&mut runner, 100, json!({"argv": ["true"]}));
    let last = answer(&mut runner)["result"]["batch"]
        .as_str()
        .unwrap()
        .to_owned();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "the daemon stops"
    );
    drop(d);
    let d = Daemon::builder().state_dir(state.path()).start();
    let out = d.ctl(&["runs", "show", &last]);
    assert!(out.status.success(), "{out:?}");
}
