//! The wire: framing, the JSON-RPC 2.0 envelope, error codes and roles.
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
//!   never silently change behaviour. So is an unknown member of the request itself.
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

/// A request line as a client sends it, before its method and params are checked (see
/// [`crate::Request`] for the parsed, typed form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
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

impl Envelope {
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
    /// -32009: the caller is at one of its quotas; `data` names it (`quota`, the
    /// configuration key), its value (`limit`) and the caller (`uid`).
    Quota,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 14] = [
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
        ErrorCode::Quota,
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
            ErrorCode::Quota => -32009,
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
