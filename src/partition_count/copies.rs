//! The copies of the namespace's partition count in partitions 1.., where
//! the admission script checks each writer's count (`src/lua/admit.lua`):
//! partition 0 holds the record itself, and a writer only ever touches its
//! key's partition, in that partition's hash slot.
//!
//! Two writers of copies: [`super::change`] (`writ partitions --set`) and
//! each daemon tenure ([`copy`]). Each copy carries the epoch of the change
//! run that wrote it, and partition 0 the epoch of the run that recorded the
//! count (`src/lua/partition_copy.lua`). A daemon writes a copy only while
//! partition 0 records the daemon's own count, and never over a copy whose
//! epoch is above partition 0's: that is a run in progress (or one that
//! stopped midway; running it again finishes it), and a daemon that read the
//! old count just before it must not write the old count back.

use std::ops::Range;

use super::{parse, EPOCH_FIELD, FIELD};
use crate::error::Result;
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// `src/lua/partition_copy.lua`.
pub const COPY_LUA: &str = include_str!("../lua/partition_copy.lua");

fn script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| crate::redis_conn::script(COPY_LUA))
}

/// What partition 0 records: the count (as stored) and its epoch.
pub(super) async fn record(conn: &mut Conn, names: &Names) -> Result<(Option<String>, u64)> {
    let (count, epoch): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(names.meta(0))
        .arg(FIELD)
        .arg(EPOCH_FIELD)
        .query_async(conn)
        .await?;
    Ok((count, epoch.and_then(|e| e.parse().ok()).unwrap_or(0)))
}

/// The highest epoch any copy in `range` carries (0: none).
pub(super) async fn highest_epoch(
    conn: &mut Conn,
    names: &Names,
    range: Range<u32>,
) -> Result<u64> {
    let mut highest = 0;
    for p in range {
        let epoch: Option<String> = redis::cmd("HGET")
            .arg(names.meta(p))
            .arg(EPOCH_FIELD)
            .query_async(conn)
            .await?;
        highest = highest.max(epoch.and_then(|e| e.parse().ok()).unwrap_or(0));
    }
    Ok(highest)
}

/// Writes `count` with `epoch` into the partitions of `range`, each only
/// over a copy of an earlier run. A copy of a later run (another `--set`
/// started meanwhile) refuses the run: its swap would leave the record and
/// that run's copies apart.
pub(super) async fn write(
    conn: &mut Conn,
    names: &Names,
    range: Range<u32>,
    count: u32,
    epoch: u64,
) -> Result<()> {
    for p in range {
        // {1} when written, else {0, the copy, its epoch}.
        let reply: Vec<redis::Value> = script()
            .key(names.meta(p))
            .arg("write")
            .arg(count)
            .arg(epoch)
            .arg(epoch - 1)
            .invoke_async(conn)
            .await?;
        if !matches!(reply.as_slice(), [redis::Value::Int(1)]) {
            return Err(super::change::changed_meanwhile(names));
        }
    }
    Ok(())
}

/// After a run with `epoch` failed: puts partition 0's record (as it is now)
/// back into each copy of `range` the run wrote and no later run overwrote.
pub(super) async fn back(
    conn: &mut Conn,
    names: &Names,
    range: Range<u32>,
    epoch: u64,
) -> Result<()> {
    let (count, recorded_epoch) = record(conn, names).await?;
    let count = count.as_deref().and_then(parse);
    for p in range {
        let _: redis::Value = script()
            .key(names.meta(p))
            .arg("back")
            .arg(epoch)
            .arg(count.map_or(String::new(), |n| n.to_string()))
            .arg(recorded_epoch)
            .invoke_async(conn)
            .await?;
    }
    Ok(())
}

/// [`try_copy`], with a Redis error logged as a warning (the copy is left
/// as it was).
pub async fn copy(conn: &mut Conn, names: &Names, p: u32, count: u32) {
    if let Err(e) = try_copy(conn, names, p, count).await {
        tracing::warn!(
            partition = p,
            error = %e,
            error_class = e.retry_class().as_str(),
            "cannot copy the partition count into this partition's meta hash: writers configured with another count are not refused here and their writes may land in streams no daemon reads. Free Redis memory (or fix the ACL), or run `writ partitions` to see the copies"
        )
    }
}

/// At the start of a daemon's tenure of partition `p`: writes the daemon's
/// `count` as the copy, as the module header says. A copy left by an
/// unfinished run is logged as a warning (writers on the recorded count are
/// refused there until the run is finished); a Redis error (at `maxmemory`)
/// leaves the copy as it was, and is returned.
pub async fn try_copy(conn: &mut Conn, names: &Names, p: u32, count: u32) -> Result<()> {
    if p == 0 {
        return Ok(());
    }
    let r: Result<Option<(String, u64)>> = async {
        let (recorded, epoch) = record(conn, names).await?;
        if recorded.as_deref().and_then(parse) != Some(count) {
            // Not this daemon's count: its recheck stops it.
            return Ok(None);
        }
        // {1} when written, else {0, the copy, its epoch}.
        let reply: Vec<redis::Value> = script()
            .key(names.meta(p))
            .arg("write")
            .arg(count)
            .arg(epoch)
            .arg(epoch)
            .invoke_async(conn)
            .await?;
        Ok(match reply.as_slice() {
            [redis::Value::Int(0), copy, copy_epoch] => Some((
                redis::from_redis_value_ref(copy).unwrap_or_default(),
                redis::from_redis_value_ref(copy_epoch).unwrap_or(0),
            )),
            _ => None,
        })
    }
    .await;
    match r {
        Ok(None) => {}
        Ok(Some((copy, copy_epoch))) if copy.parse::<u32>() != Ok(count) => tracing::warn!(
            partition = p,
            copy = %copy,
            copy_epoch,
            partitions = count,
            "this partition's copy of the partition count is from a `writ partitions --set` that has not finished: writers configured with the recorded count are refused in this partition. Run `writ partitions --set` again with the config of the count you want"
        ),
        Ok(Some(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// For `writ partitions`: the partitions whose copy is another count than
/// the recorded `count` (a run that stopped midway, a hand edit), and those
/// past `count` that a change left and whose copy is gone (a failover lost
/// it: writers on another count are not checked there).
pub async fn disagreeing(
    conn: &mut Conn,
    names: &Names,
    count: u32,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let upto: Option<String> = redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(super::UPTO_FIELD)
        .query_async(conn)
        .await?;
    let upto = count.max(upto.as_deref().and_then(parse).unwrap_or(0));
    let (mut other, mut missing) = (Vec::new(), Vec::new());
    for p in 1..upto {
        let copy: Option<String> = redis::cmd("HGET")
            .arg(names.meta(p))
            .arg(FIELD)
            .query_async(conn)
            .await?;
        match copy.as_deref().filter(|c| !c.is_empty()).map(parse) {
            Some(Some(n)) if n == count => {}
            None if p < count => {} // written by the partition's next tenure
            None => missing.push(p),
            Some(_) => other.push(p),
        }
    }
    Ok((other, missing))
}
