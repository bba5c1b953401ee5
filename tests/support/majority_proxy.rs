//! A MongoDB wire proxy that models a replica set whose majority lags
//! behind its primary for one key.
//!
//! While it lags, every write command that touches the key (a
//! `findAndModify` whose `query`, or an `update` one of whose statements'
//! `q`, has `field == marker`) is forwarded, and its reply gets the
//! `writeConcernError` a primary gives when `w: majority` timed out (code 64,
//! `wtimeout`), whether the command succeeded or failed. A `find` of the key
//! with read concern `majority` is answered with no document: the key's write
//! is not in the majority-committed snapshot. Reads at `local`, and
//! everything else, pass through. A SecantusDB is a single node, so this is
//! how a test shows what writ does on a replica set whose majority cannot
//! confirm a write.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, Bson, Document};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::wire::{command_of, op_msg, read_msg, OP_MSG};

pub struct MajorityProxy {
    pub port: u16,
    lagging: Arc<AtomicBool>,
    /// Whether writes of the key get the `writeConcernError` (else only the
    /// majority reads lag: a write the primary took before this proxy ran).
    mark_writes: Arc<AtomicBool>,
    /// Write commands on the key seen so far (while lagging).
    pub writes: Arc<AtomicU32>,
    /// Majority reads of the key answered with no document.
    pub hidden_reads: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MajorityProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `cmd` is a write command on the key.
fn writes_key(cmd: &Document, field: &str, marker: &str) -> bool {
    let hits = |q: Option<&Document>| q.and_then(|q| q.get_str(field).ok()) == Some(marker);
    if cmd.contains_key("findAndModify") {
        return hits(cmd.get_document("query").ok());
    }
    if cmd.contains_key("update") {
        return cmd.get_array("updates").is_ok_and(|u| {
            u.iter()
                .filter_map(Bson::as_document)
                .any(|s| hits(s.get_document("q").ok()))
        });
    }
    false
}

/// Whether `cmd` is a majority read that may return the key: its filter
/// names the marker anywhere (an equality, an `$in`, an `$or` of keys; the
/// marker is unique to the test, so its field is not checked).
fn majority_read(cmd: &Document, marker: &str) -> bool {
    fn mentions(b: &Bson, marker: &str) -> bool {
        match b {
            Bson::String(s) => s == marker,
            Bson::Array(a) => a.iter().any(|x| mentions(x, marker)),
            Bson::Document(d) => d.values().any(|x| mentions(x, marker)),
            _ => false,
        }
    }
    cmd.contains_key("find")
        && cmd
            .get_document("readConcern")
            .ok()
            .and_then(|r| r.get_str("level").ok())
            == Some("majority")
        && cmd
            .get_document("filter")
            .is_ok_and(|f| mentions(&Bson::Document(f.clone()), marker))
}

impl MajorityProxy {
    /// Forwards a loopback port to `target`, lagging for the key whose
    /// `field` is `marker` until [`MajorityProxy::catch_up`].
    pub async fn start(target: SocketAddr, field: &str, marker: &str) -> MajorityProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lagging = Arc::new(AtomicBool::new(true));
        let mark_writes = Arc::new(AtomicBool::new(true));
        let writes = Arc::new(AtomicU32::new(0));
        let hidden_reads = Arc::new(AtomicU32::new(0));
        let (field, marker) = (field.to_string(), marker.to_string());
        let (l, w, h, m) = (
            lagging.clone(),
            writes.clone(),
            hidden_reads.clone(),
            mark_writes.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (lagging, writes, hidden, field, marker, mark) = (
                    l.clone(),
                    w.clone(),
                    h.clone(),
                    field.clone(),
                    marker.clone(),
                    m.clone(),
                );
                tokio::spawn(async move {
                    let (mut cr, cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let cw = Arc::new(tokio::sync::Mutex::new(cw));
                    // Request ids whose replies get the write concern error.
                    let marked: Arc<Mutex<HashSet<i32>>> = Default::default();
                    let down = {
                        let (cw, marked) = (cw.clone(), marked.clone());
                        async move {
                            while let Some((header, body)) = read_msg(&mut sr).await {
                                let response_to =
                                    i32::from_le_bytes(header[8..12].try_into().unwrap());
                                let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
                                let rewrite =
                                    op == OP_MSG && marked.lock().unwrap().remove(&response_to);
                                let out = match command_of(&body).filter(|_| rewrite) {
                                    Some(mut reply) => {
                                        reply.insert(
                                            "writeConcernError",
                                            doc! {
                                                "code": 64,
                                                "codeName": "WriteConcernFailed",
                                                "errmsg": "waiting for replication timed out (staged by the test's majority proxy)",
                                                "errInfo": {"wtimeout": true},
                                            },
                                        );
                                        let id =
                                            i32::from_le_bytes(header[4..8].try_into().unwrap());
                                        op_msg(id, response_to, &reply)
                                    }
                                    None => [&header[..], &body[..]].concat(),
                                };
                                if cw.lock().await.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    let up = async move {
                        while let Some((header, body)) = read_msg(&mut cr).await {
                            let request_id = i32::from_le_bytes(header[4..8].try_into().unwrap());
                            let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
                            let cmd = (op == OP_MSG && lagging.load(Ordering::SeqCst))
                                .then(|| command_of(&body))
                                .flatten();
                            if let Some(cmd) = &cmd {
                                if majority_read(cmd, &marker) {
                                    hidden.fetch_add(1, Ordering::SeqCst);
                                    let ns = format!(
                                        "{}.{}",
                                        cmd.get_str("$db").unwrap_or("?"),
                                        cmd.get_str("find").unwrap_or("?")
                                    );
                                    let reply = doc! {
                                        "cursor": {"firstBatch": [], "id": 0_i64, "ns": ns},
                                        "ok": 1.0,
                                    };
                                    if cw
                                        .lock()
                                        .await
                                        .write_all(&op_msg(0x5eed, request_id, &reply))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                    continue;
                                }
                                if writes_key(cmd, &field, &marker) {
                                    writes.fetch_add(1, Ordering::SeqCst);
                                    if mark.load(Ordering::SeqCst) {
                                        marked.lock().unwrap().insert(request_id);
                                    }
                                }
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
        MajorityProxy {
            port,
            lagging,
            mark_writes,
            writes,
            hidden_reads,
            task,
        }
    }

    /// Writes of the key pass with their own replies (counted still): only
    /// majority reads lag, as for a write the primary took earlier.
    pub fn reads_only(&self) {
        self.mark_writes.store(false, Ordering::SeqCst);
    }

    /// The majority catches up: everything passes through from now on.
    pub fn catch_up(&self) {
        self.lagging.store(false, Ordering::SeqCst);
    }
}
