//! One key's worker: applies a run of that key's writes in order, updates the
//! cache, then acks the writers and the consumer group, in that order.
//!
//! Consecutive `put`s of a `replace` collection are coalesced: only the last
//! is applied, and the earlier ones are acked with the committed version (the
//! state they wrote was superseded by a newer write before it was readable).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Ctx, Item, Job, PartitionRun};
use crate::ack::{Ack, Outcome};
use crate::apply::{Applied, Signal};
use crate::backoff::Backoff;
use crate::cache::{CasOutcome, Fence};
use crate::config::WriteMode;
use crate::deadletter::DeadLetter;
use crate::error::{Error, RetryClass};
use crate::protocol::{self, Op, Reject, RejectReason, Version};

/// Decodes an entry; a refused one is dead-lettered and acked here.
pub(super) async fn admit(
    ctx: &Ctx,
    run: &PartitionRun,
    p: u32,
    stream: &str,
    item: Item,
) -> Option<Job> {
    let Item { entry, _permit } = item;
    let decoded = match &entry.fields {
        Some(fields) => protocol::decode(fields, &ctx.config, Some(p)),
        None => Err(Reject::new(
            RejectReason::Malformed,
            "entry is not a list of field/value pairs, or was deleted while pending",
        )),
    };
    match decoded {
        Ok(write) => Some(Job {
            id: entry.id,
            write,
            fields: entry.fields.unwrap_or_default(),
            _permit,
        }),
        Err(reject) => {
            tracing::error!(partition = p, entry = %entry.id, reason = reject.reason.as_str(), detail = %reject.detail, "refused a stream entry; parked it in the dead-letter stream");
            metrics::counter!("writ_rejected_total", "reason" => reject.reason.as_str())
                .increment(1);
            let reply = entry.fields.as_ref().and_then(reply_of);
            dead_letter(
                ctx,
                run,
                stream,
                entry.id,
                entry.fields.as_ref(),
                &reject,
                0,
                reply.as_ref(),
            )
            .await;
            None
        }
    }
}

/// Best effort: the reply address of an entry that failed to decode.
fn reply_of(fields: &crate::stream::Fields) -> Option<protocol::ReplyTo> {
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_slice() == n.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let (client, request) = (
        get(protocol::field::CLIENT)?,
        get(protocol::field::REQUEST)?,
    );
    (protocol::valid_id(client) && protocol::valid_id(request)).then(|| protocol::ReplyTo {
        client: client.into(),
        request: request.into(),
    })
}

/// Processes one key's jobs, in order.
pub(super) async fn run_key(ctx: &Ctx, run: &PartitionRun, p: u32, stream: &str, jobs: Vec<Job>) {
    let fence = Fence {
        partition: p,
        key: crate::ownership::fence_key(&ctx.config.namespace, p),
        token: run.lease.token,
    };
    let mut i = 0;
    let mut no_coalesce_before = 0;
    while i < jobs.len() {
        let coll = ctx
            .config
            .collection(&jobs[i].write.collection)
            .expect("decode checked the collection")
            .clone();
        // A run of puts to a replace collection: apply only its last write.
        let mut end = i + 1;
        if i >= no_coalesce_before && coll.mode == WriteMode::Replace && jobs[i].write.op == Op::Put
        {
            while end < jobs.len() && jobs[end].write.op == Op::Put {
                end += 1;
            }
        }
        let target = &jobs[end - 1];
        if run.abort.is_cancelled() || !run.lease.valid() {
            run.abort.cancel();
            return; // no longer surely the owner: leave the rest pending
        }
        let started = std::time::Instant::now();
        let applied = match apply_with_retry(ctx, run, &coll, target).await {
            Some(Ok(a)) => a,
            Some(Err((reject, attempts))) => {
                if end - 1 > i {
                    // The last write is poison; the earlier ones were never
                    // applied: take them one by one.
                    no_coalesce_before = end - 1;
                    continue;
                }
                tracing::error!(partition = p, entry = %target.id, collection = %coll.name, attempts, detail = %reject.detail, "write failed for good; parked it in the dead-letter stream");
                metrics::counter!("writ_writes_total", "collection" => coll.name.clone(), "outcome" => Outcome::DeadLettered.as_str()).increment(1);
                metrics::counter!("writ_rejected_total", "reason" => reject.reason.as_str())
                    .increment(1);
                dead_letter(
                    ctx,
                    run,
                    stream,
                    target.id,
                    Some(&target.fields),
                    &reject,
                    attempts,
                    target.write.reply.as_ref(),
                )
                .await;
                i = end;
                continue;
            }
            None => return, // aborted at the shutdown deadline: left pending
        };
        metrics::histogram!("writ_apply_seconds", "collection" => coll.name.clone())
            .record(started.elapsed().as_secs_f64());
        // What readers may see from now on, at which version.
        let (version, doc, stale) = applied.into_readable(target.id);
        let last_outcome = if stale {
            Outcome::Stale
        } else {
            Outcome::Applied
        };
        let cache_key = ctx
            .names
            .cache(p, &coll.name, &target.write.key.canonical());
        let cache_started = std::time::Instant::now();
        let Some(cas) = retry_until_abort(run, "cache update", || {
            ctx.cache
                .put_fenced(&cache_key, version, doc.as_ref(), Some(&fence))
        })
        .await
        else {
            return;
        };
        if cas == CasOutcome::Fenced {
            run.abort.cancel();
            return;
        }
        metrics::histogram!("writ_cache_update_seconds")
            .record(cache_started.elapsed().as_secs_f64());
        let batch = &jobs[i..end];
        let acks: Vec<(Option<Ack>, Version)> = batch
            .iter()
            .enumerate()
            .map(|(n, job)| {
                let outcome = if n + 1 == batch.len() { last_outcome } else { Outcome::Coalesced };
                metrics::counter!("writ_writes_total", "collection" => coll.name.clone(), "outcome" => outcome.as_str()).increment(1);
                let ack = job.write.reply.as_ref().map(|r| Ack {
                    request: r.request.clone(),
                    outcome,
                    version,
                    entry: job.id,
                    reason: None,
                });
                (ack, job.id)
            })
            .collect();
        if !send_acks(
            ctx,
            run,
            stream,
            batch
                .iter()
                .zip(acks)
                .map(|(job, (ack, id))| {
                    (job.write.reply.as_ref().map(|r| r.client.clone()), ack, id)
                })
                .collect(),
        )
        .await
        {
            return;
        }
        for job in batch {
            record_end_to_end(&coll.name, job.id);
        }
        i = end;
    }
}

pub(super) fn record_end_to_end(collection: &str, id: Version) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(id.ms) as f64 / 1000.0;
    metrics::histogram!("writ_end_to_end_seconds", "collection" => collection.to_string())
        .record(secs);
}

/// Applies with retries. `None`: aborted. `Some(Err)`: permanent failure after
/// `max_attempts`.
async fn apply_with_retry(
    ctx: &Ctx,
    run: &PartitionRun,
    coll: &crate::config::CollectionConfig,
    job: &Job,
) -> Option<Result<Applied, (Reject, u32)>> {
    let mut backoff = Backoff::new(ctx.config.backoff_cap);
    // Only permanent failures count towards `max_attempts`: an outage must
    // not dead-letter writes that were merely waiting for MongoDB.
    let mut attempts = 0u32;
    // Bound every call: a hung connection must not hold the key (or a
    // hand-over) forever. Every operation carries `maxTimeMS = op_timeout`, so
    // by the time this local bound (op_timeout + 5 s) gives up on an attempt
    // the server has stopped it too: a retry never runs beside an earlier
    // attempt. The wait for a slot in the daemon-wide limiter comes first and
    // is outside the bound, so queueing never times an operation out.
    let limit = ctx.config.op_timeout + Duration::from_secs(5);
    loop {
        if run.abort.is_cancelled() || !run.lease.valid() {
            run.abort.cancel();
            return None;
        }
        let permit = tokio::select! {
            p = ctx.store.limiter().acquire() => p,
            _ = run.abort.cancelled() => return None,
        };
        let res = tokio::select! {
            r = tokio::time::timeout(limit, ctx.store.apply(coll, &job.write, job.id)) => r,
            _ = run.abort.cancelled() => return None,
        };
        let res = res.unwrap_or(Err(Error::Timeout {
            after: limit,
            what: "a MongoDB write",
        }));
        permit.done(match &res {
            Err(e) if e.retry_class() == RetryClass::Transient => Signal::Overloaded,
            _ => Signal::Completed,
        });
        match res {
            Ok(a) => return Some(Ok(a)),
            Err(e) => {
                let class = e.retry_class();
                metrics::counter!("writ_retries_total", "error_class" => class.as_str())
                    .increment(1);
                metrics::counter!("writ_mongodb_errors_total", "error_class" => class.as_str())
                    .increment(1);
                if class == RetryClass::Permanent {
                    attempts += 1;
                    if attempts >= ctx.config.max_attempts {
                        return Some(Err((mongo_reject(&e), attempts)));
                    }
                }
                tracing::warn!(entry = %job.id, collection = %coll.name, attempts, class = class.as_str(), error = %e, "apply failed; retrying");
                if !backoff.sleep(&run.abort).await {
                    return None;
                }
            }
        }
    }
}

fn mongo_reject(e: &Error) -> Reject {
    Reject::new(
        RejectReason::MongoRejected,
        format!("MongoDB refused the write: {e}; fix the payload and `writ dlq retry` it"),
    )
}

/// Runs `op` until it succeeds or the partition is aborted.
pub(super) async fn retry_until_abort<F, Fut, T>(
    run: &PartitionRun,
    what: &'static str,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                metrics::counter!("writ_retries_total", "error_class" => e.retry_class().as_str())
                    .increment(1);
                tracing::warn!(what, error = %e, "redis step failed; retrying");
                if !backoff.sleep(&run.abort).await {
                    return None;
                }
            }
        }
    }
}

/// Sends client acks (where asked for), then XACKs the entries.
pub(super) async fn send_acks(
    ctx: &Ctx,
    run: &PartitionRun,
    stream: &str,
    acks: Vec<(Option<String>, Option<Ack>, Version)>,
) -> bool {
    let client_acks: Vec<(String, Ack)> = acks
        .iter()
        .filter_map(|(client, ack, _)| Some((client.clone()?, ack.clone()?)))
        .collect();
    let ids: Vec<Version> = acks.iter().map(|(_, _, id)| *id).collect();
    // One atomic pipeline: the acks and one XACK of every id. A writer that
    // sees its ack therefore never finds its entry still pending (admission
    // counts pending entries).
    let group = ctx.names.group();
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        let mut pipe = redis::pipe();
        pipe.atomic();
        Ack::add_all(
            &mut pipe,
            client_acks.iter().map(|(c, a)| (c.as_str(), a)),
            |c| ctx.names.acks(c),
        );
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream).arg(&group);
        for id in &ids {
            cmd.arg(id.to_stream_id());
        }
        pipe.add_command(cmd).ignore();
        let mut conn = ctx.conn.clone();
        match pipe.query_async::<()>(&mut conn).await.map_err(Error::from) {
            Ok(()) => return true,
            Err(e) if e.retry_class() == RetryClass::Permanent => break,
            Err(e) => {
                tracing::warn!(error = %e, "acking failed; retrying");
                if !backoff.sleep(&run.abort).await {
                    return false;
                }
            }
        }
    }
    // A permanent error (a client's ack key holds something else): the acks
    // best effort, then the XACK on its own. Acks are at-least-once.
    if !send_client_acks(ctx, run, &client_acks).await {
        return false;
    }
    xack(ctx, run, stream, &ids).await
}

/// Adds client acks. Transient failures are retried; a permanent one (say,
/// a writer chose a client id whose ack key holds something else) is logged
/// and skipped: that writer's `write` then times out, its data is safe.
async fn send_client_acks(ctx: &Ctx, run: &PartitionRun, acks: &[(String, Ack)]) -> bool {
    if acks.is_empty() {
        return true;
    }
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        let mut pipe = redis::pipe();
        Ack::add_all(&mut pipe, acks.iter().map(|(c, a)| (c.as_str(), a)), |c| {
            ctx.names.acks(c)
        });
        let mut conn = ctx.conn.clone();
        match pipe.query_async::<()>(&mut conn).await.map_err(Error::from) {
            Ok(()) => return true,
            Err(e) if e.retry_class() == RetryClass::Permanent => {
                tracing::error!(error = %e, "cannot add client acks; skipping them (check for keys under the ack prefix that are not streams)");
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "adding client acks failed; retrying");
                if !backoff.sleep(&run.abort).await {
                    return false;
                }
            }
        }
    }
}

/// XACKs entries of the partition stream.
async fn xack(ctx: &Ctx, run: &PartitionRun, stream: &str, ids: &[Version]) -> bool {
    let group = ctx.names.group();
    retry_until_abort(run, "xack", || {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream).arg(&group);
        for id in ids {
            cmd.arg(id.to_stream_id());
        }
        let mut conn = ctx.conn.clone();
        async move { cmd.query_async::<()>(&mut conn).await.map_err(Error::from) }
    })
    .await
    .is_some()
}

/// Parks an entry in the dead-letter stream, tells its writer, XACKs it.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    ctx: &Ctx,
    run: &PartitionRun,
    stream: &str,
    id: Version,
    fields: Option<&crate::stream::Fields>,
    reject: &Reject,
    attempts: u32,
    reply: Option<&protocol::ReplyTo>,
) {
    let dlq = ctx.names.dead_letters();
    let parked = retry_until_abort(run, "dead letter", || {
        let mut pipe = redis::pipe();
        DeadLetter {
            reason: reject.reason.as_str(),
            detail: reject.detail.clone(),
            stream,
            id: id.to_stream_id(),
            attempts,
            original: fields,
        }
        .add_to(&mut pipe, &dlq);
        let mut conn = ctx.conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await.map_err(Error::from) }
    })
    .await;
    if parked.is_none() {
        return;
    }
    if let Some(r) = reply {
        let ack = Ack {
            request: r.request.clone(),
            outcome: Outcome::DeadLettered,
            version: id,
            entry: id,
            reason: Some(reject.to_string()),
        };
        if !send_client_acks(ctx, run, &[(r.client.clone(), ack)]).await {
            return;
        }
    }
    xack(ctx, run, stream, &[id]).await;
}
