//! Partition status: owner, unapplied entries (undelivered + pending), the age
//! of the oldest unapplied entry, the committed watermark and dead-letter
//! depth. Used by `writ status`, the daemon's metrics and stream retention.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::Value;
use serde::Serialize;

use crate::error::Result;
use crate::ownership::lease_key;
use crate::protocol::{Names, Version};
use crate::stream::parse_entries;

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
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn field<'a>(map: &'a [Value], name: &str) -> Option<&'a Value> {
    map.chunks(2)
        .find(|c| matches!(&c[0], Value::BulkString(b) if b == name.as_bytes()))
        .map(|c| &c[1])
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Reads one partition's status.
async fn partition_status(
    conn: &mut ConnectionManager,
    names: &Names,
    p: u32,
    owner: Option<String>,
) -> Result<PartitionStatus> {
    let stream = names.stream(p);
    let group = names.group();
    let length: u64 = redis::cmd("XLEN").arg(&stream).query_async(conn).await?;
    let groups: Value = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        Err(e) if e.code() == Some("ERR") => Value::Array(vec![]),
        Err(e) => return Err(e.into()),
    };
    let g = match &groups {
        Value::Array(gs) => gs.iter().find_map(|g| match g {
            Value::Array(m) if as_string(field(m, "name")).as_deref() == Some(group.as_str()) => {
                Some(m.clone())
            }
            _ => None,
        }),
        _ => None,
    };
    let Some(g) = g else {
        return Ok(PartitionStatus {
            partition: p,
            owner,
            length,
            undelivered: length,
            pending: 0,
            unapplied: length,
            oldest_unapplied_age_seconds: 0.0,
            oldest_unapplied: None,
            watermark: None,
        });
    };
    let pending = as_u64(field(&g, "pending")).unwrap_or(0);
    let last_delivered = as_string(field(&g, "last-delivered-id")).unwrap_or_else(|| "0-0".into());
    // Entries after the last delivered one: the first of them is the oldest
    // undelivered entry; when Redis cannot tell the lag, count them (bounded).
    let lag = as_u64(field(&g, "lag"));
    let next: Value = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(format!("({last_delivered}"))
        .arg("+")
        .arg("COUNT")
        .arg(if lag.is_some() { 1 } else { 100_000 })
        .query_async(conn)
        .await?;
    let after = parse_entries(&next);
    let first_undelivered = after.first().map(|e| e.id);
    let undelivered = lag.unwrap_or(after.len() as u64);
    let oldest_pending = if pending > 0 {
        let v: Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(&group)
            .query_async(conn)
            .await?;
        match &v {
            Value::Array(parts) => as_string(parts.get(1)).and_then(|s| s.parse::<Version>().ok()),
            _ => None,
        }
    } else {
        None
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
        Some(o) => Some(o),
        None => last_delivered.parse::<Version>().ok().map(|l| Version {
            ms: l.ms,
            seq: l.seq + 1,
        }),
    };
    let age = oldest
        .map(|o| now_ms().saturating_sub(o.ms) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok(PartitionStatus {
        partition: p,
        owner,
        length,
        undelivered,
        pending,
        unapplied: undelivered + pending,
        oldest_unapplied_age_seconds: age,
        oldest_unapplied: oldest.map(|o| o.to_stream_id()),
        watermark: watermark.map(|w| w.to_stream_id()),
    })
}

/// Reads every partition's status and the dead-letter depth.
pub async fn status(conn: &mut ConnectionManager, ns: &str, partitions: u32) -> Result<Status> {
    status_of(conn, ns, partitions, None).await
}

/// Like [`status`], but only for the partitions whose lease `owner` holds
/// (what a daemon exports and trims).
pub async fn status_of(
    conn: &mut ConnectionManager,
    ns: &str,
    partitions: u32,
    owner: Option<&str>,
) -> Result<Status> {
    let names = Names::new(ns);
    let leases: Vec<String> = (0..partitions).map(|p| lease_key(ns, p)).collect();
    // One GET per lease: the lease keys of different partitions live in
    // different cluster slots, so no MGET.
    let mut owners = Vec::with_capacity(leases.len());
    for key in &leases {
        let o: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
        owners.push(o);
    }
    let mut out = Vec::with_capacity(partitions as usize);
    for (p, o) in (0..partitions).zip(owners) {
        if owner.is_none() || o.as_deref() == owner {
            out.push(partition_status(conn, &names, p, o).await?);
        }
    }
    let dead_letters: u64 = redis::cmd("XLEN")
        .arg(names.dead_letters())
        .query_async(conn)
        .await?;
    Ok(Status {
        partitions: out,
        dead_letters,
    })
}

/// Renders the status as a table.
pub fn render_table(s: &Status) -> String {
    let mut out = format!(
        "{:>4}  {:<24} {:>10} {:>9} {:>10} {:>12}  {}\n",
        "part", "owner", "unapplied", "pending", "oldest(s)", "retained", "watermark"
    );
    for p in &s.partitions {
        out += &format!(
            "{:>4}  {:<24} {:>10} {:>9} {:>10.1} {:>12}  {}\n",
            p.partition,
            p.owner.as_deref().unwrap_or("-"),
            p.unapplied,
            p.pending,
            p.oldest_unapplied_age_seconds,
            p.length,
            p.watermark.as_deref().unwrap_or("-")
        );
    }
    out += &format!("dead letters: {}\n", s.dead_letters);
    out
}
