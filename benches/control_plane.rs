//! Control-plane benchmarks against the real, release-built binaries.
//!
//! Build them first: `cargo build --release --workspace --bins && cargo bench --bench
//! control_plane` (or `benches/run.sh`, which also measures memory and wake-ups).
//!
//! - `ping_round_trip`: one connection, one `daemon.ping` at a time (latency).
//! - `ping_64_connections`: 64 connections, each with one request at a time, driven by a
//!   single-threaded async client (throughput; criterion reports requests per second).
//! - `cleanroomctl_status`: the whole `cleanroomctl status` process, spawn to exit.
//! - `start_to_ready`: spawn of `cleanroomd` to its READY=1 on NOTIFY_SOCKET, with an
//!   existing state database (the usual restart) and with a fresh one (first start).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleanroom::{Daemon, bin};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const PING: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.ping\"}\n";

fn quiet_daemon() -> Daemon {
    Daemon::builder().env("RUST_LOG", "warn").start()
}

/// Pins every thread of `pid` (or of this process, for 0) to `cpu`.
fn pin(pid: u32, cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    let pid = if pid == 0 { std::process::id() } else { pid };
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        // Threads may come and go (tokio's blocking pool): a vanished one is fine.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
    }
}

/// A minimal blocking echo server: the floor of a Unix-socket round trip on this host.
fn echo_floor(socket: &std::path::Path, cpu: usize) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
            if w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"pong\":true}}\n")
                .is_err()
            {
                break;
            }
        }
    })
}

/// One connection, reused by every call of the benchmark routine.
struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl Conn {
    fn new(socket: &std::path::Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        Self {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            line: String::new(),
        }
    }

    fn round_trips(&mut self, b: &mut criterion::Bencher<'_>) {
        b.iter(|| {
            self.writer.write_all(PING).unwrap();
            self.line.clear();
            self.reader.read_line(&mut self.line).unwrap();
            assert!(self.line.contains("pong"));
        });
    }
}

/// Latency of one `daemon.ping`, next to the floor a trivial echo server gives on the same
/// host: with client and server on different CPUs (a VM pays the hypervisor's cross-CPU
/// wake-up here) and on the same CPU.
fn ping_round_trip(c: &mut Criterion) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let d = quiet_daemon();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("ping_round_trip");
    let mut layouts = vec![("same_cpu", 0, 0)];
    if cpus > 1 {
        layouts.push(("cross_cpu", 0, 1));
    }
    for (name, client_cpu, server_cpu) in layouts {
        pin(0, client_cpu);
        pin(d.child.id(), server_cpu);
        let mut conn = Conn::new(&d.socket);
        group.bench_function(format!("cleanroomd/{name}"), |b| conn.round_trips(b));
        let echo_path = dir.path().join(format!("echo-{name}.sock"));
        let echo = echo_floor(&echo_path, server_cpu);
        let mut conn = Conn::new(&echo_path);
        group.bench_function(format!("echo_floor/{name}"), |b| conn.round_trips(b));
        drop(conn);
        echo.join().unwrap();
    }
    group.finish();
    // Unpin: the other benchmarks run as the scheduler likes.
    let mut all = nix::sched::CpuSet::new();
    for cpu in 0..cpus {
        all.set(cpu).unwrap();
    }
    for pid in [0, d.child.id()] {
        let pid = if pid == 0 { std::process::id() } else { pid };
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid: i32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &all);
        }
    }
}

fn ping_64_connections(c: &mut Criterion) {
    const CONNS: usize = 64;
    let d = quiet_daemon();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conns: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..CONNS {
            let s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
            let (r, w) = s.into_split();
            v.push((tokio::io::BufReader::new(r), w));
        }
        v
    });
    let mut conns = Some(conns);
    let mut group = c.benchmark_group("ping_64_connections");
    group.throughput(Throughput::Elements(CONNS as u64));
    group.bench_function("requests", |b| {
        b.iter_custom(|iters| {
            let taken = conns.take().unwrap();
            let (elapsed, back) = rt.block_on(async move {
                let start = Instant::now();
                let tasks: Vec<_> = taken
                    .into_iter()
                    .map(|(mut r, mut w)| {
                        tokio::spawn(async move {
                            let mut line = String::new();
                            for _ in 0..iters {
                                w.write_all(PING).await.unwrap();
                                line.clear();
                                r.read_line(&mut line).await.unwrap();
                                assert!(line.contains("pong"));
                            }
                            (r, w)
                        })
                    })
                    .collect();
                let mut back = Vec::new();
                for t in tasks {
                    back.push(t.await.unwrap());
                }
                (start.elapsed(), back)
            });
            conns = Some(back);
            elapsed
        })
    });
    group.finish();
}

fn cleanroomctl_status(c: &mut Criterion) {
    let d = quiet_daemon();
    let ctl = bin("cleanroomctl");
    c.bench_function("cleanroomctl_status", |b| {
        b.iter(|| {
            let status = Command::new(&ctl)
                .arg("--socket")
                .arg(&d.socket)
                .arg("status")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        })
    });
}

fn start_to_ready(c: &mut Criterion) {
    let daemon = bin("cleanroomd");
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let run = |state: &std::path::Path| {
        let start = Instant::now();
        let mut child = Command::new(&daemon)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("d.sock"))
            .arg("--state-dir")
            .arg(state)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within 5 s");
            if buf[..n].windows(7).any(|w| w == b"READY=1") {
                break;
            }
        }
        let elapsed = start.elapsed();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        elapsed
    };
    let existing = dir.path().join("state");
    run(&existing);
    let mut group = c.benchmark_group("start_to_ready");
    group.bench_function("existing_state", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run(&existing)).sum())
    });
    let mut n = 0u64;
    group.bench_function("fresh_state", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    n += 1;
                    let fresh = dir.path().join(format!("fresh-{n}"));
                    let t = run(&fresh);
                    std::fs::remove_dir_all(&fresh).unwrap();
                    t
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = ping_round_trip, ping_64_connections, cleanroomctl_status, start_to_ready
}
criterion_main!(benches);
