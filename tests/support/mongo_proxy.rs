//! A MongoDB wire proxy whose test decides, command by command, what the
//! server does: pass the command on (perhaps after holding it a while), or
//! answer it in the server's place (an error a single SecantusDB node never
//! gives, at one exact command). Replies pass back untouched.
//!
//! The decision runs before the command is forwarded, and the driver sends
//! nothing else on a connection until its command is answered, so a hook
//! that waits holds that connection only.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use mongodb::bson::Document;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use super::wire::{command_of, op_msg, read_msg, OP_MSG};

/// What happens to one command.
pub enum Act {
    /// Forwarded to the server.
    Pass,
    /// Not forwarded: the proxy replies with this document.
    Answer(Document),
}

type Decide = Arc<dyn Fn(Document) -> Pin<Box<dyn Future<Output = Act> + Send>> + Send + Sync>;

pub struct MongoProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MongoProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MongoProxy {
    /// Forwards a loopback port to `target`, asking `decide` about every
    /// command (OP_MSG; anything else passes).
    pub async fn start<F, Fut>(target: SocketAddr, decide: F) -> MongoProxy
    where
        F: Fn(Document) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Act> + Send + 'static,
    {
        let decide: Decide = Arc::new(move |cmd| Box::pin(decide(cmd)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, decide.clone()));
            }
        });
        MongoProxy { port, task }
    }

    /// `uri` pointed at this proxy (a direct connection).
    pub fn uri(&self, uri: &str) -> String {
        super::proxy::mongo_uri_via(uri, self.port)
    }
}

async fn relay(client: TcpStream, server: TcpStream, decide: Decide) {
    let (mut cr, cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cw = Arc::new(Mutex::new(cw));
    let down = {
        let cw = cw.clone();
        async move {
            while let Some((header, body)) = read_msg(&mut sr).await {
                let mut w = cw.lock().await;
                if w.write_all(&header).await.is_err() || w.write_all(&body).await.is_err() {
                    return;
                }
            }
        }
    };
    let up = async move {
        while let Some((header, body)) = read_msg(&mut cr).await {
            let request_id = i32::from_le_bytes(header[4..8].try_into().unwrap());
            let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
            let act = match (op == OP_MSG).then(|| command_of(&body)).flatten() {
                Some(cmd) => decide(cmd).await,
                None => Act::Pass,
            };
            let sent = match act {
                Act::Pass => match sw.write_all(&header).await {
                    Ok(()) => sw.write_all(&body).await,
                    Err(e) => Err(e),
                },
                Act::Answer(reply) => {
                    let msg = op_msg(0x5eed, request_id, &reply);
                    cw.lock().await.write_all(&msg).await
                }
            };
            if sent.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The collection a command names (the value of its first field: `update`,
/// `find`, `findAndModify`, ...).
pub fn collection_of(cmd: &Document) -> Option<&str> {
    cmd.iter().next().and_then(|(_, v)| v.as_str())
}
