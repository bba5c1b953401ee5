//! The partition reader: claims pending entries left by earlier consumers,
//! then reads new ones, never holding more than the in-flight bound.
//!
//! Every group read is **fenced**: a script delivers entries to this consumer
//! only while the partition's fencing token is still ours. A daemon that was
//! paused past its lease therefore cannot pull entries into its own pending
//! list after the new owner claimed the old ones. Waiting for new entries uses
//! a plain `XREAD BLOCK`, which delivers nothing.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::{Ctx, Item, PartitionRun};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::stream::{parse_autoclaim, parse_entries, Entry};

/// `KEYS`: stream, fence, partition meta. `ARGV`: token, group, consumer,
/// count, mode, cursor. Mode `claim`: XAUTOCLAIM from `cursor`; mode `read`:
/// XREADGROUP `>`, returning `{entries, last id}`.
///
/// A read also keeps the meta hash's `at`/`read` pair (the group's
/// last-delivered-id and the stream's entries-added count as of that entry),
/// from which `src/lua/admit.lua` counts the undelivered backlog in O(1).
const FENCED_READ: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('FENCED the partition lease moved to another daemon')
end
if ARGV[5] == 'claim' then
  return redis.call('XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], 0, ARGV[6], 'COUNT', ARGV[4])
end
local before = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[2] then before = f['last-delivered-id'] end
end
local meta = redis.call('HMGET', KEYS[3], 'at', 'read')
local function added()
  local s = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #s, 2 do if s[i] == 'entries-added' then return s[i + 1] end end
  return 0
end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[1], '>')
if r then
  local entries = r[1][2]
  local at = entries[#entries][1]
  if meta[1] == before and meta[2] then
    redis.call('HSET', KEYS[3], 'at', at, 'read', tonumber(meta[2]) + #entries)
  else
    local after = redis.call('XRANGE', KEYS[1], '(' .. at, '+')
    redis.call('HSET', KEYS[3], 'at', at, 'read', added() - #after)
  end
  return {entries, ''}
end
if meta[1] ~= before then
  redis.call('HSET', KEYS[3], 'at', before, 'read', added())
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then return {{}, last[1][1]} end
return {{}, '0-0'}
"#;

pub(super) async fn run(
    p: u32,
    ctx: Arc<Ctx>,
    run: Arc<PartitionRun>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Vec<Item>>,
) {
    let stream = ctx.names.stream(p);
    let fence = crate::ownership::fence_key(&ctx.config.namespace, p);
    let meta = ctx.names.meta(p);
    let group = ctx.names.group();
    let script = redis::Script::new(FENCED_READ);
    let mut conn = match crate::redis_conn::connect(&ctx.config, ctx.config.block).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(partition = p, error = %e, "reader cannot connect to redis");
            return;
        }
    };
    let fenced = |mode: &'static str, count: usize, cursor: &str| {
        let mut call = script.key(&stream);
        call.key(&fence)
            .key(&meta)
            .arg(run.lease.token)
            .arg(&group)
            .arg(&ctx.config.consumer_name)
            .arg(count)
            .arg(mode)
            .arg(cursor);
        call
    };
    let mut backoff = Backoff::new(ctx.config.backoff_cap);
    // First, everything pending in the group (earlier runs, crashed daemons),
    // in id order, before any new entry: that keeps per-key order.
    let mut cursor = "0-0".to_string();
    let mut claiming = true;
    loop {
        let Some(first) = acquire(&permits, &run).await else {
            return;
        };
        if !run.lease.valid() {
            run.abort.cancel();
            return;
        }
        let count = ctx.config.batch_size.min(permits.available_permits() + 1);
        let mode = if claiming { "claim" } else { "read" };
        let res: Result<redis::Value> = fenced(mode, count, &cursor)
            .invoke_async(&mut conn)
            .await
            .map_err(Into::into);
        match res {
            Ok(v) if claiming => {
                backoff.reset();
                let (next, entries, deleted) = parse_autoclaim(&v);
                if !deleted.is_empty() {
                    // writ trims only below the committed watermark, so only an
                    // outside XDEL/XTRIM can do this. Say so loudly.
                    tracing::error!(partition = p, ids = ?deleted, "pending entries were deleted from the stream by someone else before they were applied; they cannot be applied (check for XDEL/XTRIM outside writ)");
                }
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
                    claiming = false;
                } else {
                    cursor = next;
                }
            }
            Ok(v) => {
                backoff.reset();
                let (entries, last) = match &v {
                    redis::Value::Array(parts) if parts.len() == 2 => {
                        let last: String =
                            redis::from_redis_value(parts[1].clone()).unwrap_or_default();
                        (parse_entries(&parts[0]), last)
                    }
                    _ => (Vec::new(), String::new()),
                };
                if !entries.is_empty() {
                    if !send(entries, first, &permits, &tx).await {
                        return;
                    }
                    continue;
                }
                drop(first);
                // Nothing new: wait for an entry after `last` without taking it.
                let wait: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(ctx.config.block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(if last.is_empty() { "$" } else { last.as_str() })
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = wait {
                    tracing::warn!(partition = p, error = %e, "waiting for new entries failed; retrying");
                    if !backoff.sleep(&run.stop_reading).await {
                        return;
                    }
                }
            }
            Err(e) => {
                drop(first);
                if is_fenced(&e) {
                    tracing::warn!(
                        partition = p,
                        "fencing token is stale: the lease moved; stopping this partition"
                    );
                    run.abort.cancel();
                    return;
                }
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

fn is_fenced(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if r.code() == Some("FENCED"))
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
        items.push(Item {
            entry,
            _permit: permit,
        });
    }
    tx.send(items).await.is_ok()
}
