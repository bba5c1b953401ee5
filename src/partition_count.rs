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
//! So the count is recorded in partition 0's meta hash (field `partitions`
//! of `<ns>:{p0}:meta`, which writers may read and write already, and
//! `partitions_by`: `daemon` or `client`), and every process checks it when
//! it starts: [`claim`]. The daemons are the authority. The first process
//! to connect records its count; a daemon also replaces a count only a
//! client recorded (a misconfigured client that connected first must not
//! lock the daemons out), and refuses a count another daemon recorded.
//! Clients and tools refuse any other recorded count. Changing a
//! daemon-recorded count is an operator's act on a drained, stopped
//! namespace ([`change`], `writ partitions --set`).
//!
//! A process checks the record when it starts; one that keeps running on
//! the old count after a change is caught by its next admission instead. The
//! count is copied into every other partition's meta hash too (same field,
//! written by each daemon tenure, [`copy`], and by [`change`]), and the
//! admission script refuses a write whose caller's count differs from its
//! partition's copy (`PARTITIONS`), adding nothing. The copies live in each
//! partition's own hash slot, so the check costs one `HGET` per admission
//! call, also on Redis Cluster.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// The field of `<ns>:{p0}:meta` that holds the count.
pub const FIELD: &str = "partitions";

/// The field that says who recorded it: `daemon` or `client`.
pub const BY_FIELD: &str = "partitions_by";

/// The field of each meta hash with the epoch of its count: raised by each
/// [`change`], so that a copy of a later change is never overwritten by a
/// daemon that read an earlier one.
pub const EPOCH_FIELD: &str = "partitions_epoch";

/// The field of `<ns>:{p0}:meta` with how many partitions hold copies: the
/// largest count any [`change`] used, so that a later run writes every copy.
pub const UPTO_FIELD: &str = "partitions_upto";

/// [`change`]'s swap of partition 0's record (`src/lua/partition_change.lua`).
pub const CHANGE_LUA: &str = include_str!("lua/partition_change.lua");

/// Who records a count: daemons replace a count only a client recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// `writ serve` (and `writ partitions --set`).
    Daemon,
    /// A client library or a CLI tool.
    Client,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            By::Daemon => "daemon",
            By::Client => "client",
        }
    }
}

/// Records the count as the module header says (`src/lua/partition_count.lua`;
/// the Node package embeds the same file).
pub const CLAIM_LUA: &str = include_str!("lua/partition_count.lua");

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

/// Records `configured` as the namespace's count as [`CLAIM_LUA`] says, and
/// refuses ([`Error::Config`]) a different count that stays recorded.
/// Daemons, clients and tools call it when they start. At Redis's
/// `maxmemory` the script is refused; then the count is only read and
/// compared.
pub async fn claim(conn: &mut Conn, config: &Config, by: By) -> Result<()> {
    let names = &Names::new(&config.namespace);
    let configured = config.partitions;
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(CLAIM_LUA));
    let claimed: redis::RedisResult<(String, String)> = script
        .key(names.meta(0))
        .arg(configured)
        .arg(by.as_str())
        .invoke_async(conn)
        .await;
    let (now, replaced) = match claimed {
        Ok(r) => r,
        Err(e) if e.code() == Some("OOM") => match recorded(conn, names).await? {
            Some(n) => (n.to_string(), String::new()),
            None => return Ok(()),
        },
        Err(e) => return Err(e.into()),
    };
    if let Some(n) = parse(&now).filter(|&n| n != configured) {
        return Err(Error::Config(format!(
            "this process is configured with redis.partitions = {configured}, but namespace {:?} \
             records {n} partitions ({} field {FIELD}): its keys would go to other partition \
             streams, where they are applied out of order or never. Set redis.partitions = {n} \
             (Node: partitions, WRIT_PARTITIONS). To change the namespace's count: let the \
             daemons drain it, stop every daemon and writer, run `writ partitions --set` with a \
             config of the new count, then start everything with it (docs/operations.md)",
            names.ns(),
            names.meta(0),
        )));
    }
    if let Some(old) = parse(&replaced).filter(|&n| n != configured) {
        tracing::warn!(
            client_count = old,
            partitions = configured,
            "a client recorded another partition count for this namespace before any daemon; this daemon records its own. Clients configured with the other count are refused from now on; any already running write to the wrong streams (their entries are dead-lettered wrong_partition, or wait in streams past this daemon's count): restart them with this count"
        );
    }
    Ok(())
}

/// For a running daemon, at each housekeeping pass: records the count again
/// if it is gone (Redis lost its data, a failover lost the write) or only a
/// client recorded another one meanwhile, so that a process connecting later
/// is held to it. Returns the refusal when another daemon's count is
/// recorded (a hand edit, or a `writ partitions --set` that raced this
/// daemon's start): the daemon must stop. Redis errors are left to the next
/// pass.
pub async fn recheck(conn: &mut Conn, config: &Config) -> Option<Error> {
    match claim(conn, config, By::Daemon).await {
        Ok(()) => None,
        Err(e @ Error::Config(_)) => Some(e),
        Err(e) => {
            tracing::debug!(error = %e, "cannot check the recorded partition count");
            None
        }
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

/// Records the config's `redis.partitions` as the namespace's count, for an
/// operator changing it. Refused while a daemon runs (heard from within
/// `daemon.lease_ttl_ms`), while any partition under the old, the new or an
/// earlier count holds unapplied writes, and if the count changed while it
/// looked. Writers cannot be seen from here; the operator stops them first.
///
/// The change is made so that a writer still on the old count cannot strand
/// a write: the new count is copied into partitions 1.. first (from then on
/// the admission script refuses the old count there), those partitions are
/// looked at again, and partition 0's record is swapped last, in one script
/// that also checks partition 0 is drained ([`CHANGE_LUA`]). If a write got
/// in before its partition's copy, the copies are set back and the change is
/// refused, naming the partitions: nothing changed. Run again, it also
/// writes any copy a failed or interrupted run left out (`Already`).
pub async fn change(conn: &mut Conn, config: &Config) -> Result<Changed> {
    let names = &Names::new(&config.namespace);
    let to = config.partitions;
    let (raw, epoch, upto): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(names.meta(0))
        .arg(FIELD)
        .arg(EPOCH_FIELD)
        .arg(UPTO_FIELD)
        .query_async(conn)
        .await?;
    let before = raw.as_deref().and_then(parse);
    let epoch: u64 = epoch.and_then(|e| e.parse().ok()).unwrap_or(0);
    // Every partition that any count recorded here used.
    let upto = before
        .unwrap_or(0)
        .max(to)
        .max(upto.as_deref().and_then(parse).unwrap_or(0));
    if before == Some(to) {
        record(conn, names, to).await?;
        copy_all(conn, names, 1..upto, Some(to), epoch).await?;
        return Ok(Changed::Already);
    }
    let daemons = crate::ownership::live_members(conn, &names.members(), config.lease_ttl).await?;
    if daemons > 0 {
        return Err(Error::Config(format!(
            "{daemons} writ daemon(s) of namespace {:?} are running: stop every daemon (and every \
             writer) before changing the partition count",
            names.ns()
        )));
    }
    let old = before.map_or("no".to_string(), |n| n.to_string());
    let busy = unapplied_in(conn, names, 0..upto).await?;
    if !busy.is_empty() {
        return Err(Error::Config(format!(
            "namespace {:?} records {old} partitions, and partition(s) {} still hold unapplied \
             writes: with another count they would be applied out of order or never. Start \
             daemons with the recorded count until `writ status` shows 0 unapplied, stop them, \
             then change the count",
            names.ns(),
            list(&busy),
        )));
    }
    let next = epoch + 1;
    copy_all(conn, names, 1..upto, Some(to), next).await?;
    let late = unapplied_in(conn, names, 1..upto).await?;
    let swapped: i64 = if late.is_empty() {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        SCRIPT
            .get_or_init(|| redis::Script::new(CHANGE_LUA))
            .key(names.meta(0))
            .key(names.stream(0))
            .arg(raw.as_deref().unwrap_or(""))
            .arg(to)
            .arg(next)
            .arg(upto)
            .arg(names.group())
            .invoke_async(conn)
            .await?
    } else {
        2
    };
    if swapped == 0 {
        tracing::warn!(from = ?before, to, "the namespace's partition count is changed");
        return Ok(Changed::From(before));
    }
    // Nothing changed: the copies go back to the count that stays.
    copy_all(conn, names, 1..upto, before, next).await?;
    if swapped == 1 {
        return Err(Error::Config(format!(
            "the partition count of namespace {:?} changed while this command looked (a daemon or \
             client started): stop it and run the command again",
            names.ns()
        )));
    }
    let late = if late.is_empty() { vec![0] } else { late };
    Err(Error::Config(format!(
        "partition(s) {} of namespace {:?} received writes while this command ran, from a \
         process still running on {old} partitions: the count stays {old}. Stop every writer, \
         let daemons with the recorded count apply them (`writ status`: 0 unapplied), stop the \
         daemons, then run this command again",
        list(&late),
        names.ns(),
    )))
}

/// The partitions of `range` that hold unapplied writes.
async fn unapplied_in(
    conn: &mut Conn,
    names: &Names,
    range: std::ops::Range<u32>,
) -> Result<Vec<u32>> {
    let mut busy = Vec::new();
    for p in range {
        let (unapplied, ..) = crate::status::backlog(conn, names, p, 1).await?;
        if unapplied > 0 {
            busy.push(p);
        }
    }
    Ok(busy)
}

/// Writes `count` (or, for `None`, no count) with `epoch` as the copy in the
/// meta hash of each partition of `range`.
async fn copy_all(
    conn: &mut Conn,
    names: &Names,
    range: std::ops::Range<u32>,
    count: Option<u32>,
    epoch: u64,
) -> Result<()> {
    for p in range {
        let cmd = match count {
            Some(n) => {
                let mut c = redis::cmd("HSET");
                c.arg(names.meta(p))
                    .arg(FIELD)
                    .arg(n)
                    .arg(EPOCH_FIELD)
                    .arg(epoch);
                c
            }
            None => {
                let mut c = redis::cmd("HDEL");
                c.arg(names.meta(p)).arg(FIELD).arg(EPOCH_FIELD);
                c
            }
        };
        let _: () = cmd.query_async(conn).await?;
    }
    Ok(())
}

/// Copies the daemon's count into partition `p`'s meta hash, where the
/// admission script checks writers' counts against it (the module header).
/// Called at the start of each tenure; partition 0 holds the record itself
/// and is left to [`claim`]. Only while partition 0 records this count, and
/// never over a copy of a later change (its epoch is higher): a daemon that
/// started on the old count just before a change, or that was stalled
/// through one, must not write the old count back. A failure (Redis at
/// `maxmemory`) leaves the copy as it was, and is only logged.
pub async fn copy(conn: &mut Conn, names: &Names, p: u32, count: u32) {
    if p == 0 {
        return;
    }
    let r: redis::RedisResult<i64> = async {
        let (recorded, epoch): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(names.meta(0))
            .arg(FIELD)
            .arg(EPOCH_FIELD)
            .query_async(conn)
            .await?;
        if recorded.as_deref().and_then(parse) != Some(count) {
            return Ok(0);
        }
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        SCRIPT
            .get_or_init(|| {
                redis::Script::new(
                    "if (tonumber(redis.call('HGET', KEYS[1], ARGV[3])) or 0) > tonumber(ARGV[4]) then return 0 end \
                     redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) return 1",
                )
            })
            .key(names.meta(p))
            .arg(FIELD)
            .arg(count)
            .arg(EPOCH_FIELD)
            .arg(epoch.as_deref().unwrap_or("0"))
            .invoke_async(conn)
            .await
    }
    .await;
    match r {
        Ok(1) => {}
        Ok(_) => tracing::debug!(
            partition = p,
            "the partition count's copy is left to a later change"
        ),
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "cannot copy the partition count to the partition's meta hash")
        }
    }
}

/// Records `count` as a daemon's.
async fn record(conn: &mut Conn, names: &Names, count: u32) -> Result<()> {
    let _: () = redis::cmd("HSET")
        .arg(names.meta(0))
        .arg(FIELD)
        .arg(count)
        .arg(BY_FIELD)
        .arg(By::Daemon.as_str())
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
