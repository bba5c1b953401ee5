//! The id floor of a partition count change.
//!
//! A write's version is the id its partition's stream gave it, and the ids
//! of one stream only grow, so versions grow per key while the key stays in
//! its stream. A new count moves keys to other streams, whose ids come from
//! their own node's clock (a cluster), or from a clock that stepped back
//! meanwhile: a moved key's next write could get an id below the version
//! MongoDB holds for it, and be acknowledged stale though it is the newest.
//!
//! So before the new count is copied anywhere, `writ partitions --set`
//! records in each partition's meta hash of the new count (field `floor`)
//! the newest id any stream of the namespace had given out, and the
//! admission script gives the first entry after it an id above it
//! (`src/lua/admit.lua`, `xadd`; docs/protocol.md §1).

use crate::error::Result;
use crate::protocol::{Names, Version};
use crate::redis_conn::Conn;

/// A partition's stream's last-generated-id (the newest id it gave out,
/// also when that entry is trimmed or deleted; nil for no stream) and its
/// meta hash's unused floor, in one call. KEYS[1] stream, KEYS[2] meta (one
/// hash slot, so Redis Cluster routes it by its keys).
const LAST_ID_LUA: &str = "local last = false \
     if redis.call('EXISTS', KEYS[1]) == 1 then \
       local s = redis.call('XINFO', 'STREAM', KEYS[1]) \
       for i = 1, #s, 2 do if s[i] == 'last-generated-id' then last = s[i + 1] end end \
     end \
     return {last, redis.call('HGET', KEYS[2], ARGV[1])}";

/// The newest id the streams of partitions `0..upto` gave out, or that an
/// earlier change recorded: a floor not used yet, and the high-water mark in
/// partition 0's meta hash (a stream deleted since, as operations.md allows
/// for the partitions a smaller count left, or lost with a cluster node,
/// no longer says what it gave out).
pub(super) async fn newest_id(conn: &mut Conn, names: &Names, upto: u32) -> Result<Version> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| crate::redis_conn::script(LAST_ID_LUA));
    let high: Option<String> = redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(HIGH_FIELD)
        .query_async(conn)
        .await?;
    let mut top = parsed(high);
    for p in 0..upto {
        let (last, unused): (Option<String>, Option<String>) = script
            .key(names.stream(p))
            .key(names.meta(p))
            .arg(FIELD)
            .invoke_async(conn)
            .await?;
        top = top.max(parsed(last)).max(parsed(unused));
    }
    Ok(top)
}

fn parsed(id: Option<String>) -> Version {
    id.and_then(|s| s.parse::<Version>().ok())
        .unwrap_or_default()
}

/// Says so when `floor` is more than a minute ahead of Redis's clock: a
/// clock that ran ahead, an `XSETID` or a raw `XADD` with an explicit id.
/// The floor is kept all the same (MongoDB may hold versions that high, and
/// a moved key's writes must go above them), but until Redis's clock catches
/// up, the moved keys' ids stay at that millisecond, and whatever reads time
/// from ids (ages, retention) is off by as much. `HDEL <ns>:{p0}:meta
/// floor_high` and the partitions' `floor` fields undo it, at the risk this
/// module exists for.
pub(super) async fn warn_if_ahead(conn: &mut Conn, floor: Version) -> Result<()> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let now = secs * 1000 + micros / 1000;
    if floor.ms > now + 60_000 {
        tracing::warn!(
            floor = %floor.to_stream_id(),
            ahead_secs = (floor.ms - now) / 1000,
            "the newest stream id of the namespace is ahead of Redis's clock; the moved keys' next ids go above it (docs/protocol.md, the id floor)"
        );
    }
    Ok(())
}

/// Records `floor` in the meta hashes of partitions `0..to`, unless one holds
/// a higher floor that no entry used yet, and as partition 0's high-water
/// mark (which only grows).
pub(super) async fn record(conn: &mut Conn, names: &Names, to: u32, floor: Version) -> Result<()> {
    if floor == Version::default() {
        return Ok(()); // no stream gave out an id: nothing to stay above
    }
    let _: () = redis::cmd("HSET")
        .arg(names.meta(0))
        .arg(HIGH_FIELD)
        .arg(floor.to_stream_id())
        .query_async(conn)
        .await?;
    for p in 0..to {
        let meta = names.meta(p);
        let kept: Option<String> = redis::cmd("HGET")
            .arg(&meta)
            .arg(FIELD)
            .query_async(conn)
            .await?;
        if kept
            .and_then(|s| s.parse::<Version>().ok())
            .is_some_and(|k| k >= floor)
        {
            continue;
        }
        let _: () = redis::cmd("HSET")
            .arg(&meta)
            .arg(FIELD)
            .arg(floor.to_stream_id())
            .query_async(conn)
            .await?;
    }
    Ok(())
}

/// The meta hash field of the floor ('' once an entry used it).
pub const FIELD: &str = "floor";

/// Partition 0's meta hash field of the highest floor any change recorded.
pub const HIGH_FIELD: &str = "floor_high";
