//! `run.start`: resolves the caller's identity and environment, runs the command (with
//! warm-ups and repetitions), streams its output and progress as notifications, and
//! answers with the records and statistics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_proto::{
    EndReason, JSONRPC_VERSION, Notification, RunOutput, RunParams, RunProgress, RunRecord,
    RunResult,
};
use tokio::sync::mpsc;

use super::peer::Peer;
use super::{Call, Error};
use crate::run::cgroup::Limits;
use crate::run::{Chunk, Job, spawn, stats};
use crate::state::State;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn notification<T: serde::Serialize>(method: &str, params: &T) -> String {
    serde_json::to_string(&Notification {
        jsonrpc: JSONRPC_VERSION.to_owned(),
        method: method.to_owned(),
        params: serde_json::to_value(params).unwrap_or_default(),
    })
    .unwrap_or_default()
}

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
    if p.pids == Some(0) || p.cpu_percent == Some(0) || p.timeout_ms == Some(0) {
        return bad("pids, cpu_percent and timeout_ms must be positive".into());
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
    if let Some(why) = state.runner.unavailable() {
        return Err(Error::Run(format!(
            "runs are unavailable on this host: {why}"
        )));
    }
    let uid = peer.uid;
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
            uid: peer.uid,
            gid: peer.gid,
            groups: peer.groups.clone(),
            deterministic: p.deterministic,
            isolate: p.isolate.clone(),
            cgroup_procs: Vec::new(),
        },
        limits: Limits {
            memory: p.memory,
            pids: p.pids,
            cpu_percent: p.cpu_percent,
            cpus: None,
        },
        timeout: p.timeout_ms.map(Duration::from_millis),
    };
    let total = p.warmup + p.repeat;
    let runner = Arc::clone(&state.runner);
    let request = call.id.clone();
    let notify = call.notify.clone();
    let cancel = call.cancel.child_token();
    // The run lives in its own task: if the client goes away its request future is
    // dropped, but the run still ends through the cancel token and cleans up.
    let task = state.runs.spawn(async move {
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
                        if notify
                            .send(notification("run.output", &params))
                            .await
                            .is_err()
                        {
                            // The client is gone; keep draining so the run is not blocked.
                        }
                    }
                })
            };
            let record = runner.run_once(&job, tx, cancel.clone()).await;
            let _ = fwd.await;
            let warmup = i < p.warmup;
            let _ = notify
                .send(notification(
                    "run.progress",
                    &RunProgress {
                        request: request.clone(),
                        done: i + 1,
                        total,
                        warmup,
                        wall_ms: record.wall_ms,
                    },
                ))
                .await;
            let stop = record.end_reason != EndReason::Exited || cancel.is_cancelled();
            if !warmup || stop {
                measured.push(record);
            }
            if stop {
                break;
            }
        }
        measured
    });
    let measured = task
        .await
        .map_err(|e| Error::Internal(format!("run task failed: {e}")))?;
    let last = measured
        .last()
        .cloned()
        .ok_or_else(|| Error::Internal("no run was carried out".into()))?;
    let mut result = RunResult {
        last,
        runs: Vec::new(),
        stats: BTreeMap::new(),
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
        result.runs = measured;
    }
    Ok(result)
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
