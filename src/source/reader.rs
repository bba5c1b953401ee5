//! The partition reader: claims pending entries left by earlier consumers,
//! then reads new ones, never holding more than the in-flight bound.
//!
//! Every group read and claim is fenced ([`crate::source`]). Waiting for new
//! entries uses a plain `XREAD BLOCK`, which delivers nothing.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::{FencedReader, Item};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::ownership::PartitionRun;
use crate::protocol::Names;
use crate::stream::Entry;

/// Reads partition `p` for one tenure into `tx`, holding a permit of
/// `permits` per entry, until `run.stop_reading` (or a fence refusal).
pub(crate) async fn run(
    p: u32,
    config: Arc<Config>,
    names: Names,
    run: Arc<PartitionRun>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Vec<Item>>,
) {
    let stream = names.stream(p);
    let group = names.group();
    let reader = FencedReader::new(&names, p, &config.consumer_name, run.lease.token);
    let mut conn = match crate::redis_conn::connect(&config, config.block).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "reader cannot connect to redis");
            return;
        }
    };
    let mut backoff = Backoff::new(config.backoff_cap);
    // First, everything pending in the group (earlier runs, crashed daemons),
    // in id order, before any new entry: that keeps per-key order.
    let mut cursor = Some("0-0".to_string());
    loop {
        let Some(first) = acquire(&permits, &run).await else {
            return;
        };
        if !run.lease.valid() {
            run.abort.cancel();
            return;
        }
        let count = config.batch_size.min(permits.available_permits() + 1);
        let res = match &cursor {
            Some(from) => reader.claim(&mut conn, from, count).await.map(|c| {
                if !c.deleted.is_empty() {
                    // writ trims only below the committed watermark, so only an
                    // outside XDEL/XTRIM can do this. Say so loudly.
                    tracing::error!(partition = p, ids = ?c.deleted, "pending entries were deleted from the stream by someone else before they were applied; they cannot be applied (check for XDEL/XTRIM outside writ)");
                }
                if !c.entries.is_empty() {
                    tracing::info!(partition = p, entries = c.entries.len(), "re-applying pending entries");
                }
                cursor = (c.next != "0-0").then_some(c.next);
                (c.entries, None)
            }),
            None => reader.read(&mut conn, count).await.map(|r| (r.entries, Some(r.last))),
        };
        match res {
            Ok((entries, last)) => {
                backoff.reset();
                if !entries.is_empty() {
                    if !send(entries, first, &permits, &tx).await {
                        return;
                    }
                    continue;
                }
                drop(first);
                let Some(last) = last else { continue };
                // Nothing new: wait for an entry after `last` without taking it.
                // A hand-over or shutdown does not wait out the block.
                let after = if last.is_empty() { "$" } else { last.as_str() };
                let xread = crate::stream::cmd::xread_blocking(&stream, after, 1, config.block);
                let wait: redis::RedisResult<redis::Value> = tokio::select! {
                    w = xread.query_async(&mut conn) => w,
                    _ = run.stop_reading.cancelled() => return,
                };
                if let Err(e) = wait {
                    tracing::warn!(partition = p, error = %e, "waiting for new entries failed; retrying");
                    if !backoff.sleep(&run.stop_reading).await {
                        return;
                    }
                }
            }
            Err(Error::Fenced { .. }) => {
                run.abort.cancel();
                return;
            }
            Err(e) => {
                drop(first);
                if is_nogroup(&e) {
                    super::ensure_group(&mut conn, &stream, &group).await.ok();
                    continue;
                }
                tracing::warn!(partition = p, error = %e, "reading the partition stream failed; retrying");
                if !backoff.sleep(&run.stop_reading).await {
                    return;
                }
            }
        }
    }
}

fn is_nogroup(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if r.code() == Some("NOGROUP"))
}

async fn acquire(
    permits: &Arc<Semaphore>,
    run: &PartitionRun,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if run.stop_reading.is_cancelled() {
        return None;
    }
    tokio::select! {
        p = permits.clone().acquire_owned() => p.ok(),
        _ = run.stop_reading.cancelled() => None,
    }
}

/// Attaches a permit to each entry (the first one already held) and sends.
async fn send(
    entries: Vec<Entry>,
    first: tokio::sync::OwnedSemaphorePermit,
    permits: &Arc<Semaphore>,
    tx: &mpsc::Sender<Vec<Item>>,
) -> bool {
    let mut items = Vec::with_capacity(entries.len());
    let mut first = Some(first);
    for entry in entries {
        let permit = match first.take() {
            Some(p) => p,
            // Only this task acquires, and it asked for no more than were free.
            None => match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closes"),
            },
        };
        items.push(Item { entry, permit });
    }
    tx.send(items).await.is_ok()
}
