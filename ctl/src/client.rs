//! A blocking client of the cleanroomd socket: one connection, one request at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cleanroom_proto::{
    Envelope, ErrorCode, ErrorObject, MAX_LINE_BYTES, Method, Outcome, Response,
};
use serde_json::Value;

/// Why a call failed; each maps to an exit code.
#[derive(Debug)]
pub enum CallError {
    /// Nobody listens at the socket (exit 69).
    Unreachable { socket: PathBuf, source: io::Error },
    /// The socket's permissions keep this user out (exit 77).
    SocketDenied {
        socket: PathBuf,
        group: Option<String>,
    },
    /// The daemon answered with an error.
    Rpc(ErrorObject),
    /// The connection broke or the answer made no sense (exit 1).
    Protocol(String),
    /// The daemon answered, and the answer is a failure (apply failed, drift, conflicts).
    Failed(String),
    /// A run ended with this exit code (the command's own, 124, 128+N, 127, 126), and
    /// maybe a message.
    Exit(u8, Option<String>),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable { socket, source } => write!(
                f,
                "cannot reach cleanroomd at {}: {source}\n\
                 Is the daemon running? Start it with `systemctl start cleanroomd.socket` \
                 (or run `cleanroomd` as root), or point --socket / CLEANROOM_SOCKET at its socket.",
                socket.display()
            ),
            CallError::SocketDenied { socket, group } => {
                write!(f, "permission denied connecting to {}", socket.display())?;
                match group {
                    Some(g) => write!(
                        f,
                        "\nJoin group `{g}` (sudo usermod -aG {g} $USER, then log in again) or run as root."
                    ),
                    None => write!(f, "\nRun as root or as a member of the socket's group."),
                }
            }
            CallError::Rpc(e) => f.write_str(&e.message),
            CallError::Protocol(m) | CallError::Failed(m) => f.write_str(m),
            CallError::Exit(_, m) => f.write_str(m.as_deref().unwrap_or("")),
        }
    }
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connects to `socket`; `timeout` bounds every later read and write.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, CallError> {
        let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => CallError::SocketDenied {
                socket: socket.to_owned(),
                group: socket_group(socket),
            },
            _ => CallError::Unreachable {
                socket: socket.to_owned(),
                source,
            },
        })?;
        let protocol = |e: io::Error| CallError::Protocol(format!("socket setup failed: {e}"));
        stream.set_read_timeout(Some(timeout)).map_err(protocol)?;
        stream.set_write_timeout(Some(timeout)).map_err(protocol)?;
        let writer = stream.try_clone().map_err(protocol)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            timeout,
        })
    }

    /// Calls method `M` and decodes its result.
    pub fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, CallError> {
        let params = serde_json::to_value(params)
            .map_err(|e| CallError::Protocol(format!("cannot encode params: {e}")))?;
        let value = self.call_raw(M::NAME, params)?;
        serde_json::from_value(value).map_err(|e| {
            CallError::Protocol(format!("cannot decode the result of {}: {e}", M::NAME))
        })
    }

    /// Calls method `M`, handing every notification that arrives before the result to
    /// `on_note`, with no read timeout (a run takes as long as it takes).
    pub fn call_streaming<M: Method>(
        &mut self,
        params: &M::Params,
        on_note: &mut dyn FnMut(&str, &Value),
    ) -> Result<M::Result, CallError> {
        let params = serde_json::to_value(params)
            .map_err(|e| CallError::Protocol(format!("cannot encode params: {e}")))?;
        let _ = self.reader.get_ref().set_read_timeout(None);
        let value = self.call_inner(M::NAME, params, on_note)?;
        serde_json::from_value(value).map_err(|e| {
            CallError::Protocol(format!("cannot decode the result of {}: {e}", M::NAME))
        })
    }

    /// Calls `method` with `params` and returns the raw result.
    pub fn call_raw(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_inner(method, params, &mut |_, _| {})
    }

    fn call_inner(
        &mut self,
        method: &str,
        params: Value,
        on_note: &mut dyn FnMut(&str, &Value),
    ) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_string(&Envelope::new(id, method, params))
            .map_err(|e| CallError::Protocol(format!("cannot encode request: {e}")))?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io_error("send", e))?;
        loop {
            let mut buf = String::new();
            let n = Read::by_ref(&mut self.reader)
                .take(MAX_LINE_BYTES as u64 + 2)
                .read_line(&mut buf)
                .map_err(|e| self.io_error("read", e))?;
            if n == 0 {
                return Err(CallError::Protocol(
                    "cleanroomd closed the connection without answering".into(),
                ));
            }
            let v: Value = serde_json::from_str(&buf).map_err(|e| {
                CallError::Protocol(format!("unreadable answer from cleanroomd: {e}"))
            })?;
            // Notifications (no id) come before the final response.
            if v.get("id").is_none() {
                if let Some(m) = v.get("method").and_then(Value::as_str) {
                    on_note(m, v.get("params").unwrap_or(&Value::Null));
                }
                continue;
            }
            let resp: Response = serde_json::from_value(v)
                .map_err(|e| CallError::Protocol(format!("malformed response: {e}")))?;
            if resp.id != id && !resp.id.is_null() {
                continue;
            }
            return match resp.outcome {
                Outcome::Result(v) => Ok(v),
                Outcome::Error(e) => Err(CallError::Rpc(e)),
            };
        }
    }

    fn io_error(&self, what: &str, e: io::Error) -> CallError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Protocol(format!(
                "no answer from cleanroomd within {:.1}s (raise --timeout?)",
                self.timeout.as_secs_f64()
            )),
            _ => CallError::Protocol(format!(
                "cannot {what} on the connection to cleanroomd: {e}"
            )),
        }
    }
}

impl CallError {
    /// The exit code for this failure: 69 unreachable, 77 permission denied, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Unreachable { .. } => 69,
            CallError::SocketDenied { .. } => 77,
            CallError::Rpc(e) if e.kind() == Some(ErrorCode::Forbidden) => 77,
            CallError::Rpc(_) | CallError::Protocol(_) | CallError::Failed(_) => 1,
            CallError::Exit(code, _) => *code,
        }
    }
}

/// The name of the group that owns the socket file, to tell the user what to join.
fn socket_group(socket: &Path) -> Option<String> {
    let gid = std::fs::metadata(socket).ok()?.gid();
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}
