//! Sending acks: the writers' ack entries and the consumer group's `XACK`,
//! for one partition tenure, on the daemon's shared connection.
//!
//! Normally one atomic pipeline carries every ack of a step and one `XACK`
//! of every id, so a writer that sees its ack never finds its entry still
//! pending (admission counts pending entries). If that pipeline fails for
//! good (a client's ack key holds something that is not a stream), the acks
//! go best effort and the `XACK` on its own: acks are at-least-once.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::Ack;
use crate::backoff::{retry_until, Backoff};
use crate::error::{Error, RetryClass};
use crate::protocol::{Names, Version};

/// One ack to send: the writer's client id (if it asked for acks), the ack,
/// and the entry to `XACK`.
pub type Outgoing = (Option<String>, Option<Ack>, Version);

/// Sends the acks of one partition tenure until `abort`.
#[derive(Clone)]
pub struct Acker {
    conn: ConnectionManager,
    names: Names,
    stream: String,
    abort: CancellationToken,
}

impl Acker {
    /// Acks of partition stream `stream`, given up when `abort` fires.
    pub fn new(
        conn: ConnectionManager,
        names: Names,
        stream: String,
        abort: CancellationToken,
    ) -> Acker {
        Acker {
            conn,
            names,
            stream,
            abort,
        }
    }

    /// Sends client acks (where asked for), then XACKs the entries, all in
    /// one atomic pipeline. `false`: aborted first.
    pub async fn send(&self, acks: Vec<Outgoing>) -> bool {
        let client_acks: Vec<(String, Ack)> = acks
            .iter()
            .filter_map(|(client, ack, _)| Some((client.clone()?, ack.clone()?)))
            .collect();
        let ids: Vec<Version> = acks.iter().map(|(_, _, id)| *id).collect();
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            let mut pipe = redis::pipe();
            pipe.atomic();
            Ack::add_all(
                &mut pipe,
                client_acks.iter().map(|(c, a)| (c.as_str(), a)),
                |c| self.names.acks(c),
            );
            pipe.add_command(self.xack_cmd(&ids)).ignore();
            let mut conn = self.conn.clone();
            match pipe.query_async::<()>(&mut conn).await.map_err(Error::from) {
                Ok(()) => return true,
                Err(e) if e.retry_class() == RetryClass::Permanent => break,
                Err(e) => {
                    tracing::warn!(error = %e, "acking failed; retrying");
                    if !backoff.sleep(&self.abort).await {
                        return false;
                    }
                }
            }
        }
        self.client_acks(&client_acks).await && self.xack(&ids).await
    }

    /// Adds client acks. Transient failures are retried; a permanent one
    /// (say, a writer chose a client id whose ack key holds something else)
    /// is logged and skipped: that writer's `write` then times out, its data
    /// is safe.
    pub async fn client_acks(&self, acks: &[(String, Ack)]) -> bool {
        if acks.is_empty() {
            return true;
        }
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            let mut pipe = redis::pipe();
            Ack::add_all(&mut pipe, acks.iter().map(|(c, a)| (c.as_str(), a)), |c| {
                self.names.acks(c)
            });
            let mut conn = self.conn.clone();
            match pipe.query_async::<()>(&mut conn).await.map_err(Error::from) {
                Ok(()) => return true,
                Err(e) if e.retry_class() == RetryClass::Permanent => {
                    tracing::error!(error = %e, "cannot add client acks; skipping them (check for keys under the ack prefix that are not streams)");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "adding client acks failed; retrying");
                    if !backoff.sleep(&self.abort).await {
                        return false;
                    }
                }
            }
        }
    }

    fn xack_cmd(&self, ids: &[Version]) -> redis::Cmd {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.stream).arg(self.names.group());
        for id in ids {
            cmd.arg(id.to_stream_id());
        }
        cmd
    }

    /// XACKs entries of the partition stream.
    pub async fn xack(&self, ids: &[Version]) -> bool {
        retry_until(&self.abort, "xack", || {
            let cmd = self.xack_cmd(ids);
            let mut conn = self.conn.clone();
            async move { cmd.query_async::<()>(&mut conn).await.map_err(Error::from) }
        })
        .await
        .is_some()
    }

    /// The abort signal this acker gives up on.
    pub fn abort(&self) -> &CancellationToken {
        &self.abort
    }

    /// The shared connection.
    pub fn conn(&self) -> &ConnectionManager {
        &self.conn
    }

    /// Key names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The partition stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}
