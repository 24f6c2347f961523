//! One client connection: newline-delimited JSON in, responses out.
//!
//! Requests on one connection run concurrently (up to `limits.max_in_flight`; past that the
//! connection simply is not read until one finishes) and are answered as they finish, each
//! with its own id. The framing uses `AnyDelimiterCodec` rather than `LinesCodec`: a line
//! that is not UTF-8 must be a -32700 error on a connection that stays usable, and
//! `LinesCodec` ends the stream on invalid UTF-8.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleanroom_proto::{JSONRPC_VERSION, MAX_LINE_BYTES, Response};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::UnixStream;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Framed};

use super::peer::Peer;
use super::{Error, Notifier, dispatch, encode};
use crate::state::{ConnectionSlot, State};

type InFlight = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Serves one connection until the peer leaves, it idles out, or the daemon shuts down.
pub async fn serve(stream: UnixStream, peer: Arc<Peer>, state: Arc<State>, slot: ConnectionSlot) {
    let _slot = slot;
    let limits = state.live().config.limits.clone();
    let idle_timeout = Duration::from_secs(limits.idle_timeout_s);
    let codec =
        AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_LINE_BYTES + 1);
    let mut framed = Framed::new(stream, codec);
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    // Notifications (run output) of requests in flight; written before their responses.
    let (notifier, mut notify_rx) = Notifier::new(limits.max_queued_bytes);
    let _close_queue = CloseOnDrop(notifier.clone());
    // Cancelled when this connection ends (or the daemon stops): its runs end with it.
    let cancel = state.shutdown().child_token();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut reading = true;

    loop {
        if !reading && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(queued) = notify_rx.recv() => {
                // Its room in the queue is given back once it is written.
                match tokio::time::timeout(idle_timeout, framed.send(queued.line)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::warn!(uid = peer.uid, pid = peer.pid, "peer stopped reading its run output; closing connection (its runs end)");
                        break;
                    }
                }
            }
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(line) = reply {
                    // A peer that stops reading its answers holds the connection only
                    // as long as an idle one would.
                    match tokio::time::timeout(idle_timeout, framed.send(line)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::warn!(uid = peer.uid, pid = peer.pid, "peer stopped reading its answers; closing connection");
                            break;
                        }
                    }
                }
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
            }
            () = state.shutdown().cancelled(), if reading => {
                // Finish what is in flight, read nothing more.
                reading = false;
            }
            frame = framed.next(), if reading && in_flight.len() < limits.max_in_flight => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                match frame {
                    None => {
                        // The client closed its end: runs it started end now (a client
                        // must keep the connection open while its run goes on).
                        reading = false;
                        cancel.cancel();
                    }
                    Some(Ok(bytes)) => {
                        let line = trim_line(&bytes);
                        if line.len() > MAX_LINE_BYTES {
                            // Exactly one byte over: the codec let it through whole.
                            let _ = framed.send(Error::LineTooLong { limit: MAX_LINE_BYTES }.to_line(Value::Null)).await;
                            break;
                        }
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let call = super::Call { id: Value::Null, notify: notifier.clone(), cancel: cancel.clone() };
                        if let Some(fut) = handle_line(line, &peer, call, &state) {
                            in_flight.push(fut);
                        }
                    }
                    Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                        tracing::warn!(uid = peer.uid, pid = peer.pid, "line over the limit; closing connection");
                        let _ = framed.send(Error::LineTooLong { limit: MAX_LINE_BYTES }.to_line(Value::Null)).await;
                        break;
                    }
                    Some(Err(AnyDelimiterCodecError::Io(e))) => {
                        tracing::debug!(error = %e, "connection read failed");
                        break;
                    }
                }
            }
            () = &mut idle, if reading && in_flight.is_empty() => {
                tracing::debug!(uid = peer.uid, pid = peer.pid, "closing idle connection");
                break;
            }
        }
    }
}

/// Parses one line. Errors found here are answered at once; a valid request becomes a
/// future that yields its response line (or nothing, for a notification).
fn handle_line(
    line: &[u8],
    peer: &Arc<Peer>,
    mut call: super::Call,
    state: &Arc<State>,
) -> Option<InFlight> {
    let started = Instant::now();
    let Envelope { id, method, params } = match envelope(line) {
        Ok(envelope) => envelope,
        Err(refused) => return Some(ready(refused.error.to_line(refused.id))),
    };
    let peer = Arc::clone(peer);
    let state = Arc::clone(state);
    Some(Box::pin(async move {
        call.id = id.clone().unwrap_or(Value::Null);
        let result = dispatch::dispatch(&method, params, &peer, &call, &state).await;
        let code = result.as_ref().err().map(|e| e.code().code());
        state
            .metrics()
            .observe_request(&method, code, started.elapsed().as_secs_f64());
        // A request without id is a notification: executed, never answered.
        let id = id?;
        Some(match result {
            Ok(value) => encode(&Response::success(id, value)),
            Err(e) => {
                if matches!(e, Error::Internal(_) | Error::Store(_)) {
                    tracing::error!(method, error = %e, "request failed");
                }
                e.to_line(id)
            }
        })
    }))
}

/// A request line's JSON-RPC envelope, checked: what [`handle_line`] hands to dispatch.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// The id; `None` for a notification (a request that is executed, never answered).
    pub(crate) id: Option<Value>,
    /// The method's name, not yet looked up.
    pub(crate) method: String,
    /// The params, not yet checked against the method.
    pub(crate) params: Option<Value>,
}

/// A line refused before dispatch: the error and the id it is answered with (`null` when
/// the line was not read far enough to know a usable one).
#[derive(Debug)]
pub(crate) struct Refused {
    /// Why.
    pub(crate) error: Error,
    /// The id to answer with.
    pub(crate) id: Value,
}

/// Checks one line's JSON-RPC envelope. Pure, so the fuzzer runs it without a daemon
/// ([`crate::fuzzing`]). (A refusal is boxed: [`Error`] is large and the usual line is a
/// good request.)
pub(crate) fn envelope(line: &[u8]) -> Result<Envelope, Box<Refused>> {
    let refused = |error, id| Err(Box::new(Refused { error, id }));
    let mut env: Map<String, Value> = match serde_json::from_slice(line) {
        Ok(env) => env,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return refused(Error::Parse(e.to_string()), Value::Null);
        }
        Err(e) => {
            return refused(
                Error::InvalidRequest(format!("expected a JSON object: {e}")),
                Value::Null,
            );
        }
    };
    let id = match env.remove("id") {
        None => None,
        Some(v @ (Value::Number(_) | Value::String(_) | Value::Null)) => Some(v),
        Some(_) => {
            return refused(
                Error::InvalidRequest("`id` must be a number, a string or null".into()),
                Value::Null,
            );
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |msg: String| refused(Error::InvalidRequest(msg), reply_id.clone());
    match env.remove("jsonrpc") {
        Some(Value::String(v)) if v == JSONRPC_VERSION => {}
        _ => return invalid(format!("`jsonrpc` must be \"{JSONRPC_VERSION}\"")),
    }
    let method = match env.remove("method") {
        Some(Value::String(m)) => m,
        _ => return invalid("`method` must be a string".into()),
    };
    let params = env.remove("params");
    // A misspelt member (`parmas`) must not silently run the method without its params.
    if let Some(unknown) = env.keys().next() {
        return invalid(format!(
            "unknown member `{unknown}`; a request has jsonrpc, id, method and params"
        ));
    }
    Ok(Envelope { id, method, params })
}

/// Closes a connection's notification queue when it ends, so runs waiting for room in it
/// stop waiting.
struct CloseOnDrop(Notifier);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn ready(line: String) -> InFlight {
    Box::pin(std::future::ready(Some(line)))
}

/// The line without its trailing `\r` (the `\n` is already gone).
pub(crate) fn trim_line(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::trim_line;

    #[test]
    fn trims_carriage_return_only() {
        assert_eq!(trim_line(b"{}\r"), b"{}");
        assert_eq!(trim_line(b"{}"), b"{}");
        assert_eq!(trim_line(b"\r"), b"");
    }
}
