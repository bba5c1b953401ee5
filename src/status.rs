//! Partition status: owner, unapplied entries (undelivered + pending), the age
//! of the oldest unapplied entry, the committed watermark and dead-letter
//! depth. Used by `writ status`, the daemon's metrics and stream retention.
//!
//! The unapplied count is O(1) while the partition's meta hash agrees with
//! its group (docs/protocol.md §2a). When it does not (an `XGROUP SETID` by
//! hand, the meta hash lost), the count reads at most [`COUNT_BOUND`]
//! undelivered entries and says so ([`Backlog::exact`],
//! [`PartitionStatus::unapplied_at_least`]): a lower bound, never a walk of
//! the whole backlog inside a script (1M entries held Redis for 6.4 s). The
//! owning daemon's housekeeping then counts the rest in short steps and
//! mends the meta hash ([`crate::heal`]).

use crate::redis_conn::Conn;
use redis::Value;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::protocol::{Names, Version};
use crate::stream::{cmd, parse_entries};

/// One partition's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: u32,
    /// Consumer name holding the lease, if any.
    pub owner: Option<String>,
    /// Entries in the stream (retained).
    pub length: u64,
    /// Entries not yet delivered to the group.
    pub undelivered: u64,
    /// Entries delivered but not yet acked.
    pub pending: u64,
    /// `undelivered + pending`.
    pub unapplied: u64,
    /// `unapplied` (and `undelivered`) is a lower bound: the partition's
    /// meta hash disagrees with its group, and the count stopped after
    /// [`COUNT_BOUND`] undelivered entries. The owning daemon makes the count
    /// exact again within a pass or a few ([`crate::heal`]).
    pub unapplied_at_least: bool,
    /// Age in seconds of the oldest unapplied entry (0 when none).
    pub oldest_unapplied_age_seconds: f64,
    /// Id of the oldest unapplied entry.
    pub oldest_unapplied: Option<String>,
    /// Every entry below this id is committed (the next entry to apply, or the
    /// last id + 1 when all are).
    pub watermark: Option<String>,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// Partitions left out: one of their keys (the stream, its meta hash)
    /// holds a value writ did not write, so their backlog cannot be read.
    pub left_out: Vec<u32>,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// The dead-letter stream's key holds another program's value: its
    /// count is unknown (`dead_letters` says 0).
    pub dead_letters_unreadable: bool,
    /// A daemon's pass only: partitions it could not read this time (a
    /// node down), with the first error; `writ status` fails instead.
    #[serde(skip)]
    pub skipped: Vec<u32>,
    /// Why the first of `skipped` could not be read.
    #[serde(skip)]
    pub skipped_error: Option<String>,
}

fn as_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The most undelivered entries one count reads when the partition's meta
/// hash does not give the count in O(1) (and about 4 MiB of their values at
/// most: `src/lua/admit.lua`).
pub const COUNT_BOUND: u64 = 1024;

/// A partition's backlog (docs/protocol.md §2a).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// `pending + undelivered`.
    pub unapplied: u64,
    /// Entries delivered to the group and not acked.
    pub pending: u64,
    /// Entries after the group's last-delivered-id.
    pub undelivered: u64,
    /// The group's last-delivered-id (empty: no stream or no group).
    pub last_delivered: String,
    /// `false`: the count stopped at its bound, and the backlog is at least
    /// this.
    pub exact: bool,
}

/// A partition's backlog, by the script writers' admission uses (its status
/// form), counting at most `bound` undelivered entries when the meta hash
/// does not give the count in O(1) (0, or more than [`COUNT_BOUND`]:
/// [`COUNT_BOUND`]). Exact whenever the meta hash agrees with the group.
pub async fn backlog(conn: &mut Conn, names: &Names, p: u32, bound: u64) -> Result<Backlog> {
    // One `Script` for the process: `Script::new` hashes the source (SHA-1),
    // which was 1 % of an idle daemon's CPU when done per call.
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script =
        SCRIPT.get_or_init(|| crate::redis_conn::script(crate::client::admit::XADD_BOUNDED));
    let (unapplied, pending, undelivered, last_delivered, exact): (u64, u64, u64, String, u8) =
        script
            .key(names.stream(p))
            .key(names.meta(p))
            .arg(names.group())
            .arg(bound.min(COUNT_BOUND))
            .invoke_async(conn)
            .await?;
    Ok(Backlog {
        unapplied,
        pending,
        undelivered,
        last_delivered,
        exact: exact == 1,
    })
}

/// The oldest entry of partition `p` that is neither applied nor parked
/// (`None`: there is none), for a tool about to apply one of the
/// partition's writes out of turn (`writ dlq retry`): a write of the same
/// key still waiting below it would then meet the sequence guard and be
/// skipped as stale. Decided by the entries themselves, not the backlog
/// count (an undelivered entry deleted by hand leaves the count above 0 with
/// no entry); entries pending whose oldest id cannot be read count as at
/// `0-0`, below every write.
pub async fn oldest_unapplied(conn: &mut Conn, names: &Names, p: u32) -> Result<Option<Version>> {
    // Only the oldest entry matters, not how many: the count reads at most
    // one undelivered entry.
    let s = partition_status(conn, names, p, None, 1).await?;
    // Pending entries whose oldest id did not parse leave no watermark.
    if s.pending > 0 && s.watermark.is_none() {
        return Ok(Some(Version::default()));
    }
    Ok(s.oldest_unapplied.and_then(|o| o.parse::<Version>().ok()))
}

/// Reads one partition's status, counting at most `bound` undelivered
/// entries when the meta hash disagrees with the group ([`backlog`]).
async fn partition_status(
    conn: &mut Conn,
    names: &Names,
    p: u32,
    owner: Option<String>,
    bound: u64,
) -> Result<PartitionStatus> {
    let stream = names.stream(p);
    let group = names.group();
    let length: u64 = cmd::xlen(&stream).query_async(conn).await?;
    // The one definition of the backlog (src/lua/admit.lua), never XINFO's
    // `lag`, which Redis 7.0 gets wrong after an AOF reload.
    let Backlog {
        unapplied,
        pending,
        undelivered,
        last_delivered,
        exact,
    } = backlog(conn, names, p, bound).await?;
    if last_delivered.is_empty() {
        // No stream or no group yet: nothing was ever delivered, so the
        // oldest unapplied entry is the stream's first (a group deleted by
        // hand under a backlog must still age, or the lag alert never fires).
        let first: Value = cmd::xrange(&stream, "-", "+", Some(1))
            .query_async(conn)
            .await?;
        let oldest = parse_entries(&first).first().map(|e| e.id);
        return Ok(PartitionStatus {
            partition: p,
            owner,
            length,
            undelivered: length,
            pending: 0,
            unapplied: length,
            unapplied_at_least: false,
            oldest_unapplied_age_seconds: oldest.map_or(0.0, |o| {
                crate::protocol::wall_clock_ms().saturating_sub(o.ms) as f64 / 1000.0
            }),
            oldest_unapplied: oldest.map(|o| o.to_stream_id()),
            watermark: None,
        });
    }
    let next: Value = cmd::xrange(&stream, &format!("({last_delivered}"), "+", Some(1))
        .query_async(conn)
        .await?;
    let first_undelivered = parse_entries(&next).first().map(|e| e.id);
    // The oldest pending entry, from XPENDING's own summary; `unreadable`
    // when it says entries are pending but its oldest id does not parse.
    let (oldest_pending, unreadable) = if pending > 0 {
        let v: Value = cmd::pending_summary(&stream, &group)
            .query_async(conn)
            .await?;
        match &v {
            Value::Array(parts) => {
                let count = parts
                    .first()
                    .and_then(|c| redis::from_redis_value::<u64>(c.clone()).ok());
                let oldest = as_string(parts.get(1)).and_then(|s| s.parse::<Version>().ok());
                (oldest, oldest.is_none() && count != Some(0))
            }
            _ => (None, true),
        }
    } else {
        (None, false)
    };
    let oldest = match (oldest_pending, first_undelivered) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Below the watermark everything is applied. With nothing unapplied it is
    // just past the last entry the group had been given *when we looked*: an
    // entry added since has a larger id, so it can never fall below it (the
    // stream's last-generated id would race with writers).
    let watermark = match oldest {
        // Entries are pending but their oldest id could not be read (a reply
        // not as expected): no watermark, so retention trims nothing, rather
        // than one past entries not yet applied.
        _ if unreadable => None,
        Some(o) => Some(o),
        None => last_delivered.parse::<Version>().ok().map(|l| Version {
            ms: l.ms,
            seq: l.seq + 1,
        }),
    };
    let age = oldest
        .map(|o| crate::protocol::wall_clock_ms().saturating_sub(o.ms) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok(PartitionStatus {
        partition: p,
        owner,
        length,
        undelivered,
        pending,
        unapplied,
        unapplied_at_least: !exact,
        oldest_unapplied_age_seconds: age,
        oldest_unapplied: oldest.map(|o| o.to_stream_id()),
        watermark: watermark.map(|w| w.to_stream_id()),
    })
}

/// Reads every partition's status and the dead-letter depth.
pub async fn status(conn: &mut Conn, ns: &str, partitions: u32) -> Result<Status> {
    status_of(conn, ns, partitions, None).await
}

/// Like [`status`], but only for the partitions whose lease `owner` holds
/// (what a daemon exports and trims).
pub async fn status_of(
    conn: &mut Conn,
    ns: &str,
    partitions: u32,
    owner: Option<&str>,
) -> Result<Status> {
    let names = Names::new(ns);
    let leases: Vec<String> = (0..partitions).map(|p| names.lease(p)).collect();
    // One GET per lease: the lease keys of different partitions live in
    // different cluster slots, so no MGET.
    //
    // For a daemon (`owner` set), one partition that cannot be read (its
    // cluster node down, with `cluster-require-full-coverage no`) is logged
    // and skipped: the others' gauges and trimming go on. `writ status`
    // fails instead, as a go/no-go check must.
    let mut owners = Vec::with_capacity(leases.len());
    let (mut skipped, mut skipped_error) = (Vec::new(), None);
    let mut skip = |p: u32, e: Error| {
        skipped.push(p);
        skipped_error.get_or_insert_with(|| e.to_string());
    };
    for (p, key) in leases.iter().enumerate() {
        let o = redis::cmd("GET").arg(key).query_async(conn).await;
        match unless_foreign(o.map_err(Error::from)) {
            Ok(o) => owners.push(o.flatten()),
            Err(e) if owner.is_some() => {
                skip(p as u32, e);
                owners.push(None);
            }
            Err(e) => return Err(e),
        }
    }
    let mut out = Vec::with_capacity(partitions as usize);
    let mut left_out = Vec::new();
    for (p, o) in (0..partitions).zip(owners) {
        if owner.is_none() || o.as_deref() == owner {
            // A partition whose keys hold another program's values is left
            // out, and named; the others are still reported (and trimmed).
            match unless_foreign(partition_status(conn, &names, p, o, COUNT_BOUND).await) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => left_out.push(p),
                Err(e) if owner.is_some() => skip(p, e),
                Err(e) => return Err(e),
            }
        }
    }
    let dead_letters = cmd::xlen(&names.dead_letters()).query_async(conn).await;
    let dead_letters: Option<u64> = unless_foreign(dead_letters.map_err(Error::from))?;
    Ok(Status {
        partitions: out,
        left_out,
        dead_letters: dead_letters.unwrap_or(0),
        dead_letters_unreadable: dead_letters.is_none(),
        skipped,
        skipped_error,
    })
}

/// `None` when one of writ's keys holds another program's value (Redis
/// answers `WRONGTYPE`). The daemon's ownership pass logs such lease keys; a
/// status read must not fail for every partition because of one.
fn unless_foreign<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Redis(e)) if crate::redis_conn::is_wrong_type(&e) => {
            tracing::debug!(error = %e, "status: a key holds a value writ did not write; left out");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Renders the status as a table.
pub fn render_table(s: &Status) -> String {
    let mut out = format!(
        "{:>4}  {:<24} {:>10} {:>9} {:>10} {:>12}  {}\n",
        "part", "owner", "unapplied", "pending", "oldest(s)", "retained", "watermark"
    );
    for p in &s.partitions {
        let unapplied = if p.unapplied_at_least {
            format!(">={}", p.unapplied)
        } else {
            p.unapplied.to_string()
        };
        out += &format!(
            "{:>4}  {:<24} {:>10} {:>9} {:>10.1} {:>12}  {}\n",
            p.partition,
            p.owner.as_deref().unwrap_or("-"),
            unapplied,
            p.pending,
            p.oldest_unapplied_age_seconds,
            p.length,
            p.watermark.as_deref().unwrap_or("-")
        );
    }
    let at_least: Vec<u32> = s
        .partitions
        .iter()
        .filter(|p| p.unapplied_at_least)
        .map(|p| p.partition)
        .collect();
    if !at_least.is_empty() {
        out += &format!(
            "partitions {at_least:?}: unapplied is a lower bound (>=): their meta hash disagrees with the group (an XGROUP SETID, a lost meta hash) and the count stopped after {COUNT_BOUND} undelivered entries; the owning daemon mends it within a few passes of daemon.stats_interval_ms\n"
        );
    }
    if !s.left_out.is_empty() {
        out += &format!(
            "partitions {:?} left out: one of their keys (stream or meta hash) holds a value writ did not write; their backlog is unknown\n",
            s.left_out
        );
    }
    if s.dead_letters_unreadable {
        out += "dead letters: unknown (the dead-letter stream's key holds a value writ did not write)\n";
    } else {
        out += &format!("dead letters: {}\n", s.dead_letters);
    }
    out
}
