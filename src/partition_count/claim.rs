//! Recording and checking the count: every process when it starts
//! ([`claim`], [`claim_daemon`]), and each running daemon at each
//! housekeeping pass ([`recheck`]).
//!
//! A running daemon that finds another daemon's count recorded must tell a
//! change of the count from a mistake. A change (`writ partitions --set`)
//! raises the record's epoch: a daemon that started under an earlier epoch
//! stops, and so does one that finds a record `--set` made (its
//! `partitions_since` is 0: the operator's count stands before any
//! daemon's, also when Redis lost the epochs). Otherwise (Redis lost the
//! record, and a daemon configured with another count started meanwhile and
//! recorded its own) the daemon that started first keeps its count (the
//! record's `partitions_since`; a record without one, a hand edit, counts as
//! later), and the other stops at its next check. So one misconfigured
//! daemon cannot stop a running fleet.

use super::{parse, By, CLAIM_LUA, FIELD, SINCE_FIELD};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// A daemon's standing against the record: when it started, and the epoch
/// of the record it started under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Unix ms.
    pub since: u64,
    /// The record's `partitions_epoch` then (absent: 0).
    pub epoch: u64,
}

/// What the claim script found.
struct Found {
    /// The count that stays recorded (as stored), if any.
    now: Option<String>,
    /// A count this call replaced.
    replaced: Option<u32>,
    /// When the daemon that recorded it started.
    since: Option<u64>,
    epoch: u64,
}

/// Runs [`CLAIM_LUA`]. At Redis's `maxmemory` the script is refused; then
/// the record is only read.
async fn look(conn: &mut Conn, config: &Config, by: By, since: Option<u64>) -> Result<Found> {
    let names = &Names::new(&config.namespace);
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let mut inv = SCRIPT
        .get_or_init(|| crate::redis_conn::script(CLAIM_LUA))
        .key(names.meta(0));
    inv.arg(config.partitions).arg(by.as_str());
    if let Some(s) = since {
        inv.arg(s);
    }
    let r: redis::RedisResult<(String, String, String, String)> = inv.invoke_async(conn).await;
    let (now, replaced, since, epoch) = match r {
        Ok(r) => r,
        Err(e) if crate::redis_conn::has_code(&e, "OOM") => {
            let (now, since, epoch): (Option<String>, Option<String>, Option<String>) =
                redis::cmd("HMGET")
                    .arg(names.meta(0))
                    .arg(FIELD)
                    .arg(SINCE_FIELD)
                    .arg(super::EPOCH_FIELD)
                    .query_async(conn)
                    .await?;
            let or_empty = |v: Option<String>| v.unwrap_or_default();
            (
                or_empty(now),
                String::new(),
                or_empty(since),
                or_empty(epoch),
            )
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Found {
        now: Some(now).filter(|n| !n.is_empty()),
        replaced: parse(&replaced),
        since: since.parse().ok(),
        epoch: epoch.parse().unwrap_or(0),
    })
}

/// The refusal of a process configured with `configured` where `recorded`
/// stays recorded.
fn refusal(names: &Names, configured: u32, recorded: u32) -> Error {
    Error::Config(format!(
        "this process is configured with redis.partitions = {configured}, but namespace {:?} \
         records {recorded} partitions ({} field {FIELD}): its keys would go to other partition \
         streams, where they are applied out of order or never. Set redis.partitions = \
         {recorded} (Node: partitions, WRIT_PARTITIONS). To change the namespace's count: let \
         the daemons drain it, stop every daemon and writer, run `writ partitions --set` with a \
         config of the new count and `writ rebuild-cache`, then start everything with it \
         (docs/operations.md)",
        names.ns(),
        names.meta(0),
    ))
}

/// Records `configured` as the namespace's count as [`CLAIM_LUA`] says, and
/// refuses ([`Error::Config`]) a different count that stays recorded.
/// Clients and tools call it when they start.
pub async fn claim(conn: &mut Conn, config: &Config, by: By) -> Result<()> {
    let found = look(conn, config, by, None).await?;
    check(config, &found)
}

/// [`claim`] for a daemon that started at `since` (unix ms); its
/// [`Standing`] for [`recheck`].
pub async fn claim_daemon(conn: &mut Conn, config: &Config, since: u64) -> Result<Standing> {
    let found = look(conn, config, By::Daemon, Some(since)).await?;
    check(config, &found)?;
    copy_past_own(conn, config, &found).await;
    Ok(Standing {
        since,
        epoch: found.epoch,
    })
}

fn check(config: &Config, found: &Found) -> Result<()> {
    let configured = config.partitions;
    if let Some(n) = found
        .now
        .as_deref()
        .and_then(parse)
        .filter(|&n| n != configured)
    {
        return Err(refusal(&Names::new(&config.namespace), configured, n));
    }
    if let Some(old) = found.replaced.filter(|&n| n != configured) {
        tracing::warn!(
            client_count = old,
            partitions = configured,
            "a client recorded another partition count for this namespace before any daemon; this daemon records its own. Clients configured with the other count are refused from now on, and those already running are refused in partitions past this daemon's count; in the others their entries are dead-lettered wrong_partition: restart them with this count"
        );
    }
    Ok(())
}

/// Where this daemon just replaced a larger count that a client recorded,
/// copies its own count into the partitions past it, up to the replaced
/// count: that client may still run, and its writes there would otherwise be
/// accepted into streams no daemon reads. (The daemon's own partitions get
/// their copies from its tenures.)
async fn copy_past_own(conn: &mut Conn, config: &Config, found: &Found) {
    // A client never records more than MAX_PARTITIONS (a hand edit might).
    let Some(old) = found
        .replaced
        .filter(|&n| n > config.partitions)
        .map(|n| n.min(crate::config::MAX_PARTITIONS))
    else {
        return;
    };
    let names = Names::new(&config.namespace);
    let mut holding = Vec::new();
    for p in config.partitions..old {
        super::copies::copy(conn, &names, p, config.partitions).await;
        let len: redis::RedisResult<u64> = redis::cmd("XLEN")
            .arg(names.stream(p))
            .query_async(conn)
            .await;
        if matches!(len, Ok(n) if n > 0) {
            holding.push(p);
        }
    }
    if !holding.is_empty() {
        // Written before this daemon's copies refused them: no daemon on
        // this count reads those streams.
        tracing::warn!(
            partitions = %super::list(&holding),
            "partition streams past this daemon's count hold entries that clients configured with {old} partitions added; no daemon on {} partitions applies them. Stop those clients, and see docs/operations.md (\"To change the count\") for what to do with them",
            config.partitions
        );
    }
}

/// For a running daemon, at each housekeeping pass: records the count again
/// if it is gone (Redis lost its data, a failover lost the write) or only a
/// client recorded another one meanwhile, so that a process connecting later
/// is held to it. Where another daemon's count is recorded, as the module
/// header says: returns the refusal when the count was changed since this
/// daemon started, or when that daemon started first (this daemon must
/// stop); records this daemon's count over it otherwise. Redis errors are
/// left to the next pass.
pub async fn recheck(conn: &mut Conn, config: &Config, me: &Standing) -> Option<Error> {
    match recheck_now(conn, config, me).await {
        Ok(refused) => refused,
        Err(e) => {
            tracing::debug!(error = %e, "cannot check the recorded partition count");
            None
        }
    }
}

/// [`recheck`], with a Redis error returned (the count unknown) instead of
/// left to the next pass: for a caller that must know before it acts.
pub async fn recheck_now(conn: &mut Conn, config: &Config, me: &Standing) -> Result<Option<Error>> {
    let names = &Names::new(&config.namespace);
    let found = look(conn, config, By::Daemon, Some(me.since)).await?;
    let Err(refused) = check(config, &found) else {
        copy_past_own(conn, config, &found).await;
        return Ok(None);
    };
    let theirs_is_later = found.since.is_none_or(|s| s > me.since);
    if found.epoch > me.epoch || !theirs_is_later {
        return Ok(Some(refused));
    }
    // Only over the value looked at: another change meanwhile is seen at
    // the next pass.
    let now = found.now.unwrap_or_default();
    let swapped: redis::RedisResult<i64> = crate::redis_conn::script(
        "if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end \
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], ARGV[4], 'daemon', ARGV[5], ARGV[6]) return 1",
    )
    .key(names.meta(0))
    .arg(FIELD)
    .arg(&now)
    .arg(config.partitions)
    .arg(super::BY_FIELD)
    .arg(SINCE_FIELD)
    .arg(me.since)
    .invoke_async(conn)
    .await;
    match swapped {
        Ok(1) => tracing::warn!(
            recorded = %now,
            partitions = config.partitions,
            "another daemon's partition count was recorded for this namespace without a change of the count (Redis lost the record and a daemon configured with another count started, or a hand edit); this daemon, running since earlier, records its own again. The other daemon stops at its next check: fix its redis.partitions"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            recorded = %now,
            partitions = config.partitions,
            error = %e,
            "another daemon's partition count is recorded for this namespace, and this daemon, running since earlier, cannot record its own again (at maxmemory Redis refuses it): both go on until it can. Stop the daemon configured with the other count, and free Redis memory"
        ),
    }
    Ok(None)
}
