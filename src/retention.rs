//! Stream retention: trim committed entries by age and count, and never an
//! entry at or above the committed watermark (`XTRIM MINID`). Unapplied
//! entries are never evicted; when they pile up, writers get backpressure.

use std::time::Duration;

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
    let now = crate::protocol::wall_clock_ms();
    let by_age = Version {
        ms: now.saturating_sub(max_age.as_millis() as u64),
        seq: 0,
    };
    // By count: the id of the entry that leaves `max_entries` behind it.
    let excess = count_excess(status, max_entries);
    let by_count = if excess > 0 {
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

/// How many of the oldest entries the count bound asks to trim, read at
/// most 100,000 per pass. Only committed entries can go, and at most
/// `length - unapplied` of them are below the watermark: during a MongoDB
/// outage, once the committed ones are trimmed, this is 0 and no entry is
/// read at all (otherwise each pass would read up to 100,000 entries, with
/// their payloads, to find a point the watermark then overrides).
fn count_excess(status: &PartitionStatus, max_entries: u64) -> u64 {
    status
        .length
        .saturating_sub(max_entries)
        .min(status.length.saturating_sub(status.unapplied))
        .min(100_000)
}

/// Trims `stream` below `point`; returns the entries removed.
pub async fn trim(conn: &mut Conn, stream: &str, point: Version) -> Result<u64> {
    let n: u64 = cmd::trim_below(stream, point).query_async(conn).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(length: u64, unapplied: u64) -> PartitionStatus {
        PartitionStatus {
            partition: 0,
            owner: None,
            length,
            undelivered: 0,
            pending: unapplied,
            unapplied,
            oldest_unapplied_age_seconds: 0.0,
            oldest_unapplied: None,
            watermark: None,
        }
    }

    #[test]
    fn the_count_bound_reads_only_entries_that_can_go() {
        // Under the bound: nothing.
        assert_eq!(count_excess(&status(900, 0), 1000), 0);
        // Over it, all committed: the excess.
        assert_eq!(count_excess(&status(1500, 0), 1000), 500);
        // Over it, but only 200 committed (a MongoDB outage): at most 200.
        assert_eq!(count_excess(&status(1500, 1300), 1000), 200);
        // Everything unapplied: no read at all.
        assert_eq!(count_excess(&status(250_000, 250_000), 1000), 0);
        // A large excess is read 100,000 at a time.
        assert_eq!(count_excess(&status(1_000_000, 0), 1000), 100_000);
    }
}
