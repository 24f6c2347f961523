//! A blocking client of the cleanroomd socket: one connection, one request at a time.
//!
//! A connection the daemon refuses (too many connections) gets one error line and is
//! closed at once, before the daemon reads anything. Sending the request then fails
//! (EPIPE) while that line waits unread: the client reads it and reports the daemon's
//! error, not the broken pipe.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cleanroom_proto::{Envelope, ErrorCode, ErrorObject, Method, Outcome, Response};
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

/// How long to wait for the daemon's last words once sending failed: they are already in
/// the receive queue if there are any, so this only bounds a peer that is not cleanroomd.
const CLOSING_LINE_WAIT: Duration = Duration::from_millis(500);

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
        Self::from_stream(stream, timeout)
    }

    /// A client on a connected stream; `timeout` bounds every later read and write.
    fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, CallError> {
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
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            return Err(self
                .closing_error(&e)
                .unwrap_or_else(|| self.io_error("send", e)));
        }
        loop {
            let mut buf = String::new();
            let n = self
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

    /// Reads one line of an answer. The daemon's lines are not bounded by the protocol's
    /// request length (a result of many runs is longer), only by [`MAX_ANSWER_BYTES`], so a
    /// broken peer cannot make the client read forever.
    fn read_line(&mut self, buf: &mut String) -> io::Result<usize> {
        Read::by_ref(&mut self.reader)
            .take(MAX_ANSWER_BYTES + 2)
            .read_line(buf)
    }

    /// The error the daemon sent before it closed the connection, when sending failed
    /// because it had (`send` is the failure). `None` when the daemon closed without one.
    fn closing_error(&mut self, send: &io::Error) -> Option<CallError> {
        if !matches!(
            send.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return None;
        }
        let wait = CLOSING_LINE_WAIT.min(self.timeout);
        self.reader.get_ref().set_read_timeout(Some(wait)).ok()?;
        let mut buf = String::new();
        self.read_line(&mut buf).ok()?;
        match serde_json::from_str::<Response>(&buf).ok()?.outcome {
            Outcome::Error(e) => Some(CallError::Rpc(e)),
            Outcome::Result(_) => None,
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

/// Longest line the client reads from the daemon.
const MAX_ANSWER_BYTES: u64 = 256 << 20;

impl CallError {
    /// The exit code for this failure: 69 unreachable, 75 over a quota (`EX_TEMPFAIL`: it
    /// may pass later), 77 permission denied, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Unreachable { .. } => 69,
            CallError::SocketDenied { .. } => 77,
            CallError::Rpc(e) if e.kind() == Some(ErrorCode::Forbidden) => 77,
            CallError::Rpc(e) if e.kind() == Some(ErrorCode::Quota) => 75,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose daemon end has already written `said` and closed: sending the
    /// request fails with EPIPE every time, as for a connection refused at the limit.
    fn client_after_close(said: &str) -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs).write_all(said.as_bytes()).unwrap();
        drop(theirs);
        Client::from_stream(ours, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn a_refusal_sent_before_the_close_is_the_error_not_the_broken_pipe() {
        let line = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32003,"message":"too many connections (limit 1); try again later","data":{"limit":1}}}"#;
        let mut c = client_after_close(&format!("{line}\n"));
        let e = c.call_raw("daemon.status", Value::Null).unwrap_err();
        assert!(matches!(&e, CallError::Rpc(o) if o.code == -32003), "{e:?}");
        assert_eq!(
            e.to_string(),
            "too many connections (limit 1); try again later"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_close_without_a_word_is_the_send_error() {
        for said in ["", "not json\n"] {
            let mut c = client_after_close(said);
            let e = c.call_raw("daemon.status", Value::Null).unwrap_err();
            assert!(
                matches!(&e, CallError::Protocol(m) if m.starts_with("cannot send")),
                "{said:?}: {e:?}"
            );
        }
    }
}
