//! Redis's clock, as a writer needs it: every admission call carries the last
//! moment it may run, in Redis's clock, so that a copy of the call that Redis
//! runs after its caller gave up on it (a paused Redis, a re-send) adds
//! nothing (docs/protocol.md §2a, "A deadline").
//!
//! A partition's sample is a lower bound of Redis's clock minus this
//! process's monotonic clock, taken with `TIME` inside a script keyed to the
//! partition (so a cluster routes it to the partition's node). It is taken
//! before the partition's first call and again once it is [`FRESH`] old.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::redis_conn::Conn;

/// How long a partition's sample is used before it is taken again.
pub const FRESH: Duration = Duration::from_secs(10);

/// Redis's `TIME` from inside a script, so that the key routes it. A user
/// that may not run `TIME` gets the error `NOTIME` (an ACL refusal inside a
/// script is a plain `ERR`, told apart only by its text).
const TIME_LUA: &str = "local t = redis.pcall('TIME') \
    if t['err'] then return redis.error_reply('NOTIME ' .. t['err']) end \
    return {t[1], t[2]}";

/// One sample: `lower` = Redis's clock (ms) − [`local_ms`] when the reply
/// arrived (`at`), a lower bound of the offset between the two clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    lower: i64,
    at: i64,
}

/// What a partition's calls carry, and when it was last asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    Sample(Sample, Instant),
    /// The writer's Redis user may not run `TIME` (`NOTIME`): no deadline
    /// (asked again as a sample is).
    Refused(Instant),
}

/// The samples of one client handle, one per partition.
pub struct RedisClock {
    known: Vec<Mutex<Option<Known>>>,
    script: redis::Script,
    /// Whether the missing `+time` was logged.
    warned: std::sync::atomic::AtomicBool,
}

/// This process's monotonic clock in ms, from a fixed start.
fn local_ms(t: Instant) -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // An instant before the start reads 0: a sample then looks older and its
    // bound lower, which only moves deadlines earlier.
    i64::try_from(t.saturating_duration_since(start).as_millis()).unwrap_or(i64::MAX)
}

/// The deadline, in Redis's clock (unix ms), of a call whose caller gives up
/// at `give_up`: 1 ms per second of the sample's age for the clocks' drift,
/// 2 ms for rounding (docs/protocol.md §2a).
pub fn deadline_of(s: Sample, give_up: Instant) -> i64 {
    let g = local_ms(give_up);
    let age = (g - s.at).max(0);
    g + s.lower - (age + 999) / 1000 - 2
}

/// Reads `TIME`'s reply (seconds, microseconds) as unix ms.
fn redis_ms(reply: &(String, String)) -> Option<i64> {
    let secs: i64 = reply.0.parse().ok()?;
    let micros: i64 = reply.1.parse().ok()?;
    Some(secs * 1000 + micros / 1000)
}

impl RedisClock {
    /// Samples for `partitions` partitions, none taken yet.
    pub fn new(partitions: usize) -> RedisClock {
        local_ms(Instant::now());
        RedisClock {
            known: (0..partitions).map(|_| Mutex::new(None)).collect(),
            script: crate::redis_conn::script(TIME_LUA),
            warned: Default::default(),
        }
    }

    /// The deadline of a call to partition `p` (keyed by `key`, its meta
    /// hash) whose caller gives up at `give_up`; `0` (none) where the
    /// writer may not run `TIME`. Takes a sample first if the partition has
    /// none or an old one. If that fails, an old sample still serves (its
    /// age widens the drift allowance); with none, the error (the call must
    /// not go without a deadline).
    pub async fn deadline(
        &self,
        p: usize,
        key: &str,
        conn: &Conn,
        give_up: Instant,
    ) -> redis::RedisResult<i64> {
        let known = *self.known[p].lock().expect("lock");
        let known = match known {
            Some(k @ (Known::Sample(_, taken) | Known::Refused(taken)))
                if taken.elapsed() < FRESH =>
            {
                k
            }
            old => match self.sample(key, conn).await {
                Ok(k) => {
                    *self.known[p].lock().expect("lock") = Some(k);
                    k
                }
                // The old sample serves, with the allowance of its age; it
                // is asked again after FRESH, not at every call meanwhile.
                Err(e) => match old.ok_or(e)? {
                    Known::Sample(s, _) => {
                        let k = Known::Sample(s, Instant::now());
                        *self.known[p].lock().expect("lock") = Some(k);
                        k
                    }
                    refused => refused,
                },
            },
        };
        Ok(match known {
            Known::Sample(s, _) => deadline_of(s, give_up),
            Known::Refused(_) => 0,
        })
    }

    async fn sample(&self, key: &str, conn: &Conn) -> redis::RedisResult<Known> {
        let mut conn = conn.clone();
        let reply = self
            .script
            .key(key)
            .invoke_async::<(String, String)>(&mut conn)
            .await;
        let arrived = Instant::now();
        match reply {
            Ok(reply) => {
                let r = redis_ms(&reply).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "Redis's TIME made no sense",
                        format!("{reply:?}"),
                    ))
                })?;
                let at = local_ms(arrived);
                Ok(Known::Sample(Sample { lower: r - at, at }, arrived))
            }
            Err(e) if crate::redis_conn::has_code(&e, "NOTIME") => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "this writer's Redis user may not run TIME (an ACL set up before admission \
                         deadlines; docs/operations.md, Redis ACL users): admission calls go without \
                         a deadline, so a write reported as \"may or may not have been accepted\" \
                         could still land later; add +time to the user"
                    );
                }
                Ok(Known::Refused(Instant::now()))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deadline is the giving-up time in Redis's clock, less the drift
    /// allowance (1 ms per started second of the sample's age) and 2 ms.
    #[test]
    fn the_deadline_is_the_giving_up_time_in_redis_clock_less_the_allowances() {
        let now = Instant::now();
        let s = Sample {
            lower: 1_000_000,
            at: local_ms(now),
        };
        for (after_ms, drift) in [(0, 0), (500, 1), (1000, 1), (2500, 3)] {
            let give_up = now + Duration::from_millis(after_ms);
            assert_eq!(
                deadline_of(s, give_up),
                local_ms(give_up) + 1_000_000 - drift - 2,
                "{after_ms} ms after the sample"
            );
        }
        assert_eq!(
            redis_ms(&("1700000000".into(), "123999".into())),
            Some(1_700_000_000_123)
        );
        assert_eq!(redis_ms(&("x".into(), "1".into())), None);
    }
}
