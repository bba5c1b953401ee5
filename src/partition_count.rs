//! The namespace's partition count, recorded in Redis, so that a daemon or a
//! client configured with another count is refused instead of quietly
//! breaking the namespace.
//!
//! A key's partition is its hash modulo `redis.partitions`
//! (docs/protocol.md §1). A writer with more partitions than the daemons
//! appends to streams no daemon reads: its writes are accepted and never
//! applied (until backpressure refuses them). Writers with different counts
//! put one key's writes in two streams, which are applied independently, so
//! per-key order no longer holds. Nothing in the streams shows either.
//!
//! So the daemon records its count in partition 0's meta hash (field
//! `partitions` of `<ns>:{p0}:meta`, which writers may read already) when
//! none is recorded, and refuses to start with another count while the
//! recorded count's partitions still hold unapplied writes. On a drained
//! namespace it records its own count: that is how the count is changed
//! (docs/operations.md, "Processes and ownership"). Clients read the field
//! once when they connect and refuse a different count; with none recorded
//! (no daemon has run yet) they go on.

use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// The field of `<ns>:{p0}:meta` that holds the count.
pub const FIELD: &str = "partitions";

/// The count Redis records for the namespace of `names`, if any (a value
/// that is not a count reads as none).
pub async fn recorded(conn: &mut Conn, names: &Names) -> Result<Option<u32>> {
    let v: Option<String> = redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(FIELD)
        .query_async(conn)
        .await?;
    Ok(v.and_then(|v| v.parse().ok()).filter(|&n| n > 0))
}

/// For a client: `Err(Error::Config)` when Redis records a count other than
/// `configured`.
pub async fn check_client(conn: &mut Conn, names: &Names, configured: u32) -> Result<()> {
    match recorded(conn, names).await? {
        Some(n) if n != configured => Err(Error::Config(format!(
            "this client is configured with redis.partitions = {configured}, but the daemons of \
             namespace {:?} run with {n} (recorded in Redis, {} field {FIELD}): keys would go to \
             the wrong partition streams, where they are never applied or applied out of order. \
             Set partitions = {n} in this client's config",
            names.ns(),
            names.meta(0),
        ))),
        _ => Ok(()),
    }
}

/// For the daemon at start: records `configured` if no count is recorded;
/// with another one recorded, records `configured` if that count's
/// partitions are drained, and refuses ([`Error::Config`]) if not.
pub async fn claim(conn: &mut Conn, names: &Names, configured: u32) -> Result<()> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    // Sets the field only if absent, in one step: two daemons starting at
    // once with different counts cannot both record theirs.
    let script = SCRIPT.get_or_init(|| {
        redis::Script::new(
            "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
             if v then return v end \
             redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
             return ARGV[2]",
        )
    });
    let now: String = script
        .key(names.meta(0))
        .arg(FIELD)
        .arg(configured)
        .invoke_async(conn)
        .await?;
    let before = match now.parse::<u32>() {
        Ok(n) if n == configured => return Ok(()),
        Ok(n) if n > 0 => n,
        _ => {
            tracing::warn!(recorded = %now, partitions = configured, "the recorded partition count is not a number; recording this daemon's");
            return record(conn, names, configured).await;
        }
    };
    let mut busy = Vec::new();
    for p in 0..before {
        let (unapplied, ..) = crate::status::backlog(conn, names, p, 1).await?;
        if unapplied > 0 {
            busy.push(p);
        }
    }
    if busy.is_empty() {
        tracing::warn!(
            from = before,
            to = configured,
            "the namespace's partition count changes: the daemons before ran with another redis.partitions, and every one of their partitions is drained. Writers and daemons still on the old count must be stopped (docs/operations.md)"
        );
        return record(conn, names, configured).await;
    }
    Err(Error::Config(format!(
        "this daemon is configured with redis.partitions = {configured}, but namespace {:?} ran with \
         {before} partitions (recorded in Redis, {} field {FIELD}), and partition(s) {} of those \
         still hold unapplied writes. Keys map to partitions by the count, so with another count \
         those writes would be applied out of order or never. Set redis.partitions = {before} \
         again; to change the count, let daemons with {before} drain them (writ status shows 0 \
         unapplied), stop every writer, then start daemons and writers with the new count",
        names.ns(),
        names.meta(0),
        list(&busy),
    )))
}

async fn record(conn: &mut Conn, names: &Names, configured: u32) -> Result<()> {
    let _: () = redis::cmd("HSET")
        .arg(names.meta(0))
        .arg(FIELD)
        .arg(configured)
        .query_async(conn)
        .await?;
    Ok(())
}

/// `0, 3, 5`, or the first ten and how many more.
fn list(ps: &[u32]) -> String {
    let shown: Vec<String> = ps.iter().take(10).map(u32::to_string).collect();
    match ps.len() {
        n if n > 10 => format!("{} and {} more", shown.join(", "), n - 10),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::list;

    #[test]
    fn lists_at_most_ten_partitions() {
        assert_eq!(list(&[3]), "3");
        assert_eq!(list(&[0, 3, 5]), "0, 3, 5");
        let many: Vec<u32> = (0..13).collect();
        assert_eq!(list(&many), "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 3 more");
    }
}
