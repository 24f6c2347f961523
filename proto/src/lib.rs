//! Wire types of the cleanroomd control protocol.
//!
//! `cleanroomd` listens on a Unix stream socket (default [`DEFAULT_SOCKET`]). Clients speak
//! [JSON-RPC 2.0](https://www.jsonrpc.org/specification) over it, framed as one JSON object
//! per line.
//!
//! # Framing
//!
//! - Every message is one JSON object on one line, terminated by `\n` (`\r\n` is accepted).
//! - A line may hold at most [`MAX_LINE_BYTES`] bytes (1 MiB, not counting the newline). A
//!   longer line is answered with an error of code [`ErrorCode::LineTooLong`] (id `null`)
//!   and the connection is closed: the rest of the line cannot be trusted to be a request.
//! - Several requests may be in flight on one connection; each response carries the `id`
//!   of its request and responses may come in any order. The daemon stops reading from a
//!   connection while it holds its per-connection limit of unanswered requests
//!   (`limits.max_in_flight`), so a pipelining client is slowed down, never dropped.
//! - A connection that sends nothing and has nothing in flight for `limits.idle_timeout_s`
//!   seconds is closed by the daemon.
//! - When the daemon already serves `limits.max_connections` connections, a new connection
//!   receives one error line ([`ErrorCode::TooManyConnections`]) and is closed.
//!
//! # Requests and responses
//!
//! ```json
//! {"jsonrpc":"2.0","id":1,"method":"daemon.status","params":{}}
//! {"jsonrpc":"2.0","id":1,"result":{"version":"0.1.0","protocol":1,"pid":4242,...}}
//! {"jsonrpc":"2.0","id":2,"method":"daemon.reload"}
//! {"jsonrpc":"2.0","id":2,"error":{"code":-32001,"message":"daemon.reload needs role admin; caller uid 65534 has role reader"}}
//! ```
//!
//! - `id` is a number or a string chosen by the client. A request without `id` is a
//!   notification in JSON-RPC terms: it is executed and never answered.
//! - `params` is an object (by-name parameters) or absent. Positional (array) parameters
//!   are refused. **An unknown field in `params` is an error that names it**: a typo must
//!   never silently change behaviour.
//! - A `result` is an object. Clients must ignore fields they do not know, so the daemon
//!   can add fields without a protocol version change. Removing or changing a field bumps
//!   [`PROTOCOL_VERSION`], which `daemon.status` reports.
//! - Long work streams notifications (`{"jsonrpc":"2.0","method":"run.output",...}`, no
//!   `id`) before its final response; a client tells them apart by the absence of `id`.
//!
//! # Errors
//!
//! An error object carries a stable numeric `code` (see [`ErrorCode`]), a lowercase
//! `message` that names the offending input, and sometimes `data` with details. The codes
//! from -32700 to -32600 are JSON-RPC's own; the daemon's start at -32001.
//!
//! # Roles
//!
//! The daemon takes the caller's identity from the kernel (`SO_PEERCRED` and
//! `SO_PEERGROUPS`), never from a request. Each method needs a [`Role`]:
//! `reader` (anyone who may connect), `runner` (root or a member of the runner group,
//! default `cleanroom`), `admin` (root or a member of the admin group, default
//! `cleanroom-admin`). A call above the caller's role fails with [`ErrorCode::Forbidden`].
//!
//! # Methods
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
//! | `run.start` | runner | [`RunParams`] | [`RunResult`] (after `run.output` notifications) |
//! | `run.cancel` | runner | [`BatchParams`] | [`RunCancelResult`] |
//! | `runs.list` | reader | [`RunsListParams`] | [`RunsListResult`] |
//! | `runs.show` | reader | [`BatchParams`] | [`RunResult`] |
//! | `runs.compare` | reader | [`RunsCompareParams`] | [`Comparison`] |
//! | `baseline.list` | reader | none | [`BaselineListResult`] |
//! | `baseline.save` | runner | [`BaselineSaveParams`] | [`BaselineInfo`] |
//! | `baseline.delete` | runner | [`BaselineParams`] | [`BaselineDeleteResult`] |
//!
//! Each method is also a type implementing [`Method`], which ties its name, role and
//! parameter and result types together for clients written in Rust.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the protocol described here; reported by `daemon.status`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Most bytes one line (one message) may hold, not counting the newline.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Where the daemon listens unless told otherwise (`--socket`, `CLEANROOM_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/cleanroom/cleanroomd.sock";

/// Environment variable that overrides the socket path for both the daemon and the client.
pub const SOCKET_ENV: &str = "CLEANROOM_SOCKET";

/// The `jsonrpc` member every message carries.
pub const JSONRPC_VERSION: &str = "2.0";

/// A request as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Chosen by the client, echoed in the response; absent for a notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Method name, e.g. `daemon.status`.
    pub method: String,
    /// By-name parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

impl Request {
    /// A request with the given id, method and parameters.
    pub fn new(id: u64, method: &str, params: Value) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id: Some(Value::from(id)),
            method: method.to_owned(),
            params: Some(params),
        }
    }
}

/// A response: the request's id and either a result or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id; `null` when the request could not be read far enough to know it.
    pub id: Value,
    /// The result or the error.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Response {
    /// A successful response.
    pub fn success(id: Value, result: Value) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            outcome: Outcome::Result(result),
        }
    }

    /// An error response.
    pub fn failure(id: Value, error: ErrorObject) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            outcome: Outcome::Error(error),
        }
    }
}

/// What a response carries: `"result"` or `"error"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The method's result object.
    Result(Value),
    /// Why the method failed.
    Error(ErrorObject),
}

/// A notification the daemon streams before a final response (no `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// What this notification is, e.g. `run.output`.
    pub method: String,
    /// Its content.
    #[serde(default)]
    pub params: Value,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Stable code; see [`ErrorCode`].
    pub code: i32,
    /// Lowercase, names the offending input.
    pub message: String,
    /// Details, when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    /// An error with the given code and message and no data.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    /// The known code of this error, if the client knows it.
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorObject {}

/// The stable error codes. Their numbers never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// -32700: the line is not valid JSON (id `null`; the connection stays usable).
    ParseError,
    /// -32600: valid JSON but not a JSON-RPC 2.0 request object.
    InvalidRequest,
    /// -32601: no method of that name.
    MethodNotFound,
    /// -32602: the params do not fit the method; the message names the field.
    InvalidParams,
    /// -32603: the daemon failed inside; the message says what.
    Internal,
    /// -32001: the caller's role is below the one the method needs.
    Forbidden,
    /// -32002: a line longer than [`MAX_LINE_BYTES`]; the connection is then closed.
    LineTooLong,
    /// -32003: the daemon already serves its maximum of connections.
    TooManyConnections,
    /// -32004: a configuration file was refused; the old configuration stays in force.
    ConfigInvalid,
    /// -32005: the daemon is shutting down and takes no new work.
    ShuttingDown,
    /// -32006: the state database failed.
    Store,
    /// -32007: no such profile, or it is broken (the message says why).
    Profile,
    /// -32008: a run could not be carried out (no usable cgroups, invalid request).
    Run,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::Internal,
        ErrorCode::Forbidden,
        ErrorCode::LineTooLong,
        ErrorCode::TooManyConnections,
        ErrorCode::ConfigInvalid,
        ErrorCode::ShuttingDown,
        ErrorCode::Store,
        ErrorCode::Profile,
        ErrorCode::Run,
    ];

    /// The number on the wire.
    pub const fn code(self) -> i32 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::Forbidden => -32001,
            ErrorCode::LineTooLong => -32002,
            ErrorCode::TooManyConnections => -32003,
            ErrorCode::ConfigInvalid => -32004,
            ErrorCode::ShuttingDown => -32005,
            ErrorCode::Store => -32006,
            ErrorCode::Profile => -32007,
            ErrorCode::Run => -32008,
        }
    }

    /// The code for a number, if it is one of ours.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// What a caller may do. Ordered: `Reader < Runner < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May connect: status, lists, metrics, its own runs.
    Reader,
    /// Root or a member of the runner group: runs tests as itself.
    Runner,
    /// Root or a member of the admin group: tunes the host.
    Admin,
}

impl Role {
    /// The lowercase name used on the wire and in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Runner => "runner",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method of the protocol: its name, the role it needs and its types.
pub trait Method {
    /// Name on the wire.
    const NAME: &'static str;
    /// Least role that may call it.
    const ROLE: Role;
    /// Whether it changes state (such calls are written to the audit log).
    const MUTATES: bool;
    /// Its `params` object.
    type Params: Serialize + DeserializeOwned;
    /// Its `result` object.
    type Result: Serialize + DeserializeOwned;
}

/// Parameters of a method that takes none. `params` may be absent, `null` or `{}`; any
/// field in it is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `daemon.ping`: the cheapest round trip.
#[derive(Debug)]
pub enum Ping {}

impl Method for Ping {
    const NAME: &'static str = "daemon.ping";
    const ROLE: Role = Role::Reader;
    const MUTATES: bool = false;
    type Params = NoParams;
    type Result = PingResult;
}

/// Result of `daemon.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// Always true.
    pub pong: bool,
}

/// `daemon.status`: what the daemon is and who is asking.
#[derive(Debug)]
pub enum Status {}

impl Method for Status {
    const NAME: &'static str = "daemon.status";
    const ROLE: Role = Role::Reader;
    const MUTATES: bool = false;
    type Params = NoParams;
    type Result = StatusResult;
}

/// Which cgroup hierarchies the host has mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Only the unified (cgroup2) hierarchy, at `/sys/fs/cgroup`.
    V2,
    /// Only legacy (v1) controller hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount elsewhere (often `/sys/fs/cgroup/unified`).
    Hybrid,
    /// No cgroup file system mounted.
    None,
}

impl CgroupMode {
    /// The lowercase name used on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            CgroupMode::V2 => "v2",
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::None => "none",
        }
    }
}

/// The caller as the kernel identified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Effective uid of the connecting process.
    pub uid: u32,
    /// Effective gid of the connecting process.
    pub gid: u32,
    /// Pid of the connecting process (at connect time).
    pub pid: i32,
    /// The role those credentials give.
    pub role: Role,
}

/// Result of `daemon.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    /// Daemon version (semver).
    pub version: String,
    /// [`PROTOCOL_VERSION`] of the daemon.
    pub protocol: u32,
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Directory of the state database.
    pub state_dir: String,
    /// Socket path the daemon serves.
    pub socket: String,
    /// Whether the socket came from systemd socket activation.
    pub socket_activated: bool,
    /// Configuration file in force, if one was read.
    pub config_file: Option<String>,
    /// Root under which /proc and /sys are read (`/` in production).
    pub host_root: String,
    /// Cgroup hierarchies detected at start.
    pub cgroup: CgroupMode,
    /// Connections open now, this one included.
    pub connections: u64,
    /// The tuning profile in force, if any.
    #[serde(default)]
    pub active_profile: Option<String>,
    /// Knobs in the tuning journal (values cleanroom changed and can put back).
    #[serde(default)]
    pub journal_entries: u64,
    /// Directories holding this daemon's run cgroups (one per v1 hierarchy).
    #[serde(default)]
    pub run_cgroups: Vec<String>,
    /// Who asked.
    pub caller: Caller,
}

/// `daemon.metrics`: the Prometheus text exposition.
#[derive(Debug)]
pub enum Metrics {}

impl Method for Metrics {
    const NAME: &'static str = "daemon.metrics";
    const ROLE: Role = Role::Reader;
    const MUTATES: bool = false;
    type Params = NoParams;
    type Result = MetricsResult;
}

/// Result of `daemon.metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsResult {
    /// Prometheus text format 0.0.4.
    pub text: String,
}

/// `daemon.reload`: re-read the configuration (and, later, the profiles), as SIGHUP does.
#[derive(Debug)]
pub enum Reload {}

impl Method for Reload {
    const NAME: &'static str = "daemon.reload";
    const ROLE: Role = Role::Admin;
    const MUTATES: bool = true;
    type Params = NoParams;
    type Result = ReloadResult;
}

/// Result of `daemon.reload`. A refused configuration is an error
/// ([`ErrorCode::ConfigInvalid`]) instead, and the old configuration stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// The file read, if any (none when running on defaults).
    pub config_file: Option<String>,
    /// Dotted keys whose value changed and took effect, e.g. `limits.max_connections`.
    pub changed: Vec<String>,
    /// Dotted keys that changed but only take effect after a restart (e.g. `socket.path`).
    pub restart_required: Vec<String>,
}

/// Declares a method type.
macro_rules! method {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $role:expr, $mutates:literal, $params:ty, $result:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $ty {}
        impl Method for $ty {
            const NAME: &'static str = $name;
            const ROLE: Role = $role;
            const MUTATES: bool = $mutates;
            type Params = $params;
            type Result = $result;
        }
    };
}

method!(
    /// `profile.list`: every profile found, usable or broken.
    ProfileList, "profile.list", Role::Reader, false, NoParams, ProfileListResult
);
method!(
    /// `profile.show`: one profile with includes resolved and each value's source file.
    ProfileShow, "profile.show", Role::Reader, false, ProfileShowParams, ProfileShowResult
);
method!(
    /// `profile.apply`: plan, journal the originals durably, write. Atomic unless
    /// `best_effort`.
    ProfileApply, "profile.apply", Role::Admin, true, ProfileApplyParams, TuneResult
);
method!(
    /// `profile.revert`: put back every original value cleanroom still owns
    /// (compare-and-swap; a knob someone else changed is a conflict unless `force`).
    ProfileRevert, "profile.revert", Role::Admin, true, ProfileRevertParams, TuneResult
);
method!(
    /// `profile.verify`: compare the active profile with the host, knob by knob.
    ProfileVerify, "profile.verify", Role::Reader, false, NoParams, TuneResult
);
method!(
    /// `profile.recommend`: a profile for what this host is, with the reasons.
    ProfileRecommend, "profile.recommend", Role::Reader, false, NoParams, RecommendResult
);
method!(
    /// `profile.active`: the profile in force and the journal's size.
    ProfileActive, "profile.active", Role::Reader, false, NoParams, ActiveResult
);

/// One profile in `profile.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Its name (file stem).
    pub name: String,
    /// Its summary.
    pub summary: String,
    /// The file it was read from.
    pub path: String,
    /// Whether it is the active profile.
    pub active: bool,
    /// Why it cannot be used, if it is broken.
    pub error: Option<String>,
}

/// Result of `profile.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileListResult {
    /// Sorted by name.
    pub profiles: Vec<ProfileInfo>,
}

/// Params of `profile.show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileShowParams {
    /// Profile name.
    pub name: String,
}

/// One resolved setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingInfo {
    /// Dotted id, e.g. `sysctl.vm.swappiness`, `cpu.governor`, `block."sd*".scheduler`.
    pub setting: String,
    /// The value as text.
    pub value: String,
    /// The file that set it (after includes).
    pub source: String,
}

/// Result of `profile.show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileShowResult {
    /// Name.
    pub name: String,
    /// File.
    pub path: String,
    /// Summary.
    pub summary: String,
    /// Included profiles, as written.
    pub include: Vec<String>,
    /// Every resolved setting.
    pub settings: Vec<SettingInfo>,
}

/// Params of `profile.apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileApplyParams {
    /// Profile name.
    pub name: String,
    /// Only plan: read every knob and say what would change.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply what can be applied; a failed knob does not undo the others.
    #[serde(default)]
    pub best_effort: bool,
}

/// Params of `profile.revert`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRevertParams {
    /// Restore knobs someone else changed too.
    #[serde(default)]
    pub force: bool,
}

/// What happened to one knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnobStatus {
    /// apply: written.
    Applied,
    /// apply, revert: already held the value.
    Unchanged,
    /// The knob is absent here or cannot take the value (reason says why).
    Unsupported,
    /// Policy forbids it (reason says why).
    Refused,
    /// The write failed (reason says why).
    Failed,
    /// dry run: would be written.
    Planned,
    /// apply: written, then undone because another knob failed.
    RolledBack,
    /// revert (and apply, for knobs the new profile no longer sets): original put back.
    Restored,
    /// revert: someone else changed it; left alone.
    Conflict,
    /// revert with force: someone else changed it; original put back anyway.
    Forced,
    /// verify: holds the profile's value.
    Ok,
    /// verify: holds another value.
    Drifted,
}

/// One row of an apply, revert or verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnobResult {
    /// Display name, e.g. `sysctl vm.swappiness`, `block loop0 scheduler`.
    pub knob: String,
    /// Kernel file.
    pub path: String,
    /// Value before (apply, revert) or expected (verify, conflict).
    pub before: Option<String>,
    /// Value after (apply, revert) or actual (verify, conflict).
    pub after: Option<String>,
    /// What happened.
    pub status: KnobStatus,
    /// Why, for unsupported, refused, failed, conflict, drifted.
    pub reason: Option<String>,
}

/// Result of `profile.apply`, `profile.revert` and `profile.verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TuneResult {
    /// The profile concerned (none for a revert or verify with no active profile).
    pub profile: Option<String>,
    /// Whether the operation fully succeeded: apply without failure, revert without
    /// conflicts or failures, verify without drift.
    pub ok: bool,
    /// Whether this was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// Knob by knob.
    pub items: Vec<KnobResult>,
    /// Knobs in the journal afterwards.
    pub journal_entries: u64,
}

/// Result of `profile.recommend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendResult {
    /// The profile to use.
    pub profile: String,
    /// What the host is, as observed.
    pub reasons: Vec<String>,
}

/// Result of `profile.active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveResult {
    /// The profile in force, if any.
    pub profile: Option<String>,
    /// `idle`, `applying`, `active` or `reverting`.
    pub phase: String,
    /// Since when (seconds since the Unix epoch).
    pub since: Option<f64>,
    /// Knobs in the journal.
    pub journal_entries: u64,
}

method!(
    /// `run.start`: run a command in its own cgroup as the caller; streams `run.output`
    /// notifications ([`RunOutput`]) while it runs, then answers with the result.
    RunStart, "run.start", Role::Runner, true, RunParams, RunResult
);

fn default_one() -> u32 {
    1
}

/// Params of `run.start`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// Program and arguments (the program is looked up in the run's `PATH`).
    pub argv: Vec<String>,
    /// Working directory, entered as the caller (default `/`); with `isolate` `mount`, one
    /// below `/tmp` is kept in the private `/tmp` (see [`Isolation::Mount`]).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment besides the defaults (`PATH`, `HOME`, `LANG`, `TZ=UTC`), which these
    /// override.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Memory limit in bytes (swap off for the run).
    #[serde(default)]
    pub memory: Option<u64>,
    /// Most processes and threads.
    #[serde(default)]
    pub pids: Option<u64>,
    /// CPU quota in percent of one CPU.
    #[serde(default)]
    pub cpu_percent: Option<u64>,
    /// Wall-clock limit in milliseconds; the whole run is killed when it passes.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// ASLR off for the child, a fixed environment and `CLEANROOM_SEED`.
    #[serde(default)]
    pub deterministic: bool,
    /// Whole cores of its own from the isolation pool, shielded from every other task
    /// while it runs.
    #[serde(default)]
    pub exclusive: bool,
    /// Which exclusive CPUs: a count (`2`; default 1, rounded up to whole cores, on one
    /// NUMA node when one has enough) or a CPU list (`"2,3"`, `"4-7"`: exactly those, whole
    /// cores of the isolation pool).
    #[serde(default)]
    pub cpus: Option<CpuRequest>,
    /// When the exclusive CPUs are held by other runs: wait for them (cancellable; the
    /// timeout does not count the wait) instead of failing at once. A request the pool can
    /// never serve fails at once either way.
    #[serde(default)]
    pub wait: bool,
    /// SCHED_FIFO (priority 1) for the run on its exclusive cores; the kernel's RT
    /// throttling stays on, so a runaway run cannot starve the machine.
    #[serde(default)]
    pub realtime: bool,
    /// Run as this user (name or uid) with its groups; role admin only. Without it, a run
    /// is always the caller's own uid, gid and groups.
    #[serde(default)]
    pub user: Option<String>,
    /// Save the measured runs as the baseline of this name.
    #[serde(default)]
    pub save_baseline: Option<String>,
    /// Compare the measured runs with this baseline (`comparison` in the result).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Resource limits by name (`nofile`, `nproc`, `core`, `stack`, `as`, `data`, `fsize`,
    /// `memlock`, `cpu`), each setting the soft and the hard limit (`u64::MAX`: unlimited).
    /// Without `nofile` a run gets the open-files limit the daemon was started with, not
    /// the daemon's raised one.
    #[serde(default)]
    pub rlimits: std::collections::BTreeMap<String, u64>,
    /// Namespaces of its own: `net` (only a loopback interface, up), `mount` (a private
    /// `/tmp`), `uts` (hostname `cleanroom`), `ipc`, `pid` (the command is PID 1 and
    /// `/proc` shows only the run's processes).
    #[serde(default)]
    pub isolate: Vec<Isolation>,
    /// A label stored with the run.
    #[serde(default)]
    pub label: Option<String>,
    /// Answer at once (with the batch id and `end_reason` `running`) and let the batch run
    /// on without the client: it is not cancelled when the connection closes, only by
    /// `run.cancel` or the daemon stopping; its result is stored (`runs.show`).
    #[serde(default)]
    pub detach: bool,
    /// Measured repetitions (default 1).
    #[serde(default = "default_one")]
    pub repeat: u32,
    /// Unmeasured repetitions first (default 0).
    #[serde(default)]
    pub warmup: u32,
}

/// Which exclusive CPUs a run asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CpuRequest {
    /// This many CPUs (whole cores).
    Count(u32),
    /// Exactly these CPUs, a CPU list like `2,3` or `4-7`.
    List(String),
}

/// A namespace a run can have of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own network stack with only `lo`.
    Net,
    /// Its own mount table with a private `/tmp`. A working directory below the host's
    /// `/tmp` stays: it is bind-mounted into the private one at its own path (at most 32
    /// directories deep), behind copies of its parents with the same permissions.
    Mount,
    /// Its own hostname.
    Uts,
    /// Its own System V IPC and POSIX message queues.
    Ipc,
    /// Its own process ids: the command is PID 1 and sees only its own processes; implies
    /// a private mount namespace with `/proc` of its own.
    Pid,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The program exited (any code).
    Exited,
    /// A signal ended it.
    Signaled,
    /// The timeout passed; every process of the run was killed.
    Timeout,
    /// The memory limit was hit and the kernel's OOM killer ended it.
    Oom,
    /// Cancelled (by request, by the client leaving, or by the daemon stopping).
    Cancelled,
    /// It could not start (command not found: 127; not executable: 126).
    FailedToStart,
    /// Still running: the answer to a detached start (`detach`).
    Running,
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Exit code, when it exited (127/126 when it could not start).
    pub exit_code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Why it ended.
    pub end_reason: EndReason,
    /// Wall time, milliseconds.
    pub wall_ms: f64,
    /// User CPU time of the whole process tree (cgroup), milliseconds.
    pub user_ms: f64,
    /// System CPU time of the whole tree, milliseconds.
    pub sys_ms: f64,
    /// Peak memory of the tree (cgroup), KiB; the largest process's RSS where the kernel
    /// keeps no cgroup peak.
    pub max_rss_kb: u64,
    /// Voluntary context switches (the program and the descendants it waited for).
    pub voluntary_ctxt_switches: u64,
    /// Involuntary context switches.
    pub involuntary_ctxt_switches: u64,
    /// OOM kills inside the run.
    pub oom_kills: u64,
    /// Processes still alive when the program ended (or at the timeout), all killed.
    pub killed: u64,
    /// CPUs the run could use.
    pub cpus: String,
    /// What else happened on the machine while it ran.
    pub noise: Noise,
    /// Whether output beyond the cap was dropped.
    pub output_truncated: bool,
    /// Why it could not start, if it could not.
    #[serde(default)]
    pub error: Option<String>,
}

impl RunRecord {
    /// A record of run `id` on `cpus` that has nothing measured yet.
    pub fn new(id: String, end_reason: EndReason, cpus: String) -> Self {
        Self {
            id,
            exit_code: None,
            signal: None,
            end_reason,
            wall_ms: 0.0,
            user_ms: 0.0,
            sys_ms: 0.0,
            max_rss_kb: 0,
            voluntary_ctxt_switches: 0,
            involuntary_ctxt_switches: 0,
            oom_kills: 0,
            killed: 0,
            cpus,
            noise: Noise::default(),
            output_truncated: false,
            error: None,
        }
    }
}

/// Interference seen during a run: the noise report.
///
/// The CPU figures cover the run's CPUs (`cpus` of the [`RunRecord`]) from just before
/// the program is started until its last process is gone. Every field is optional (`null`
/// where this host cannot tell), and a record stored before a field existed reads it as
/// `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// CPU pressure stall during the run (PSI `some` total delta), microseconds; `None`
    /// where PSI is not available. Host-wide, not limited to the run's CPUs.
    #[serde(default)]
    pub cpu_pressure_us: Option<u64>,
    /// Memory pressure stall delta, microseconds (host-wide).
    #[serde(default)]
    pub memory_pressure_us: Option<u64>,
    /// I/O pressure stall delta, microseconds (host-wide).
    #[serde(default)]
    pub io_pressure_us: Option<u64>,
    /// CPU time on the run's CPUs that was not the run's, milliseconds: other tasks
    /// (the daemon's own work included), the kernel's interrupt handling, and time the
    /// hypervisor took (steal). `irq_ms` and `steal_ms` are parts of it. Never negative.
    /// Other tasks' time comes from the root cpuacct cgroup where cgroup v1 has one
    /// (nanoseconds, per CPU), else from `/proc/stat` (sampled at the scheduler tick and
    /// shown in 10 ms units, so a short run can be off by about 10 ms per CPU).
    #[serde(default)]
    pub foreign_cpu_ms: Option<f64>,
    /// Interrupt handling (hard and soft IRQs) on the run's CPUs, milliseconds
    /// (`/proc/stat` `irq` + `softirq`, 10 ms units). Without the kernel's
    /// `CONFIG_IRQ_TIME_ACCOUNTING` this is sampled at the tick.
    #[serde(default)]
    pub irq_ms: Option<f64>,
    /// Time the hypervisor ran something else on the run's virtual CPUs (`/proc/stat`
    /// `steal`), milliseconds, 10 ms units; 0 on bare metal.
    #[serde(default)]
    pub steal_ms: Option<f64>,
    /// Lowest current frequency of the run's CPUs seen at its start or end
    /// (`cpufreq/scaling_cur_freq`), kHz; `None` without cpufreq.
    #[serde(default)]
    pub freq_min_khz: Option<u64>,
    /// Highest current frequency seen at the start or end, kHz.
    #[serde(default)]
    pub freq_max_khz: Option<u64>,
    /// Thermal throttling events during the run on the run's CPUs: the increase of
    /// `thermal_throttle/core_throttle_count` per CPU plus `package_throttle_count` once
    /// per package; `None` where the kernel does not count them.
    #[serde(default)]
    pub throttle_events: Option<u64>,
}

/// Statistics of one metric over the measured repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// Sample standard deviation.
    pub stddev: f64,
    /// Coefficient of variation, percent (stddev / mean).
    pub cv_percent: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Indexes of outliers: outside the Tukey fences (Q1 - 1.5 IQR, Q3 + 1.5 IQR).
    pub outliers: Vec<usize>,
}

/// Whether a set of runs is faster or slower than another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significantly faster, by more than the threshold.
    Faster,
    /// Significantly slower, by more than the threshold: a regression.
    Slower,
    /// Neither.
    NoChange,
}

/// A comparison of one metric between a baseline and new runs (Welch's t-test and a
/// relative threshold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric (`wall_ms`).
    pub metric: String,
    /// Mean of the baseline.
    pub baseline_mean: f64,
    /// Mean of the new runs.
    pub mean: f64,
    /// Relative change of the mean, percent (positive: slower).
    pub change_percent: f64,
    /// Two-sided p-value of Welch's t-test.
    pub p_value: f64,
    /// 100 × (1 − p).
    pub confidence_percent: f64,
    /// Significance level used.
    pub alpha: f64,
    /// Smallest relative change that counts, percent.
    pub threshold_percent: f64,
    /// The verdict.
    pub verdict: Verdict,
}

/// Result of `run.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The last measured run (the only one without `repeat`), flattened.
    #[serde(flatten)]
    pub last: RunRecord,
    /// Every measured run, when `repeat` > 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
    /// Statistics by metric (`wall_ms`, `user_ms`, `sys_ms`, `max_rss_kb`), when
    /// `repeat` > 1.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stats: std::collections::BTreeMap<String, Summary>,
    /// The batch id under which the runs are stored (`runs.show`).
    #[serde(default)]
    pub batch: String,
    /// The comparison with `baseline`, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// How the exclusive cores were shielded (`partition`, `cpuset` or `affinity`), for an
    /// exclusive run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield: Option<String>,
    /// The answer to a detached start: the batch is still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
}

method!(
    /// `runs.list`: the newest stored batches (a reader or runner sees its own, an admin
    /// every one).
    RunsList, "runs.list", Role::Reader, false, RunsListParams, RunsListResult
);
method!(
    /// `runs.show`: one stored batch, whole.
    RunsShow, "runs.show", Role::Reader, false, BatchParams, RunResult
);
method!(
    /// `runs.compare`: two stored batches, `b` against `a`.
    RunsCompare, "runs.compare", Role::Reader, false, RunsCompareParams, Comparison
);
method!(
    /// `baseline.list`: every baseline.
    BaselineList, "baseline.list", Role::Reader, false, NoParams, BaselineListResult
);
method!(
    /// `baseline.save`: name a stored batch as a baseline (a batch the caller may see; an
    /// existing baseline of that name is replaced only by its owner or an admin).
    BaselineSave, "baseline.save", Role::Runner, true, BaselineSaveParams, BaselineInfo
);

/// Params of `baseline.save`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSaveParams {
    /// Baseline name (letters, digits, `.`, `_`, `-`; at most 64).
    pub name: String,
    /// The stored batch it names (`runs.list`).
    pub batch: String,
}

method!(
    /// `baseline.delete`: forget a baseline (its owner or an admin).
    BaselineDelete, "baseline.delete", Role::Runner, true, BaselineParams, BaselineDeleteResult
);

/// Params of `runs.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsListParams {
    /// How many (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One batch in `runs.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchInfo {
    /// Batch id.
    pub batch: String,
    /// When it ended (seconds since the epoch).
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Its label.
    pub label: Option<String>,
    /// The command.
    pub argv: Vec<String>,
    /// Measured runs.
    pub runs: u32,
    /// How the last one ended.
    pub end_reason: EndReason,
    /// Exit code of the last one.
    pub exit_code: Option<i32>,
    /// Median wall time, milliseconds.
    pub wall_ms: f64,
}

/// Result of `runs.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsListResult {
    /// Newest first.
    pub batches: Vec<BatchInfo>,
}

/// Params naming a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    /// Batch id.
    pub batch: String,
}

/// Params of `runs.compare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsCompareParams {
    /// The reference batch (or `baseline:NAME`).
    pub a: String,
    /// The batch compared with it (or `baseline:NAME`).
    pub b: String,
}

/// Params naming a baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineParams {
    /// Baseline name.
    pub name: String,
}

/// One baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineInfo {
    /// Its name.
    pub name: String,
    /// The batch it names.
    pub batch: String,
    /// When it was saved.
    pub ts: f64,
    /// Who saved it.
    pub uid: u32,
}

/// Result of `baseline.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineListResult {
    /// By name.
    pub baselines: Vec<BaselineInfo>,
}

/// Result of `baseline.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineDeleteResult {
    /// The name.
    pub name: String,
    /// Whether it existed.
    pub deleted: bool,
}

/// The `run.output` notification: a chunk of the child's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    /// The request id of the `run.start` it belongs to.
    pub request: Value,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The bytes, as UTF-8 (invalid sequences replaced).
    pub data: String,
}

/// The `run.started` notification: the batch id, first thing a `run.start` sends (for
/// `run.cancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The request id of the `run.start` it belongs to.
    pub request: Value,
    /// The batch id.
    pub batch: String,
}

method!(
    /// `run.cancel`: end a batch in progress (its owner or an admin); it answers with
    /// `end_reason` `cancelled`.
    RunCancel, "run.cancel", Role::Runner, true, BatchParams, RunCancelResult
);

/// Result of `run.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCancelResult {
    /// The batch.
    pub batch: String,
    /// Whether it was running (and is now being ended).
    pub cancelled: bool,
}

/// The `run.progress` notification: a repetition finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The request id of the `run.start` it belongs to.
    pub request: Value,
    /// Repetitions done (warm-up included).
    pub done: u32,
    /// Repetitions in all (warm-up included).
    pub total: u32,
    /// Whether the one that finished was a warm-up.
    pub warmup: bool,
    /// Its wall time, milliseconds.
    pub wall_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
