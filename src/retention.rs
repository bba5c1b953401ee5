//! Stream retention: trim committed entries by age and count, and never an
//! entry at or above the committed watermark (`XTRIM MINID`). Unapplied
//! entries are never evicted; when they pile up, writers get backpressure.
//!
//! Redis has no way to find the id of the n-th entry without reading the
//! entries before it, payloads included, so the count bound reads them, in
//! pages sized to about [`Budget::page_bytes`] by the largest entry seen so
//! far, and at most [`Budget::pass_bytes`] a pass, and only below the
//! committed watermark: no reply, and no pass, holds Redis or the daemon's
//! memory for long, whatever the documents' size, and an old entry left
//! pending at the head makes the search read nothing. What a pass leaves
//! over, the next one trims. The trim itself (`src/lua/trim.lua`) removes at
//! most about 10,000 entries a pass too.

use std::time::Duration;

use crate::redis_conn::Conn;

use crate::error::Result;
use crate::protocol::Version;
use crate::status::PartitionStatus;
use crate::stream::{cmd, take_entries, Entry, PageSize};

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
    // By count: the id of the entry that leaves `max_entries` behind it,
    // searched below the watermark only: entries at or above it cannot go,
    // and an old entry left pending at the head (the watermark) would
    // otherwise have every pass read up to 10,000 entries past it, to find
    // a point the watermark then overrides.
    let excess = count_excess(status, max_entries);
    let by_count = if excess > 0 {
        nth_id_below(conn, stream, excess + 1, Budget::DEFAULT, Some(watermark)).await?
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
/// most [`TRIM_STEP`] per pass (as many as the trim removes a pass: reading
/// 100,000 to trim 10,000 would read most of them again next pass). Only
/// committed entries can go, and at most `length - unapplied` of them are
/// below the watermark: during a MongoDB outage, once the committed ones are
/// trimmed, this is 0 and no entry is read at all (otherwise each pass would
/// read entries, with their payloads, to find a point the watermark then
/// overrides; the search also stops at the watermark, [`nth_id_below`]).
fn count_excess(status: &PartitionStatus, max_entries: u64) -> u64 {
    status
        .length
        .saturating_sub(max_entries)
        .min(status.length.saturating_sub(status.unapplied))
        .min(TRIM_STEP)
}

/// About the most entries one trim removes (`src/lua/trim.lua`: `XTRIM MINID
/// ~ <point> LIMIT 10000`); the next pass goes on.
pub const TRIM_STEP: u64 = 10_000;

/// How much one search for the count bound's point reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// About the most entry bytes one `XRANGE` returns (at least one entry).
    pub page_bytes: usize,
    /// The most entry bytes one search reads; it may end one page past it.
    pub pass_bytes: usize,
}

impl Budget {
    /// 4 MiB a page, 64 MiB a pass.
    pub const DEFAULT: Budget = Budget {
        page_bytes: 4 << 20,
        pass_bytes: 64 << 20,
    };
}

/// Entries per `XRANGE` at most, and in the first one.
const MAX_PAGE: u64 = 1000;
const FIRST_PAGE: u64 = 1;

/// The id of the `n`-th oldest entry of `stream` (1-based), read in pages
/// within `budget`: an older entry's if the budget ran out first (trimming
/// below it is a part of the way), the newest's if the stream is shorter,
/// `None` if it is empty.
pub async fn nth_id(
    conn: &mut Conn,
    stream: &str,
    n: u64,
    budget: Budget,
) -> Result<Option<Version>> {
    nth_id_below(conn, stream, n, budget, None).await
}

/// [`nth_id`] among the entries below `below` only (`XRANGE ... (below
/// COUNT n`); when fewer than `n` are below it, `below` itself (all of them
/// may go), or `None` if none is.
pub async fn nth_id_below(
    conn: &mut Conn,
    stream: &str,
    n: u64,
    budget: Budget,
    below: Option<Version>,
) -> Result<Option<Version>> {
    let end = below.map_or("+".to_string(), |b| format!("({}", b.to_stream_id()));
    let mut walk = Walk::new(n, budget);
    let mut ended = false;
    while let Some((from, count)) = walk.next_page() {
        let v: redis::Value = cmd::xrange(stream, &from, &end, Some(count))
            .query_async(conn)
            .await?;
        if !walk.saw(&take_entries(v), count) {
            ended = true;
            break;
        }
    }
    Ok(match below {
        Some(b) if ended && walk.last.is_some() => Some(b),
        _ => walk.last,
    })
}

/// Where a search of [`nth_id`] is: what it has read, and how large its next
/// page is.
#[derive(Debug)]
struct Walk {
    budget: Budget,
    /// Entries still to read.
    left: u64,
    /// The last entry read.
    last: Option<Version>,
    /// Entry bytes read so far.
    read: usize,
    /// Entries the next page asks for.
    page: PageSize,
}

impl Walk {
    fn new(n: u64, budget: Budget) -> Walk {
        Walk {
            budget,
            left: n,
            last: None,
            read: 0,
            page: PageSize::new(budget.page_bytes, FIRST_PAGE, MAX_PAGE),
        }
    }

    /// The next `XRANGE`'s start and count, or `None`: done.
    fn next_page(&self) -> Option<(String, u64)> {
        if self.left == 0 || self.read >= self.budget.pass_bytes {
            return None;
        }
        let from = match self.last {
            None => "-".to_string(),
            Some(v) => format!("({}", v.to_stream_id()),
        };
        Some((from, self.page.next().min(self.left)))
    }

    /// Takes in a page of `asked` entries. The next page holds about
    /// `page_bytes` of entries as large as the largest seen, and grows at
    /// most fourfold. `false`: the stream has no more.
    fn saw(&mut self, entries: &[Entry], asked: u64) -> bool {
        let Some(last) = entries.last() else {
            return false;
        };
        self.last = Some(last.id);
        self.left = self.left.saturating_sub(entries.len() as u64);
        self.read += entries.iter().map(Entry::bytes).sum::<usize>();
        self.page.saw(entries);
        entries.len() as u64 == asked
    }
}

/// The trim itself, capped by the group's watermark as it stands then
/// (`src/lua/trim.lua`).
pub const TRIM_LUA: &str = include_str!("lua/trim.lua");

/// Trims `stream` below `point`, and never at or past the oldest entry of
/// `group` not yet applied as Redis holds it when the trim runs (the point
/// comes from a status read made earlier; see [`TRIM_LUA`]), about
/// [`TRIM_STEP`] entries at most (the next call goes on); returns the
/// entries removed.
pub async fn trim(conn: &mut Conn, stream: &str, group: &str, point: Version) -> Result<u64> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let n: u64 = SCRIPT
        .get_or_init(|| crate::redis_conn::script(TRIM_LUA))
        .key(stream)
        .arg(group)
        .arg(point.to_stream_id())
        .invoke_async(conn)
        .await?;
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
            unapplied_at_least: false,
            oldest_unapplied_age_seconds: 0.0,
            oldest_unapplied: None,
            watermark: None,
        }
    }

    fn entries(from: u64, n: u64, bytes: usize) -> Vec<Entry> {
        (from..from + n)
            .map(|i| Entry {
                id: Version { ms: i, seq: 0 },
                fields: Some(vec![(b"doc".to_vec(), vec![0; bytes])]),
            })
            .collect()
    }

    #[test]
    fn a_search_reads_pages_sized_by_the_largest_entry() {
        let budget = Budget {
            page_bytes: 1000,
            pass_bytes: 10_000,
        };
        // Small entries: pages grow fourfold up to what fits in page_bytes.
        let mut w = Walk::new(100, budget);
        let mut from = 1;
        for asked in [1, 4, 16, 64] {
            let at = if from == 1 {
                "-".to_string()
            } else {
                format!("({}-0", from - 1)
            };
            assert_eq!(w.next_page(), Some((at, asked)));
            assert!(w.saw(&entries(from, asked, 10), asked));
            from += asked;
        }
        // 1000 / 10 = 100 fit (and 4 * 64 > 100), but only 15 are left.
        assert_eq!(w.page.next(), 100);
        assert_eq!(w.next_page(), Some(("(85-0".to_string(), 15)));
        // A large entry shrinks the next page to what fits.
        let mut page = entries(86, 14, 10);
        page.extend(entries(100, 1, 400));
        assert!(w.saw(&page, 15));
        assert_eq!((w.left, w.page.next()), (0, 2));
        assert_eq!(w.last, Some(Version { ms: 100, seq: 0 }));
        assert_eq!(w.next_page(), None);
        // A shorter page than asked: the stream has no more.
        let mut w = Walk::new(100, budget);
        assert!(!w.saw(&entries(1, 3, 10), 4));
        assert!(!w.saw(&[], 4));
        assert_eq!(w.last, Some(Version { ms: 3, seq: 0 }));
    }

    #[test]
    fn a_search_stops_at_its_pass_budget_reading_one_large_entry_at_a_time() {
        let budget = Budget {
            page_bytes: 1000,
            pass_bytes: 5000,
        };
        let mut w = Walk::new(1_000_000, budget);
        let mut from = 1;
        while let Some((_, asked)) = w.next_page() {
            assert_eq!(asked, 1);
            assert!(w.saw(&entries(from, 1, 2000), 1));
            from += 1;
        }
        // 2000-byte entries, 5000 a pass: the third passes the budget.
        assert_eq!(w.read, 6000);
        assert_eq!(w.last, Some(Version { ms: 3, seq: 0 }));
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
        // A large excess is read as much at a time as a trim removes.
        assert_eq!(count_excess(&status(1_000_000, 0), 1000), 10_000);
    }
}
