//! Run overhead and timeout precision, end to end through the real binaries (root).
//!
//! - `spawn/true_plain`: fork+exec+wait of `/bin/true` from this process: the floor.
//! - `spawn/cleanroomctl_run_true`: the whole `cleanroomctl run -- /bin/true` process: client
//!   start, request, cgroup creation in every hierarchy, spawn as the caller, wait,
//!   accounting, cgroup removal, answer.
//! - timeout precision: 40 runs of `sleep 10` with a 100 ms timeout; prints how far past
//!   the limit each run ended (median and worst).
//!
//! Build first: `cargo build --release --workspace --bins`.

use std::process::{Command, Stdio};
use std::time::Duration;

use cleanroom::{Daemon, bin};
use criterion::{Criterion, criterion_group, criterion_main};

fn spawn(c: &mut Criterion) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("run benchmarks need root; skipped");
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = spawn
}
criterion_main!(benches);
