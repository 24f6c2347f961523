//! One execution of a job: its cgroup, its process, its output, its end, its measures.
//!
//! Nothing here parks a thread for the life of a run. The exec is awaited on the status
//! pipe, the output on the pipes, the exit on the pidfd (readable when the process is
//! gone), all by readiness; a blocking thread only does bounded work (creating the cgroup,
//! the clone, a kill round, reading the accounting, removing the cgroup).
//!
//! A run ends when its process is reaped and its cgroup is empty, whatever else holds its
//! pipes: after the last kill round the daemon reads what is already in the pipes and closes
//! its ends, so a process outside the run that keeps a copy of the run's stdout open
//! (`exec 9>/proc/PID/fd/1`) cannot keep the run, its cores or the shield alive.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cleanroom_proto::{EndReason, Noise, RunRecord};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::RunEvent;
use super::cgroup::RunCgroup;
use super::helper::Helper;
use super::spawn::{self, Exit, Running};
use super::{Error, Job, Runner, counters, noise};
use crate::host::Host;
use crate::host::format::parse_psi_some_total;

/// How long the final kill rounds may take for a process stuck in the kernel before the
/// run is given up on (it is logged; its cgroup stays for the next start to remove).
const KILL_ROUNDS: u32 = 30;

/// The least memory limit a run may have in a prepared cgroup, whose parked helper (a few
/// MiB) is charged to it until the run's child is cloned.
const SLOT_MIN_MEMORY: u64 = 64 << 20;

/// What a run's output may still hold after its cgroup is empty, read before the pipes
/// close: a pipe buffer's worth, bounded so a writer outside the run cannot keep it open.
const DRAIN_READS: usize = 16;

impl Runner {
    /// Runs `job` once. Output goes to `output` as [`RunEvent::Output`] (dropped when the
    /// receiver is gone); `cancel` ends the run early.
    pub async fn run_once(
        self: &Arc<Self>,
        job: &Job,
        output: &mpsc::Sender<RunEvent>,
        cancel: CancellationToken,
    ) -> RunRecord {
        let record = self.execute(job, output, cancel).await;
        self.ended(&record);
        record
    }

    /// [`Runner::run_once`] but for telling the watcher.
    async fn execute(
        self: &Arc<Self>,
        job: &Job,
        output: &mpsc::Sender<RunEvent>,
        cancel: CancellationToken,
    ) -> RunRecord {
        // The previous run's clean room goes: this run's is the one to collect from, or
        // none if it never starts its own.
        if let Some(latest) = &job.latest {
            drop(latest.take());
        }
        let cpus = job.limits.cpus.clone().unwrap_or_else(|| self.own_cpus());
        let host = self.host.clone();
        let probe = self.probe(&cpus);
        let begun = Instant::now();
        let (cg, helper) = match self.prepare_cgroup(job).await {
            Ok(prepared) => prepared,
            Err(e) => {
                let mut record = RunRecord::new(self.next_run_id(), EndReason::FailedToStart, cpus);
                record.error = Some(e.to_string());
                return record;
            }
        };
        let id = cg.id().to_owned();
        let mut record = RunRecord::new(id.clone(), EndReason::FailedToStart, cpus);
        let counting = match self.start_counters(job, &cg).await {
            Ok(c) => c,
            Err(e) => {
                record.error = Some(e);
                if let Some(h) = helper {
                    h.dismiss();
                }
                remove(&host, cg).await;
                return record;
            }
        };
        let pressure_before = pressure(&host);
        // The noise window opens as close to the exec as the daemon can get.
        let noise_start = probe.sample();
        let prepared = begun.elapsed();
        let started = match self.clone_child(job, &cg, helper).await {
            Ok(s) => s,
            Err(e) => {
                record.exit_code = e.exit_code();
                record.error = Some(e.to_string());
                // A helper that failed after its clone left a child in the cgroup.
                end_all(&host, &cg).await;
                remove(&host, cg).await;
                return record;
            }
        };
        // Starting can take long too (a working directory or program on a file system that
        // never answers): cancellation and the timeout apply from the clone on. A start
        // ended early is killed, and its end still awaited (without a thread).
        let pid = started.pid();
        let deadline = job
            .timeout
            .and_then(|t| tokio::time::Instant::now().checked_add(t))
            .unwrap_or_else(far_future);
        let exec = started.wait_exec();
        tokio::pin!(exec);
        let mut early = None;
        let cloned = begun.elapsed();
        let running = tokio::select! {
            r = &mut exec => r,
            () = tokio::time::sleep_until(deadline) => {
                early = Some(EndReason::Timeout);
                kill_start(&host, &cg, pid).await;
                exec.await
            }
            () = cancel.cancelled() => {
                early = Some(EndReason::Cancelled);
                kill_start(&host, &cg, pid).await;
                exec.await
            }
        };
        let mut running = match running {
            Ok(r) => r,
            Err(e) => {
                record.end_reason = early.unwrap_or(EndReason::FailedToStart);
                record.exit_code = e.exit_code();
                record.error = Some(e.to_string());
                end_all(&host, &cg).await;
                remove(&host, cg).await;
                return record;
            }
        };
        // The program runs from here: wall time and the timeout count from this point, so
        // placing the process in its cgroups is neither measured nor charged.
        let t0 = Instant::now();
        tracing::debug!(
            run = %id,
            born_in_cgroup = running.born_in_cgroup,
            pidfd_from_clone = running.pidfd_from_clone,
            "run started"
        );
        let stage = running.stage.take();
        let outcome = self
            .supervise(running, &cg, job, output, (cancel, early), t0)
            .await;
        // Its processes are gone: what it wrote stays as it is until collected.
        if let (Some(kept), Some(latest)) = (stage, &job.latest) {
            latest.keep(kept);
        }
        record.wall_ms = outcome.ended.duration_since(t0).as_secs_f64() * 1e3;
        let exited = t0.elapsed();
        let (usage, noise_end, own, counted) = {
            let (h, c) = (host.clone(), cg.clone());
            let probe = probe.clone();
            tokio::task::spawn_blocking(move || {
                let counted = counting.map(counters::Open::finish);
                (c.usage(&h), probe.sample(), c.own_cpu(&h), counted)
            })
            .await
            .unwrap_or_else(|_| {
                let lost = Some(Err(std::io::Error::other("the reading task failed")));
                (
                    Default::default(),
                    noise_start.clone(),
                    noise::Own::Unknown,
                    lost,
                )
            })
        };
        match counted {
            Some(Ok(c)) => record.counters = Some(c),
            Some(Err(e)) => record.error = Some(format!("cannot read performance counters: {e}")),
            None => {}
        }
        if job.limits.realtime {
            cg.release_rt_time(&host);
        }
        if outcome.emptied {
            // After the answer: nothing of the run needs its directories any more.
            let h = host.clone();
            tokio::task::spawn_blocking(move || cg.remove(&h));
        }
        let pressure_after = pressure(&host);
        record.noise = Noise {
            cpu_pressure_us: delta(pressure_before[0], pressure_after[0]),
            memory_pressure_us: delta(pressure_before[1], pressure_after[1]),
            io_pressure_us: delta(pressure_before[2], pressure_after[2]),
            ..noise::report(&noise_start, &noise_end, &own, noise::user_hz())
        };
        record.killed = outcome.killed;
        record.user_ms = usage.user_us as f64 / 1e3;
        record.sys_ms = usage.sys_us as f64 / 1e3;
        record.oom_kills = usage.oom_kills;
        record.output_truncated = outcome.truncated;
        match outcome.exit {
            Ok(exit) => {
                record.exit_code = exit.code;
                record.signal = exit.signal;
                record.voluntary_ctxt_switches = exit.voluntary;
                record.involuntary_ctxt_switches = exit.involuntary;
                record.max_rss_kb = usage.peak_memory.map_or(exit.max_rss_kb, |b| b / 1024);
            }
            Err(e) => record.error = Some(format!("cannot wait for the run: {e}")),
        }
        record.end_reason = match outcome.reason {
            Some(r) => r,
            None if usage.oom_kills > 0 && record.exit_code != Some(0) => EndReason::Oom,
            None if record.signal.is_some() => EndReason::Signaled,
            None => EndReason::Exited,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            run = %id,
            prepare_ms = ms(prepared),
            clone_ms = ms(cloned - prepared),
            exec_ms = ms(t0.duration_since(begun) - cloned),
            program_ms = ms(exited),
            after_ms = ms(t0.elapsed() - exited),
            "run phases"
        );
        record
    }

    /// The run's performance counters, opened and started on its cgroup when its job counts
    /// them (bounded work: a few system calls a CPU): on the CPUs its cpuset holds it to
    /// when it asked for some, else on every online CPU (its own affinity is its to widen
    /// within its cgroup's CPUs).
    async fn start_counters(
        &self,
        job: &Job,
        cg: &RunCgroup,
    ) -> Result<Option<counters::Open>, String> {
        if !job.limits.counters {
            return Ok(None);
        }
        let dir = cg.perf_dir().ok_or_else(|| {
            "performance counters need the run's cgroup in the perf_event hierarchy, and this \
             host has none (no v1 perf_event mount, no unified hierarchy holding it)"
                .to_owned()
        })?;
        let cpus = match &job.limits.cpus {
            Some(cpus) => cpus.clone(),
            None => self
                .host
                .read("/sys/devices/system/cpu/online")
                .map_err(|e| e.to_string())?,
        };
        let set = crate::host::format::parse_cpu_list(cpus.trim())
            .map_err(|e| format!("the CPUs to count on, {cpus:?}: {e}"))?;
        let file = self.host.open_dir(dir).map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || counters::Open::start(&file, &set))
            .await
            .map_err(|e| e.to_string())?
            .map(Some)
            .map_err(|e| format!("cannot open performance counters of {dir}: {e}"))
    }

    /// The run's cgroup with its limits: a slot prepared ahead (with its helper on v1)
    /// when one is ready, else made now. On cgroup v2 an exclusive run goes into the
    /// shield's partition (made now), and any other run stays off the shielded CPUs.
    async fn prepare_cgroup(&self, job: &Job) -> Result<(RunCgroup, Option<Helper>), Error> {
        let layout = match &self.layout {
            Ok(l) => l.clone(),
            Err(e) => return Err(Error::Unavailable(e.to_string())),
        };
        let up = self.up.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut limits = job.limits.clone();
        let partition = match (&limits.cpus, up) {
            (Some(_), Some(up)) => up.partition,
            (None, Some(up)) => {
                limits.cpus = Some(up.rest);
                None
            }
            _ => None,
        };
        // A prepared cgroup holds its helper until the child is cloned: the clone needs room
        // for two tasks, and the helper's pages are charged until it exits, so runs with a
        // smaller task or memory limit make their cgroup now.
        let fits = limits.pids.is_none_or(|n| n >= 2)
            && limits.memory.is_none_or(|m| m >= SLOT_MIN_MEMORY);
        // A run that counts needs its cgroup in the perf_event hierarchy, which slots
        // leave out (a hybrid host's unified one cannot rename a slot's directory).
        let slot = match (&self.slots, &partition) {
            (Some(slots), None) if fits && !limits.counters => slots.take(),
            _ => None,
        };
        if let Some(slot) = slot {
            // A rename and a few writes to files of a fresh cgroup: bounded, done here.
            let taken = match slot.cgroup.take(&self.host) {
                Ok(cg) => match cg.apply_limits(&self.host, &limits) {
                    Ok(()) => Ok(cg),
                    Err(e) => Err((e, Some(cg))),
                },
                Err(e) => Err((e, None)),
            };
            return match taken {
                Ok(cg) => Ok((cg, slot.helper)),
                Err((e, renamed)) => {
                    // The helper goes, and so does its cgroup (a failed rename leaves it
                    // to the next start's cleanup).
                    if let Some(h) = slot.helper {
                        h.dismiss();
                    }
                    if let Some(cg) = renamed {
                        cg.remove(&self.host);
                    }
                    Err(e.into())
                }
            };
        }
        let (host, id) = (self.host.clone(), self.next_run_id());
        let cg = tokio::task::spawn_blocking(move || {
            layout.create(&host, &id, &limits, partition.as_deref())
        })
        .await??;
        Ok((cg, None))
    }

    /// Clones the child into its cgroup: by the helper parked inside it (v1 slot: born
    /// there), or from the daemon (v2: born there by `CLONE_INTO_CGROUP`; v1 without a
    /// slot: it enters each hierarchy as its first step). Bounded work, on a blocking
    /// thread.
    async fn clone_child(
        &self,
        job: &Job,
        cg: &RunCgroup,
        helper: Option<Helper>,
    ) -> Result<spawn::Started, spawn::Error> {
        let mut spec = job.spec.clone();
        let started = match (helper, cg.v2_dir()) {
            (Some(helper), _) => {
                let reset: Vec<_> = cg
                    .accounting_files()
                    .iter()
                    .filter_map(|p| self.host.path(p).ok())
                    .collect();
                let procs: Vec<_> = cg
                    .procs_files()
                    .iter()
                    .filter_map(|p| self.host.path(p).ok())
                    .collect();
                tokio::task::spawn_blocking(move || match helper.start(&spec, reset) {
                    Ok((started, exiting)) => {
                        // Reaped off the request's path.
                        tokio::task::spawn_blocking(move || exiting.reap());
                        Ok(started)
                    }
                    // The helper is gone (killed by someone) and never took the request:
                    // the daemon clones the child itself, which then enters its cgroups as
                    // its first step.
                    Err(spawn::Error::HelperGone(e)) => {
                        tracing::warn!(error = %e, "a parked run helper did not answer; starting the run without it");
                        spec.cgroup_procs = procs;
                        spawn::start(&spec)
                    }
                    Err(e) => Err(e),
                })
                .await
            }
            (None, Some(d)) => {
                spec.cgroup_v2 = self.host.path(d).ok();
                tokio::task::spawn_blocking(move || spawn::start(&spec)).await
            }
            (None, None) => {
                spec.cgroup_procs = cg
                    .procs_files()
                    .iter()
                    .filter_map(|p| self.host.path(p).ok())
                    .collect();
                tokio::task::spawn_blocking(move || spawn::start(&spec)).await
            }
        };
        started.unwrap_or_else(|e| {
            Err(spawn::Error::Spawn(
                job.spec.argv.first().cloned().unwrap_or_default(),
                std::io::Error::other(format!("run task failed: {e}")),
            ))
        })
    }

    /// From the exec to the end: output forwarded, the exit awaited (or the timeout, or
    /// cancellation; a start already ended early, with its reason, is only awaited), then
    /// kill rounds until the cgroup is empty, then the pipes drained and closed.
    async fn supervise(
        &self,
        running: Running,
        cg: &RunCgroup,
        job: &Job,
        output: &mpsc::Sender<RunEvent>,
        (cancel, early): (CancellationToken, Option<EndReason>),
        t0: Instant,
    ) -> Supervised {
        let host = &self.host;
        let budget = Arc::new(AtomicU64::new(self.max_output));
        let truncated = Arc::new(AtomicBool::new(false));
        let closing = CancellationToken::new();
        let readers: Vec<_> = [("stdout", running.stdout), ("stderr", running.stderr)]
            .into_iter()
            .map(|(stream, fd)| {
                tokio::spawn(forward(
                    fd,
                    stream,
                    output.clone(),
                    Arc::clone(&budget),
                    Arc::clone(&truncated),
                    closing.clone(),
                ))
            })
            .collect();
        let pid = running.pid;
        let deadline = job
            .timeout
            .and_then(|t| tokio::time::Instant::from_std(t0).checked_add(t))
            .unwrap_or_else(far_future);
        // A start ended early (killed while it started) keeps its reason.
        let mut reason = early;
        let mut killed = 0;
        let exit = match exit_watch(running.pidfd) {
            Ok(watch) if reason.is_some() => wait_killed(&watch, pid).await,
            Ok(watch) => {
                let ended = tokio::select! {
                    r = wait_exit(&watch, pid) => Some(r),
                    () = tokio::time::sleep_until(deadline) => { reason = Some(EndReason::Timeout); None }
                    () = cancel.cancelled() => { reason = Some(EndReason::Cancelled); None }
                };
                match ended {
                    Some(r) => r,
                    None => {
                        tracing::debug!(pid, reason = ?reason, at_ms = t0.elapsed().as_secs_f64() * 1e3, "ending the run");
                        killed += kill_round(host, cg).await;
                        wait_killed(&watch, pid).await
                    }
                }
            }
            Err(e) => Err(e),
        };
        let ended = exit.as_ref().map_or_else(|_| Instant::now(), |(_, at)| *at);
        // Nothing outlives the run: whatever the program left behind goes now.
        let (left, emptied) = end_all(host, cg).await;
        killed += left;
        closing.cancel();
        for r in readers {
            let _ = r.await;
        }
        Supervised {
            exit: exit.map(|(e, _)| e),
            ended,
            reason,
            killed,
            emptied,
            truncated: truncated.load(Ordering::Relaxed),
        }
    }
}

/// What supervising a running program found.
struct Supervised {
    exit: std::io::Result<Exit>,
    ended: Instant,
    reason: Option<EndReason>,
    killed: u64,
    emptied: bool,
    truncated: bool,
}

/// Far enough away to mean "no deadline".
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The pidfd, registered for readiness.
fn exit_watch(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the pidfd: it stays open, and names the same process, until
    // the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// Waits until the process has exited (its pidfd is readable), then reaps it.
async fn wait_exit(pidfd: &AsyncFd<OwnedFd>, pid: u32) -> std::io::Result<(Exit, Instant)> {
    loop {
        let mut ready = pidfd.readable().await?;
        if let Some(exit) = spawn::try_wait(pid)? {
            return Ok((exit, Instant::now()));
        }
        ready.clear_ready();
    }
}

/// How long a killed run's process may take to be reaped before it is given up on: a
/// process another process traces stays a zombie only its tracer can see, so the wait
/// must end somewhere (the run then ends with an error, and its cgroup is still emptied).
const REAP_LIMIT: Duration = Duration::from_secs(30);

/// Waits for a process that was just killed, at most [`REAP_LIMIT`].
async fn wait_killed(pidfd: &AsyncFd<OwnedFd>, pid: u32) -> std::io::Result<(Exit, Instant)> {
    match tokio::time::timeout(REAP_LIMIT, wait_exit(pidfd, pid)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(
                pid,
                "a killed run process was not reaped in time (traced?); given up on"
            );
            Err(std::io::Error::other(format!(
                "process {pid} was killed but could not be reaped within {} s",
                REAP_LIMIT.as_secs()
            )))
        }
    }
}

/// Reads one output pipe into `tx`, sharing the output budget with the other pipe, until
/// it ends or `closing` says the run is over; then reads what is already buffered and
/// closes the read end.
async fn forward(
    fd: OwnedFd,
    stream: &'static str,
    tx: mpsc::Sender<RunEvent>,
    budget: Arc<AtomicU64>,
    truncated: Arc<AtomicBool>,
    closing: CancellationToken,
) {
    use tokio::io::AsyncReadExt;
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let send = async |n: usize, buf: &[u8]| {
        // Both readers share the budget: take from it atomically.
        let mut take = 0usize;
        let _ = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            take = (n as u64).min(left) as usize;
            Some(left - take as u64)
        });
        if take < n {
            truncated.store(true, Ordering::Relaxed);
        }
        if take > 0 {
            // A client gone: the chunk is dropped, the pipe still drained.
            let _ = tx
                .send(RunEvent::Output {
                    stream,
                    data: buf[..take].to_vec(),
                })
                .await;
        }
    };
    loop {
        let n = tokio::select! {
            biased;
            r = pipe.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = closing.cancelled() => break,
        };
        send(n, &buf).await;
    }
    // Read by the system call itself: the pipe's readiness as tokio last saw it may predate
    // what the program wrote just before it exited (`try_read` would then find nothing).
    for _ in 0..DRAIN_READS {
        match nix::unistd::read(pipe.as_fd(), &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => send(n, &buf).await,
        }
    }
    // Still more: someone outside the run keeps writing. Its output is not the run's.
    truncated.store(true, Ordering::Relaxed);
}

/// One kill round on a blocking thread (v1 may freeze and thaw); how many were killed.
async fn kill_round(host: &Host, cg: &RunCgroup) -> u64 {
    let (h, c) = (host.clone(), cg.clone());
    tokio::task::spawn_blocking(move || c.kill_all(&h) as u64)
        .await
        .unwrap_or(0)
}

/// Ends a start taking too long: the child itself through its pid (it may not have entered
/// its v1 cgroups yet), and whatever is in the cgroup.
async fn kill_start(host: &Host, cg: &RunCgroup, pid: u32) {
    // SAFETY: kill on our own child, not yet reaped, so the pid is still its.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    kill_round(host, cg).await;
}

/// Kill rounds until the cgroup is empty: a process stuck in the kernel (uninterruptible
/// I/O) dies only when it gets out, and each round takes what forked or arrived since.
/// Returns how many were killed and whether the cgroup is empty.
async fn end_all(host: &Host, cg: &RunCgroup) -> (u64, bool) {
    let mut killed = 0;
    for round in 1..=KILL_ROUNDS {
        if cg.pids(host).is_empty() {
            return (killed, true);
        }
        killed += kill_round(host, cg).await;
        if wait_empty(host, cg, Duration::from_secs(1)).await {
            return (killed, true);
        }
        tracing::warn!(
            round,
            left = cg.pids(host).len(),
            "run processes outlive SIGKILL; killing again"
        );
    }
    tracing::error!(cgroup = ?cg.dirs(), "run processes survived every kill round; the cgroup stays for the next start");
    (killed, false)
}

/// Waits, polling without a thread, until the cgroup is empty; false on timeout.
async fn wait_empty(host: &Host, cg: &RunCgroup, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        if cg.pids(host).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Removes the run's cgroup directories (bounded: a few rmdirs).
async fn remove(host: &Host, cg: RunCgroup) {
    let h = host.clone();
    let _ = tokio::task::spawn_blocking(move || cg.remove(&h)).await;
}

/// PSI `some total=` of cpu, memory, io (microseconds), where the kernel has them.
fn pressure(host: &Host) -> [Option<u64>; 3] {
    ["cpu", "memory", "io"].map(|r| {
        host.read(&format!("/proc/pressure/{r}"))
            .ok()
            .and_then(|t| parse_psi_some_total(&t))
    })
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}
