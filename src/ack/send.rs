//! Sending acks: the writers' ack entries and the consumer group's `XACK`,
//! for one partition tenure, on the daemon's shared connection.
//!
//! On one server, one atomic pipeline carries every ack of a step and one
//! `XACK` of every id, so a writer that sees its ack never finds its entry
//! still pending (admission counts pending entries). On Redis Cluster the
//! acks live on other nodes than the stream, so they go first and the `XACK`
//! after: for that moment an acked entry still counts in the backlog (acking
//! after the `XACK` would lose the ack of a daemon killed between the two).
//! Each writer's acks go in one call of `src/lua/ack_stream.lua`, which adds
//! them and renews the stream's expiry, and leaves a key of another type (not
//! writ's) untouched. If the atomic pipeline fails for good (a client's ack
//! key holds something that is not a stream), the acks go best effort and
//! the `XACK` on its own: acks are at-least-once, and the skipped ones are
//! counted (`writ_acks_skipped_total`).
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
    partitions: u32,
    abort: CancellationToken,
    replication: Replication,
}

impl Acker {
    /// Acks of partition stream `stream` (of a namespace of `partitions`
    /// partitions), given up when `abort` fires.
    pub fn new(
        conn: Conn,
        names: Names,
        stream: String,
        partitions: u32,
        abort: CancellationToken,
        replication: Replication,
    ) -> Acker {
        Acker {
            conn,
            names,
            stream,
            partitions,
            abort,
            replication,
        }
    }

    /// The namespace's partition count this acker's stream belongs to.
    pub fn partitions(&self) -> u32 {
        self.partitions
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
            let calls = self.ack_commands(&client_acks);
            if !calls.is_empty() {
                pipe.load_script(super::AckCall::script()).ignore();
            }
            for call in &calls {
                pipe.invoke_script(&call.invocation()).ignore();
            }
            pipe.add_command(self.xack_cmd(&ids)).ignore();
            let mut conn = self.conn.clone();
            match pipe.query_async::<()>(&mut conn).await.map_err(Error::from) {
                Ok(()) => return true,
                Err(e) if e.retry_class() == RetryClass::Permanent => break,
                Err(e) => {
                    crate::backoff::count_retry(e.retry_class());
                    tracing::warn!(error = %e, "acking failed; retrying");
                    if !backoff.sleep(&self.abort).await {
                        return false;
                    }
                }
            }
        }
        self.client_acks(&client_acks).await && self.xack(&ids).await
    }

    /// Adds client acks, one call per ack stream. A call that fails for a
    /// while (Redis at its `maxmemory`, a node failing over) is tried again,
    /// alone: the calls that went are not sent twice. A call refused for
    /// good (say, a writer chose a client id whose ack key holds something
    /// else) is logged, and its acks are skipped and counted: that writer's
    /// `write` then times out, its data is safe. `false`: aborted first.
    pub async fn client_acks(&self, acks: &[(String, Ack)]) -> bool {
        let mut calls = self.ack_commands(acks);
        let mut skipped = 0usize;
        let mut backoff = Backoff::new(Duration::from_secs(2));
        while !calls.is_empty() {
            // Sent at once: the multiplexed connection pipelines them; on a
            // cluster each goes to its stream's node.
            let replies = futures::future::join_all(calls.iter().map(|c| {
                let mut conn = self.conn.clone();
                let call = c.invocation();
                async move { call.invoke_async::<redis::Value>(&mut conn).await }
            }))
            .await;
            let mut again = Vec::new();
            let mut retrying = None;
            for (reply, call) in replies.into_iter().zip(calls) {
                let Err(e) = reply else { continue };
                let e = Error::from(e);
                if matches!(&e, Error::Redis(r) if crate::redis_conn::is_wrong_type(r)) {
                    skipped += call.acks;
                } else if e.retry_class() == RetryClass::Permanent {
                    tracing::error!(error = %e, stream = %call.stream, "cannot add client acks; skipping them");
                    skipped += call.acks;
                } else {
                    retrying.get_or_insert(e);
                    again.push(call);
                }
            }
            calls = again;
            if let Some(e) = retrying {
                crate::backoff::count_retry(e.retry_class());
                tracing::warn!(error = %e, calls = calls.len(), "adding client acks failed; retrying those");
                if !backoff.sleep(&self.abort).await {
                    return false;
                }
            }
        }
        if skipped > 0 {
            Event::AcksSkipped {
                count: skipped as u64,
            }
            .emit();
        }
        true
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

    fn ack_commands(&self, acks: &[(String, Ack)]) -> Vec<super::AckCall> {
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
