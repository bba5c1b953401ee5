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
//! A process checks the record when it starts (a running daemon also at
//! each housekeeping pass, [`recheck`]); a writer that keeps running on
//! the old count after a change is caught by its next admission instead. The
//! count is copied into every other partition's meta hash too ([`copies`]),
//! and the admission script refuses a write whose caller's count differs
//! from its partition's copy (`PARTITIONS`), adding nothing. The copies live
//! in each partition's own hash slot, so the check costs one `HGET` per
//! admission call, also on Redis Cluster.

mod change;
mod claim;
pub mod copies;
mod floor;

pub use change::{change, Changed, CHANGE_LUA};
pub use claim::{claim, claim_daemon, recheck, recheck_now, Standing};
pub use copies::{copy, try_copy};

use crate::error::Result;
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// The field of `<ns>:{p0}:meta` that holds the count.
pub const FIELD: &str = "partitions";

/// The field that says who recorded it: `daemon` or `client`.
pub const BY_FIELD: &str = "partitions_by";

/// The end of a client's refusal for another partition count (a write's, a
/// read's): a change the operator did not finish leaves partitions that
/// record different counts.
pub(crate) const UNFINISHED_CHANGE: &str = "If `writ partitions` says a change is unfinished \
     instead, run `writ partitions --set` again with the count you want";

/// The field of each meta hash with the epoch of its count (absent: 0): in
/// partition 0 the epoch of the [`change`] that recorded the count, in the
/// others that of the run that wrote the copy ([`copies`]).
pub const EPOCH_FIELD: &str = "partitions_epoch";

/// The field of `<ns>:{p0}:meta` that hands out epochs: each [`change`] run
/// takes the next one (an `HINCRBY` as a script of `HGET` and `HSET`, which
/// the documented ACL users have), so no two runs share one.
pub const EPOCHS_FIELD: &str = "partitions_epochs";

/// The field of `<ns>:{p0}:meta` with when the daemon that recorded the
/// count started (unix ms; 0 when `writ partitions --set` changed it, so
/// that it stands before every daemon; absent, or left over, when a client
/// or a hand recorded it): when two daemons' counts meet, the daemon that
/// started first keeps its count (`claim::recheck`).
pub const SINCE_FIELD: &str = "partitions_since";

/// The field of `<ns>:{p0}:meta` with how many partitions hold copies: the
/// largest count any [`change`] used, so that a later run writes every copy.
pub const UPTO_FIELD: &str = "partitions_upto";

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
pub const CLAIM_LUA: &str = include_str!("../lua/partition_count.lua");

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

/// A recorded count: a positive number (anything else reads as none).
pub fn parse(v: &str) -> Option<u32> {
    v.parse().ok().filter(|&n| n > 0)
}

/// `0, 3, 5`, or the first ten and how many more.
pub fn list(ps: &[u32]) -> String {
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
