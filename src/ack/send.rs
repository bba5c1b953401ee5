//! Sending acks: the writers' ack entries and the consumer group's `XACK`,
//! for one partition tenure, on the daemon's shared connection.
//!
//! On one server, one atomic pipeline carries every ack of a step and one
//! `XACK` of every id, so a writer that sees its ack never finds its entry
//! still pending (admission counts pending entries). On Redis Cluster the
//! acks live on other nodes than the stream, so they go first and the `XACK`
//! after: for that moment an acked entry still counts in the backlog (acking
//! after the `XACK` would lose the ack of a daemon killed between the two).
//! If the atomic pipeline fails for good (a client's ack key holds something
//! that is not a stream), the acks go best effort and the `XACK` on its own:
//! acks are at-least-once.
//!
//! A round's acks skip this path on one server with no replicas to confirm:
//! they ride in the round's cache script ([`Batch`], built here), after its
//! entries, in the same round trip.

use std::time::Duration;

use crate::redis_conn::{Conn, Replication};
use tokio_util::sync::CancellationToken;

use super::Ack;
use crate::backoff::{retry_until, Backoff};
use crate::error::{Error, RetryClass};
use crate::protocol::{Names, Version};
use crate::telemetry::Event;

/// One ack to send: the writer's client id (if it asked for acks), the ack,
/// and the entry to `XACK`.
pub type Outgoing = (Option<String>, Option<Ack>, Version);

/// A step's acks and its `XACK`, for the round's cache script to add on one
/// server ([`crate::cache::Cache::put_many_fenced_acking`]): one round trip
/// for the cache and the acks instead of two.
pub struct Batch {
    /// The partition stream (`XACK`).
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// Each writer's ack, with its ack stream.
    pub acks: Vec<(String, Ack)>,
    /// The entries to `XACK`.
    pub ids: Vec<Version>,
}

/// Sends the acks of one partition tenure until `abort`.
#[derive(Clone)]
pub struct Acker {
    conn: Conn,
    names: Names,
    stream: String,
    abort: CancellationToken,
    replication: Replication,
}

impl Acker {
    /// Acks of partition stream `stream`, given up when `abort` fires.
    pub fn new(
        conn: Conn,
        names: Names,
        stream: String,
        abort: CancellationToken,
        replication: Replication,
    ) -> Acker {
        Acker {
            conn,
            names,
            stream,
            abort,
            replication,
        }
    }

    /// Sends client acks (where asked for), then XACKs the entries: on a
    /// single server in one atomic pipeline; on a cluster, where ack streams
    /// live in other slots, the acks (one pipeline per slot) and then the
    /// `XACK`. `false`: aborted first.
    pub async fn send(&self, acks: Vec<Outgoing>) -> bool {
        let (client_acks, ids) = split(acks);
        if self.conn.is_cluster() {
            return self.client_acks(&client_acks).await && self.xack(&ids).await;
        }
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (_, cmd) in self.ack_commands(&client_acks) {
                pipe.add_command(cmd).ignore();
            }
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
            let cmds = self.ack_commands(acks);
            // The number of commands refused for good (an ack stream key of
            // another type), or the first error worth retrying.
            let sent = self
                .conn
                .query_by_slot(cmds)
                .await
                .map_err(Error::from)
                .and_then(|replies| {
                    replies.into_iter().try_fold(0u64, |skipped, r| match r {
                        Ok(_) => Ok(skipped),
                        Err(e) => match Error::from(e) {
                            e if e.retry_class() == RetryClass::Permanent => Ok(skipped + 1),
                            e => Err(e),
                        },
                    })
                });
            match sent {
                Ok(0) => return true,
                Ok(skipped) => {
                    Event::AcksSkipped { count: skipped }.emit();
                    return true;
                }
                Err(e) if e.retry_class() == RetryClass::Permanent => {
                    tracing::error!(error = %e, "cannot add client acks; skipping them");
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

    /// `acks` as a [`Batch`] for the round's cache script.
    pub fn batch(&self, acks: Vec<Outgoing>) -> Batch {
        let (client_acks, ids) = split(acks);
        Batch {
            stream: self.stream.clone(),
            group: self.names.group(),
            acks: client_acks
                .into_iter()
                .map(|(client, ack)| (self.names.acks(&client), ack))
                .collect(),
            ids,
        }
    }

    fn ack_commands(&self, acks: &[(String, Ack)]) -> Vec<(String, redis::Cmd)> {
        Ack::commands(acks.iter().map(|(c, a)| (c.as_str(), a)), |c| {
            self.names.acks(c)
        })
    }

    fn xack_cmd(&self, ids: &[Version]) -> redis::Cmd {
        crate::stream::cmd::xack(&self.stream, &self.names.group(), ids)
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

    /// How dead letters are confirmed (`redis.min_replicas_acked`).
    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    /// The shared connection.
    pub fn conn(&self) -> &Conn {
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

/// The writers' acks (client id and ack, where asked for) and the ids to
/// `XACK` (all of them).
fn split(acks: Vec<Outgoing>) -> (Vec<(String, Ack)>, Vec<Version>) {
    let ids = acks.iter().map(|(_, _, id)| *id).collect();
    let client_acks = acks
        .into_iter()
        .filter_map(|(client, ack, _)| Some((client?, ack?)))
        .collect();
    (client_acks, ids)
}
