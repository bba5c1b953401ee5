//! Mending a partition's backlog bookkeeping, in bounded steps outside any
//! long script.
//!
//! The backlog count (docs/protocol.md §2a, `src/lua/admit.lua`) is O(1)
//! while the partition's meta hash `at`/`read` pair names the group's
//! last-delivered-id. When it does not (an operator's `XGROUP SETID`, the
//! meta hash lost or never written, an upgrade, a write-back Redis refused at
//! its maxmemory), the scripts count at most a bound of entries and say the
//! count is a lower bound. The owning daemon's housekeeping then mends the
//! pair here, for each partition whose count was not exact:
//!
//! 1. **Look** (one tiny script): the group's last-delivered-id `L`, the
//!    stream's entries-added `E` and last-generated-id `X`, as of one moment.
//!    `read` as of `X` is `E` (nothing is after it).
//! 2. **Count** the entries in `(L, X]` in short steps (a script that counts
//!    at most 2,000 entries, about 1 MiB of them, and returns only the count
//!    and where it stopped), at most 2,000,000 entries a pass (what is left,
//!    the next pass counts on): `read` as of `L` is `E - n`.
//! 3. **Mend** (a script): if the group is still at `L`, write `at = L`,
//!    `read = E - n`; if it moved to `L'` meanwhile (the daemon reads on,
//!    an operator moves it back), count `(L, L']` (or `(L', L]`) in the
//!    script, at most 10,000 entries, and write the pair for `L'`; past that
//!    bound, count up to `L'` from here and mend again (at most 4 times a
//!    pass).
//!
//! The counts hold as long as none of the entries counted was removed before
//! the pair is written: the mend script compares the stream's removed count
//! (entries-added - length) with the look's, and if entries went, checks
//! that they were all below the lowest entry counted (retention trims the
//! oldest entries, never an undelivered one; an `XDEL` leaves its newest id
//! in `max-deleted-entry-id`). Otherwise it starts over. Entries added after
//! the look have ids above `X` and are not counted: they are in entries-added
//! when the pair is used. A group moved back is counted the other way:
//! `read(L') = read(L) - |(L', L]|`.

use std::collections::HashMap;

use redis::Value;

use crate::error::{Error, Result};
use crate::protocol::{Names, Version};
use crate::redis_conn::Conn;

/// The look and mend script (`src/lua/backlog_mend.lua`).
pub const MEND_LUA: &str = include_str!("lua/backlog_mend.lua");

/// The most entries the counts of one housekeeping pass count, all its
/// partitions together (a count may end one step of 2,000 past it); the
/// next pass goes on from there, starting with the partition after the last
/// one this pass reached, so that none waits behind the others for good.
const PASS_ENTRIES: u64 = 2_000_000;
/// Mend calls per pass: a group that each time moved further than the mend
/// script counts waits for the next pass.
const ROUNDS: usize = 4;

fn script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| crate::redis_conn::script(MEND_LUA))
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value::<String>(v.clone()).ok()
}

fn reply_error(what: &str, v: &Value) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply of the backlog mend script",
        format!("{what}: {v:?}"),
    )))
}

/// A partition as the look script saw it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The group's last-delivered-id (`None`: no stream or no group).
    pub last_delivered: Option<Version>,
    /// The stream's entries-added count.
    pub entries_added: u64,
    /// The stream's last-generated-id.
    pub last_generated: Version,
    /// Entries XDELed or trimmed, ever (entries-added - length).
    pub removed: u64,
}

/// Looks at partition `p`'s stream and group, atomically.
pub async fn look(conn: &mut Conn, names: &Names, p: u32) -> Result<Look> {
    let v: Vec<Value> = script()
        .key(names.stream(p))
        .key(names.meta(p))
        .arg(names.group())
        .arg("look")
        .invoke_async(conn)
        .await?;
    let num = |i: usize| {
        v.get(i)
            .and_then(|x| redis::from_redis_value::<u64>(x.clone()).ok())
    };
    let id = |i: usize| v.get(i).and_then(text);
    let (Some(last), Some(entries_added), Some(generated), Some(removed)) =
        (id(0), num(1), id(2), num(3))
    else {
        return Err(reply_error("look", &Value::Array(v)));
    };
    Ok(Look {
        last_delivered: last.parse().ok(),
        entries_added,
        last_generated: generated
            .parse()
            .map_err(|_| reply_error("look", &Value::Array(v.clone())))?,
        removed,
    })
}

/// A count of the entries of partition `p`'s stream in `(lo, hi]`, made in
/// steps of the mend script (mode `count`: at most 2,000 entries and about
/// 1 MiB of them read a step, a few milliseconds of Redis, and no entry sent
/// back), so that no step holds Redis for long and counting a million
/// entries moves no payload over the network. (Paging them to the daemon
/// with `XRANGE ... COUNT 1000` moved every payload, and parsing 250,000
/// entries took the debug-built daemon 14 s; 10,000-entry steps took 15 ms
/// of Redis each.)
#[derive(Debug, Clone)]
pub struct RangeCount {
    hi: Version,
    cursor: Version,
    /// Entries counted so far.
    pub counted: u64,
    /// The lowest id counted so far.
    pub lowest: Option<Version>,
    /// The range has been counted to its end.
    pub done: bool,
}

impl RangeCount {
    /// A count of the entries between `a` and `b` (whichever is lower
    /// excluded, the other included).
    pub fn between(a: Version, b: Version) -> RangeCount {
        let (lo, hi) = (a.min(b), a.max(b));
        RangeCount {
            hi,
            cursor: lo,
            counted: 0,
            lowest: None,
            done: lo == hi,
        }
    }

    /// Counts on until the range ends or `budget` more entries were
    /// counted; returns how many were.
    pub async fn run(
        &mut self,
        conn: &mut Conn,
        names: &Names,
        p: u32,
        budget: u64,
    ) -> Result<u64> {
        let mut counted = 0;
        while !self.done && counted < budget {
            let v: Vec<Value> = script()
                .key(names.stream(p))
                .key(names.meta(p))
                .arg(names.group())
                .arg("count")
                .arg(self.cursor.to_stream_id())
                .arg(self.hi.to_stream_id())
                .invoke_async(conn)
                .await?;
            let n = v
                .first()
                .and_then(|x| redis::from_redis_value::<u64>(x.clone()).ok());
            let last = v.get(1).and_then(text);
            let all = v
                .get(2)
                .and_then(|x| redis::from_redis_value::<u64>(x.clone()).ok());
            let (Some(n), Some(last), Some(all)) = (n, last, all) else {
                return Err(reply_error("count", &Value::Array(v)));
            };
            if self.lowest.is_none() {
                self.lowest = v.get(3).and_then(text).and_then(|f| f.parse().ok());
            }
            self.counted += n;
            counted += n;
            match last.parse::<Version>() {
                Ok(l) if all == 0 => self.cursor = l,
                _ => self.done = true,
            }
        }
        Ok(counted)
    }

    /// `read` as of `to`, given `read` as of `from` (the range's two ends)
    /// once the count is done; `None` if it cannot hold (more entries
    /// counted back than `read`).
    fn carry(&self, from: Version, read: u64, to: Version) -> Option<u64> {
        if to >= from {
            read.checked_add(self.counted)
        } else {
            read.checked_sub(self.counted)
        }
    }
}

/// What one mend call said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mend {
    /// The pair was written for this last-delivered-id; this many entries
    /// are after it.
    Mended(Version, u64),
    /// Nothing to write: the pair already agrees with the group, or the
    /// group has delivered nothing.
    Fresh,
    /// The group is now here, further from the pair than the script counts.
    Moved(Version),
    /// Entries that may have been counted were removed since the look.
    Removed,
    /// No stream, or no group.
    Gone,
    /// Redis refused the write (its maxmemory).
    Refused(String),
}

/// Writes partition `p`'s `at`/`read` pair for the group's last-delivered-id,
/// given that `read` holds as of `at` (counted since a look that saw
/// `removed`, the lowest entry counted being `lowest`).
pub async fn mend(
    conn: &mut Conn,
    names: &Names,
    p: u32,
    at: Version,
    read: u64,
    removed: u64,
    lowest: Option<Version>,
) -> Result<Mend> {
    let v: Vec<Value> = script()
        .key(names.stream(p))
        .key(names.meta(p))
        .arg(names.group())
        .arg("mend")
        .arg(at.to_stream_id())
        .arg(read)
        .arg(removed)
        .arg(lowest.map(|l| l.to_stream_id()).unwrap_or_default())
        .invoke_async(conn)
        .await?;
    let what = v.first().and_then(text).unwrap_or_default();
    let id = || {
        v.get(1)
            .and_then(text)
            .and_then(|s| s.parse::<Version>().ok())
    };
    Ok(match what.as_str() {
        "mended" => {
            let after = v
                .get(2)
                .and_then(|x| redis::from_redis_value::<i64>(x.clone()).ok())
                .unwrap_or(0);
            Mended(
                id().ok_or_else(|| reply_error("mend", &Value::Array(v.clone())))?,
                after.max(0) as u64,
            )
        }
        "fresh" => Fresh,
        "moved" => Moved(id().ok_or_else(|| reply_error("mend", &Value::Array(v.clone())))?),
        "removed" => Removed,
        "gone" => Gone,
        "refused" => Refused(v.get(1).and_then(text).unwrap_or_default()),
        _ => return Err(reply_error("mend", &Value::Array(v))),
    })
}
use Mend::*;

/// A partition's mend in progress: `read` is known as of `at`, and the
/// entries between `at` and where the group was last seen are being
/// counted.
#[derive(Debug, Clone)]
struct Progress {
    at: Version,
    read: u64,
    target: Version,
    count: RangeCount,
    /// The look's removed count, and the lowest entry counted since.
    removed: u64,
    lowest: Option<Version>,
}

/// What a pass did for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The meta hash was mended: the count is exact (and O(1)) again.
    Mended {
        /// Undelivered entries when it was written.
        undelivered: u64,
    },
    /// Nothing to mend.
    Fresh,
    /// The count goes on next pass (its budget ran out, or the group kept
    /// moving).
    Unfinished,
    /// Given up this pass (entries removed meanwhile, no stream or group,
    /// Redis refused the write); the next pass starts over.
    GaveUp(String),
}

/// The mends of a daemon's partitions, kept across housekeeping passes.
#[derive(Debug, Default)]
pub struct Mender {
    progress: HashMap<u32, Progress>,
    /// Where the next pass starts in its list of partitions.
    next: usize,
}

impl Mender {
    /// A mender with nothing in progress.
    pub fn new() -> Mender {
        Mender::default()
    }

    /// Whether a mend of partition `p` is in progress (its count carried
    /// over to the next pass): its trims wait, since a trim of entries the
    /// mend counted would make it start over.
    pub fn mending(&self, p: u32) -> bool {
        self.progress.contains_key(&p)
    }

    /// One housekeeping pass over the partitions whose count was not exact
    /// (`stale`); mends in progress for other partitions (mended meanwhile
    /// by a read, or no longer owned) are dropped.
    pub async fn pass(&mut self, conn: &mut Conn, names: &Names, stale: &[u32]) {
        self.progress.retain(|p, _| stale.contains(p));
        let mut budget = PASS_ENTRIES;
        let start = if stale.is_empty() {
            0
        } else {
            self.next % stale.len()
        };
        for (i, &p) in stale
            .iter()
            .enumerate()
            .cycle()
            .skip(start)
            .take(stale.len())
        {
            if budget == 0 {
                // The rest wait for the next pass, which starts with them.
                self.next = i;
                return;
            }
            match self.step(conn, names, p, &mut budget).await {
                Ok(Outcome::Mended { undelivered }) => tracing::info!(
                    partition = p,
                    undelivered,
                    "the partition's backlog count is exact again: its meta hash disagreed with the group, and was mended from a count made in short steps"
                ),
                Ok(o) => tracing::debug!(partition = p, outcome = ?o, "backlog count mend"),
                Err(e) => {
                    self.progress.remove(&p);
                    tracing::warn!(partition = p, error = %e, "cannot mend the partition's backlog count; it stays a lower bound, tried again next pass")
                }
            }
        }
    }

    /// One pass's work for partition `p`, counting at most `budget`
    /// entries (less what it counted, after).
    pub async fn step(
        &mut self,
        conn: &mut Conn,
        names: &Names,
        p: u32,
        budget: &mut u64,
    ) -> Result<Outcome> {
        let mut prog = match self.progress.remove(&p) {
            Some(prog) => prog,
            None => {
                let l = look(conn, names, p).await?;
                let Some(last) = l.last_delivered else {
                    return Ok(Outcome::GaveUp("no stream or no group".into()));
                };
                if last == Version::default() {
                    return Ok(Outcome::Fresh);
                }
                Progress {
                    at: l.last_generated,
                    read: l.entries_added,
                    target: last,
                    count: RangeCount::between(l.last_generated, last),
                    removed: l.removed,
                    lowest: None,
                }
            }
        };
        for _ in 0..ROUNDS {
            *budget = budget.saturating_sub(prog.count.run(conn, names, p, *budget).await?);
            if let Some(l) = prog.count.lowest {
                prog.lowest = Some(prog.lowest.map_or(l, |x| x.min(l)));
            }
            if !prog.count.done {
                self.progress.insert(p, prog);
                return Ok(Outcome::Unfinished);
            }
            let Some(read) = prog.count.carry(prog.at, prog.read, prog.target) else {
                return Ok(Outcome::GaveUp(format!(
                    "counted {} entries back from a read of {}",
                    prog.count.counted, prog.read
                )));
            };
            match mend(conn, names, p, prog.target, read, prog.removed, prog.lowest).await? {
                Mended(_, undelivered) => return Ok(Outcome::Mended { undelivered }),
                Fresh => return Ok(Outcome::Fresh),
                Moved(to) => {
                    prog = Progress {
                        at: prog.target,
                        read,
                        target: to,
                        count: RangeCount::between(prog.target, to),
                        removed: prog.removed,
                        lowest: prog.lowest,
                    };
                }
                Removed => return Ok(Outcome::GaveUp("entries were removed meanwhile".into())),
                Gone => return Ok(Outcome::GaveUp("no stream or no group".into())),
                Refused(e) => return Ok(Outcome::GaveUp(format!("Redis refused the write: {e}"))),
            }
        }
        self.progress.insert(p, prog);
        Ok(Outcome::Unfinished)
    }
}
