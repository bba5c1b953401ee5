//! The partition reader: claims pending entries left by earlier consumers,
//! then reads new ones with `XREADGROUP ... BLOCK`, never holding more than the
//! in-flight bound.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::{Ctx, Item, PartitionRun};
use crate::backoff::Backoff;
use crate::error::Result;
use crate::stream::{parse_autoclaim, parse_read_reply, Entry};

pub(super) async fn run(
    p: u32,
    ctx: Arc<Ctx>,
    run: Arc<PartitionRun>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Vec<Item>>,
) {
    let stream = ctx.names.stream(p);
    let group = ctx.names.group();
    let mut conn = match crate::redis_conn::connect(&ctx.config.redis_url, ctx.config.block).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "reader cannot connect to redis");
            return;
        }
    };
    let mut backoff = Backoff::new(ctx.config.backoff_cap);
    // First, everything pending in the group (earlier runs, crashed daemons),
    // in id order, before any new entry: that keeps per-key order.
    let mut cursor = "0-0".to_string();
    loop {
        if run.stop_reading.is_cancelled() {
            return;
        }
        let Some(first) = acquire(&permits, &run).await else {
            return;
        };
        let count = ctx.config.batch_size.min(permits.available_permits() + 1);
        let res: Result<redis::Value> = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(&group)
            .arg(&ctx.config.consumer_name)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(Into::into);
        match res {
            Ok(v) => {
                backoff.reset();
                let (next, entries) = parse_autoclaim(&v);
                if !entries.is_empty() {
                    tracing::info!(
                        partition = p,
                        entries = entries.len(),
                        "re-applying pending entries"
                    );
                    if !send(entries, first, &permits, &tx).await {
                        return;
                    }
                }
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
            Err(e) => {
                drop(first);
                tracing::warn!(partition = p, error = %e, "claiming pending entries failed; retrying");
                if !backoff.sleep(&run.stop_reading).await {
                    return;
                }
            }
        }
    }
    loop {
        let Some(first) = acquire(&permits, &run).await else {
            return;
        };
        let count = ctx.config.batch_size.min(permits.available_permits() + 1);
        let res: Result<redis::Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg(&ctx.config.consumer_name)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(ctx.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .map_err(Into::into);
        match res {
            Ok(v) => {
                backoff.reset();
                let entries = parse_read_reply(&v);
                if !entries.is_empty() && !send(entries, first, &permits, &tx).await {
                    return;
                }
            }
            Err(e) => {
                drop(first);
                if is_nogroup(&e) {
                    crate::serve::ensure_group(&mut conn, &stream, &group)
                        .await
                        .ok();
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

fn is_nogroup(e: &crate::error::Error) -> bool {
    matches!(e, crate::error::Error::Redis(r) if r.code() == Some("NOGROUP"))
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
        items.push(Item {
            entry,
            _permit: permit,
        });
    }
    tx.send(items).await.is_ok()
}
