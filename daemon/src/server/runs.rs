//! `run.start`: resolves the caller's identity and environment, runs the command (with
//! warm-ups and repetitions), streams its output and progress as notifications, and
//! answers with the records and statistics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_proto::{
    BaselineDeleteResult, BaselineInfo, BaselineListResult, BaselineParams, BaselineSaveParams,
    BatchInfo, BatchParams, Comparison, CpuRequest, EndReason, Event, RunCancelResult, RunOutput,
    RunParams, RunProgress, RunRecord, RunResult, RunStarted, RunsCompareParams, RunsListParams,
    RunsListResult,
};
use tokio::sync::mpsc;

use super::peer::Peer;
use super::{Call, Error};
use crate::host::format::parse_cpu_list;
use crate::run::cgroup::Limits;
use crate::run::cpus::PickError;
use crate::run::{Chunk, Exclusive, Job, Want, compare, spawn, stats};
use crate::state::State;
use crate::store::history;
use crate::tune::profile::Setting;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment of a run: defaults, then the caller's `env`.
fn environment(p: &RunParams, home: &str) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), home.into());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("TZ".into(), "UTC".into());
    if p.deterministic {
        env.insert("CLEANROOM_SEED".into(), "0".into());
        env.insert("PYTHONHASHSEED".into(), "0".into());
    }
    env.extend(p.env.clone());
    env.into_iter().collect()
}

fn validate(p: &RunParams, max_repeat: u32) -> Result<(), Error> {
    let bad = |m: String| {
        Err(Error::InvalidParams {
            method: "run.start",
            detail: m,
        })
    };
    if p.argv.is_empty() || p.argv[0].is_empty() {
        return bad("argv must name a program".into());
    }
    if p.argv.iter().any(|a| a.contains('\0')) {
        return bad("argv may not contain NUL bytes".into());
    }
    for (k, v) in &p.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(format!("env: {k:?} is not a valid variable"));
        }
    }
    if p.repeat == 0 || p.repeat > max_repeat {
        return bad(format!(
            "repeat must be 1 to {max_repeat}, not {}",
            p.repeat
        ));
    }
    if p.warmup > max_repeat {
        return bad(format!("warmup must be at most {max_repeat}"));
    }
    if p.memory.is_some_and(|m| m < 1 << 20) {
        return bad("memory must be at least 1 MiB".into());
    }
    if (p.cpus.is_some() || p.wait) && !p.exclusive {
        return bad("cpus and wait need exclusive".into());
    }
    if p.realtime && !p.exclusive {
        return bad("realtime needs exclusive: a SCHED_FIFO run must have cores of its own".into());
    }
    match &p.cpus {
        Some(CpuRequest::Count(0)) => return bad("cpus must be at least 1".into()),
        Some(CpuRequest::List(l)) if l.len() > 256 => {
            return bad("cpus: the CPU list is longer than 256 characters".into());
        }
        Some(CpuRequest::List(l)) if parse_cpu_list(l).is_err() => {
            return bad(format!(
                "cpus: {l:?} is neither a count nor a CPU list (like 2,3 or 4-7)"
            ));
        }
        _ => {}
    }
    if p.cpu_percent.is_some_and(|c| c > 100 * 4096) {
        return bad("cpu_percent is at most 409600 (4096 CPUs)".into());
    }
    if p.pids == Some(0) || p.cpu_percent == Some(0) || p.timeout_ms == Some(0) {
        return bad("pids, cpu_percent and timeout_ms must be positive".into());
    }
    for name in p.rlimits.keys() {
        if rlimit_resource(name).is_none() {
            return bad(format!(
                "rlimits: unknown limit {name:?} (nofile, nproc, core, stack, as, data, \
                 fsize, memlock, cpu)"
            ));
        }
    }
    if let Some(cwd) = &p.cwd {
        if !cwd.starts_with('/') {
            return bad(format!("cwd {cwd:?} must be an absolute path"));
        }
    }
    Ok(())
}

/// Runs the request; see the module documentation.
pub async fn start(
    p: RunParams,
    peer: Peer,
    call: Call,
    state: Arc<State>,
) -> Result<RunResult, Error> {
    let live = state.live();
    validate(&p, live.config.runs.max_repeat)?;
    if let Some(name) = &p.save_baseline {
        if !valid_baseline_name(name) {
            return Err(Error::InvalidParams {
                method: "run.start",
                detail: format!(
                    "save_baseline: {name:?} is not a name (letters, digits, . _ -; at most 64)"
                ),
            });
        }
    }
    if let Some(name) = &p.save_baseline {
        may_replace_baseline(&state, &peer, name, "run.start").await?;
    }
    // The baseline must exist before anything runs.
    let baseline = match &p.baseline {
        Some(name) => match load(&state, &format!("baseline:{name}")).await {
            Ok((batch, _, r)) => Some((batch, r)),
            Err(_) => {
                return Err(Error::InvalidParams {
                    method: "run.start",
                    detail: format!(
                        "baseline: no baseline named {name:?} (cleanroomctl baseline list)"
                    ),
                });
            }
        },
        None => None,
    };
    if let Some(why) = state.runner.unavailable() {
        return Err(Error::Run(format!(
            "runs are unavailable on this host: {why}"
        )));
    }
    // Who the run is: the caller, or (admin only) the user asked for.
    let (uid, gid, groups) = match &p.user {
        None => (peer.uid, peer.gid, peer.groups.clone()),
        Some(user) => {
            let role = peer.role(&live.auth);
            if role < cleanroom_proto::Role::Admin {
                return Err(Error::Forbidden {
                    method: "run.start",
                    needed: cleanroom_proto::Role::Admin,
                    uid: peer.uid,
                    role,
                    group: live.auth.group_for(cleanroom_proto::Role::Admin).to_owned(),
                });
            }
            let user = user.clone();
            tokio::task::spawn_blocking(move || resolve_user(&user))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??
        }
    };
    let home = tokio::task::spawn_blocking(move || {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.dir.display().to_string())
            .unwrap_or_else(|| "/".to_owned())
    })
    .await
    .unwrap_or_else(|_| "/".to_owned());
    let job = Job {
        spec: spawn::Spec {
            argv: p.argv.clone(),
            cwd: p.cwd.clone().unwrap_or_else(|| "/".into()).into(),
            env: environment(&p, &home),
            uid,
            gid,
            groups,
            deterministic: p.deterministic,
            isolate: p.isolate.clone(),
            realtime: p.realtime,
            cgroup_v2: None,
            cgroup_procs: Vec::new(),
            rlimits: rlimits(&p),
        },
        limits: Limits {
            memory: p.memory,
            pids: p.pids,
            cpu_percent: p.cpu_percent,
            cpus: None,
            realtime: p.realtime,
        },
        timeout: p.timeout_ms.map(Duration::from_millis),
    };
    let total = p.warmup + p.repeat;
    let mut job = job;
    let want = match &p.cpus {
        _ if !p.exclusive => None,
        None => Some(Want::Count(1)),
        Some(CpuRequest::Count(n)) => Some(Want::Count(*n as usize)),
        Some(CpuRequest::List(l)) => Some(Want::List(parse_cpu_list(l).map_err(|e| {
            Error::InvalidParams {
                method: "run.start",
                detail: format!("cpus: {l:?} is not a CPU list: {e}"),
            }
        })?)),
    };
    // The pool: the active profile's `[isolation] cpus`, else the configured one.
    let pool = if want.is_some() {
        let profiles = Arc::clone(&live.profiles);
        state
            .store
            .call(move |c| crate::store::journal::state(c))
            .await?
            .filter(|t| t.phase == crate::store::journal::Phase::Active)
            .and_then(|t| t.profile)
            .and_then(|name| {
                let p = profiles.get(&name).ok()?;
                match &p.settings.get("isolation.cpus")?.setting {
                    Setting::IsolationCpus(set) => Some(set.clone()),
                    _ => None,
                }
            })
    } else {
        None
    };
    let runner = Arc::clone(&state.runner);
    let request = call.id.clone();
    let notify = call.notify.clone();
    // A detached batch is not ended by its client going away, only by run.cancel and the
    // daemon stopping.
    let detach = p.detach;
    let cancel = if detach {
        state.shutdown.child_token()
    } else {
        call.cancel.child_token()
    };
    let batch = runner.new_id();
    let answer_batch = batch.clone();
    let uid = peer.uid;
    let admin = peer.role(&live.auth) == cleanroom_proto::Role::Admin;
    state.batch_started(&batch, peer.uid, cancel.clone());
    let active = Arc::clone(&state);
    let done_batch = batch.clone();
    let started = Event::RunStarted(RunStarted {
        request: request.clone(),
        batch: batch.clone(),
    });
    let wait = p.wait;
    // The run lives in its own task: if the client goes away its request future is
    // dropped, but the run still ends through the cancel token and cleans up.
    let task = state.runs.spawn(async move {
        let _ = notify.send(started).await;
        let forget = || active.batch_ended(&done_batch);
        // Exclusive cores for the whole batch; the shield goes up with the first holder.
        // From here on the cores are released by this task, on a blocking thread,
        // whatever happens to the request.
        let acquired: Result<Option<Exclusive>, Error> = match want {
            None => Ok(None),
            Some(want) => loop {
                let released = runner.released();
                let (r, w, pool) = (Arc::clone(&runner), want.clone(), pool.clone());
                let taken =
                    tokio::task::spawn_blocking(move || r.take_exclusive(&w, pool.as_ref()))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()));
                match taken {
                    Ok(Ok(guard)) => break Ok(Some(guard)),
                    Ok(Err(PickError::Busy(why))) if wait => {
                        tracing::debug!(reason = %why, "waiting for exclusive cores");
                        tokio::select! {
                            () = released => continue,
                            () = cancel.cancelled() => {
                                break Err(Error::Run(format!("cancelled while waiting: {why}")));
                            }
                        }
                    }
                    Ok(Err(PickError::Busy(why))) => {
                        break Err(Error::Run(format!("{why} (--wait waits for them)")));
                    }
                    Ok(Err(PickError::Never(why))) => break Err(Error::Run(why)),
                    Err(e) => break Err(e),
                }
            },
        };
        let exclusive = match acquired {
            Ok(x) => x,
            Err(e) => {
                // Nobody waits for a detached batch's answer: its failure is stored.
                if detach {
                    let mut failed =
                        RunRecord::new(batch.clone(), EndReason::FailedToStart, String::new());
                    failed.error = Some(e.to_string());
                    let stored = finish(
                        &p,
                        batch.clone(),
                        vec![failed],
                        None,
                        None,
                        &active,
                        (uid, admin),
                    )
                    .await;
                    if let Err(e) = stored {
                        tracing::warn!(error = %e, "cannot store a detached batch that failed");
                    }
                }
                forget();
                return Err(e);
            }
        };
        let shield = exclusive.as_ref().map(|g| g.method.to_owned());
        if let Some(guard) = &exclusive {
            job.limits.cpus = Some(guard.cpus.clone());
        }
        let mut measured: Vec<RunRecord> = Vec::new();
        for i in 0..total {
            let (tx, mut rx) = mpsc::channel::<Chunk>(64);
            let fwd = {
                let notify = notify.clone();
                let request = request.clone();
                tokio::spawn(async move {
                    while let Some(chunk) = rx.recv().await {
                        let params = RunOutput {
                            request: request.clone(),
                            stream: chunk.stream.to_owned(),
                            data: String::from_utf8_lossy(&chunk.data).into_owned(),
                        };
                        if notify.send(Event::RunOutput(params)).await.is_err() {
                            // The client is gone; keep draining so the run is not blocked.
                        }
                    }
                })
            };
            let record = runner.run_once(&job, tx, cancel.clone()).await;
            let _ = fwd.await;
            let warmup = i < p.warmup;
            let _ = notify
                .send(Event::RunProgress(RunProgress {
                    request: request.clone(),
                    done: i + 1,
                    total,
                    warmup,
                    wall_ms: record.wall_ms,
                }))
                .await;
            let stop = record.end_reason != EndReason::Exited || cancel.is_cancelled();
            if !warmup || stop {
                measured.push(record);
            }
            if stop {
                break;
            }
        }
        // Releasing the cores (and lowering the shield) scans /proc: off the async threads.
        if let Some(guard) = exclusive {
            let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
        }
        let finished = finish(
            &p,
            batch.clone(),
            measured,
            shield,
            baseline,
            &active,
            (uid, admin),
        )
        .await;
        forget();
        finished
    });
    if detach {
        // The batch goes on without this connection; its result lands in the history.
        return Ok(RunResult {
            batch: answer_batch,
            last: RunRecord::new(String::new(), EndReason::Running, String::new()),
            runs: Vec::new(),
            stats: BTreeMap::new(),
            comparison: None,
            shield: None,
            detached: true,
        });
    }
    task.await
        .map_err(|e| Error::Internal(format!("run task failed: {e}")))?
}

/// Statistics, the comparison with the baseline, and the history (and the baseline to
/// save) once a batch has run.
async fn finish(
    p: &RunParams,
    batch: String,
    measured: Vec<RunRecord>,
    shield: Option<String>,
    baseline: Option<(String, RunResult)>,
    state: &Arc<State>,
    (uid, admin): (u32, bool),
) -> Result<RunResult, Error> {
    let live = state.live();
    let last = measured
        .last()
        .cloned()
        .ok_or_else(|| Error::Internal("no run was carried out".into()))?;
    let mut result = RunResult {
        batch,
        last,
        runs: Vec::new(),
        stats: BTreeMap::new(),
        comparison: None,
        shield,
        detached: false,
    };
    if p.repeat > 1 {
        let metric = |f: fn(&RunRecord) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
        for (name, values) in [
            ("wall_ms", metric(|r| r.wall_ms)),
            ("user_ms", metric(|r| r.user_ms)),
            ("sys_ms", metric(|r| r.sys_ms)),
            ("max_rss_kb", metric(|r| r.max_rss_kb as f64)),
        ] {
            if let Some(s) = stats::summarize(&values) {
                result.stats.insert(name.to_owned(), s);
            }
        }
        result.runs = measured.clone();
    }
    if let Some((_, base)) = &baseline {
        let cfg = &live.config.runs;
        result.comparison = compare::compare(
            "wall_ms",
            &samples(base),
            &measured.iter().map(|r| r.wall_ms).collect::<Vec<_>>(),
            cfg.compare_alpha,
            cfg.compare_threshold_percent / 100.0,
        );
    }
    // History (and the baseline to save) after the comparison, so a run never compares
    // against itself.
    let row = history::BatchRow {
        batch: result.batch.clone(),
        ts: 0.0,
        uid,
        label: p.label.clone(),
        argv: serde_json::to_string(&p.argv).unwrap_or_default(),
        result: serde_json::to_string(&result).unwrap_or_default(),
    };
    let keep = live.config.runs.history_limit;
    let save = p.save_baseline.clone();
    let refused = state
        .store
        .call(move |c| {
            history::insert(c, &row, keep)?;
            Ok(match save {
                Some(name) if !history::save_baseline(c, &name, &row.batch, uid, admin)? => {
                    Some(name)
                }
                _ => None,
            })
        })
        .await?;
    if let Some(name) = refused {
        return Err(Error::Run(format!(
            "the runs are stored as batch {}, but baseline {name} was saved by someone else \
             meanwhile and is not replaced",
            result.batch
        )));
    }
    Ok(result)
}

/// The `RLIMIT_*` resource of a limit's name.
fn rlimit_resource(name: &str) -> Option<i32> {
    Some(match name {
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "core" => libc::RLIMIT_CORE,
        "stack" => libc::RLIMIT_STACK,
        "as" => libc::RLIMIT_AS,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "cpu" => libc::RLIMIT_CPU,
        _ => return None,
    } as i32)
}

/// The limits a run gets: the daemon's original open-files limit, then those asked for.
fn rlimits(p: &RunParams) -> Vec<(i32, u64, u64)> {
    let mut out: Vec<(i32, u64, u64)> = Vec::new();
    if let (Some((soft, hard)), false) = (
        crate::privileges::original_nofile(),
        p.rlimits.contains_key("nofile"),
    ) {
        out.push((libc::RLIMIT_NOFILE as i32, soft, hard));
    }
    for (name, v) in &p.rlimits {
        if let Some(r) = rlimit_resource(name) {
            out.push((r, *v, *v));
        }
    }
    out
}

/// A user by name or uid: its uid, primary gid and groups from the user database.
fn resolve_user(user: &str) -> Result<(u32, u32, Vec<u32>), Error> {
    use nix::unistd::{Uid, User, getgrouplist};
    let bad = |detail: String| Error::InvalidParams {
        method: "run.start",
        detail,
    };
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|e| bad(format!("user: cannot look {user:?} up: {e}")))?
    .ok_or_else(|| bad(format!("user: no user {user:?}")))?;
    let name = std::ffi::CString::new(found.name.clone())
        .map_err(|_| bad(format!("user: bad name {:?}", found.name)))?;
    let groups = getgrouplist(&name, found.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![found.gid.as_raw()]);
    Ok((found.uid.as_raw(), found.gid.as_raw(), groups))
}

/// The wall times of a stored result.
fn samples(r: &RunResult) -> Vec<f64> {
    if r.runs.is_empty() {
        vec![r.last.wall_ms]
    } else {
        r.runs.iter().map(|x| x.wall_ms).collect()
    }
}

fn valid_baseline_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Loads a stored batch (by id, or `baseline:NAME`).
async fn load(state: &Arc<State>, what: &str) -> Result<(String, u32, RunResult), Error> {
    let what = what.to_owned();
    let found = state
        .store
        .call(move |c| {
            let batch = match what.strip_prefix("baseline:") {
                Some(name) => history::baseline(c, name)?.map(|(b, _)| b),
                None => Some(what.clone()),
            };
            Ok(match batch {
                Some(b) => history::get(c, &b)?.map(|row| (what, row)),
                None => None,
            })
        })
        .await?;
    let Some((what, row)) = found else {
        return Err(Error::Run("no such batch or baseline".into()));
    };
    let result: RunResult = serde_json::from_str(&row.result)
        .map_err(|e| Error::Internal(format!("stored batch {what} is unreadable: {e}")))?;
    Ok((row.batch, row.uid, result))
}

fn may_see(peer: &Peer, owner: u32, state: &State) -> bool {
    peer.uid == owner || peer.role(&state.live().auth) == cleanroom_proto::Role::Admin
}

/// `run.cancel`: its owner or an admin.
pub async fn cancel(
    p: BatchParams,
    peer: Peer,
    state: Arc<State>,
) -> Result<RunCancelResult, Error> {
    let found = state
        .active_runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&p.batch)
        .cloned();
    match found {
        None => Ok(RunCancelResult {
            batch: p.batch,
            cancelled: false,
        }),
        Some((owner, _)) if !may_see(&peer, owner, &state) => Err(Error::Run(format!(
            "batch {} belongs to uid {owner}",
            p.batch
        ))),
        Some((_, token)) => {
            token.cancel();
            Ok(RunCancelResult {
                batch: p.batch,
                cancelled: true,
            })
        }
    }
}

/// `runs.list`.
pub async fn list(
    p: RunsListParams,
    peer: Peer,
    state: Arc<State>,
) -> Result<RunsListResult, Error> {
    let admin = peer.role(&state.live().auth) == cleanroom_proto::Role::Admin;
    let uid = (!admin).then_some(peer.uid);
    let limit = p.limit.unwrap_or(20).min(1000);
    let rows = state
        .store
        .call(move |c| history::list(c, uid, limit))
        .await?;
    let batches = rows
        .into_iter()
        .filter_map(|row| {
            let r: RunResult = serde_json::from_str(&row.result).ok()?;
            let mut walls = samples(&r);
            walls.sort_by(f64::total_cmp);
            Some(BatchInfo {
                batch: row.batch,
                ts: row.ts,
                uid: row.uid,
                label: row.label,
                argv: serde_json::from_str(&row.argv).unwrap_or_default(),
                runs: walls.len() as u32,
                end_reason: r.last.end_reason,
                exit_code: r.last.exit_code,
                wall_ms: walls[walls.len() / 2],
            })
        })
        .collect();
    Ok(RunsListResult { batches })
}

/// `runs.show`.
pub async fn show(p: BatchParams, peer: Peer, state: Arc<State>) -> Result<RunResult, Error> {
    let running = state
        .active_runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&p.batch)
        .map(|(owner, _)| *owner);
    if let Some(owner) = running.filter(|o| may_see(&peer, *o, &state)) {
        return Err(Error::Run(format!(
            "batch {} is still running (its result is stored when it ends; \
             `cleanroomctl runs cancel {}` ends it now; owner uid {owner})",
            p.batch, p.batch
        )));
    }
    let (_, owner, result) = load(&state, &p.batch).await?;
    if !may_see(&peer, owner, &state) {
        return Err(Error::Run(format!("batch {} is not yours", p.batch)));
    }
    Ok(result)
}

/// `runs.compare`.
pub async fn compare_batches(
    p: RunsCompareParams,
    peer: Peer,
    state: Arc<State>,
) -> Result<Comparison, Error> {
    let (_, oa, a) = load(&state, &p.a).await?;
    let (_, ob, b) = load(&state, &p.b).await?;
    if !may_see(&peer, oa, &state) || !may_see(&peer, ob, &state) {
        return Err(Error::Run("you may only compare your own runs".into()));
    }
    let cfg = state.live().config.runs.clone();
    compare::compare(
        "wall_ms",
        &samples(&a),
        &samples(&b),
        cfg.compare_alpha,
        cfg.compare_threshold_percent / 100.0,
    )
    .ok_or_else(|| Error::Run("nothing to compare".into()))
}

/// `baseline.list`.
pub async fn baselines(state: Arc<State>) -> Result<BaselineListResult, Error> {
    let rows = state.store.call(|c| history::baselines(c)).await?;
    Ok(BaselineListResult {
        baselines: rows
            .into_iter()
            .map(|(name, batch, ts, uid)| BaselineInfo {
                name,
                batch,
                ts,
                uid,
            })
            .collect(),
    })
}

/// `baseline.delete`: its owner or an admin.
/// Refuses to replace a baseline of someone else's (only its owner or an admin may).
async fn may_replace_baseline(
    state: &Arc<State>,
    peer: &Peer,
    name: &str,
    method: &'static str,
) -> Result<(), Error> {
    let n = name.to_owned();
    let existing = state.store.call(move |c| history::baseline(c, &n)).await?;
    match existing {
        Some((_, uid)) if !may_see(peer, uid, state) => Err(Error::Run(format!(
            "{method}: baseline {name} belongs to uid {uid}; pick another name"
        ))),
        _ => Ok(()),
    }
}

/// `baseline.save`: names a stored batch.
pub async fn save_baseline(
    p: BaselineSaveParams,
    peer: Peer,
    state: Arc<State>,
) -> Result<BaselineInfo, Error> {
    if !valid_baseline_name(&p.name) {
        return Err(Error::InvalidParams {
            method: "baseline.save",
            detail: format!(
                "name: {:?} is not a name (letters, digits, . _ -; at most 64)",
                p.name
            ),
        });
    }
    let (batch, owner, _) = load(&state, &p.batch)
        .await
        .map_err(|_| Error::Run(format!("baseline.save: no stored batch {}", p.batch)))?;
    if !may_see(&peer, owner, &state) {
        return Err(Error::Run(format!("batch {} is not yours", p.batch)));
    }
    may_replace_baseline(&state, &peer, &p.name, "baseline.save").await?;
    let (name, b, uid) = (p.name.clone(), batch.clone(), peer.uid);
    let admin = peer.role(&state.live().auth) == cleanroom_proto::Role::Admin;
    if !state
        .store
        .call(move |c| history::save_baseline(c, &name, &b, uid, admin))
        .await?
    {
        return Err(Error::Run(format!(
            "baseline.save: baseline {} belongs to someone else; pick another name",
            p.name
        )));
    }
    let n = p.name.clone();
    let ts = state
        .store
        .call(move |c| Ok(history::baselines(c)?.into_iter().find(|r| r.0 == n)))
        .await?
        .map_or(0.0, |r| r.2);
    Ok(BaselineInfo {
        name: p.name,
        batch,
        ts,
        uid: peer.uid,
    })
}

pub async fn delete_baseline(
    p: BaselineParams,
    peer: Peer,
    state: Arc<State>,
) -> Result<BaselineDeleteResult, Error> {
    let name = p.name.clone();
    let owner = state
        .store
        .call(move |c| history::baseline(c, &name))
        .await?;
    match owner {
        None => Ok(BaselineDeleteResult {
            name: p.name,
            deleted: false,
        }),
        Some((_, uid)) if !may_see(&peer, uid, &state) => Err(Error::Run(format!(
            "baseline {} belongs to uid {uid}",
            p.name
        ))),
        Some(_) => {
            let name = p.name.clone();
            let deleted = state
                .store
                .call(move |c| history::delete_baseline(c, &name))
                .await?;
            Ok(BaselineDeleteResult {
                name: p.name,
                deleted,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_defaults_and_overrides() {
        let mut p = RunParams {
            argv: vec!["true".into()],
            repeat: 1,
            ..RunParams::default()
        };
        p.env.insert("TZ".into(), "Europe/Paris".into());
        p.deterministic = true;
        let env: BTreeMap<String, String> = environment(&p, "/home/x").into_iter().collect();
        assert_eq!(env["TZ"], "Europe/Paris");
        assert_eq!(env["HOME"], "/home/x");
        assert_eq!(env["CLEANROOM_SEED"], "0");
        assert!(env["PATH"].contains("/usr/bin"));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let ok = RunParams {
            argv: vec!["true".into()],
            repeat: 1,
            ..RunParams::default()
        };
        assert!(validate(&ok, 10).is_ok());
        for (p, needle) in [
            (
                RunParams {
                    argv: vec![],
                    ..ok.clone()
                },
                "argv",
            ),
            (
                RunParams {
                    repeat: 0,
                    ..ok.clone()
                },
                "repeat",
            ),
            (
                RunParams {
                    repeat: 11,
                    ..ok.clone()
                },
                "repeat",
            ),
            (
                RunParams {
                    memory: Some(10),
                    ..ok.clone()
                },
                "memory",
            ),
            (
                RunParams {
                    cwd: Some("rel".into()),
                    ..ok.clone()
                },
                "cwd",
            ),
        ] {
            let e = validate(&p, 10).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
