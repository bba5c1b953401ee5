//! The namespace's partition count, recorded in Redis, so that a daemon, a
//! client or a tool configured with another count is refused instead of
//! quietly breaking the namespace.
//!
//! A key's partition is its hash modulo `redis.partitions`
//! (docs/protocol.md §1). A writer with more partitions than the daemons
//! appends to streams no daemon reads: its writes are accepted and never
//! applied (until backpressure refuses them). A writer with fewer puts keys
//! in streams whose daemon dead-letters them (`wrong_partition`). Writers
//! with different counts split one key's writes between two streams.
//!
//! So the first process to connect, daemon or client, records its count in
//! partition 0's meta hash (field `partitions` of `<ns>:{p0}:meta`, which
//! writers may read and write already), and every process after it must
//! have the same count: [`claim`]. Changing the count is an operator's act
//! on a drained, stopped namespace ([`change`], `writ partitions --set`).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// The field of `<ns>:{p0}:meta` that holds the count.
pub const FIELD: &str = "partitions";

/// Records `ARGV[2]` in field `ARGV[1]` of `KEYS[1]` unless a value is
/// there; returns the value there afterwards. The Node package runs the
/// same script.
pub const CLAIM_LUA: &str = "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
if v then return v end \
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
return ARGV[2]";

/// The count Redis records for the namespace of `names`, if any (a value
/// that is not a count reads as none).
pub async fn recorded(conn: &mut Conn, names: &Names) -> Result<Option<u32>> {
    let v: Option<String> = redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(FIELD)
        .query_async(conn)
        .await?;
    Ok(v.as_deref().and_then(parse))
}

/// Records `configured` as the namespace's count if none is recorded, and
/// refuses ([`Error::Config`]) a different recorded count. Daemons, clients
/// and tools call it when they start.
pub async fn claim(conn: &mut Conn, names: &Names, configured: u32) -> Result<()> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(CLAIM_LUA));
    let now: String = script
        .key(names.meta(0))
        .arg(FIELD)
        .arg(configured)
        .invoke_async(conn)
        .await?;
    match parse(&now) {
        Some(n) if n != configured => Err(Error::Config(format!(
            "this process is configured with redis.partitions = {configured}, but namespace {:?} \
             records {n} partitions ({} field {FIELD}, set by the first daemon or client that \
             ran): its keys would go to other partition streams, where they are applied out of \
             order or never. Set redis.partitions = {n} (Node: partitions, WRIT_PARTITIONS). To \
             change the namespace's count: let the daemons drain it, stop every daemon and \
             writer, run `writ partitions --set` with a config of the new count, then start \
             everything with it (docs/operations.md)",
            names.ns(),
            names.meta(0),
        ))),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(recorded = %now, partitions = configured, "the recorded partition count is not a number; recording this process's");
            record(conn, names, configured).await
        }
    }
}

/// For a running daemon, at each housekeeping pass: records the count again
/// if it is gone (Redis lost its data, a failover lost the write), so that a
/// process connecting later is still held to it. Another recorded count (a
/// process recorded its own while the field was gone) is logged as an error
/// once per streak (`mismatched` carries the streak); the daemon runs on, as
/// it did since it started.
pub async fn recheck(conn: &mut Conn, names: &Names, configured: u32, mismatched: &mut bool) {
    match claim(conn, names, configured).await {
        Ok(()) => *mismatched = false,
        Err(e @ Error::Config(_)) => {
            if !std::mem::replace(mismatched, true) {
                tracing::error!(error = %e, "the namespace now records another partition count than this daemon's");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot check the recorded partition count"),
    }
}

/// What [`change`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The count was already recorded.
    Already,
    /// Recorded, over the count before (`None`: none was recorded).
    From(Option<u32>),
}

/// Records `to` as the namespace's count, for an operator changing it:
/// refused while a daemon runs (heard from within `lease_ttl`) or while the
/// recorded count's partitions hold unapplied writes. Writers cannot be
/// seen from here; the operator stops them first.
pub async fn change(
    conn: &mut Conn,
    names: &Names,
    to: u32,
    lease_ttl: Duration,
) -> Result<Changed> {
    let before = recorded(conn, names).await?;
    if before == Some(to) {
        return Ok(Changed::Already);
    }
    let daemons = crate::ownership::live_members(conn, &names.members(), lease_ttl).await?;
    if daemons > 0 {
        return Err(Error::Config(format!(
            "{daemons} writ daemon(s) of namespace {:?} are running: stop every daemon (and every \
             writer) before changing the partition count",
            names.ns()
        )));
    }
    let mut busy = Vec::new();
    for p in 0..before.unwrap_or(0) {
        let (unapplied, ..) = crate::status::backlog(conn, names, p, 1).await?;
        if unapplied > 0 {
            busy.push(p);
        }
    }
    if let (Some(old), false) = (before, busy.is_empty()) {
        return Err(Error::Config(format!(
            "namespace {:?} records {old} partitions, and partition(s) {} still hold unapplied \
             writes: with another count they would be applied out of order or never. Start \
             daemons with {old} partitions until `writ status` shows 0 unapplied, stop them, \
             then change the count",
            names.ns(),
            list(&busy),
        )));
    }
    record(conn, names, to).await?;
    tracing::warn!(from = ?before, to, "the namespace's partition count is changed");
    Ok(Changed::From(before))
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

fn parse(v: &str) -> Option<u32> {
    v.parse().ok().filter(|&n| n > 0)
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
    use super::{list, parse};

    #[test]
    fn lists_at_most_ten_partitions() {
        assert_eq!(list(&[3]), "3");
        assert_eq!(list(&[0, 3, 5]), "0, 3, 5");
        let many: Vec<u32> = (0..13).collect();
        assert_eq!(list(&many), "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 3 more");
    }

    #[test]
    fn only_a_positive_count_is_a_count() {
        assert_eq!(parse("8"), Some(8));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("eight"), None);
    }
}
