//! A round's bulk is several MongoDB commands: the `update`, then one `find`
//! reading back the documents of keys that existed. Each command is bounded
//! by `maxTimeMS` plus a grace. One bound for the whole round gave up on a
//! round whose commands each finished well in time, and sent its writes the
//! single way (one `findAndModify` each) while its last command still ran.
//!
//! A proxy in front of MongoDB delays every command naming the test's
//! collection by 4 s: with `op_timeout_ms = 2000` one command's bound is
//! 7 s, and the round's two commands take 8 s together.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use support::{Daemon, Overrides, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use writ::Writ;

const MARKER: &[u8] = b"slowround";
const DELAY: Duration = Duration::from_secs(4);

/// Forwards to MongoDB; once armed, holds each request that names
/// [`MARKER`] for [`DELAY`], and counts the `findAndModify`s among them.
struct DelayProxy {
    port: u16,
    armed: Arc<AtomicBool>,
    delayed: Arc<AtomicUsize>,
    single: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    async fn start(target: std::net::SocketAddr) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicUsize::new(0));
        let single = Arc::new(AtomicUsize::new(0));
        let (a, d, s) = (armed.clone(), delayed.clone(), single.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (a, d, s) = (a.clone(), d.clone(), s.clone());
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
                            let has = |m: &[u8]| buf[..n].windows(m.len()).any(|w| w == m);
                            if a.load(Ordering::SeqCst) && has(MARKER) {
                                d.fetch_add(1, Ordering::SeqCst);
                                if has(b"findAndModify") {
                                    s.fetch_add(1, Ordering::SeqCst);
                                }
                                tokio::time::sleep(DELAY).await;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
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
        DelayProxy {
            port,
            armed,
            delayed,
            single,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_commands_each_finish_in_time_is_not_given_up() {
    let env = TestEnv::start("round_bound");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let proxy = DelayProxy::start(target).await;
    let o = Overrides {
        mongo: "op_timeout_ms = 2000",
        mongo_uri: Some(support::proxy::mongo_uri_via(&env.mongo_uri, proxy.port)),
        collections: "[[collections]]\nname = \"slowround\"\nkey = [\"k\"]\n",
        // One partition: the six keys go into one round.
        partitions: Some(1),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let c = writ.collection("slowround").unwrap();
    let keys: Vec<_> = (0..6).map(|i| doc! {"k": format!("k{i}")}).collect();

    // The keys exist, so the round's upserts insert nothing and their
    // documents are read back with a `find`.
    let first = Daemon::start(config.clone());
    for k in &keys {
        c.write(k, &doc! {"v": 0}).await.unwrap();
    }
    first.stop().await;

    // Six writes wait in the stream; the next daemon reads them in one read.
    let mut tickets = Vec::new();
    for k in &keys {
        tickets.push(c.submit(k, &doc! {"v": 1}).await.unwrap());
    }
    proxy.armed.store(true, Ordering::SeqCst);
    let second = Daemon::start(config.clone());
    for t in tickets {
        // Before the fix, the round was given up at 7 s and retried smaller,
        // each write on its own, at 4 s a command: past this wait.
        t.wait_for(Duration::from_secs(120))
            .await
            .expect("a write not acknowledged within 120 s: its round given up and retried?");
    }
    for k in &keys {
        assert_eq!(c.read(k).await.unwrap(), Some(doc! {"v": 1}));
    }
    assert!(
        proxy.delayed.load(Ordering::SeqCst) >= 2,
        "the round's update and find were not both delayed: the test staged nothing"
    );
    assert_eq!(
        proxy.single.load(Ordering::SeqCst),
        0,
        "the round was given up and its writes applied one by one, though each of its \
         commands finished within its own bound"
    );
    second.stop().await;
}
