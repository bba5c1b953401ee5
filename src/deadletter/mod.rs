//! The dead-letter stream: where a write that can never apply is parked, with
//! its reason and its original fields, so nothing accepted is ever lost.
//!
//! An entry carries `dlq.*` fields (reason, detail, source stream, source id,
//! attempts, time, partition count) followed by the original entry's fields verbatim, so
//! `writ dlq retry` can re-add exactly what the writer sent.
//!
//! [`park`] is the daemon's routine: park the entry, tell its writer
//! (outcome `dead_lettered`), then `XACK` it, in that order, so an entry is
//! never acknowledged before it is safe in the dead-letter stream.

use crate::ack::{Ack, Acker, Outcome};
use crate::backoff::retry_until;
use crate::cache::Fence;
use crate::error::Error;
use crate::protocol::{Reject, RejectReason, ReplyTo, Version};
use crate::stream::Fields;
use crate::telemetry::Event;

/// Metadata field names.
pub mod field {
    /// Reason label (see `RejectReason::as_str`).
    pub const REASON: &str = "dlq.reason";
    /// Human-readable detail: what is wrong and what to do.
    pub const DETAIL: &str = "dlq.detail";
    /// The partition stream the entry came from.
    pub const SOURCE: &str = "dlq.stream";
    /// The original entry id.
    pub const ID: &str = "dlq.id";
    /// How many apply attempts were made.
    pub const ATTEMPTS: &str = "dlq.attempts";
    /// Unix milliseconds when it was parked.
    pub const AT: &str = "dlq.at";
    /// The namespace's partition count when it was parked (`dlq.stream` is
    /// a partition under that count).
    pub const PARTITIONS: &str = "dlq.partitions";
}

/// A dead letter about to be written.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Reason label.
    pub reason: &'static str,
    /// Detail.
    pub detail: String,
    /// Source stream.
    pub stream: &'a str,
    /// Source entry id (stream-id form).
    pub id: String,
    /// Attempts made (0 for entries refused on decode).
    pub attempts: u32,
    /// The namespace's partition count.
    pub partitions: u32,
    /// Original fields; `None` when the original could not be read at all.
    pub original: Option<&'a Fields>,
}

impl DeadLetter<'_> {
    /// Adds the `XADD` to a pipeline; its reply is the letter's id.
    pub fn add_to(&self, pipe: &mut redis::Pipeline, dlq: &str) {
        let now = crate::protocol::wall_clock_ms();
        let mut cmd = crate::stream::cmd::xadd(dlq, None);
        cmd.arg(field::REASON).arg(self.reason);
        cmd.arg(field::DETAIL).arg(&self.detail);
        cmd.arg(field::SOURCE).arg(self.stream);
        cmd.arg(field::ID).arg(&self.id);
        cmd.arg(field::ATTEMPTS).arg(self.attempts);
        cmd.arg(field::AT).arg(now);
        cmd.arg(field::PARTITIONS).arg(self.partitions);
        for (k, v) in self.original.into_iter().flatten() {
            cmd.arg(k.as_slice()).arg(v.as_slice());
        }
        pipe.add_command(cmd);
    }
}

/// The reject of a write MongoDB refused for good (a permanent error): the
/// daemon dead-letters it with this, and `replay` / `dlq retry` report it.
pub fn mongo_rejected(e: &Error) -> Reject {
    Reject::new(
        RejectReason::MongoRejected,
        format!("MongoDB refused the write: {e}; fix the payload and write it again, or fix what MongoDB refused and `writ dlq retry` it"),
    )
}

/// The write [`park`] dead-letters.
pub struct Parking<'a> {
    /// Its collection, if it decoded.
    pub collection: Option<&'a str>,
    /// Its entry id.
    pub id: Version,
    /// The entry's fields, kept verbatim in the letter.
    pub fields: Option<&'a Fields>,
    /// Why.
    pub reject: &'a Reject,
    /// Apply attempts made.
    pub attempts: u32,
    /// Where its writer waits for the ack, if it asked.
    pub reply: Option<&'a ReplyTo>,
}

/// How [`park`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Parked, its writer told, XACKed.
    Yes,
    /// Not parked: `fence` holds a later owner's token (counted in
    /// `writ_fenced_total{op="dead_letter"}`). The caller ends its tenure.
    Fenced,
    /// The partition was aborted first.
    Stopped,
}

/// Parks entry `id` of the acker's partition in the dead-letter stream with
/// its reason, acks its writer (if it asked) and XACKs it. Gives up only when
/// the partition is aborted (the entry then stays pending for the next
/// owner, which decides again).
///
/// Fenced like the cache step: first the partition's fence must still hold
/// this tenure's token. A tenure that lost its partition while the write's
/// last attempt ran (paused, or its renewals cut off from Redis) would
/// otherwise tell the writer "dead-lettered" for a write the new owner may
/// apply. (The check and the `XADD` are two calls: the dead-letter stream
/// may live on another cluster node than the fence. The window between them
/// is one round trip, instead of a whole attempt; [`add`] checks again
/// before each retry.)
pub async fn park(acker: &Acker, fence: &Fence, write: Parking<'_>) -> Parked {
    let Parking {
        collection,
        id,
        fields,
        reject,
        attempts,
        reply,
    } = write;
    match still_held(acker, fence).await {
        None => return Parked::Stopped,
        Some(false) => return Parked::Fenced,
        Some(true) => {}
    }
    let letter = DeadLetter {
        reason: reject.reason.as_str(),
        detail: reject.detail.clone(),
        stream: acker.stream(),
        id: id.to_stream_id(),
        attempts,
        partitions: acker.partitions(),
        original: fields,
    };
    let letter_id = match add(acker, fence, &letter).await {
        None => return Parked::Stopped,
        Some(Added::Fenced) => {
            fenced(fence);
            return Parked::Fenced;
        }
        Some(Added::Letter(id)) => id,
    };
    Event::DeadLettered {
        collection,
        entry: id,
        reject,
        attempts,
        letter: &letter_id,
    }
    .emit();
    if let Some(r) = reply {
        let ack = Ack {
            request: r.request.clone(),
            outcome: Outcome::DeadLettered,
            version: id,
            entry: id,
            reason: Some(reject.to_string()),
        };
        if !acker.client_acks(&[(r.client.clone(), ack)]).await {
            return Parked::Stopped;
        }
    }
    if acker.xack(&[id]).await {
        Parked::Yes
    } else {
        Parked::Stopped
    }
}

/// Whether this tenure still holds the partition's fence (`None`: stopped
/// before Redis answered). A lost fence is counted and logged here.
async fn still_held(acker: &Acker, fence: &Fence) -> Option<bool> {
    let held = retry_until(acker.abort(), "fence check", || {
        let mut conn = acker.conn().clone();
        let key = fence.key.clone();
        async move {
            let t: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok(t)
        }
    })
    .await?;
    if held != Some(fence.token.to_string()) {
        fenced(fence);
        return Some(false);
    }
    Some(true)
}

/// Counts and logs a dead letter refused for a lost fence.
fn fenced(fence: &Fence) {
    Event::Fenced {
        partition: fence.partition,
        op: "dead_letter",
        token: fence.token,
    }
    .emit();
}

/// What [`add`] did.
enum Added {
    /// The letter is in the dead-letter stream, at this id.
    Letter(String),
    /// Not added: before a retry, the fence held a later owner's token.
    Fenced,
}

/// Adds `letter` to the dead-letter stream, retried until it is there (and
/// as durable as `redis.min_replicas_acked` asks) or the acker stops
/// (`None`); its id in the dead-letter stream.
///
/// A letter that Redis added but too few replicas confirmed in time is not
/// added again: the retries ask the same connection's replicas again (a
/// `WAIT`), so a replica that is down for minutes costs one letter, not one
/// per retry. Only if that connection is gone (a reconnect) is it added
/// again, as its confirmation can no longer be asked for.
///
/// Every attempt after the first checks the fence again before it adds the
/// letter: the stream may stay unwritable for minutes (another program's
/// value at its key, an ACL), and a tenure paused meanwhile must not park
/// an entry its partition's new owner now decides on.
async fn add(acker: &Acker, fence: &Fence, letter: &DeadLetter<'_>) -> Option<Added> {
    let dlq = acker.names().dead_letters();
    // The letter's id and the `CLIENT ID` of the connection that added it,
    // once added and waiting for its replicas.
    let added: std::sync::Mutex<Option<(String, u64)>> = Default::default();
    let tried = std::sync::atomic::AtomicBool::new(false);
    retry_until(acker.abort(), "dead letter", || {
        let replication = *acker.replication();
        let conn = acker.conn().clone();
        let pending = added.lock().expect("lock").clone();
        let again = tried.swap(true, std::sync::atomic::Ordering::Relaxed);
        let (dlq, added) = (&dlq, &added);
        async move {
            if let Some((id, client)) = pending {
                if replication
                    .confirm_again(&conn, dlq, client, "a dead letter")
                    .await?
                {
                    return Ok(Added::Letter(id));
                }
                *added.lock().expect("lock") = None;
            }
            if again {
                let t: Option<String> = redis::cmd("GET")
                    .arg(&fence.key)
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(Error::from)?;
                if t != Some(fence.token.to_string()) {
                    return Ok(Added::Fenced);
                }
            }
            let mut pipe = crate::redis_conn::Confirmer::write_pipeline();
            letter.add_to(&mut pipe, dlq);
            let (client, id): (u64, String) = pipe
                .query_async(&mut conn.clone())
                .await
                .map_err(Error::from)?;
            if !replication.wanted() {
                return Ok(Added::Letter(id));
            }
            // The entry is XACKed only once the dead letter is as durable as
            // `redis.min_replicas_acked` asks: the dead-letter stream may live
            // on another node than the partition stream.
            *added.lock().expect("lock") = Some((id.clone(), client));
            replication
                .confirm_on(&conn, dlq, client, "a dead letter")
                .await?;
            Ok(Added::Letter(id))
        }
    })
    .await
}
