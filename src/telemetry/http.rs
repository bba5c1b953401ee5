//! The HTTP listener for `/metrics`, `/health/live` and `/health/ready`
//! (`daemon.metrics_listen`). It exists apart from `mod.rs` so the recording
//! side of telemetry does not depend on how it is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{process_collector, recorder, Health};
use crate::error::{Error, Result};

/// Binds the HTTP listener and serves it in the background until `stop`.
pub async fn serve_http(addr: SocketAddr, health: Health, stop: CancellationToken) -> Result<()> {
    let handle = recorder().clone();
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(format!("`daemon.metrics_listen` {addr}: cannot listen ({e}); pick a free port or set it to \"\" to disable"))
    })?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let Ok((mut sock, _)) = accepted else {
                continue;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue;
            };
            let handle = handle.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // Read the request head (bounded in size and time).
                let mut buf = Vec::with_capacity(1024);
                let head = async {
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), head)
                    .await
                    .is_err()
                {
                    return;
                }
                let n = buf.len();
                let line = String::from_utf8_lossy(&buf[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, ctype, body) = match path {
                    "/metrics" => {
                        process_collector().collect();
                        ("200 OK", "text/plain; version=0.0.4", handle.render())
                    }
                    "/health/live" => ("200 OK", "text/plain", "live\n".to_string()),
                    "/health/ready" if health.ready() => {
                        ("200 OK", "text/plain", "ready\n".to_string())
                    }
                    "/health/ready" => (
                        "503 Service Unavailable",
                        "text/plain",
                        "not ready: redis or mongodb unreachable\n".to_string(),
                    ),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics, /health/live, /health/ready\n".to_string(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}
