//! Turns one request into one result: authorization, parameter checking, the method itself,
//! auditing. Knows nothing of sockets or framing, so it can be called from anywhere.

use std::sync::Arc;

use cleanroom_proto::{
    Caller, MethodInfo, MetricsResult, PingResult, ProfileInfo, ProfileListResult,
    ProfileShowParams, ProfileShowResult, Request, RequestError, SettingInfo, StatusResult,
    TuneResult,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::peer::Peer;
use super::{Call, Error, runs};
use crate::state::State;
use crate::store::AuditEvent;
use crate::tune;

/// Runs `method` with `params` for `peer`: the role check, the params parsed into a
/// [`Request`], the method, and the audit record of a state-changing call (allowed,
/// denied or malformed alike).
pub async fn dispatch(
    method: &str,
    params: Option<Value>,
    peer: &Peer,
    call: &Call,
    state: &Arc<State>,
) -> Result<Value, Error> {
    let info = cleanroom_proto::method(method)
        .ok_or_else(|| RequestError::UnknownMethod(method.to_owned()))?;
    // Digest the params as received, before anything can fail.
    let digest = info.mutates.then(|| params_digest(params.as_ref()));
    let outcome = match authorize(info, peer, state) {
        Ok(()) => match Request::parse(method, params) {
            Ok(request) => route(request, peer, call, digest.as_deref(), state).await,
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    if let Some(params_digest) = digest {
        audit(state, peer, info.name, params_digest, &outcome).await;
    }
    outcome
}

/// The caller's role must reach the method's.
fn authorize(info: MethodInfo, peer: &Peer, state: &State) -> Result<(), Error> {
    let live = state.live();
    let role = peer.role(&live.auth);
    if role < info.role {
        return Err(Error::Forbidden {
            method: info.name,
            needed: info.role,
            uid: peer.uid,
            role,
            group: live.auth.group_for(info.role).to_owned(),
        });
    }
    Ok(())
}

/// One arm per method: a typed call, its typed result as JSON. `digest`: the params'
/// digest of a state-changing call, for the audit rows a method writes itself.
async fn route(
    request: Request,
    peer: &Peer,
    call: &Call,
    digest: Option<&str>,
    state: &Arc<State>,
) -> Result<Value, Error> {
    let (peer, st) = (peer.clone(), Arc::clone(state));
    let method = request.info().name;
    let run = |e| Error::run(method, e, &peer, state);
    match request {
        Request::Ping(_) => reply(PingResult { pong: true }),
        Request::Status(_) => reply(status(peer, st).await?),
        Request::Metrics(_) => reply(MetricsResult {
            text: state.metrics_text(false),
        }),
        Request::Reload(_) => reply(reload(st).await?),
        Request::ProfileList(_) => reply(profile_list(st).await?),
        Request::ProfileShow(p) => reply(profile_show(*p, &st)?),
        Request::ProfileApply(p) => reply(
            tune_op(st, "apply", move |ctx| {
                tune::apply(ctx, &p.name, p.dry_run, p.best_effort)
            })
            .await?,
        ),
        Request::ProfileRevert(p) => {
            reply(tune_op(st, "revert", move |ctx| tune::revert(ctx, p.force)).await?)
        }
        Request::ProfileVerify(_) => reply(tune_op(st, "verify", tune::verify).await?),
        Request::ProfileRecommend(_) => {
            let host = st.host().clone();
            reply(
                tokio::task::spawn_blocking(move || tune::recommend::recommend(&host))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?,
            )
        }
        Request::ProfileActive(_) => reply(
            tokio::task::spawn_blocking(move || tune::active(st.store()))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??,
        ),
        Request::RunStart(p) => reply(
            runs::start(*p, &peer, call.clone(), state)
                .await
                .map_err(run)?,
        ),
        Request::RunCompare(p) => reply(
            runs::compare(*p, &peer, call.clone(), state)
                .await
                .map_err(run)?,
        ),
        Request::RunCancel(p) => reply(runs::cancel(*p, &peer, state).map_err(run)?),
        Request::RunsList(p) => reply(runs::list(*p, &peer, state).await.map_err(run)?),
        Request::RunsActive(_) => reply(runs::active(&peer, state)),
        Request::RunsShow(p) => reply(runs::show(*p, &peer, state).await.map_err(run)?),
        Request::RunsCompare(p) => {
            reply(runs::compare_batches(*p, &peer, state).await.map_err(run)?)
        }
        Request::RunsHistory(p) => reply(runs::history(*p, &peer, state).await.map_err(run)?),
        Request::BaselineList(_) => reply(runs::baselines(&peer, state).await.map_err(run)?),
        Request::BaselineSave(p) => {
            reply(runs::save_baseline(*p, &peer, state).await.map_err(run)?)
        }
        Request::BaselineDelete(p) => {
            reply(runs::delete_baseline(*p, &peer, state).await.map_err(run)?)
        }
        Request::PinAdd(p) => {
            let uid = peer.uid;
            reply(
                pin_op(st, method, move |ctx, conn| {
                    ctx.pins
                        .add(ctx.host, ctx.store, conn, &p.rule, uid, p.dry_run)
                })
                .await?,
            )
        }
        Request::PinList(_) => {
            let result = tokio::task::spawn_blocking(move || {
                let profile = tune::active(st.store()).ok().and_then(|a| a.profile);
                st.pins().list(st.host(), profile.as_deref())
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
            reply(result)
        }
        Request::PinRemove(p) => reply(
            pin_op(st, method, move |ctx, conn| {
                ctx.pins.remove(ctx.host, ctx.store, conn, p.id)
            })
            .await?,
        ),
        Request::ShieldLower(p) => {
            let actor = p.force.then(|| AuditEvent {
                uid: peer.uid,
                gid: peer.gid,
                pid: peer.pid,
                method: method.to_owned(),
                params_digest: digest.unwrap_or_default().to_owned(),
                outcome: String::new(),
            });
            let runner = Arc::clone(st.engine().runner());
            reply(
                tokio::task::spawn_blocking(move || runner.lower_shield(actor.as_ref()))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(run)?,
            )
        }
    }
}

/// A typed result as the JSON the response carries.
fn reply<T: Serialize>(result: T) -> Result<Value, Error> {
    serde_json::to_value(result).map_err(|e| Error::Internal(e.to_string()))
}

/// Queues the audit record of a state-changing call; a failure is logged, not returned
/// (the call itself is done).
async fn audit(
    state: &State,
    peer: &Peer,
    method: &'static str,
    params_digest: String,
    outcome: &Result<Value, Error>,
) {
    let event = AuditEvent {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        method: method.to_owned(),
        params_digest,
        outcome: match outcome {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("error {}: {e}", e.code().code()),
        },
    };
    let keep = state.live().config.limits.audit_rows;
    state.store().record_audit(event, keep).await;
}

fn params_digest(params: Option<&Value>) -> String {
    let text = params.map(Value::to_string).unwrap_or_default();
    let hash = Sha256::digest(text.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

async fn status(peer: Peer, state: Arc<State>) -> Result<StatusResult, Error> {
    let live = state.live();
    let st = Arc::clone(&state);
    let (active, pinned) = tokio::task::spawn_blocking(move || {
        let active = tune::active(st.store())?;
        let pinned = crate::store::pins::count(&st.store().lock_blocking()).unwrap_or(0);
        Ok::<_, tune::Error>((active, pinned))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    let pins = state.pins();
    Ok(StatusResult {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: cleanroom_proto::PROTOCOL_VERSION,
        pid: std::process::id(),
        uptime_s: state.started().elapsed().as_secs(),
        state_dir: live.config.daemon.state_dir.display().to_string(),
        socket: state.socket().path.display().to_string(),
        socket_activated: state.socket().activated,
        config_file: live.file.as_ref().map(|p| p.display().to_string()),
        host_root: state.host().root().display().to_string(),
        cgroup: state.cgroup(),
        connections: state.connections() as u64,
        active_profile: active.profile,
        journal_entries: active.journal_entries,
        run_cgroups: state.engine().runner().cgroup_bases(),
        pin_rules: pins.rules().iter().map(|r| r.text()).collect(),
        pinned,
        pin_events: pins.following(),
        partition: state
            .engine()
            .runner()
            .partition()
            .map(|p| cleanroom_proto::PartitionStatus {
                profile: p.profile,
                cpus: crate::host::format::format_cpu_list(&p.cpus),
                method: p.method.to_owned(),
                run_pool: crate::host::format::format_cpu_list(&p.pool),
            }),
        caller: Caller {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            role: peer.role(&live.auth),
        },
    })
}

/// Runs a tuning operation (`apply`, `revert`, `verify`) on a blocking thread, counted in
/// the metrics; the ones that change the host (all but verify) queue behind each other.
async fn tune_op<F>(state: Arc<State>, operation: &'static str, op: F) -> Result<TuneResult, Error>
where
    F: FnOnce(tune::Ctx<'_>) -> Result<TuneResult, tune::Error> + Send + 'static,
{
    let _guard = if operation != "verify" {
        Some(state.tune_lock().lock().await)
    } else {
        None
    };
    let st = Arc::clone(&state);
    let (result, active) = tokio::task::spawn_blocking(move || {
        let live = st.live();
        let result = op(st.tune_ctx(&live));
        (
            result,
            tune::active(st.store()).ok().and_then(|a| a.profile),
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("tuning task failed: {e}")))?;
    state
        .metrics()
        .observe_operation(operation, result.as_ref().map_err(|_| ()));
    let result = result?;
    state.metrics().observe_tuning(&result);
    state.set_active_profile(active.as_deref());
    Ok(result)
}

/// A `pin.*` change on a blocking thread, queued behind tuning operations (a profile's
/// apply changes the rules in force too). A malformed rule is the params' fault.
async fn pin_op<F, R>(state: Arc<State>, method: &'static str, op: F) -> Result<R, Error>
where
    F: FnOnce(tune::Ctx<'_>, &mut rusqlite::Connection) -> Result<R, crate::pin::Error>
        + Send
        + 'static,
    R: Send + 'static,
{
    let _guard = state.tune_lock().lock().await;
    let st = Arc::clone(&state);
    let result = tokio::task::spawn_blocking(move || {
        let live = st.live();
        let ctx = st.tune_ctx(&live);
        let mut conn = ctx.store.lock_blocking();
        op(ctx, &mut conn)
    })
    .await
    .map_err(|e| Error::Internal(format!("pin task failed: {e}")))?;
    result.map_err(|e| match e {
        crate::pin::Error::Rule(detail) => Error::InvalidParams { method, detail },
        other => Error::Tune(tune::Error::Pin(other)),
    })
}

async fn profile_list(state: Arc<State>) -> Result<ProfileListResult, Error> {
    let live = state.live();
    let st = Arc::clone(&state);
    let active = tokio::task::spawn_blocking(move || tune::active(st.store()))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??
        .profile;
    let profiles = live
        .profiles
        .entries
        .iter()
        .map(|(name, entry)| ProfileInfo {
            name: name.clone(),
            summary: entry
                .profile
                .as_ref()
                .map(|p| p.summary.clone())
                .unwrap_or_default(),
            origin: (&entry.origin).into(),
            path: entry.origin.path_text(),
            active: active.as_deref() == Some(name.as_str()),
            error: entry.profile.as_ref().err().cloned(),
        })
        .collect();
    Ok(ProfileListResult { profiles })
}

fn profile_show(p: ProfileShowParams, state: &State) -> Result<ProfileShowResult, Error> {
    let live = state.live();
    let r = live
        .profiles
        .get(&p.name)
        .map_err(|e| Error::Tune(tune::Error::Profile(e)))?;
    Ok(ProfileShowResult {
        name: r.name.clone(),
        origin: (&r.origin).into(),
        path: r.origin.path_text(),
        summary: r.summary.clone(),
        include: r.include.clone(),
        settings: r
            .settings
            .iter()
            .map(|(id, s)| SettingInfo {
                setting: id.clone(),
                value: s.setting.value_text(),
                source: s.source_text(),
            })
            .collect(),
    })
}

async fn reload(state: Arc<State>) -> Result<cleanroom_proto::ReloadResult, Error> {
    let st = Arc::clone(&state);
    let result = tokio::task::spawn_blocking(move || st.reload())
        .await
        .map_err(|e| Error::Internal(format!("reload task failed: {e}")))?;
    match result {
        Ok(r) => {
            tracing::info!(changed = ?r.changed, restart_required = ?r.restart_required, "configuration reloaded");
            Ok(r)
        }
        Err(e) => {
            tracing::warn!(error = %e, "new configuration refused; the old one stays in force");
            Err(Error::Config(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleanroom_proto::ErrorCode;

    #[test]
    fn request_errors_map_to_their_codes() {
        let e = Error::from(
            cleanroom_proto::Request::parse("daemon.ping", Some(serde_json::json!({"loud": true})))
                .unwrap_err(),
        );
        assert_eq!(e.code(), ErrorCode::InvalidParams);
        assert!(e.to_string().contains("loud"), "{e}");
        let e = Error::from(RequestError::UnknownMethod("x".into()));
        assert_eq!(e.code(), ErrorCode::MethodNotFound);
    }

    #[test]
    fn digest_is_stable_hex() {
        let d = params_digest(Some(&serde_json::json!({})));
        assert_eq!(d.len(), 64);
        assert_eq!(d, params_digest(Some(&serde_json::json!({}))));
        assert_ne!(d, params_digest(None));
    }
}
