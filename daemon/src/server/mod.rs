//! The control plane: listener, connections (framing), peer credentials, dispatch.
//!
//! [`run`] accepts connections until the shutdown token is cancelled. Each connection is
//! its own task, tracked so shutdown can wait for requests in flight; no connection's error
//! ever reaches the accept loop, and a slow or hostile client only ever holds its own task.

pub mod connection;
pub mod dispatch;
pub mod http;
pub mod listener;
pub mod peer;
pub mod runs;

use std::sync::Arc;
use std::time::Duration;

use cleanroom_proto::{ErrorCode, ErrorObject, Event, RequestError, Response, Role};
use serde_json::Value;
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use crate::state::{Refused, State};
use crate::{config, store};

/// What a request may use besides its params: its id, a channel for notifications to its
/// connection, and a token cancelled when the connection ends.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request id (null for notifications and before it is known).
    pub id: Value,
    /// Notifications sent to the client before the response.
    pub notify: Notifier,
    /// Cancelled when the client goes away or the daemon stops.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// The notifications of one connection's requests, queued for its writer and bounded in
/// bytes (`limits.max_queued_bytes`, counted as the JSON lines they become): a sender
/// waits while the queue is full, so a run's output waits for a slow client as it would
/// for a full pipe, and a client that stops reading holds no more than that.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: tokio::sync::mpsc::Sender<Queued>,
    room: Arc<tokio::sync::Semaphore>,
    max: usize,
}

/// A notification line in the queue, holding its share of the connection's bytes until
/// it is written.
#[derive(Debug)]
pub struct Queued {
    /// The JSON line (without its newline).
    pub line: String,
    _room: tokio::sync::OwnedSemaphorePermit,
}

/// The connection is gone: nothing it was sent will be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Notifier {
    /// A queue of at most `max_bytes`, and the writer's end of it.
    pub fn new(max_bytes: usize) -> (Notifier, tokio::sync::mpsc::Receiver<Queued>) {
        // Counted in bytes, the lines are few: the channel's own bound never binds first.
        let (queue, lines) = tokio::sync::mpsc::channel(4096);
        let notifier = Notifier {
            queue,
            room: Arc::new(tokio::sync::Semaphore::new(max_bytes)),
            max: max_bytes,
        };
        (notifier, lines)
    }

    /// Queues `event`, waiting while the queue is full. Room is taken before the line is
    /// made (for the most it can become), so waiting senders hold only their events.
    pub async fn send(&self, event: Event) -> Result<(), Gone> {
        let most = self.take(worst_case_len(&event));
        let mut room = Arc::clone(&self.room)
            .acquire_many_owned(most)
            .await
            .map_err(|_| Gone)?;
        let line = encode_notification(event);
        // Give back what the line did not need (keeping at least one byte's worth).
        let used = self.take(line.len()).max(1);
        if let Some(spare) = room.split((most - used) as usize) {
            drop(spare);
        }
        self.queue
            .send(Queued { line, _room: room })
            .await
            .map_err(|_| Gone)
    }

    /// Permits for `len` bytes: a line longer than the whole queue takes all of it.
    fn take(&self, len: usize) -> u32 {
        len.clamp(1, self.max) as u32
    }

    /// Ends the queue: waiting and later senders get [`Gone`] at once.
    pub fn close(&self) {
        self.room.close();
    }
}

/// The longest JSON line `event` can become: every byte of output and of a string request
/// id escaped as `\\u00XX`, plus the envelope.
fn worst_case_len(event: &Event) -> usize {
    const ENVELOPE: usize = 512;
    let (request, data) = match event {
        Event::RunOutput(o) => (&o.request, o.data.len()),
        Event::RunStarted(s) => (&s.request, s.batch.len()),
        Event::RunProgress(p) => (&p.request, 0),
    };
    let id = match request {
        Value::String(s) => s.len(),
        _ => 0,
    };
    (id + data) * 6 + ENVELOPE
}

/// A notification as one line.
fn encode_notification(event: Event) -> String {
    serde_json::to_string(&cleanroom_proto::Notification::from(event)).unwrap_or_default()
}

/// Everything a request can fail with. [`Error::code`] maps each to its stable wire code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The line was not JSON.
    #[error("line is not valid JSON: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 request.
    #[error("not a JSON-RPC 2.0 request: {0}")]
    InvalidRequest(String),
    /// A line longer than the protocol allows.
    #[error("line exceeds the limit of {limit} bytes; closing the connection")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// Too many connections.
    #[error("too many connections (limit {limit}); try again later")]
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// No such method, or params that do not fit it.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Params that fit the types but not the method's rules.
    #[error("invalid params for {method}: {detail}")]
    InvalidParams {
        /// The method.
        method: &'static str,
        /// What was wrong, naming the field.
        detail: String,
    },
    /// The caller's role is too low.
    #[error(
        "{method} needs role {needed}; caller uid {uid} has role {role} (join group {group:?} or ask root)"
    )]
    Forbidden {
        /// The method.
        method: &'static str,
        /// Role it needs.
        needed: Role,
        /// Caller uid.
        uid: u32,
        /// Caller role.
        role: Role,
        /// Group that grants the needed role.
        group: String,
    },
    /// A configuration file was refused.
    #[error("{0}; the configuration in force is unchanged")]
    Config(#[from] config::Error),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A tuning operation failed.
    #[error(transparent)]
    Tune(#[from] crate::tune::Error),
    /// A run, or a request about stored runs, failed.
    #[error("{}", run_message(method, error))]
    Run {
        /// The method.
        method: &'static str,
        /// What the run engine said.
        error: crate::run::Error,
    },
    /// The caller is at one of its quotas (connections).
    #[error(transparent)]
    Quota(#[from] crate::quota::Exceeded),
    /// The daemon is stopping.
    #[error("cleanroomd is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure inside the daemon.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable wire code. One exhaustive match: a new variant must pick its code here.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Parse(_) => ErrorCode::ParseError,
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::LineTooLong { .. } => ErrorCode::LineTooLong,
            Error::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            Error::Request(RequestError::UnknownMethod(_)) => ErrorCode::MethodNotFound,
            Error::Request(RequestError::InvalidParams { .. }) | Error::InvalidParams { .. } => {
                ErrorCode::InvalidParams
            }
            Error::Forbidden { .. } => ErrorCode::Forbidden,
            Error::Config(_) => ErrorCode::ConfigInvalid,
            Error::Store(_) => ErrorCode::Store,
            Error::Tune(crate::tune::Error::Profile(_)) => ErrorCode::Profile,
            Error::Tune(crate::tune::Error::Journal(_)) => ErrorCode::Store,
            Error::Tune(crate::tune::Error::Host(_)) => ErrorCode::Internal,
            Error::Tune(crate::tune::Error::Pin(crate::pin::Error::Rule(_))) => ErrorCode::Profile,
            Error::Tune(crate::tune::Error::Pin(crate::pin::Error::Journal(_))) => ErrorCode::Store,
            Error::Tune(crate::tune::Error::Pin(crate::pin::Error::NoSuchRule(_))) => {
                ErrorCode::InvalidParams
            }
            Error::ShuttingDown => ErrorCode::ShuttingDown,
            Error::Quota(_) => ErrorCode::Quota,
            Error::Run { error, .. } => run_code(error),
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Machine-readable details, where a client can act on them.
    fn data(&self) -> Option<Value> {
        match self {
            Error::Forbidden {
                needed,
                role,
                group,
                ..
            } => Some(serde_json::json!({"needed": needed, "role": role, "group": group})),
            Error::LineTooLong { limit } | Error::TooManyConnections { limit } => {
                Some(serde_json::json!({"limit": limit}))
            }
            Error::Quota(q)
            | Error::Run {
                error: crate::run::Error::Quota(q),
                ..
            } => Some(q.data()),
            _ => None,
        }
    }

    /// The JSON-RPC error object.
    pub fn to_object(&self) -> ErrorObject {
        ErrorObject {
            code: self.code().code(),
            message: self.to_string(),
            data: self.data(),
        }
    }

    /// A whole response line (without the newline) for request `id`.
    pub fn to_line(&self, id: Value) -> String {
        encode(&Response::failure(id, self.to_object()))
    }
}

impl Error {
    /// A run engine error of `method`: one only an admin may cause becomes `Forbidden`
    /// (naming the group to join), the others keep their own kind.
    pub fn run(
        method: &'static str,
        error: crate::run::Error,
        peer: &peer::Peer,
        state: &crate::state::State,
    ) -> Self {
        match error {
            crate::run::Error::AdminOnly(_) => {
                let live = state.live();
                Error::Forbidden {
                    method,
                    needed: Role::Admin,
                    uid: peer.uid,
                    role: peer.role(&live.auth),
                    group: live.auth.group_for(Role::Admin).to_owned(),
                }
            }
            error => Error::Run { method, error },
        }
    }
}

/// The message of a run engine error: invalid params are introduced as such.
fn run_message(method: &str, error: &crate::run::Error) -> String {
    match error {
        crate::run::Error::Invalid(detail) => format!("invalid params for {method}: {detail}"),
        other => other.to_string(),
    }
}

/// The wire code of a run engine error; exhaustive, so a new kind must pick its code.
fn run_code(error: &crate::run::Error) -> ErrorCode {
    use crate::run::Error as E;
    match error {
        E::Invalid(_) => ErrorCode::InvalidParams,
        E::AdminOnly(_) => ErrorCode::Forbidden,
        E::Quota(_) => ErrorCode::Quota,
        E::Store(_) | E::StateFull { .. } => ErrorCode::Store,
        E::Task(_) | E::Unreadable { .. } | E::Cgroup(_) => ErrorCode::Internal,
        E::Unavailable(_)
        | E::CoresBusy(_)
        | E::CoresNever(_)
        | E::ShieldInUse(_)
        | E::PartitionHeld { .. }
        | E::CancelledWaiting(_)
        | E::NotFound(_)
        | E::NotYours { .. }
        | E::NotYourBatch(_)
        | E::StillRunning { .. }
        | E::BaselineTaken { .. }
        | E::NothingToCompare(_)
        | E::EnvironmentsDiffer(_) => ErrorCode::Run,
    }
}

/// Serializes a response to one line.
pub(crate) fn encode(response: &Response) -> String {
    serde_json::to_string(response).unwrap_or_else(|e| {
        format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":{},"message":"cannot encode response: {}"}}}}"#,
            ErrorCode::Internal.code(),
            e.to_string().replace('"', "'")
        )
    })
}

/// Accepts connections until `state.shutdown()` is cancelled, then returns the tracker of
/// the connection tasks still finishing their requests.
pub async fn run(listener: UnixListener, state: Arc<State>) -> TaskTracker {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = state.shutdown().cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                let peer = match peer::of(&stream) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
                        continue;
                    }
                };
                match state.admit_connection(&peer) {
                    Ok(slot) => {
                        tracker.spawn(connection::serve(
                            stream,
                            Arc::new(peer),
                            Arc::clone(&state),
                            slot,
                        ));
                    }
                    Err(refused) => {
                        let error = match refused {
                            Refused::Full { limit } => {
                                tracing::warn!(
                                    limit,
                                    uid = peer.uid,
                                    "connection refused: too many connections"
                                );
                                Error::TooManyConnections { limit }
                            }
                            Refused::Quota(q) => {
                                tracing::warn!(
                                    uid = peer.uid,
                                    quota = q.key,
                                    "connection refused: over quota"
                                );
                                Error::Quota(q)
                            }
                        };
                        let mut line = error.to_line(Value::Null);
                        line.push('\n');
                        // A fresh socket's send buffer is empty: this never blocks. If the
                        // peer is already gone there is nobody to tell.
                        let _ = stream.try_write(line.as_bytes());
                    }
                }
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOMEM...: back off a little instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracker.close();
    tracker
}
