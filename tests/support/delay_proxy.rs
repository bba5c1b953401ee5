//! A TCP proxy that delivers every request a settable time after it came,
//! without queueing one behind another's delay: each chunk a client sends is
//! forwarded at its arrival plus the delay of that moment, in order. So a
//! Redis behind it answers every call that much later, however many calls
//! are out: a slow Redis that still answers, not one that stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub struct DelayProxy {
    /// The proxied Redis's URL through this proxy.
    pub url: String,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// A proxy in front of the Redis at `url` (credentials and database
    /// kept), with no delay until [`DelayProxy::set_delay`].
    pub async fn start(url: &str) -> DelayProxy {
        let url = super::proxy::RedisUrl::parse(url).await;
        let target = url.target;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                    let read = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let due = Instant::now()
                                + Duration::from_millis(delay.load(Ordering::Relaxed));
                            if tx.send((due, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    };
                    let forward = async move {
                        while let Some((due, bytes)) = rx.recv().await {
                            tokio::time::sleep_until(due).await;
                            if sw.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                    };
                    let back = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    tokio::select! {
                        _ = async { tokio::join!(read, forward) } => {}
                        _ = back => {}
                    }
                });
            }
        });
        DelayProxy {
            url: url.via(port),
            delay_ms,
            task,
        }
    }

    /// Every request from now on reaches the server `delay` after it came.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}
