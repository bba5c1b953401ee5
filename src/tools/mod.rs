//! Operator tools behind the CLI: `writ status`, `writ dlq`, `writ replay`,
//! `writ rebuild-cache`. Each works directly against Redis and MongoDB, safely
//! beside running daemons: every apply runs the daemon's own routine
//! ([`crate::apply::Attempts`]: the sequence guard, retries through outages,
//! `max_attempts` for permanent failures) and every cache write goes through
//! the same compare-and-set.

pub mod dlq;
pub mod failed;
pub mod rebuild;
pub mod replay;

use tokio_util::sync::CancellationToken;

use crate::ack::Outcome;
use crate::apply::{Attempts, Store};
use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{self, Names, Version};
use crate::redis_conn::Replication;
use crate::stream::Fields;

/// Connections the tools share.
pub struct Tools {
    /// The config.
    pub config: Config,
    /// Key names.
    pub names: Names,
    /// Plain reconnecting Redis connection.
    pub conn: crate::redis_conn::Conn,
    /// MongoDB.
    pub store: Store,
    /// The cache.
    pub cache: Cache,
    /// Stops the retries of an apply (the CLI cancels it on SIGINT/SIGTERM).
    pub abort: CancellationToken,
    /// Collections whose unique key index this run has made sure of.
    indexed: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Tools {
    /// Connects.
    pub async fn connect(config: Config) -> Result<Tools> {
        let mut conn =
            crate::redis_conn::connect(&config, crate::redis_conn::wait_bound(&config)).await?;
        let names = Names::new(&config.namespace);
        // A replay or retry with another count would compute other cache keys
        // and read other streams than the daemons.
        crate::partition_count::claim(&mut conn, &config, crate::partition_count::By::Client)
            .await?;
        crate::database_record::check(&mut conn, &config).await?;
        let store = Store::connect(&config).await?;
        Ok(Tools {
            names,
            // As the daemon's: with `redis.min_replicas_acked`, a cache entry
            // the tools make readable must survive a failover too, or a
            // reader could see the older entry a promoted replica still holds.
            cache: Cache::new(conn.clone()).with_replication(Replication::of(&config)),
            conn,
            store,
            config,
            abort: CancellationToken::new(),
            indexed: Default::default(),
        })
    }

    /// Closes the MongoDB driver ([`Store::close`]): the last call of a run.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// Refuses a `--collection` the config does not declare (a typo would
    /// otherwise match nothing and look like success).
    pub fn check_collection(&self, collection: Option<&str>) -> Result<()> {
        match collection {
            Some(c) if self.config.collection(c).is_none() => Err(Error::Config(format!(
                "collection {c:?} is not declared in the config; declared: {}",
                self.config
                    .collections
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Makes sure `coll` has its unique key index before the first apply.
    /// `writ serve` creates it at start, but a tool may run before any daemon
    /// ran with this collection declared (`dlq retry` after declaring an
    /// unknown collection). Without the index the sequence guard cannot see a
    /// stale write: the upsert would insert a second document for the key.
    async fn ensure_index(&self, coll: &crate::config::CollectionConfig) -> Result<()> {
        if self.indexed.lock().expect("lock").contains(&coll.name) {
            return Ok(());
        }
        self.store
            .ensure_indexes_waiting([coll], self.config.backoff_cap, &self.abort)
            .await?;
        self.indexed.lock().expect("lock").insert(coll.name.clone());
        Ok(())
    }

    /// Applies one retained entry of `partition`'s stream (when known) at
    /// its own version with the daemon's routine, then refreshes the cache
    /// (never backwards): what it did and what the key holds now.
    /// `Err(Rejected)` if it cannot apply, as the daemon would refuse it
    /// (including an entry in the wrong partition's stream); `Err(Shutdown)`
    /// if [`Tools::abort`] stopped it.
    pub async fn apply_entry(
        &self,
        partition: Option<u32>,
        count: u32,
        id: Version,
        fields: &Fields,
    ) -> Result<Reapplied> {
        let write = protocol::decode_in(fields, &self.config, partition, count)?;
        let coll = self
            .config
            .collection(&write.collection)
            .expect("decode checked it");
        self.ensure_index(coll).await?;
        let attempts = Attempts {
            store: &self.store,
            config: &self.config,
            abort: &self.abort,
            max_attempts: self.config.max_attempts,
        };
        let applied = match attempts.apply(|| true, coll, &write, id).await {
            Some(Ok(a)) => a,
            Some(Err((reject, _))) => return Err(Error::Rejected(reject)),
            None => return Err(Error::Shutdown),
        };
        let (version, doc, stale) = applied.into_readable(id);
        let outcome = if stale {
            Outcome::Stale
        } else {
            Outcome::Applied
        };
        let p = write
            .key
            .partition(&write.collection, self.config.partitions);
        let key = self
            .names
            .cache(p, &write.collection, &write.key.canonical());
        self.cache
            .publish(&key, version, doc.as_ref(), None, &self.abort)
            .await
            .ok_or(Error::Shutdown)?;
        Ok(Reapplied {
            outcome,
            now: version,
            gone: doc.as_ref().is_none_or(|d| !crate::apply::is_live(d)),
        })
    }
}

/// What [`Tools::apply_entry`] did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reapplied {
    /// Applied, or stale (MongoDB already held this version or a newer one).
    pub outcome: Outcome,
    /// The version the key holds now.
    pub now: Version,
    /// Whether the key reads as absent now (hard-deleted, soft-removed, or
    /// never written).
    pub gone: bool,
}

/// Parses `--from` (and `--since`): a stream id (`ms-seq`), unix
/// milliseconds, a UTC time (`2026-11-23T01:30:00Z`), or a duration ago
/// (`90s`, `15m`, `2h`, `1d`). A point that names no sequence starts at
/// `ms-0`.
pub fn parse_point(s: &str, now_ms: u64) -> Option<Version> {
    let (ms, seq) = parse_parts(s, now_ms)?;
    Some(Version {
        ms,
        seq: seq.unwrap_or(0),
    })
}

/// Parses `--to`, which is inclusive: as [`parse_point`], but a point that
/// names no sequence takes its whole millisecond (`ms-<max>`), as Redis
/// reads an incomplete end id.
pub fn parse_end(s: &str, now_ms: u64) -> Option<Version> {
    let (ms, seq) = parse_parts(s, now_ms)?;
    Some(Version {
        ms,
        seq: seq.unwrap_or(u64::MAX),
    })
}

/// A point's milliseconds, and its sequence if it names one.
fn parse_parts(s: &str, now_ms: u64) -> Option<(u64, Option<u64>)> {
    if let Some(ms) = parse_utc(s) {
        return Some((ms, None));
    }
    if let Some((ms, seq)) = s.split_once('-') {
        // `2026-11` is the start of a date, not the stream id 2026-11 (two
        // seconds after 1970), which would replay everything retained.
        let datelike = ms.len() == 4 && seq.len() <= 2;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if datelike || !digits(ms) || !digits(seq) {
            return None;
        }
        return Some((ms.parse().ok()?, Some(seq.parse().ok()?)));
    }
    if s.len() >= 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some((s.parse().ok()?, None));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some((now_ms.saturating_sub(n.checked_mul(scale)?), None))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` to unix milliseconds; `None` for anything
/// else, a day the month does not have included.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let number = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.len() <= 4 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())?
    };
    let mut d = date.splitn(3, '-').map(number);
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(number);
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&m) || !(1..=month_days).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from the civil date (proleptic Gregorian), after H. Hinnant.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points() {
        assert_eq!(
            parse_point("1700000000000-3", 0),
            Some(Version {
                ms: 1_700_000_000_000,
                seq: 3
            })
        );
        assert_eq!(
            parse_point("1700000000000", 0),
            Some(Version {
                ms: 1_700_000_000_000,
                seq: 0
            })
        );
        assert_eq!(
            parse_point("15m", 1_000_000),
            Some(Version {
                ms: 100_000,
                seq: 0
            })
        );
        assert_eq!(parse_point("soon", 0), None);
        assert_eq!(
            parse_point("1970-01-01T00:00:01Z", 0),
            Some(Version { ms: 1000, seq: 0 })
        );
        assert_eq!(
            parse_point("2023-11-14T22:13:20.5Z", 0),
            Some(Version {
                ms: 1_700_000_000_500,
                seq: 0
            })
        );
        assert_eq!(parse_point("0-0", 0), Some(Version { ms: 0, seq: 0 }));
    }

    /// Input that used to panic, or to mean something else than it says.
    #[test]
    fn odd_points_are_refused() {
        for odd in [
            "999999999999999d",         // overflowed the multiplication (a panic)
            "2026-11-23T01:30:00.12éZ", // a non-ASCII fraction (cut mid-char: a panic)
            "2026-11",                  // a date's start, not the stream id 2026-11
            "2026-02-31T00:00:00Z",     // no such day (was 3 March)
            "2025-02-29T00:00:00Z",
            "1700000000000-",
            "-5",
            "+1700000000000",
        ] {
            assert_eq!(parse_point(odd, 1_000_000), None, "{odd}");
        }
        assert!(parse_point("2024-02-29T00:00:00Z", 0).is_some());
    }

    /// `--to` takes its whole millisecond unless it names a sequence.
    #[test]
    fn an_end_is_inclusive() {
        let ms = 1_700_000_000_000;
        assert_eq!(
            parse_end("1700000000000", 0),
            Some(Version { ms, seq: u64::MAX })
        );
        assert_eq!(
            parse_end("1700000000000-3", 0),
            Some(Version { ms, seq: 3 })
        );
        assert_eq!(
            parse_end("2023-11-14T22:13:20Z", 0),
            Some(Version { ms, seq: u64::MAX })
        );
        assert_eq!(
            parse_end("1m", ms + 60_000),
            Some(Version { ms, seq: u64::MAX })
        );
    }
}
