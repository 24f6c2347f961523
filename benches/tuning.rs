//! Tuning benchmarks, end to end through the real binaries: the whole
//! `cleanroomctl profile apply throughput-performance` process (plan, journal with fsync,
//! kernel writes), `profile revert`, and `profile verify`, with the shipped profiles.
//!
//! Changes real kernel values (root needed) under the tests' host lock; a snapshot puts
//! every one back at the end, also if the benchmark panics. Build first:
//! `cargo build --release --workspace --bins`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleanroom::{Daemon, KernelSnapshot, bin, host_lock, is_root_or_skip};
use criterion::{Criterion, criterion_group, criterion_main};

fn ctl(d: &Daemon, args: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(bin("cleanroomctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let t = start.elapsed();
    assert!(status.success(), "cleanroomctl {args:?} failed");
    t
}

fn tuning(c: &mut Criterion) {
    if !is_root_or_skip("tuning benchmarks") {
        return;
    }
    // No test changes the same knobs meanwhile (cargo test running at the same time).
    let _host = host_lock();
    let profiles = concat!(env!("CARGO_MANIFEST_DIR"), "/daemon/profiles");
    let d = Daemon::builder()
        .env("RUST_LOG", "warn")
        .config(&format!("[tuning]\nprofile_dirs = [{profiles:?}]\n"))
        .start();
    let mut paths: Vec<String> = [
        "vm/swappiness",
        "vm/dirty_ratio",
        "vm/dirty_background_ratio",
    ]
    .iter()
    .map(|k| format!("/proc/sys/{k}"))
    .collect();
    for dev in std::fs::read_dir("/sys/block").unwrap() {
        let name = dev.unwrap().file_name().to_string_lossy().into_owned();
        if ["sd", "vd", "nvme"].iter().any(|p| name.starts_with(p)) {
            paths.push(format!("/sys/block/{name}/queue/read_ahead_kb"));
        }
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let _snap = KernelSnapshot::take(&refs);

    let mut group = c.benchmark_group("profile");
    group.bench_function("apply_throughput_performance", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += ctl(&d, &["profile", "apply", "throughput-performance"]);
                ctl(&d, &["profile", "revert"]);
            }
            total
        })
    });
    group.bench_function("revert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                ctl(&d, &["profile", "apply", "throughput-performance"]);
                total += ctl(&d, &["profile", "revert"]);
            }
            total
        })
    });
    ctl(&d, &["profile", "apply", "throughput-performance"]);
    group.bench_function("verify", |b| b.iter(|| ctl(&d, &["profile", "verify"])));
    ctl(&d, &["profile", "revert"]);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(30);
    targets = tuning
}
criterion_main!(benches);
