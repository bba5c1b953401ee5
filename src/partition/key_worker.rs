//! One key's worker: applies a run of that key's writes in order, updates the
//! cache, then acks the writers and the consumer group, in that order.
//!
//! Consecutive `put`s of a `replace` collection are coalesced
//! ([`super::keys::run_len`]): only the last is applied, and the earlier ones
//! are acked with the committed version (the state they wrote was superseded
//! by a newer write before it was readable).

use super::{Job, Partition};
use crate::ack::{Ack, Outcome};
use crate::apply::{Applied, Attempts};
use crate::cache::CasOutcome;
use crate::deadletter::{Parked, Parking};
use crate::protocol::{self, Reject, RejectReason, Version};
use crate::source::Item;
use crate::telemetry::Event;

/// Decodes an entry: `Ok` a job for its key, or `Err` the entry refused, to
/// be dead-lettered by [`park_refused`].
pub(super) fn admit(part: &Partition, item: Item) -> Result<Job, Refused> {
    let (ctx, p) = (&*part.ctx, part.p);
    let Item { entry, permit } = item;
    let decoded = match &entry.fields {
        Some(fields) => protocol::decode(fields, &ctx.config, Some(p)),
        None => Err(Reject::new(
            RejectReason::Malformed,
            "entry is not a list of field/value pairs, or was deleted while pending",
        )),
    };
    match decoded {
        Ok(write) => Ok(Job {
            id: entry.id,
            write,
            fields: entry.fields.unwrap_or_default(),
            _permit: permit,
        }),
        Err(reject) => Err(Refused {
            entry,
            reject,
            _permit: permit,
        }),
    }
}

/// An entry refused at decode, with its place under the in-flight bounds
/// until it is parked.
pub(super) struct Refused {
    entry: crate::stream::Entry,
    reject: Reject,
    _permit: crate::source::InFlight,
}

/// Dead-letters and acks a refused entry. Run as a task of its own: while
/// the dead-letter stream cannot be written (a foreign value, an ACL, its
/// node failing over) this retries, and the partition's other keys must
/// keep flowing meanwhile. The entry names no key the daemon could order
/// (it did not decode), so parking it beside them reorders nothing.
pub(super) async fn park_refused(part: std::sync::Arc<Partition>, refused: Refused) {
    let Refused { entry, reject, .. } = &refused;
    if reject.reason == RejectReason::WrongPartition && count_changed(&part).await {
        return;
    }
    let reply = entry.fields.as_ref().and_then(reply_of);
    let collection = entry
        .fields
        .as_ref()
        .and_then(|f| declared_collection(f, &part.ctx.config));
    let write = Parking {
        collection,
        id: entry.id,
        fields: entry.fields.as_ref(),
        reject,
        attempts: 0,
        reply: reply.as_ref(),
    };
    park_fenced(&part, write).await;
}

/// Before an entry is parked as `wrong_partition`: whether the namespace's
/// partition count changed under this daemon ([`crate::partition_count::recheck`],
/// the housekeeping's check, asked now). Then the entry is a writer's on the
/// new count, not a misplaced one: it stays pending for a daemon on the new
/// count, and this daemon stops at once. Parked, it would carry this
/// daemon's count in `dlq.partitions`, under which `writ dlq retry` refuses
/// it for good. A daemon on an outdated count reads such entries when it
/// outlived the change: stalled past its leases while `writ partitions
/// --set` looked for daemons, started during the change, or not seen by a
/// `--set` configured with a much shorter `daemon.lease_ttl_ms`.
///
/// While Redis cannot tell (an error), it asks again with backoff: parked on
/// a guess, the entry could not be taken back. `true` also when the tenure
/// ends meanwhile (the entry stays pending for the next owner, who asks
/// again).
async fn count_changed(part: &Partition) -> bool {
    let ctx = &part.ctx;
    let mut conn = ctx.conn.clone();
    let mut backoff = crate::backoff::Backoff::new(ctx.config.backoff_cap);
    let refused = loop {
        match crate::partition_count::recheck_now(&mut conn, &ctx.config, &ctx.standing).await {
            Ok(refused) => break refused,
            Err(e) => {
                tracing::warn!(partition = part.p, error = %e, "cannot check the namespace's partition count before parking an entry of another partition; trying again");
                if !backoff.sleep(&part.run.abort).await {
                    return true;
                }
            }
        }
    };
    let Some(e) = refused else {
        return false;
    };
    tracing::error!(partition = part.p, error = %e, "an entry written for another partition count: the namespace's count changed under this daemon; the entry stays pending for a daemon on the new count, and this daemon stops (its partitions drain and go to the others)");
    ctx.halt.stop(e);
    true
}

/// Best effort: the declared collection an entry that failed to decode
/// names, for its log line and its `writ_writes_total` count.
fn declared_collection<'c>(
    fields: &crate::stream::Fields,
    config: &'c crate::config::Config,
) -> Option<&'c str> {
    let name = text_field(fields, protocol::field::COLLECTION)?;
    config
        .collections
        .get_key_value(name)
        .map(|(k, _)| k.as_str())
}

/// Best effort: the reply address of an entry that failed to decode.
fn reply_of(fields: &crate::stream::Fields) -> Option<protocol::ReplyTo> {
    let (client, request) = (
        text_field(fields, protocol::field::CLIENT)?,
        text_field(fields, protocol::field::REQUEST)?,
    );
    (protocol::valid_id(client) && protocol::valid_id(request)).then(|| protocol::ReplyTo {
        client: client.into(),
        request: request.into(),
    })
}

/// The value of an entry's field `name`, if it is there and is text.
fn text_field<'f>(fields: &'f crate::stream::Fields, name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Processes one key's jobs, in order.
///
/// A coalesced run applies only its last write. When that write fails for
/// good, the writes before it were never applied: they run again as a run of
/// their own (whose last write is then the one applied), and the failed
/// write is dead-lettered in its turn with the verdict already reached, not
/// tried `max_attempts` times more. The writes before a refused one get one
/// attempt each for a permanent failure (transient ones are still retried):
/// the key has just spent its full retries, and a key whose every write is
/// refused must not hold the partition's in-flight slots for seconds a write.
/// So do the writes after a refused one, until one applies: `refused` says
/// the key's last write (of an earlier run) was refused for good. Returns
/// whether the last write settled here was.
pub(super) async fn run_key(part: &Partition, jobs: Vec<Job>, mut refused: bool) -> bool {
    let mut i = 0;
    // Writes found poison as the last of a run, by index; the lowest on top.
    let mut poison: Vec<(usize, Reject, u32)> = Vec::new();
    while i < jobs.len() {
        // Before a park as before an apply: a tenure aborted while the last
        // park waited parks nothing more (the rest stays pending, in order).
        if !part.still_owner() {
            return refused; // leave the rest pending
        }
        let coll = part
            .ctx
            .config
            .collection(&jobs[i].write.collection)
            .expect("decode checked the collection")
            .clone();
        if poison.last().is_some_and(|(at, ..)| *at == i) {
            let (_, reject, attempts) = poison.pop().expect("checked");
            park(part, &coll.name, &jobs[i], &reject, attempts).await;
            refused = true;
            i += 1;
            continue;
        }
        let limit = poison.last().map_or(jobs.len(), |(at, ..)| *at);
        let end = coalesced_end(&coll, &jobs[..limit], i);
        let target = &jobs[end - 1];
        let started = std::time::Instant::now();
        let budget = if poison.is_empty() && !refused {
            part.ctx.config.max_attempts
        } else {
            1
        };
        match apply_with_retry(part, &coll, target, budget).await {
            Some(Ok(applied)) => {
                metrics::histogram!("writ_apply_seconds", "collection" => coll.name.clone())
                    .record(started.elapsed().as_secs_f64());
                if !publish(part, &coll.name, &jobs[i..end], applied).await {
                    return refused;
                }
                refused = false;
            }
            Some(Err((reject, attempts))) if end - 1 > i => {
                poison.push((end - 1, reject, attempts));
                continue;
            }
            Some(Err((reject, attempts))) => {
                park(part, &coll.name, target, &reject, attempts).await;
                refused = true;
            }
            None => return refused, // aborted at the shutdown deadline: left pending
        }
        i = end;
    }
    refused
}

/// The end of the run that starts at `i`: the writes the last of them
/// stands for ([`super::keys::run_len`]: consecutive puts to a replace
/// collection, only the last applied); anything else runs alone.
fn coalesced_end(coll: &crate::config::CollectionConfig, jobs: &[Job], i: usize) -> usize {
    i + super::keys::run_len(coll, &jobs[i..]).max(1)
}

/// Dead-letters a write that failed for good, and acks its writer.
async fn park(part: &Partition, collection: &str, job: &Job, reject: &Reject, attempts: u32) {
    let write = Parking {
        collection: Some(collection),
        id: job.id,
        fields: Some(&job.fields),
        reject,
        attempts,
        reply: job.write.reply.as_ref(),
    };
    park_fenced(part, write).await;
}

/// [`crate::deadletter::park`] under this tenure's fence; a park the fence
/// refused ends the tenure (the entry stays pending for the new owner).
async fn park_fenced(part: &Partition, write: Parking<'_>) {
    if crate::deadletter::park(&part.acker, &part.fence(), write).await == Parked::Fenced {
        part.run.abort.cancel();
    }
}

/// Makes what the last write of `run` left readable (the cache, fenced), then
/// acks every write of the run: the last as applied or stale, the earlier
/// ones as coalesced. `false`: the tenure ended first (left pending).
async fn publish(part: &Partition, collection: &str, run: &[Job], applied: Applied) -> bool {
    let (ctx, tenure, p) = (&*part.ctx, &*part.run, part.p);
    let target = run.last().expect("a run has a write");
    let (version, doc, stale) = applied.into_readable(target.id);
    let cache_key = ctx
        .names
        .cache(p, collection, &target.write.key.canonical());
    let fence = part.fence();
    let cache_started = std::time::Instant::now();
    let Some(cas) = ctx
        .cache
        .publish(
            &cache_key,
            version,
            doc.as_ref(),
            Some(&fence),
            &tenure.abort,
        )
        .await
    else {
        return false;
    };
    if cas == CasOutcome::Fenced {
        tenure.abort.cancel();
        return false;
    }
    metrics::histogram!("writ_cache_update_seconds").record(cache_started.elapsed().as_secs_f64());
    let last = if stale {
        Outcome::Stale
    } else {
        Outcome::Applied
    };
    let acks = run
        .iter()
        .enumerate()
        .map(|(n, job)| {
            let outcome = if n + 1 == run.len() {
                last
            } else {
                Outcome::Coalesced
            };
            let reply = job.write.reply.as_ref();
            let ack = reply.map(|r| Ack {
                request: r.request.clone(),
                outcome,
                version,
                entry: job.id,
                reason: None,
            });
            (reply.map(|r| r.client.clone()), ack, job.id)
        })
        .collect();
    Event::Settled {
        collection,
        applied: u64::from(!stale),
        coalesced: run.len() as u64 - 1,
        stale: u64::from(stale),
    }
    .emit();
    if !part.acker.send(acks).await {
        return false;
    }
    for job in run {
        record_end_to_end(collection, job.id);
    }
    true
}

pub(super) fn record_end_to_end(collection: &str, id: Version) {
    let now = crate::protocol::wall_clock_ms();
    let secs = now.saturating_sub(id.ms) as f64 / 1000.0;
    metrics::histogram!("writ_end_to_end_seconds", "collection" => collection.to_string())
        .record(secs);
}

/// Applies with retries: the routine `replay` and `dlq retry` share
/// ([`Attempts`]), for as long as this tenure owns the partition, until
/// `max_attempts` permanent failures.
async fn apply_with_retry(
    part: &Partition,
    coll: &crate::config::CollectionConfig,
    job: &Job,
    max_attempts: u32,
) -> Option<Result<Applied, (Reject, u32)>> {
    let attempts = Attempts {
        store: &part.ctx.store,
        config: &part.ctx.config,
        abort: &part.run.abort,
        max_attempts,
    };
    attempts
        .apply(|| part.still_owner(), coll, &job.write, job.id)
        .await
}
