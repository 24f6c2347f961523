//! The Prometheus scrape endpoint: `GET /metrics` over HTTP/1.1, when `metrics.listen` is
//! set. Unauthenticated and read-only: it answers `GET` and `HEAD` of `/metrics` (the
//! Prometheus text format, or OpenMetrics when the client's `Accept` asks for it) and 404
//! to anything else.
//!
//! A slow or hostile client holds one of `metrics.max_connections` slots for at most
//! `metrics.timeout_ms`, from its accept until its answer is sent (whether it sends nothing,
//! sends slowly or never reads); past the cap, connections are closed as soon as they are
//! accepted (and counted). Each connection answers one request (no keep-alive: a scrape
//! every few seconds gains nothing from it, and an idle connection holds no slot), and
//! its request head may take at most 8 KiB. Nothing here touches the control socket or
//! its connection limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::state::State;

/// The content type of the Prometheus text format.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest request head a client may send, bytes (hyper's least).
const MAX_HEAD: usize = 8192;

/// Binds the endpoint's address (at start, before capabilities are dropped), naming it
/// when that fails.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context as _;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for metrics on {addr} (metrics.listen)"))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the metrics listener non-blocking")?;
    Ok(listener)
}

/// Serves the endpoint until the daemon stops.
pub async fn serve(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve metrics over HTTP");
            return;
        }
    };
    let config = state.live().config.metrics.clone();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let timeout = Duration::from_millis(config.timeout_ms);
    let stop = state.shutdown().clone();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait a little rather than spin.
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            state.metrics().http_rejected.inc();
            drop(stream);
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&req, &state).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(false)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            // Whatever the client does, the connection and its slot are gone by then.
            let _ = tokio::time::timeout(timeout, connection).await;
            drop(slot);
        });
    }
}

/// The answer to one request.
async fn answer(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: this endpoint serves GET /metrics only\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET or HEAD /metrics\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let open = wants_openmetrics(req.headers().get(ACCEPT));
    let body = state.metrics_text(open);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if open { OPENMETRICS } else { TEXT }),
    );
    r
}

/// A short text answer with `status`.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether `accept` asks for OpenMetrics (with a weight above zero), as Prometheus does
/// first.
fn wants_openmetrics(accept: Option<&HeaderValue>) -> bool {
    let Some(text) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    text.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        let kind = params.next().unwrap_or_default();
        let zero = params.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        kind.eq_ignore_ascii_case("application/openmetrics-text") && !zero
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_served_when_asked_for_with_a_weight() {
        let ask = |s: &'static str| wants_openmetrics(Some(&HeaderValue::from_static(s)));
        // What Prometheus 2.x and 3.x send.
        assert!(ask(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!ask("text/plain;version=0.0.4"));
        assert!(!ask("*/*"));
        assert!(!ask("application/openmetrics-text;q=0, text/plain"));
        assert!(!wants_openmetrics(None));
    }
}
