//! Stream retention: trim committed entries by age and count, and never an
//! entry at or above the committed watermark (`XTRIM MINID`). Unapplied
//! entries are never evicted; when they pile up, writers get backpressure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::redis_conn::Conn;

use crate::error::Result;
use crate::protocol::Version;
use crate::status::PartitionStatus;
use crate::stream::{cmd, parse_entries};

/// The id below which entries of `stream` may be trimmed, given its status.
pub async fn trim_point(
    conn: &mut Conn,
    stream: &str,
    status: &PartitionStatus,
    max_age: Duration,
    max_entries: u64,
) -> Result<Option<Version>> {
    let Some(watermark) = status
        .watermark
        .as_deref()
        .and_then(|w| w.parse::<Version>().ok())
    else {
        return Ok(None);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let by_age = Version {
        ms: now.saturating_sub(max_age.as_millis() as u64),
        seq: 0,
    };
    // By count: the id of the entry that leaves `max_entries` behind it.
    let by_count = if status.length > max_entries {
        let excess = (status.length - max_entries).min(100_000);
        let v: redis::Value = cmd::xrange(stream, "-", "+", Some(excess + 1))
            .query_async(conn)
            .await?;
        parse_entries(&v).last().map(|e| e.id)
    } else {
        None
    };
    let wanted = match by_count {
        Some(c) => c.max(by_age),
        None => by_age,
    };
    Ok(Some(wanted.min(watermark)))
}

/// Trims `stream` below `point`; returns the entries removed.
pub async fn trim(conn: &mut Conn, stream: &str, point: Version) -> Result<u64> {
    let n: u64 = cmd::trim_below(stream, point).query_async(conn).await?;
    Ok(n)
}
