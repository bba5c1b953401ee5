//! A Redis proxy that runs a hook before it passes on a request: once
//! armed, the first chunk a client sends that carries a marker waits in the
//! proxy while the hook runs (straight at Redis, not through the proxy), and
//! goes on after. It stages what another client does between two of a
//! client's commands, at one exact point, where real timing makes that
//! point a window of a round trip.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Hook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct HookProxy {
    /// The URL of the proxied Redis through this proxy.
    pub url: String,
    armed: Arc<AtomicBool>,
    /// Set once the hook ran.
    pub fired: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HookProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HookProxy {
    /// A proxy in front of the Redis at `url` (a `redis://` URL, credentials
    /// and database kept) running `hook` before the first chunk carrying
    /// `marker` once [`HookProxy::arm`]ed.
    pub async fn start<F, Fut>(url: &str, marker: &'static [u8], hook: F) -> HookProxy
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let url = super::proxy::RedisUrl::parse(url).await;
        let target = url.target;
        let hook: Hook = Arc::new(move || Box::pin(hook()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (a, f) = (armed.clone(), fired.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (hook, armed, fired) = (hook.clone(), a.clone(), f.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let carries = buf[..n].windows(marker.len()).any(|w| w == marker);
                            if carries && armed.swap(false, Ordering::SeqCst) {
                                hook().await;
                                fired.store(true, Ordering::SeqCst);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::join!(down, up);
                });
            }
        });
        HookProxy {
            url: url.via(port),
            armed,
            fired,
            task,
        }
    }

    /// From now on, the next chunk carrying the marker waits for the hook.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}
