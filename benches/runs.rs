//! Run overhead and timeout precision, end to end through the real binaries (root).
//!
//! - `spawn/true_plain`: fork+exec+wait of `/bin/true` from this process: the floor.
//! - `spawn/cleanroomctl_run_true`: the whole `cleanroomctl run -- /bin/true` process: client
//!   start, request, cgroup creation in every hierarchy, spawn as the caller, wait,
//!   accounting, cgroup removal, answer.
//! - timeout precision: 40 runs of `sleep 10` with a 100 ms timeout; prints how far past
//!   the limit each run ended (median and worst).
//! - interleaved whole-process overhead: plain `/bin/true`, `cleanroomctl run -- /bin/true`,
//!   and the same with `--isolate net,mount,uts,ipc` and with `--isolate
//!   net,pid,mount,uts,ipc` and with `--measure counters` (performance counters of the run
//!   cgroup), one after the other in each of 200 rounds (so drift of the
//!   machine hits every variant alike); prints the median and p90 of each. A variant the
//!   daemon refuses (an older build without `pid`) is said so and left out.
//!
//! - after a pause: `cleanroomctl run -- /bin/true` 50 times, each after 0.2 s of idleness
//!   (the pattern of a run interleaved with another tool); median and p90.
//! - a crowd: the daemon's threads, RSS and `daemon.ping` round trips (median, p99 of 2,000)
//!   idle, then while 1,000 `sleep` runs are in progress; then how long cancelling them all
//!   takes until every process is gone.
//!
//! Build first: `cargo build --release --workspace --bins`.

use std::process::{Command, Stdio};
use std::time::Duration;

use cleanroom::{Daemon, bin, is_root_or_skip};
use criterion::{Criterion, criterion_group, criterion_main};

fn spawn(c: &mut Criterion) {
    if !is_root_or_skip("run benchmarks") {
        return;
    }
    let d = Daemon::builder().env("RUST_LOG", "warn").start();
    let ctl = bin("cleanroomctl");
    let mut group = c.benchmark_group("spawn");
    group.bench_function("true_plain", |b| {
        b.iter(|| assert!(Command::new("/bin/true").status().unwrap().success()))
    });
    group.bench_function("cleanroomctl_run_true", |b| {
        b.iter(|| {
            let ok = Command::new(&ctl)
                .arg("--socket")
                .arg(&d.socket)
                .args(["run", "--", "/bin/true"])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok);
        })
    });
    group.finish();

    let mut overshoot: Vec<f64> = (0..40)
        .map(|_| {
            let out = Command::new(&ctl)
                .arg("--socket")
                .arg(&d.socket)
                .args(["--json", "--timeout", "100ms", "run", "--", "sleep", "10"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(124));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["wall_ms"].as_f64().unwrap() - 100.0
        })
        .collect();
    overshoot.sort_by(f64::total_cmp);
    eprintln!(
        "timeout precision (100 ms limit, 40 runs): median {:.2} ms past the limit, worst {:.2} ms",
        overshoot[overshoot.len() / 2],
        overshoot[overshoot.len() - 1]
    );
    interleaved(&d, &ctl);
    after_a_pause(&d, &ctl);
    crowd(&d);
}

/// Sorted copy's median and the given quantile.
fn quantiles(mut v: Vec<f64>, q: f64) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(q))
}

fn after_a_pause(d: &Daemon, ctl: &std::path::Path) {
    let times: Vec<f64> = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            let mut c = Command::new(ctl);
            c.arg("--socket")
                .arg(&d.socket)
                .args(["run", "--", "/bin/true"]);
            timed(&mut c).expect("run")
        })
        .collect();
    let (median, p90) = quantiles(times, 0.9);
    eprintln!(
        "cleanroomctl run -- /bin/true after 0.2 s idle, 50 runs: median {median:.2} ms   p90 {p90:.2} ms"
    );
}

/// Threads and resident memory of a process.
fn footprint(pid: i32) -> (usize, u64) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (threads, rss_kb)
}

/// Round trips of `daemon.ping` on one connection, microseconds: (median, p99).
fn pings(d: &Daemon) -> (f64, f64) {
    let mut c = d.connect();
    let times: Vec<f64> = (0..2000)
        .map(|_| {
            let t = std::time::Instant::now();
            let r = c.call("daemon.ping", serde_json::json!({}));
            assert_eq!(r["result"]["pong"], true);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    quantiles(times, 0.99)
}

fn crowd(d: &Daemon) {
    use cleanroom::runs::{alive, eventually, start_run_as};
    const RUNS: usize = 1000;
    const MARKER: &str = "1017.375";
    let (threads, rss) = footprint(d.pid());
    let (p50, p99) = pings(d);
    eprintln!(
        "crowd: idle daemon {threads} threads, {rss} KiB RSS, ping median {p50:.1} µs p99 {p99:.1} µs"
    );
    let mut conns: Vec<_> = (0..RUNS / 25).map(|_| d.connect()).collect();
    for c in &mut conns {
        for i in 0..25 {
            start_run_as(c, i + 1, serde_json::json!({"argv": ["sleep", MARKER]}));
        }
    }
    let started = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(120), || alive(MARKER).len() == RUNS));
    eprintln!(
        "crowd: {RUNS} runs started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (threads, rss) = footprint(d.pid());
    let (p50, p99) = pings(d);
    eprintln!(
        "crowd: with {RUNS} runs {threads} threads, {rss} KiB RSS, ping median {p50:.1} µs p99 {p99:.1} µs"
    );
    let t = std::time::Instant::now();
    drop(conns); // a client going away cancels its runs
    assert!(eventually(Duration::from_secs(120), || alive(MARKER).is_empty()));
    eprintln!(
        "crowd: every process gone {:.2} s after the clients left",
        t.elapsed().as_secs_f64()
    );
}

/// Wall time of one whole process, milliseconds; `None` if it failed.
fn timed(cmd: &mut Command) -> Option<f64> {
    let t = std::time::Instant::now();
    let ok = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| t.elapsed().as_secs_f64() * 1e3)
}

fn interleaved(d: &Daemon, ctl: &std::path::Path) {
    // (name, the options of `run`): `None` is plain /bin/true, no cleanroom at all.
    let variants: [(&str, Option<&[&str]>); 5] = [
        ("plain /bin/true", None),
        ("cleanroomctl run -- /bin/true", Some(&[])),
        (
            "  --isolate net,mount,uts,ipc",
            Some(&["--isolate", "net,mount,uts,ipc"]),
        ),
        (
            "  --isolate net,pid,mount,uts,ipc",
            Some(&["--isolate", "net,pid,mount,uts,ipc"]),
        ),
        ("  --measure counters", Some(&["--measure", "counters"])),
    ];
    let command = |options: Option<&[&str]>| {
        let Some(options) = options else {
            return Command::new("/bin/true");
        };
        let mut c = Command::new(ctl);
        c.arg("--socket").arg(&d.socket).arg("run");
        c.args(options);
        c.args(["--", "/bin/true"]);
        c
    };
    let usable: Vec<_> = variants
        .into_iter()
        .filter(|(name, options)| {
            let ok = timed(&mut command(*options)).is_some();
            if !ok {
                eprintln!("interleaved: {name:?} fails here; left out");
            }
            ok
        })
        .collect();
    let mut times = vec![Vec::new(); usable.len()];
    for _ in 0..200 {
        for (i, (name, options)) in usable.iter().enumerate() {
            let ms = timed(&mut command(*options)).unwrap_or_else(|| panic!("{name} failed"));
            times[i].push(ms);
        }
    }
    eprintln!("interleaved whole-process wall time, 200 rounds:");
    for ((name, _), t) in usable.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        eprintln!(
            "  {name:36} median {:6.2} ms   p90 {:6.2} ms",
            t[t.len() / 2],
            t[t.len() * 9 / 10]
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = spawn
}
criterion_main!(benches);
