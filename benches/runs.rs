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
//!   net,pid,mount,uts,ipc`, one after the other in each of 200 rounds (so drift of the
//!   machine hits every variant alike); prints the median and p90 of each. A variant the
//!   daemon refuses (an older build without `pid`) is said so and left out.
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
    // (name, the isolation asked for): `None` is plain /bin/true, no cleanroom at all.
    let variants: [(&str, Option<&str>); 4] = [
        ("plain /bin/true", None),
        ("cleanroomctl run -- /bin/true", Some("")),
        ("  --isolate net,mount,uts,ipc", Some("net,mount,uts,ipc")),
        (
            "  --isolate net,pid,mount,uts,ipc",
            Some("net,pid,mount,uts,ipc"),
        ),
    ];
    let command = |isolate: Option<&str>| {
        let Some(isolate) = isolate else {
            return Command::new("/bin/true");
        };
        let mut c = Command::new(ctl);
        c.arg("--socket").arg(&d.socket).arg("run");
        if !isolate.is_empty() {
            c.args(["--isolate", isolate]);
        }
        c.args(["--", "/bin/true"]);
        c
    };
    let usable: Vec<_> = variants
        .into_iter()
        .filter(|(name, isolate)| {
            let ok = timed(&mut command(*isolate)).is_some();
            if !ok {
                eprintln!("interleaved: {name:?} fails here; left out");
            }
            ok
        })
        .collect();
    let mut times = vec![Vec::new(); usable.len()];
    for _ in 0..200 {
        for (i, (name, isolate)) in usable.iter().enumerate() {
            let ms = timed(&mut command(*isolate)).unwrap_or_else(|| panic!("{name} failed"));
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
