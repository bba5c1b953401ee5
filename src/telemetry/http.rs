//! The HTTP listener for `/metrics`, `/health/live` and `/health/ready`
//! (`daemon.metrics_listen`). It exists apart from `mod.rs` so the recording
//! side of telemetry does not depend on how it is served, and it uses hyper's
//! HTTP/1 server so writ parses no requests and writes no responses itself.
//!
//! Bounds, so a slow or hostile client cannot pin resources:
//! - at most 64 connections at once; one over the limit is closed at accept,
//!   unanswered;
//! - one request per connection (no keep-alive; responses say
//!   `connection: close`);
//! - the request head must arrive within 5 s and fit in 8 KiB (hyper closes
//!   the connection, or answers 431);
//! - a connection lasts at most 10 s, response included; then it is dropped.
//!
//! When `stop` fires the listener closes; a request already read still gets its
//! response (within the 10 s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{recorder, Health};
use crate::error::{Error, Result};

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Time to receive the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head, request line included.
const MAX_HEAD_BYTES: usize = 8192;
/// Lifetime of a connection, from accept to the last byte of the response.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Binds the HTTP listener and serves it in the background until `stop`.
pub async fn serve_http(addr: SocketAddr, health: Health, stop: CancellationToken) -> Result<()> {
    let handle = recorder().clone();
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(format!("`daemon.metrics_listen` {addr}: cannot listen ({e}); pick a free port or set it to \"\" to disable"))
    })?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Histogram samples are folded in at scrape time; without a scraper they
    // would pile up, so fold them in every few seconds regardless.
    let upkeep = (handle.clone(), stop.clone());
    tokio::spawn(async move {
        let (handle, stop) = upkeep;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(UPKEEP_EVERY) => handle.run_upkeep(),
                _ = stop.cancelled() => return,
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let sock = match accepted {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Out of file descriptors, say: do not spin on it.
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue;
            };
            let (handle, health) = (handle.clone(), health.clone());
            let service = service_fn(move |req| {
                let resp = respond(req.uri().path(), &handle, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http.serve_connection(TokioIo::new(sock), service);
            let stop = stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let served = async {
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => return r,
                        _ = stop.cancelled() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    conn.await
                };
                match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics listener: connection"),
                    Err(_) => tracing::debug!("metrics listener: connection over its deadline"),
                }
            });
        }
    });
    Ok(())
}

/// The response for `path`; any method.
fn respond(path: &str, handle: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            super::render_metrics(handle),
        ),
        "/health/live" => (StatusCode::OK, "text/plain", "live\n".to_string()),
        "/health/ready" if health.ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/health/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: redis or mongodb unreachable\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /health/live, /health/ready\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}
