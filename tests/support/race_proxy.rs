//! A MongoDB wire proxy that stages an insert race once.
//!
//! A guarded upsert races when another upsert of the same key inserts the
//! document between this one's match and its insert: the server then answers
//! E11000 although the stored version is older. A server that serialises its
//! operations (SecantusDB) never interleaves them, so the proxy stages the
//! race: the first `findAndModify` whose query has `field == marker` is not
//! forwarded; the proxy runs `inject` (which writes the other upsert's
//! document straight to the server) and answers that request with the
//! duplicate-key error the server would have given. Everything else passes
//! through untouched.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mongodb::bson::{doc, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use super::wire::{command_of, op_msg, OP_MSG};

type Inject = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct RaceProxy {
    pub port: u16,
    /// Set once the race was staged.
    pub fired: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RaceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(response_to: i32, cmd: &Document) -> Vec<u8> {
    let err = doc! {
        "ok": 0.0,
        "errmsg": format!("E11000 duplicate key error collection: {} (staged by the test's race proxy)",
            cmd.get_str("findAndModify").unwrap_or("?")),
        "code": 11000,
        "codeName": "DuplicateKey",
    };
    op_msg(0x5eed, response_to, &err)
}

impl RaceProxy {
    /// Forwards a loopback port to `target`, staging the race once for the
    /// first `findAndModify` whose query has `field` equal to `marker`.
    pub async fn start<F, Fut>(
        target: SocketAddr,
        field: &str,
        marker: &str,
        inject: F,
    ) -> RaceProxy
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let inject: Inject = Arc::new(move || Box::pin(inject()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fired = Arc::new(AtomicBool::new(false));
        let (field, marker) = (field.to_string(), marker.to_string());
        let f = fired.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (inject, fired, field, marker) =
                    (inject.clone(), f.clone(), field.clone(), marker.clone());
                tokio::spawn(async move {
                    let (mut cr, cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let cw = Arc::new(Mutex::new(cw));
                    let down = {
                        let cw = cw.clone();
                        async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match sr.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if cw.lock().await.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    let up = async move {
                        loop {
                            let mut header = [0u8; 16];
                            if cr.read_exact(&mut header).await.is_err() {
                                return;
                            }
                            let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
                            let request_id = i32::from_le_bytes(header[4..8].try_into().unwrap());
                            let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
                            let mut body = vec![0u8; len.saturating_sub(16)];
                            if cr.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            let staged = op == OP_MSG
                                && !fired.load(Ordering::SeqCst)
                                && command_of(&body).is_some_and(|cmd| {
                                    cmd.contains_key("findAndModify")
                                        && cmd
                                            .get_document("query")
                                            .ok()
                                            .and_then(|q| q.get_str(&field).ok())
                                            == Some(marker.as_str())
                                });
                            if staged {
                                fired.store(true, Ordering::SeqCst);
                                let cmd = command_of(&body).unwrap();
                                inject().await;
                                // The driver waits for this reply before it
                                // sends anything else on the connection.
                                if cw
                                    .lock()
                                    .await
                                    .write_all(&reply(request_id, &cmd))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                                continue;
                            }
                            if sw.write_all(&header).await.is_err()
                                || sw.write_all(&body).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        RaceProxy { port, fired, task }
    }
}
