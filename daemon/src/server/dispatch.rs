//! Turns one request into one result: authorization, parameter checking, the method itself,
//! auditing. Knows nothing of sockets or framing, so it can be called from anywhere.

use std::sync::Arc;

use cleanroom_proto::{
    BaselineDelete, BaselineList, BaselineSave, Caller, Method, Metrics, MetricsResult, NoParams,
    Ping, PingResult, ProfileActive, ProfileApply, ProfileInfo, ProfileList, ProfileListResult,
    ProfileRecommend, ProfileRevert, ProfileShow, ProfileShowParams, ProfileShowResult,
    ProfileVerify, Reload, Role, RunCancel, RunStart, RunsCompare, RunsList, RunsShow, SettingInfo,
    Status, StatusResult, TuneResult,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::peer::Peer;
use super::{Call, Error, runs};
use crate::state::State;
use crate::store::AuditEvent;
use crate::tune;

/// Every method the daemon serves, for metric labels and error messages.
pub const KNOWN_METHODS: &[&str] = &[
    Ping::NAME,
    Status::NAME,
    Metrics::NAME,
    Reload::NAME,
    ProfileList::NAME,
    ProfileShow::NAME,
    ProfileApply::NAME,
    ProfileRevert::NAME,
    ProfileVerify::NAME,
    ProfileRecommend::NAME,
    ProfileActive::NAME,
    RunStart::NAME,
    RunCancel::NAME,
    RunsList::NAME,
    RunsShow::NAME,
    RunsCompare::NAME,
    BaselineList::NAME,
    BaselineSave::NAME,
    BaselineDelete::NAME,
];

/// Runs `method` with `params` for `peer`.
pub async fn dispatch(
    method: &str,
    params: Option<Value>,
    peer: &Peer,
    call: &Call,
    state: &Arc<State>,
) -> Result<Value, Error> {
    match method {
        RunCancel::NAME => invoke::<RunCancel, _, _>(params, peer, state, runs::cancel).await,
        RunsList::NAME => invoke::<RunsList, _, _>(params, peer, state, runs::list).await,
        RunsShow::NAME => invoke::<RunsShow, _, _>(params, peer, state, runs::show).await,
        RunsCompare::NAME => {
            invoke::<RunsCompare, _, _>(params, peer, state, runs::compare_batches).await
        }
        BaselineList::NAME => {
            invoke::<BaselineList, _, _>(params, peer, state, runs::baselines).await
        }
        BaselineSave::NAME => {
            invoke::<BaselineSave, _, _>(params, peer, state, runs::save_baseline).await
        }
        BaselineDelete::NAME => {
            invoke::<BaselineDelete, _, _>(params, peer, state, runs::delete_baseline).await
        }
        RunStart::NAME => {
            let call = call.clone();
            invoke::<RunStart, _, _>(params, peer, state, move |p, peer, st| {
                runs::start(p, peer, call, st)
            })
            .await
        }
        Ping::NAME => {
            invoke::<Ping, _, _>(params, peer, state, |_, _, _| async {
                Ok(PingResult { pong: true })
            })
            .await
        }
        Status::NAME => invoke::<Status, _, _>(params, peer, state, status).await,
        Metrics::NAME => {
            invoke::<Metrics, _, _>(params, peer, state, |_, _, state| async move {
                Ok(MetricsResult {
                    text: state.metrics.render(),
                })
            })
            .await
        }
        Reload::NAME => invoke::<Reload, _, _>(params, peer, state, reload).await,
        ProfileList::NAME => invoke::<ProfileList, _, _>(params, peer, state, profile_list).await,
        ProfileShow::NAME => invoke::<ProfileShow, _, _>(params, peer, state, profile_show).await,
        ProfileApply::NAME => {
            invoke::<ProfileApply, _, _>(params, peer, state, |p, _, st| {
                tune_op(st, true, move |ctx| {
                    tune::apply(ctx, &p.name, p.dry_run, p.best_effort)
                })
            })
            .await
        }
        ProfileRevert::NAME => {
            invoke::<ProfileRevert, _, _>(params, peer, state, |p, _, st| {
                tune_op(st, true, move |ctx| tune::revert(ctx, p.force))
            })
            .await
        }
        ProfileVerify::NAME => {
            invoke::<ProfileVerify, _, _>(params, peer, state, |_, _, st| {
                tune_op(st, false, tune::verify)
            })
            .await
        }
        ProfileRecommend::NAME => {
            invoke::<ProfileRecommend, _, _>(params, peer, state, |_, _, st| async move {
                let host = st.host.clone();
                tokio::task::spawn_blocking(move || tune::recommend::recommend(&host))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))
            })
            .await
        }
        ProfileActive::NAME => {
            invoke::<ProfileActive, _, _>(params, peer, state, |_, _, st| async move {
                tokio::task::spawn_blocking(move || tune::active(&st.store))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(Error::from)
            })
            .await
        }
        other => Err(Error::MethodNotFound(other.to_owned())),
    }
}

/// The frame around every method: role check, typed params, typed result, audit.
async fn invoke<M, F, Fut>(
    params: Option<Value>,
    peer: &Peer,
    state: &Arc<State>,
    handler: F,
) -> Result<Value, Error>
where
    M: Method,
    F: FnOnce(M::Params, Peer, Arc<State>) -> Fut,
    Fut: Future<Output = Result<M::Result, Error>>,
{
    let live = state.live();
    let role = peer.role(&live.auth);
    // Digest the params as received, before anything can fail: denied and malformed
    // attempts at a state change are audited too.
    let digest = M::MUTATES.then(|| params_digest(params.as_ref()));
    let outcome = if role < M::ROLE {
        Err(Error::Forbidden {
            method: M::NAME,
            needed: M::ROLE,
            uid: peer.uid,
            role,
            group: live.auth.group_for(M::ROLE).to_owned(),
        })
    } else {
        match parse_params::<M>(params) {
            Ok(typed) => match handler(typed, peer.clone(), Arc::clone(state)).await {
                Ok(r) => serde_json::to_value(r).map_err(|e| Error::Internal(e.to_string())),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    };
    if let Some(params_digest) = digest {
        let event = AuditEvent {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            method: M::NAME.to_owned(),
            params_digest,
            outcome: match &outcome {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("error {}: {e}", e.code().code()),
            },
        };
        if let Err(e) = state.store.record_audit(event).await {
            tracing::error!(method = M::NAME, error = %e, "cannot write audit event");
        }
    }
    outcome
}

/// Params must be an object, `null` or absent; unknown fields are refused by the types.
fn parse_params<M: Method>(params: Option<Value>) -> Result<M::Params, Error> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(Error::InvalidParams {
                method: M::NAME,
                detail: format!(
                    "params must be an object of named parameters, not {}",
                    json_kind(&other)
                ),
            });
        }
    };
    serde_json::from_value(value).map_err(|e| Error::InvalidParams {
        method: M::NAME,
        detail: e.to_string(),
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn params_digest(params: Option<&Value>) -> String {
    let text = params.map(Value::to_string).unwrap_or_default();
    let hash = Sha256::digest(text.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

async fn status(_: NoParams, peer: Peer, state: Arc<State>) -> Result<StatusResult, Error> {
    let live = state.live();
    let st = Arc::clone(&state);
    let active = tokio::task::spawn_blocking(move || tune::active(&st.store))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(StatusResult {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: cleanroom_proto::PROTOCOL_VERSION,
        pid: std::process::id(),
        uptime_s: state.started.elapsed().as_secs(),
        state_dir: live.config.daemon.state_dir.display().to_string(),
        socket: state.socket.path.display().to_string(),
        socket_activated: state.socket.activated,
        config_file: live.file.as_ref().map(|p| p.display().to_string()),
        host_root: state.host.root().display().to_string(),
        cgroup: state.cgroup,
        connections: state.connections() as u64,
        active_profile: active.profile,
        journal_entries: active.journal_entries,
        run_cgroups: state.runner.cgroup_bases(),
        caller: Caller {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            role: peer.role(&live.auth),
        },
    })
}

/// Runs a tuning operation on a blocking thread; `exclusive` ones (apply, revert) queue
/// behind each other.
async fn tune_op<F>(state: Arc<State>, exclusive: bool, op: F) -> Result<TuneResult, Error>
where
    F: FnOnce(tune::Ctx<'_>) -> Result<TuneResult, tune::Error> + Send + 'static,
{
    let _guard = if exclusive {
        Some(state.tune_lock.lock().await)
    } else {
        None
    };
    let st = Arc::clone(&state);
    let (result, active) = tokio::task::spawn_blocking(move || {
        let live = st.live();
        let result = op(st.tune_ctx(&live));
        (result, tune::active(&st.store).ok().and_then(|a| a.profile))
    })
    .await
    .map_err(|e| Error::Internal(format!("tuning task failed: {e}")))?;
    let result = result?;
    state.metrics.observe_tuning(&result);
    state.set_active_profile(active.as_deref());
    Ok(result)
}

async fn profile_list(_: NoParams, _: Peer, state: Arc<State>) -> Result<ProfileListResult, Error> {
    let live = state.live();
    let st = Arc::clone(&state);
    let active = tokio::task::spawn_blocking(move || tune::active(&st.store))
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
            path: entry.path.display().to_string(),
            active: active.as_deref() == Some(name.as_str()),
            error: entry.profile.as_ref().err().cloned(),
        })
        .collect();
    Ok(ProfileListResult { profiles })
}

async fn profile_show(
    p: ProfileShowParams,
    _: Peer,
    state: Arc<State>,
) -> Result<ProfileShowResult, Error> {
    let live = state.live();
    let r = live
        .profiles
        .get(&p.name)
        .map_err(|e| Error::Tune(tune::Error::Profile(e)))?;
    Ok(ProfileShowResult {
        name: r.name.clone(),
        path: r.path.display().to_string(),
        summary: r.summary.clone(),
        include: r.include.clone(),
        settings: r
            .settings
            .iter()
            .map(|(id, s)| SettingInfo {
                setting: id.clone(),
                value: s.setting.value_text(),
                source: s.source.display().to_string(),
            })
            .collect(),
    })
}

async fn reload(
    _: NoParams,
    _: Peer,
    state: Arc<State>,
) -> Result<cleanroom_proto::ReloadResult, Error> {
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

/// Whether a role suffices for a method, for clients that want to check before calling.
pub fn role_for(method: &str) -> Option<Role> {
    match method {
        Ping::NAME => Some(Ping::ROLE),
        Status::NAME => Some(Status::ROLE),
        Metrics::NAME => Some(Metrics::ROLE),
        Reload::NAME => Some(Reload::ROLE),
        ProfileList::NAME => Some(ProfileList::ROLE),
        ProfileShow::NAME => Some(ProfileShow::ROLE),
        ProfileApply::NAME => Some(ProfileApply::ROLE),
        ProfileRevert::NAME => Some(ProfileRevert::ROLE),
        ProfileVerify::NAME => Some(ProfileVerify::ROLE),
        ProfileRecommend::NAME => Some(ProfileRecommend::ROLE),
        ProfileActive::NAME => Some(ProfileActive::ROLE),
        RunStart::NAME => Some(RunStart::ROLE),
        RunCancel::NAME => Some(RunCancel::ROLE),
        RunsList::NAME => Some(RunsList::ROLE),
        RunsShow::NAME => Some(RunsShow::ROLE),
        RunsCompare::NAME => Some(RunsCompare::ROLE),
        BaselineList::NAME => Some(BaselineList::ROLE),
        BaselineSave::NAME => Some(BaselineSave::ROLE),
        BaselineDelete::NAME => Some(BaselineDelete::ROLE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleanroom_proto::ErrorCode;

    #[test]
    fn every_known_method_has_a_role() {
        for m in KNOWN_METHODS {
            assert!(role_for(m).is_some(), "{m}");
        }
        assert_eq!(role_for("daemon.reload"), Some(Role::Admin));
        assert_eq!(role_for("nope"), None);
    }

    #[test]
    fn params_must_be_objects_and_known() {
        assert!(parse_params::<Ping>(None).is_ok());
        assert!(parse_params::<Ping>(Some(Value::Null)).is_ok());
        let e = parse_params::<Ping>(Some(serde_json::json!([1]))).unwrap_err();
        assert!(e.to_string().contains("an array"), "{e}");
        let e = parse_params::<Ping>(Some(serde_json::json!({"loud": true}))).unwrap_err();
        assert!(e.to_string().contains("loud"), "{e}");
        assert_eq!(e.code(), ErrorCode::InvalidParams);
    }

    #[test]
    fn digest_is_stable_hex() {
        let d = params_digest(Some(&serde_json::json!({})));
        assert_eq!(d.len(), 64);
        assert_eq!(d, params_digest(Some(&serde_json::json!({}))));
        assert_ne!(d, params_digest(None));
    }
}
