//! `run.*`, `runs.*`, `baseline.*` on the wire: parameters to the run engine and the
//! history, the engine's events to notifications, its errors to error objects. What a run
//! is and does lives in [`crate::run`].

use std::sync::Arc;

use cleanroom_proto::{
    BaselineDeleteResult, BaselineInfo, BaselineListResult, BaselineParams, BaselineSaveParams,
    BatchParams, CompareParams, CompareResult, Comparison, Event, RunCancelResult, RunOutput,
    RunParams, RunProgress, RunResult, RunStarted, RunsActiveResult, RunsCompareParams,
    RunsHistoryParams, RunsHistoryResult, RunsListParams, RunsListResult,
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::peer::Peer;
use super::{Call, Notifier};
use crate::run::{self, Error, RunEvent, history, request};
use crate::state::State;

/// The bounds a request is resolved within: the configuration in force and the host's
/// memory.
fn bounds(live: &crate::state::Live, state: &State) -> request::Bounds {
    request::Bounds {
        max_repeat: live.config.runs.max_repeat,
        quotas: live.config.quotas.clone(),
        memory_total: state.memory_total(),
        fs_stage: live.config.daemon.state_dir.join("fs"),
        fs_write_mb: live.config.runs.fs_write_mb,
    }
}

/// `run.start`: resolves the request, executes the batch in a task of its own (so a client
/// going away ends it through its token and it still cleans up) and forwards its events.
/// A detached batch answers at once and is ended only by `run.cancel` or the daemon
/// stopping.
pub async fn start(
    p: RunParams,
    peer: &Peer,
    call: Call,
    state: &State,
) -> Result<RunResult, Error> {
    let caller = state.caller(peer);
    let live = state.live();
    let bounds = bounds(&live, state);
    let batch = request::resolve(p, &caller, &bounds, state.store()).await?;
    let settings = state.run_settings(batch.exclusive.is_some()).await?;
    let engine = Arc::clone(state.engine());
    let id = engine.new_batch_id().await?;
    let detached = batch.detached;
    let cancel = if detached {
        state.shutdown().child_token()
    } else {
        call.cancel.child_token()
    };
    // Listed before the answer: a detached batch can be cancelled at once, and a host
    // where runs cannot happen says so to the caller.
    let listed = engine.admit(&id, &batch, cancel.clone(), &live.config.quotas)?;
    let (events, forwarded) = forward_events(call.id.clone(), call.notify.clone());
    let batch_id = id.clone();
    let task = state.runs().spawn(async move {
        let result = engine
            .execute(listed, batch_id, batch, settings, events, cancel)
            .await;
        // Every notification is out before the answer.
        let _ = forwarded.await;
        result
    });
    if detached {
        return Ok(run::batch::detached(id));
    }
    task.await?
}

/// `run.compare`: resolves every command, runs the comparison in a task of its own (a
/// client going away ends it through its token) and forwards its events.
pub async fn compare(
    p: CompareParams,
    peer: &Peer,
    call: Call,
    state: &State,
) -> Result<CompareResult, Error> {
    let caller = state.caller(peer);
    let live = state.live();
    let bounds = bounds(&live, state);
    let cmp = request::resolve_compare(p, &caller, &bounds, state.store()).await?;
    let settings = state.run_settings(cmp.sides[0].exclusive.is_some()).await?;
    let engine = Arc::clone(state.engine());
    let mut ids = Vec::with_capacity(cmp.sides.len());
    for _ in &cmp.sides {
        ids.push(engine.new_batch_id().await?);
    }
    let cancel = call.cancel.child_token();
    let listed = engine.admit_all(&ids, &cmp, &cancel, &live.config.quotas)?;
    let (events, forwarded) = forward_events(call.id.clone(), call.notify.clone());
    state
        .runs()
        .spawn(async move {
            let result = engine
                .compare(listed, ids, cmp, settings, events, cancel)
                .await;
            let _ = forwarded.await;
            result
        })
        .await?
}

/// `runs.history`.
pub async fn history(
    p: RunsHistoryParams,
    peer: &Peer,
    state: &State,
) -> Result<RunsHistoryResult, Error> {
    let limit = p.limit.unwrap_or(100);
    history::label_history(
        state.store(),
        &state.caller(peer),
        &p.label,
        p.metric,
        limit,
    )
    .await
}

/// A channel for the engine's events, and the task that turns them into notifications of
/// request `request` on its connection (a connection gone: they are dropped).
fn forward_events(
    request: Value,
    notify: Notifier,
) -> (mpsc::Sender<RunEvent>, tokio::task::JoinHandle<()>) {
    // Small: the connection's queue bounds the output in bytes; this only hands it over.
    let (tx, mut rx) = mpsc::channel::<RunEvent>(2);
    let task = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let request = request.clone();
            let event = match e {
                RunEvent::Started { batch } => Event::RunStarted(RunStarted { request, batch }),
                RunEvent::Output { stream, data } => Event::RunOutput(RunOutput {
                    request,
                    stream: stream.to_owned(),
                    data: String::from_utf8_lossy(&data).into_owned(),
                }),
                RunEvent::Progress {
                    done,
                    total,
                    warmup,
                    wall_ms,
                    command,
                } => Event::RunProgress(RunProgress {
                    request,
                    done,
                    total,
                    warmup,
                    wall_ms,
                    command,
                }),
            };
            // The client is gone: keep draining so the run is never blocked.
            let _ = notify.send(event).await;
        }
    });
    (tx, task)
}

/// `run.cancel`: its owner or an admin.
pub fn cancel(p: BatchParams, peer: &Peer, state: &State) -> Result<RunCancelResult, Error> {
    let cancelled = state
        .engine()
        .active()
        .cancel(&p.batch, &state.caller(peer))?;
    Ok(RunCancelResult {
        batch: p.batch,
        cancelled,
    })
}

/// `runs.list`.
pub async fn list(p: RunsListParams, peer: &Peer, state: &State) -> Result<RunsListResult, Error> {
    let limit = p.limit.unwrap_or(20).min(1000);
    history::list(state.store(), &state.caller(peer), limit).await
}

/// `runs.active`: the batches in progress the caller may see.
pub fn active(peer: &Peer, state: &State) -> RunsActiveResult {
    RunsActiveResult {
        batches: state.engine().active().list(&state.caller(peer)),
    }
}

/// `runs.show`: a batch still running says so (to whoever may see it).
pub async fn show(p: BatchParams, peer: &Peer, state: &State) -> Result<RunResult, Error> {
    let caller = state.caller(peer);
    if let Some(owner) = state.engine().active().owner(&p.batch) {
        if caller.may_see(owner) {
            return Err(Error::StillRunning {
                batch: p.batch,
                owner,
            });
        }
    }
    history::show(state.store(), &caller, &p.batch).await
}

/// `runs.compare`.
pub async fn compare_batches(
    p: RunsCompareParams,
    peer: &Peer,
    state: &State,
) -> Result<Comparison, Error> {
    let settings = state.run_settings(false).await?.verdict;
    history::compare(
        state.store(),
        &state.caller(peer),
        &p.a,
        &p.b,
        p.strict,
        p.metric,
        &settings,
    )
    .await
}

/// `baseline.list`.
pub async fn baselines(peer: &Peer, state: &State) -> Result<BaselineListResult, Error> {
    history::baselines(state.store(), &state.caller(peer)).await
}

/// `baseline.save`: names a stored batch.
pub async fn save_baseline(
    p: BaselineSaveParams,
    peer: &Peer,
    state: &State,
) -> Result<BaselineInfo, Error> {
    let caller = state.caller(peer);
    history::save_baseline(
        state.store(),
        &caller,
        &p.name,
        &p.batch,
        p.public,
        state.live().config.quotas.baselines_for(caller.admin),
    )
    .await
}

/// `baseline.delete`: its owner or an admin.
pub async fn delete_baseline(
    p: BaselineParams,
    peer: &Peer,
    state: &State,
) -> Result<BaselineDeleteResult, Error> {
    history::delete_baseline(state.store(), &state.caller(peer), &p.name).await
}
