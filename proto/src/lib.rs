//! Wire types of the cleanroomd control protocol.
//!
//! `cleanroomd` listens on a Unix stream socket (default [`DEFAULT_SOCKET`]). Clients speak
//! [JSON-RPC 2.0](https://www.jsonrpc.org/specification) over it, framed as one JSON object
//! per line. The modules hold the specification next to the types it describes:
//!
//! - [`wire`]: framing, the request and response envelopes, error codes, roles;
//! - [`daemon`]: `daemon.*` (ping, status, metrics, reload);
//! - [`profile`]: `profile.*` (tuning profiles);
//! - [`run`]: `run.*`, `runs.*`, `baseline.*` (clean-room runs, history, baselines) and the
//!   notifications a run streams;
//! - [`shield`]: `shield.*` (the CPU shield exclusive runs raise);
//! - [`pin`]: `pin.*` (pin rules added by hand).
//!
//! # Methods
//!
//! One table in this file declares every method: its name on the wire, the least [`Role`]
//! that may call it, whether it changes state (then it is audited), and its params and
//! result types. From it come the [`Method`] types (for clients written in Rust), the list
//! [`METHODS`], and [`Request`], a request parsed once from the wire into its method and
//! typed params. Each variant of [`Request`] documents its method.
//!
//! | method | role | params | result |
//! |---|---|---|---|
//! | `daemon.ping` | reader | none | [`PingResult`] |
//! | `daemon.status` | reader | none | [`StatusResult`] |
//! | `daemon.metrics` | reader | none | [`MetricsResult`] |
//! | `daemon.reload` | admin | none | [`ReloadResult`] |
//! | `profile.list` | reader | none | [`ProfileListResult`] |
//! | `profile.show` | reader | [`ProfileShowParams`] | [`ProfileShowResult`] |
//! | `profile.apply` | admin | [`ProfileApplyParams`] | [`TuneResult`] |
//! | `profile.revert` | admin | [`ProfileRevertParams`] | [`TuneResult`] |
//! | `profile.verify` | reader | none | [`TuneResult`] |
//! | `profile.recommend` | reader | none | [`RecommendResult`] |
//! | `profile.active` | reader | none | [`ActiveResult`] |
//! | `run.start` | runner | [`RunParams`] | [`RunResult`] (after [`Event`] notifications) |
//! | `run.compare` | runner | [`CompareParams`] | [`CompareResult`] (after [`Event`] notifications) |
//! | `run.cancel` | runner | [`BatchParams`] | [`RunCancelResult`] |
//! | `runs.list` | reader | [`RunsListParams`] | [`RunsListResult`] |
//! | `runs.active` | reader | none | [`RunsActiveResult`] |
//! | `runs.show` | reader | [`BatchParams`] | [`RunResult`] |
//! | `runs.compare` | reader | [`RunsCompareParams`] | [`Comparison`] |
//! | `runs.history` | reader | [`RunsHistoryParams`] | [`RunsHistoryResult`] |
//! | `baseline.list` | reader | none | [`BaselineListResult`] |
//! | `baseline.save` | runner | [`BaselineSaveParams`] | [`BaselineInfo`] |
//! | `baseline.delete` | runner | [`BaselineParams`] | [`BaselineDeleteResult`] |
//! | `shield.lower` | admin | [`ShieldLowerParams`] | [`ShieldLowerResult`] |
//! | `pin.add` | admin | [`PinAddParams`] | [`PinAddResult`] |
//! | `pin.list` | reader | none | [`PinListResult`] |
//! | `pin.remove` | admin | [`PinRemoveParams`] | [`PinRemoveResult`] |
//!
//! (This table is checked against [`METHODS`] by a test.)

pub mod daemon;
pub mod pin;
pub mod profile;
pub mod run;
pub mod shield;
pub mod stats;
pub mod wire;

pub use daemon::*;
pub use pin::*;
pub use profile::*;
pub use run::*;
pub use shield::*;
pub use wire::*;

use serde_json::Value;

/// One method: its name on the wire, the least role that may call it, and whether it
/// changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// Name on the wire.
    pub name: &'static str,
    /// Least role that may call it.
    pub role: Role,
    /// Whether it changes state (such calls are audited, allowed or not).
    pub mutates: bool,
}

/// Why a request line could not become a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// No method of that name.
    UnknownMethod(String),
    /// The params do not fit the method; `detail` names the field.
    InvalidParams {
        /// The method.
        method: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::UnknownMethod(m) => write!(
                f,
                "unknown method {m:?}; known methods: {}",
                method_names().collect::<Vec<_>>().join(", ")
            ),
            RequestError::InvalidParams { method, detail } => {
                write!(f, "invalid params for {method}: {detail}")
            }
        }
    }
}

impl std::error::Error for RequestError {}

/// The table: every method, once. Generates the [`Method`] types, [`METHODS`] and
/// [`Request`].
macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $ty:ident = $name:literal, $role:ident, $mutates:literal, $params:ty => $result:ty;
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub enum $ty {}

            impl Method for $ty {
                const NAME: &'static str = $name;
                const ROLE: Role = Role::$role;
                const MUTATES: bool = $mutates;
                type Params = $params;
                type Result = $result;
            }
        )*

        /// Every method the daemon serves, in the order of the table.
        pub const METHODS: &[MethodInfo] = &[
            $(MethodInfo { name: $name, role: Role::$role, mutates: $mutates },)*
        ];

        /// A request parsed from the wire: its method, with its params typed and checked
        /// (unknown fields refused). Parsing happens once, where the line is read. (Params
        /// are boxed: `run.start`'s are large, the others mostly empty.)
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $(
                $(#[$doc])*
                #[doc = concat!(
                    "\n\nWire name `", $name, "`, role ", stringify!($role),
                    ", params [`", stringify!($params), "`], result [`", stringify!($result), "`]."
                )]
                $ty(Box<$params>),
            )*
        }

        impl Request {
            /// Parses `params` for `method`. `params` may be an object, `null` or absent;
            /// anything else, or an unknown field, is an error naming it.
            pub fn parse(method: &str, params: Option<Value>) -> Result<Self, RequestError> {
                match method {
                    $($name => Ok(Request::$ty(Box::new(parse_params::<$ty>(params)?))),)*
                    other => Err(RequestError::UnknownMethod(other.to_owned())),
                }
            }

            /// The params as a client sends them: what [`Request::parse`] reads back into
            /// an equal request (the fuzz tests hold the two directions to that). The
            /// params types are plain data, so this fails only if one ever gets a map
            /// whose keys are not strings.
            pub fn params(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $(Request::$ty(p) => serde_json::to_value(p),)*
                }
            }

            /// The method's name, role and whether it changes state.
            pub fn info(&self) -> MethodInfo {
                match self {
                    $(Request::$ty(_) => MethodInfo {
                        name: $name,
                        role: Role::$role,
                        mutates: $mutates,
                    },)*
                }
            }
        }
    };
}

methods! {
    /// `daemon.ping`: the cheapest round trip.
    Ping = "daemon.ping", Reader, false, NoParams => PingResult;
    /// `daemon.status`: what the daemon is and who is asking.
    Status = "daemon.status", Reader, false, NoParams => StatusResult;
    /// `daemon.metrics`: the Prometheus text exposition.
    Metrics = "daemon.metrics", Reader, false, NoParams => MetricsResult;
    /// `daemon.reload`: re-read the configuration and the profiles, as SIGHUP does.
    Reload = "daemon.reload", Admin, true, NoParams => ReloadResult;
    /// `profile.list`: every profile found, usable or broken.
    ProfileList = "profile.list", Reader, false, NoParams => ProfileListResult;
    /// `profile.show`: one profile with includes resolved and each value's source file.
    ProfileShow = "profile.show", Reader, false, ProfileShowParams => ProfileShowResult;
    /// `profile.apply`: plan, journal the originals durably, write. Atomic unless
    /// `best_effort`.
    ProfileApply = "profile.apply", Admin, true, ProfileApplyParams => TuneResult;
    /// `profile.revert`: put back every original value cleanroom still owns
    /// (compare-and-swap; a knob someone else changed is a conflict unless `force`).
    ProfileRevert = "profile.revert", Admin, true, ProfileRevertParams => TuneResult;
    /// `profile.verify`: compare the active profile with the host, knob by knob.
    ProfileVerify = "profile.verify", Reader, false, NoParams => TuneResult;
    /// `profile.recommend`: a profile for what this host is, with the reasons.
    ProfileRecommend = "profile.recommend", Reader, false, NoParams => RecommendResult;
    /// `profile.active`: the profile in force and the journal's size.
    ProfileActive = "profile.active", Reader, false, NoParams => ActiveResult;
    /// `run.start`: run a command in its own cgroup as the caller; streams [`Event`]
    /// notifications (`run.started` first, then `run.output` and `run.progress`) while it
    /// runs, then answers with the result.
    RunStart = "run.start", Runner, true, RunParams => RunResult;
    /// `run.compare`: two or more commands run alternately on the same CPUs, the order
    /// random each round, each stored as a batch, with the verdict of each against the
    /// first; streams the same notifications as `run.start` (`run.started` once per
    /// command, `run.progress` with its `command`).
    RunCompare = "run.compare", Runner, true, CompareParams => CompareResult;
    /// `run.cancel`: end a batch in progress (its owner or an admin); it answers with
    /// `end_reason` `cancelled`.
    RunCancel = "run.cancel", Runner, true, BatchParams => RunCancelResult;
    /// `runs.list`: the newest stored batches (a reader or runner sees its own, an admin
    /// every one).
    RunsList = "runs.list", Reader, false, RunsListParams => RunsListResult;
    /// `runs.active`: the batches in progress (a reader or runner sees its own, an admin
    /// every one), with owner, command, cores and start time.
    RunsActive = "runs.active", Reader, false, NoParams => RunsActiveResult;
    /// `runs.show`: one stored batch, whole.
    RunsShow = "runs.show", Reader, false, BatchParams => RunResult;
    /// `runs.compare`: two stored batches, `b` against `a`.
    RunsCompare = "runs.compare", Reader, false, RunsCompareParams => Comparison;
    /// `runs.history`: a label's batches over time and the change points among them.
    RunsHistory = "runs.history", Reader, false, RunsHistoryParams => RunsHistoryResult;
    /// `baseline.list`: every baseline.
    BaselineList = "baseline.list", Reader, false, NoParams => BaselineListResult;
    /// `baseline.save`: name a stored batch as a baseline (a batch the caller may see; an
    /// existing baseline of that name is replaced only by its owner or an admin).
    BaselineSave = "baseline.save", Runner, true, BaselineSaveParams => BaselineInfo;
    /// `baseline.delete`: forget a baseline (its owner or an admin).
    BaselineDelete = "baseline.delete", Runner, true, BaselineParams => BaselineDeleteResult;
    /// `shield.lower`: lower a shield left journaled, retrying what the kernel refused to
    /// take back, and say what stays and why; with `force`, forget what the kernel still
    /// refuses (each item audited and reported with its original, to set by hand).
    /// Refused while exclusive runs hold cores.
    ShieldLower = "shield.lower", Admin, true, ShieldLowerParams => ShieldLowerResult;
    /// `pin.add`: a pin rule by hand, beside the profile's; placed now and followed
    /// (journaled first, as every placement).
    PinAdd = "pin.add", Admin, true, PinAddParams => PinAddResult;
    /// `pin.list`: the pin rules in force, with what each matches and what drifted.
    PinList = "pin.list", Reader, false, NoParams => PinListResult;
    /// `pin.remove`: a rule added by hand out of force; what it placed gets its originals
    /// back (compare-and-swap).
    PinRemove = "pin.remove", Admin, true, PinRemoveParams => PinRemoveResult;
}

/// The names of every method, in the order of the table.
pub fn method_names() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(|m| m.name)
}

/// The method of this name, if there is one.
pub fn method(name: &str) -> Option<MethodInfo> {
    METHODS.iter().copied().find(|m| m.name == name)
}

/// Params must be an object, `null` or absent; unknown fields are refused by the types.
fn parse_params<M: Method>(params: Option<Value>) -> Result<M::Params, RequestError> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(RequestError::InvalidParams {
                method: M::NAME,
                detail: format!(
                    "params must be an object of named parameters, not {}",
                    json_kind(&other)
                ),
            });
        }
    };
    serde_json::from_value(value).map_err(|e| RequestError::InvalidParams {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_crate_docs_list_every_method_with_its_role() {
        let docs = include_str!("lib.rs");
        for m in METHODS {
            let row = format!("| `{}` | {} |", m.name, m.role);
            assert!(docs.contains(&row), "the method table lacks {row}");
        }
        let rows = docs.lines().filter(|l| l.starts_with("//! | `")).count();
        assert_eq!(rows, METHODS.len(), "one row per method");
    }

    #[test]
    fn requests_parse_once_into_typed_params() {
        let r = Request::parse("daemon.ping", None).unwrap();
        assert_eq!(r, Request::Ping(Box::new(NoParams {})));
        assert_eq!(r.info().role, Role::Reader);
        let r = Request::parse(
            "profile.apply",
            Some(json!({"name": "benchmark", "dry_run": true})),
        )
        .unwrap();
        let Request::ProfileApply(p) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (p.name.as_str(), p.dry_run, p.best_effort),
            ("benchmark", true, false)
        );
        assert_eq!(
            r.info(),
            MethodInfo {
                name: "profile.apply",
                role: Role::Admin,
                mutates: true
            }
        );
        for m in METHODS {
            assert_eq!(method(m.name), Some(*m));
        }
        assert_eq!(method("nope"), None);
    }

    #[test]
    fn params_read_back_into_the_same_request() {
        let run = json!({"argv": ["x"], "cpus": "2-3", "exclusive": true, "env": {"A": "1"}});
        for (method, params) in [
            ("run.start", Some(run)),
            (
                "run.start",
                Some(json!({"argv": ["x"], "cpus": 2, "exclusive": true})),
            ),
            ("profile.apply", Some(json!({"name": "benchmark"}))),
            ("shield.lower", Some(json!({"force": true}))),
            ("runs.list", None),
            ("daemon.ping", None),
        ] {
            let r = Request::parse(method, params).unwrap();
            let back = Request::parse(method, Some(r.params().unwrap())).unwrap();
            assert_eq!(back, r, "{method}");
        }
    }

    #[test]
    fn bad_requests_name_the_method_or_field() {
        let e = Request::parse("no.such", None).unwrap_err();
        assert!(matches!(&e, RequestError::UnknownMethod(m) if m == "no.such"));
        assert!(e.to_string().contains("daemon.ping"), "{e}");
        assert!(Request::parse("daemon.ping", Some(Value::Null)).is_ok());
        let e = Request::parse("daemon.ping", Some(json!([1]))).unwrap_err();
        assert!(e.to_string().contains("an array"), "{e}");
        let e = Request::parse("daemon.ping", Some(json!({"loud": true}))).unwrap_err();
        assert!(e.to_string().contains("loud"), "{e}");
        let e = Request::parse("run.start", Some(json!({"argv": ["x"], "repeet": 3}))).unwrap_err();
        assert!(
            matches!(&e, RequestError::InvalidParams { method: "run.start", detail } if detail.contains("repeet")),
            "{e}"
        );
    }

    #[test]
    fn error_codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate code {}", code.code());
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(1), None);
    }

    #[test]
    fn response_wire_shape() {
        let ok = Response::success(json!(7), json!({"pong": true}));
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"jsonrpc": "2.0", "id": 7, "result": {"pong": true}})
        );
        let err = Response::failure(
            Value::Null,
            ErrorObject::new(ErrorCode::ParseError, "bad json"),
        );
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "bad json"}})
        );
        let back: Response = serde_json::from_value(serde_json::to_value(&err).unwrap()).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn events_are_notifications_on_the_wire() {
        let e = Event::RunOutput(RunOutput {
            request: json!(3),
            stream: "stdout".into(),
            data: "hi\n".into(),
        });
        let n = Notification::from(e.clone());
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({"jsonrpc": "2.0", "method": "run.output",
                   "params": {"request": 3, "stream": "stdout", "data": "hi\n"}})
        );
        assert_eq!(Event::try_from(n).unwrap(), e);
    }

    #[test]
    fn no_params_refuses_unknown_fields() {
        let e = serde_json::from_value::<NoParams>(json!({"verbose": true})).unwrap_err();
        assert!(e.to_string().contains("verbose"), "{e}");
        serde_json::from_value::<NoParams>(json!({})).unwrap();
    }

    #[test]
    fn results_ignore_unknown_fields() {
        let r: PingResult = serde_json::from_value(json!({"pong": true, "later": 1})).unwrap();
        assert!(r.pong);
    }

    #[test]
    fn a_run_stored_before_the_noise_report_grew_still_reads() {
        let old = json!({
            "id": "1", "exit_code": 0, "signal": null, "end_reason": "exited",
            "wall_ms": 1.0, "user_ms": 0.5, "sys_ms": 0.2, "max_rss_kb": 900,
            "voluntary_ctxt_switches": 1, "involuntary_ctxt_switches": 0, "oom_kills": 0,
            "killed": 0, "cpus": "0-1", "output_truncated": false,
            "noise": {"cpu_pressure_us": 7, "memory_pressure_us": 0, "io_pressure_us": null}
        });
        let r: RunRecord = serde_json::from_value(old).unwrap();
        assert_eq!(
            r.noise,
            Noise {
                cpu_pressure_us: Some(7),
                memory_pressure_us: Some(0),
                ..Noise::default()
            }
        );
        let now = serde_json::to_value(&r).unwrap();
        for key in [
            "foreign_cpu_ms",
            "irq_ms",
            "steal_ms",
            "freq_min_khz",
            "throttle_events",
        ] {
            assert!(
                now["noise"].get(key).is_some(),
                "{key} is always written: {now}"
            );
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Reader < Role::Runner && Role::Runner < Role::Admin);
        assert_eq!(serde_json::to_value(Role::Admin).unwrap(), json!("admin"));
    }
}
