//! A round: the next segment of many keys of one partition moves through the
//! stages as a whole. One bulk at MongoDB for all of them, one pipelined cache
//! compare-and-set, pipelined acks and one `XACK` carrying every id.
//!
//! A segment is what one key's worker would apply in one step: a run of
//! consecutive puts of a `replace` collection (coalesced: only the last is
//! applied), or a single write. A segment the bulk does not settle (an error
//! on that write, a large document, a failed command) goes back to the
//! dispatcher, which gives it to the key's own worker (the single path, with
//! its retries and dead-lettering): the other writes of the round are not
//! failed, retried or dead-lettered with it.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{key_worker, Job, KeyId, Partition};
use crate::ack::{Ack, Outcome, Outgoing};
use crate::apply::{BulkItem, BulkOutcome, Permit, Signal};
use crate::backoff::retry_until;
use crate::cache::CasOutcome;
use crate::config::CollectionConfig;
use crate::error::RetryClass;
use crate::protocol::Version;
use crate::telemetry::Event;

/// What readers see from a settled segment: the segment, its collection, the
/// version, the committed document (`None`: gone) and whether it was stale.
type Settled = (
    Segment,
    CollectionConfig,
    Version,
    Option<mongodb::bson::Document>,
    bool,
);

/// One key's next step.
pub(crate) struct Segment {
    /// The key.
    pub id: KeyId,
    /// Its jobs, in order; only the last is applied.
    pub jobs: Vec<Job>,
}

/// What a round hands back to the dispatcher.
pub(crate) struct RoundEnd {
    /// The segments the bulk did not settle (for their keys' own workers).
    pub single: Vec<Segment>,
    /// The whole bulk failed (timeout, connection, server limit): the
    /// dispatcher makes its next rounds smaller.
    pub bulk_failed: bool,
}

impl RoundEnd {
    /// Aborted or fenced: what is not done stays pending for the next owner.
    fn nothing() -> Self {
        RoundEnd {
            single: Vec::new(),
            bulk_failed: false,
        }
    }
}

/// How a round's bulk ended.
enum Bulk {
    /// Each segment's outcome, in order.
    Done(Vec<BulkOutcome>),
    /// The whole bulk failed or timed out: its writes go again, one by one.
    Failed,
    /// The partition was aborted meanwhile.
    Aborted,
}

/// Runs one round, holding `permit` (a limiter slot) for its bulk. Returns the segments the bulk did not settle; their
/// entries are neither acked nor cached. When the partition is aborted, what
/// is not done yet stays pending for the next owner (nothing is returned).
pub(super) async fn run_round(part: &Partition, segs: Vec<Segment>, permit: Permit) -> RoundEnd {
    if !part.still_owner() {
        return RoundEnd::nothing();
    }
    let colls: Vec<CollectionConfig> = segs
        .iter()
        .map(|s| {
            part.ctx
                .config
                .collection(&s.id.0)
                .expect("decode checked the collection")
                .clone()
        })
        .collect();
    let started = Instant::now();
    let outcomes = match bulk(part, &segs, &colls, permit).await {
        Bulk::Done(outcomes) => outcomes,
        Bulk::Failed => {
            return RoundEnd {
                single: segs,
                bulk_failed: true,
            }
        }
        Bulk::Aborted => return RoundEnd::nothing(),
    };
    if crash_after_bulk() {
        // Test hook (see `crash_after_bulk`): MongoDB has the round, the cache
        // and the acks do not.
        tracing::error!("WRIT_TEST_FAILPOINT=after_bulk: aborting");
        std::process::abort();
    }
    record_bulk(&colls, started.elapsed().as_secs_f64());
    let mut single = Vec::new();
    let mut done = Vec::new();
    for ((seg, coll), outcome) in segs.into_iter().zip(colls).zip(outcomes) {
        match outcome {
            BulkOutcome::Done(applied) => done.push((seg, coll, applied)),
            BulkOutcome::Single => single.push(seg),
        }
    }
    if !finish(part, done).await {
        return RoundEnd::nothing();
    }
    RoundEnd {
        single,
        bulk_failed: false,
    }
}

/// The round's one bulk at MongoDB: the last write of each segment, each of
/// its commands within the operation timeout (plus slack), telling the
/// limiter how it went.
async fn bulk(
    part: &Partition,
    segs: &[Segment],
    colls: &[CollectionConfig],
    permit: Permit,
) -> Bulk {
    let store = &part.ctx.store;
    let items: Vec<BulkItem> = segs
        .iter()
        .zip(colls)
        .map(|(s, coll)| {
            let last = s.jobs.last().expect("a segment has a job");
            BulkItem {
                coll,
                write: &last.write,
                version: last.id,
            }
        })
        .collect();
    let names = || colls.iter().map(|c| c.name.as_str());
    // No bound on the whole here: a round is several commands (deletes,
    // one `update` per collection and chunk, read-backs), each bounded by
    // `maxTimeMS` plus a grace in the store. One bound for all of them gave
    // up on a round whose commands each finished in time, and sent its
    // writes the single way while its last command still ran.
    let res = tokio::select! {
        r = store.apply_bulk(&items) => r,
        _ = part.run.abort.cancelled() => return Bulk::Aborted,
    };
    match res {
        Ok(outcomes) => {
            permit.done_writes(Signal::Completed, items.len());
            store.note_answered(names());
            Bulk::Done(outcomes)
        }
        Err(e) => {
            if e.is_timeout() {
                store.note_timed_out(names());
            }
            permit.done(if e.retry_class() == RetryClass::Transient {
                Signal::Overloaded
            } else {
                Signal::Completed
            });
            tracing::warn!(writes = items.len(), error = %e, "bulk apply failed; applying its writes one by one, and making the next rounds smaller");
            Bulk::Failed
        }
    }
}

/// A bulk's latency: its own histogram, and each statement's apply latency
/// (distinct key; a coalesced run counts once), recorded per collection in
/// one call (no label built per statement).
fn record_bulk(colls: &[CollectionConfig], elapsed: f64) {
    metrics::histogram!("writ_bulk_seconds").record(elapsed);
    let mut per_coll: Vec<(&str, usize)> = Vec::new();
    for coll in colls {
        match per_coll.iter_mut().find(|(name, _)| *name == coll.name) {
            Some((_, n)) => *n += 1,
            None => per_coll.push((&coll.name, 1)),
        }
    }
    for (name, n) in per_coll {
        metrics::histogram!("writ_apply_seconds", "collection" => name.to_string())
            .record_many(elapsed, n);
    }
    metrics::histogram!("writ_bulk_writes").record(colls.len() as f64);
}

/// `WRIT_TEST_FAILPOINT=after_bulk` makes the daemon abort right after its
/// first bulk committed and before the cache step: the crash the fault tests
/// need between the two. Read once; never set in production.
fn crash_after_bulk() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WRIT_TEST_FAILPOINT").as_deref() == Ok("after_bulk"))
}

/// Caches the committed documents of settled segments (one script call), then
/// acks them (one pipeline and one XACK; on one server with no replicas to
/// confirm, inside the same script call). `false`: aborted or fenced.
async fn finish(
    part: &Partition,
    done: Vec<(Segment, CollectionConfig, crate::apply::Applied)>,
) -> bool {
    let (ctx, run, p) = (&*part.ctx, &*part.run, part.p);
    if done.is_empty() {
        return true;
    }
    let done: Vec<Settled> = done
        .into_iter()
        .map(|(seg, coll, applied)| {
            let (version, doc, stale) = applied.into_readable(seg.jobs.last().unwrap().id);
            (seg, coll, version, doc, stale)
        })
        .collect();
    let entries: Vec<(String, Version, Option<&mongodb::bson::Document>)> = done
        .iter()
        .map(|(seg, _, v, doc, _)| (ctx.names.cache(p, &seg.id.0, &seg.id.1), *v, doc.as_ref()))
        .collect();
    let fence = part.fence();
    let acks = round_acks(&done);
    // On one server with no replicas to confirm, the acks ride in the cache
    // script, after the entries (one round trip, one fsync); else they
    // follow it.
    let (batch, acks) = if ctx.cache.acks_ride_along() {
        (Some(part.acker.batch(acks)), Vec::new())
    } else {
        (None, acks)
    };
    let cache_started = Instant::now();
    let Some(cas) = retry_until(&run.abort, "cache update", || async {
        match &batch {
            Some(b) => ctx.cache.put_many_fenced_acking(&entries, &fence, b).await,
            None => ctx.cache.put_many_fenced(&entries, &fence).await,
        }
    })
    .await
    else {
        return false;
    };
    if cas.contains(&CasOutcome::Fenced) {
        run.abort.cancel();
        return false;
    }
    metrics::histogram!("writ_cache_update_seconds").record(cache_started.elapsed().as_secs_f64());
    if batch.is_none() && !part.acker.send(acks).await {
        return false;
    }
    for (seg, coll, ..) in &done {
        for job in &seg.jobs {
            key_worker::record_end_to_end(&coll.name, job.id);
        }
    }
    true
}

/// The acks of settled segments (the earlier jobs of a run coalesced, the
/// last applied or stale), and one [`Event::Settled`] per collection.
fn round_acks(done: &[Settled]) -> Vec<Outgoing> {
    let mut acks = Vec::new();
    // Per collection: [applied, coalesced, stale], emitted once per round.
    let mut settled: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for (seg, coll, version, _, stale) in done {
        let n = seg.jobs.len();
        let counts = settled.entry(coll.name.as_str()).or_default();
        counts[1] += n as u64 - 1;
        counts[if *stale { 2 } else { 0 }] += 1;
        for (i, job) in seg.jobs.iter().enumerate() {
            let outcome = match (i + 1 == n, stale) {
                (false, _) => Outcome::Coalesced,
                (true, true) => Outcome::Stale,
                (true, false) => Outcome::Applied,
            };
            let ack = job.write.reply.as_ref().map(|r| Ack {
                request: r.request.clone(),
                outcome,
                version: *version,
                entry: job.id,
                reason: None,
            });
            acks.push((
                job.write.reply.as_ref().map(|r| r.client.clone()),
                ack,
                job.id,
            ));
        }
    }
    for (collection, [applied, coalesced, stale]) in settled {
        Event::Settled {
            collection,
            applied,
            coalesced,
            stale,
        }
        .emit();
    }
    acks
}
