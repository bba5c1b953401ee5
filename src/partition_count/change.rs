//! `writ partitions --set`: an operator changes the namespace's partition
//! count, with every daemon stopped and the namespace drained.
//!
//! The change must not strand a write of a writer still running on the old
//! count (the procedure says to stop writers first; one may be missed). So
//! a run takes an epoch of its own, copies the new count into partitions
//! 1.. first (from then on the admission script refuses the old count
//! there), looks at those partitions again, and swaps partition 0's record
//! last, in one script that also checks partition 0 is drained
//! ([`CHANGE_LUA`]). If a write got in before its partition's copy, or the
//! record changed meanwhile, the run puts back what partition 0 records into
//! the copies it wrote, and refuses: nothing changed. A run that finds the
//! count already recorded rewrites every copy under a new epoch, which
//! finishes a run that stopped midway. Before any copy, the run records an
//! id floor in the new count's partitions ([`floor`]), so that a moved key's
//! next write is not taken for an older one.

use super::{copies, floor, list, parse, By, EPOCHS_FIELD, FIELD, UPTO_FIELD};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// The swap of partition 0's record (`src/lua/partition_change.lua`).
pub const CHANGE_LUA: &str = include_str!("../lua/partition_change.lua");

/// What [`change`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The count was already recorded (its copies are written again).
    Already,
    /// Recorded, over the count before (`None`: none was recorded).
    From(Option<u32>),
}

/// Records the config's `redis.partitions` as the namespace's count, as the
/// module header says. Refused while a daemon runs (heard from within
/// `daemon.lease_ttl_ms`), while any partition under the old, the new or an
/// earlier count holds unapplied writes, and if the count changed while it
/// looked. Writers cannot be seen from here; the operator stops them first.
pub async fn change(conn: &mut Conn, config: &Config) -> Result<Changed> {
    let names = &Names::new(&config.namespace);
    let to = config.partitions;
    let (raw, upto): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(names.meta(0))
        .arg(FIELD)
        .arg(UPTO_FIELD)
        .query_async(conn)
        .await?;
    let before = raw.as_deref().and_then(parse);
    let old = before.map_or("no".to_string(), |n| n.to_string());
    let same = before == Some(to);
    // Every partition that a count set here used.
    let upto = before
        .unwrap_or(0)
        .max(to)
        .max(upto.as_deref().and_then(parse).unwrap_or(0));
    if !same {
        no_daemons(conn, names, config).await?;
        let busy = unapplied_in(conn, names, 0..upto).await?;
        if !busy.is_empty() {
            return Err(Error::Refused(format!(
                "namespace {:?} records {old} partitions, and partition(s) {} still hold \
                 unapplied writes: with another count they would be applied out of order or \
                 never. Start daemons with the recorded count until `writ status` shows 0 \
                 unapplied, stop them, then change the count",
                names.ns(),
                list(&busy),
            )));
        }
    }
    // Before the new count is copied anywhere (writers on it are refused
    // until then): ids above every version so far in the streams it uses.
    let top = floor::newest_id(conn, names, upto).await?;
    floor::warn_if_ahead(conn, top).await?;
    floor::record(conn, names, to, top).await?;
    // Past every epoch a copy carries: partition 0's counter can be behind
    // them (its hash slot's node lost its data, on a cluster), and a run
    // under an epoch some copy already has would skip that copy.
    let floor = copies::highest_epoch(conn, names, 1..upto).await?;
    // HINCRBY, as a script of the commands the documented ACL users have.
    let epoch: u64 = crate::redis_conn::script(
        "local e = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0, \
         tonumber(ARGV[2])) + 1 \
         redis.call('HSET', KEYS[1], ARGV[1], e) return e",
    )
    .key(names.meta(0))
    .arg(EPOCHS_FIELD)
    .arg(floor)
    .invoke_async(conn)
    .await?;
    if let Err(e) = copies::write(conn, names, 1..upto, to, epoch).await {
        copies::back(conn, names, 1..upto, epoch).await?;
        return Err(e);
    }
    let late = if same {
        Vec::new()
    } else {
        unapplied_in(conn, names, 1..upto).await?
    };
    let outcome = if !late.is_empty() {
        Err(stayed(names, &late, &old))
    } else if let Err(e) = if same {
        Ok(())
    } else {
        no_daemons(conn, names, config).await
    } {
        Err(e)
    } else {
        match swap(conn, names, raw.as_deref(), to, epoch, upto, !same).await? {
            0 => Ok(()),
            1 => Err(changed_meanwhile(names)),
            _ => Err(stayed(names, &[0], &old)),
        }
    };
    match outcome {
        Ok(()) if same => Ok(Changed::Already),
        Ok(()) => {
            tracing::warn!(from = ?before, to, "the namespace's partition count is changed");
            Ok(Changed::From(before))
        }
        Err(e) => {
            copies::back(conn, names, 1..upto, epoch).await?;
            Err(e)
        }
    }
}

/// The refusal when the record changed, or another run started, while this
/// one ran.
pub(super) fn changed_meanwhile(names: &Names) -> Error {
    Error::Refused(format!(
        "the partition count of namespace {:?} changed while this command ran (a daemon, \
         a client or another `writ partitions --set` started): stop it and run the \
         command again",
        names.ns()
    ))
}

/// Runs [`CHANGE_LUA`]: 0 recorded, 1 the record is not `read` any more (or a
/// later run took an epoch), 2
/// partition 0 holds unapplied writes (checked only when `drained`).
async fn swap(
    conn: &mut Conn,
    names: &Names,
    read: Option<&str>,
    to: u32,
    epoch: u64,
    upto: u32,
    drained: bool,
) -> Result<i64> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    Ok(SCRIPT
        .get_or_init(|| crate::redis_conn::script(CHANGE_LUA))
        .key(names.meta(0))
        .key(names.stream(0))
        .arg(read.unwrap_or(""))
        .arg(to)
        .arg(epoch)
        .arg(upto)
        .arg(names.group())
        .arg(if drained { "1" } else { "0" })
        .arg(By::Daemon.as_str())
        .invoke_async(conn)
        .await?)
}

/// Refuses while a daemon of the namespace is heard from.
async fn no_daemons(conn: &mut Conn, names: &Names, config: &Config) -> Result<()> {
    let daemons = crate::ownership::live_members(conn, &names.members(), config.lease_ttl).await?;
    if daemons > 0 {
        return Err(Error::Refused(format!(
            "{daemons} writ daemon(s) of namespace {:?} are running: stop every daemon (and every \
             writer) before changing the partition count",
            names.ns()
        )));
    }
    Ok(())
}

/// The refusal when writes arrived in `late` while the run looked.
fn stayed(names: &Names, late: &[u32], old: &str) -> Error {
    Error::Refused(format!(
        "partition(s) {} of namespace {:?} received writes while this command ran, from a \
         process still running on {old} partitions: the count stays {old}. Stop every writer, \
         let daemons with the recorded count apply them (`writ status`: 0 unapplied), stop the \
         daemons, then run this command again",
        list(late),
        names.ns(),
    ))
}

/// The partitions of `range` that hold unapplied writes.
async fn unapplied_in(
    conn: &mut Conn,
    names: &Names,
    range: std::ops::Range<u32>,
) -> Result<Vec<u32>> {
    let mut busy = Vec::new();
    for p in range {
        // Bound 1: whether anything is unapplied, reading at most one entry.
        let unapplied = crate::status::backlog(conn, names, p, 1).await?.unapplied;
        if unapplied > 0 {
            busy.push(p);
        }
    }
    Ok(busy)
}
