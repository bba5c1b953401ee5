//! Partition leases with fencing tokens.
//!
//! A partition's owner holds `<ns>:{p<N>}:lease` (its consumer name, with a
//! TTL). Each new acquisition moves `<ns>:{p<N>}:fence` up; the owner keeps
//! that token and the cache compare-and-set refuses any write whose token is
//! not the current one, so a daemon that lost its lease (paused, partitioned)
//! cannot move the cache. Both keys share the partition's hash tag, so the
//! check is atomic with the write.
//!
//! The check is for equality, so at any moment at most one token is current,
//! even if a Redis failover rolls the counter back. Each acquisition moves
//! the fence by a random step ([`FENCE_STEP`]), so that after such a rollback
//! the next acquisition does not hand out the lost acquisition's token again
//! (two holders of one current token), but for a 1 in 2^20 chance. With
//! `redis.min_replicas_acked`, a new token is used only after `WAIT`
//! confirms it reached the replicas (otherwise the lease is released again),
//! so a promoted replica's counter is never behind a token in use. Renewals
//! are not confirmed: a renewal lost in a failover only ends the lease
//! early, and the next owner's new token fences the old one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::redis_conn::{Confirmer, Conn, Replication};

use crate::error::Result;
use crate::protocol::Names;

/// Takes a free lease, once per call even when the call runs twice
/// (`src/lua/lease_acquire.lua`).
const ACQUIRE: &str = include_str!("../lua/lease_acquire.lua");

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Only the tenure that holds the lease gives it up: the name alone is not
/// enough, as a replacement started under the same `consumer_name` takes the
/// lease over with a new token while the old process may still be draining.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// How far one acquisition moves the fence (src/lua/lease_acquire.lua):
/// random, so that a failover that rolled the fence back does not make the
/// next acquisition repeat a token still held. From 2, so that a rollback of
/// one step of a writ before this change is covered as well; 2^20 wide, so
/// that the 18-digit fence lasts for about 10^12 acquisitions.
pub const FENCE_STEP: std::ops::RangeInclusive<u64> = 2..=(1 << 20) + 1;

/// A held lease: its fencing token and how long it is surely valid.
#[derive(Debug)]
pub struct Lease {
    /// Partition.
    pub partition: u32,
    /// Fencing token of this tenure.
    pub token: u64,
    valid_until: Mutex<Instant>,
}

impl Lease {
    /// Whether the lease is still surely ours (local clock, with margin).
    pub fn valid(&self) -> bool {
        Instant::now() < *self.valid_until.lock().expect("lock")
    }

    /// How long it is still surely ours (zero once it is not).
    pub fn left(&self) -> Duration {
        self.valid_until
            .lock()
            .expect("lock")
            .saturating_duration_since(Instant::now())
    }

    /// No longer ours: a renewal found it expired (and maybe taken).
    fn lost(&self) {
        *self.valid_until.lock().expect("lock") = Instant::now();
    }

    fn extend(&self, from: Instant, ttl: Duration) {
        // Keep a safety margin: a tenth of the TTL.
        *self.valid_until.lock().expect("lock") = from + ttl - ttl / 10;
    }
}

/// Lease operations for one namespace.
#[derive(Clone)]
pub struct Leases {
    conn: Conn,
    names: Names,
    me: String,
    ttl: Duration,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    replication: Replication,
}

/// What a try for a lease got.
#[derive(Debug)]
pub enum Acquired {
    /// The lease, now this daemon's.
    Taken(Lease),
    /// Another holds it, for at least this long when Redis said.
    Held(Option<Duration>),
}

impl Leases {
    /// Leases held as `me`, lasting `ttl` unless renewed.
    pub fn new(conn: Conn, ns: &str, me: &str, ttl: Duration) -> Leases {
        Leases {
            conn,
            names: Names::new(ns),
            me: me.into(),
            ttl,
            acquire: crate::redis_conn::script(ACQUIRE),
            renew: crate::redis_conn::script(RENEW),
            release: crate::redis_conn::script(RELEASE),
            replication: Replication::NONE,
        }
    }

    /// Uses a new lease's token only once `replication` confirms it.
    pub fn with_replication(mut self, replication: Replication) -> Leases {
        self.replication = replication;
        self
    }

    /// Takes the lease of `p` if nobody holds it.
    pub async fn try_acquire(&self, p: u32) -> Result<Option<Lease>> {
        Ok(match self.acquire_or_held(p).await? {
            Acquired::Taken(lease) => Some(lease),
            Acquired::Held(_) => None,
        })
    }

    /// Takes the lease of `p` if nobody holds it; else how long it is held
    /// for at least (when Redis said).
    pub async fn acquire_or_held(&self, p: u32) -> Result<Acquired> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let mut call = self.acquire.key(self.names.lease(p));
        call.key(self.names.fence(p))
            .key(self.names.acquired(p))
            .arg(&self.me)
            .arg(self.ttl.as_millis() as u64)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(rand::random_range(FENCE_STEP));
        // With replicas to confirm, note the connection the acquisition went
        // out on: its WAIT must go out on the same one.
        let (client, reply): (u64, redis::Value) = if self.replication.wanted() {
            let mut pipe = Confirmer::write_pipeline();
            pipe.load_script(&self.acquire).ignore();
            pipe.invoke_script(&call);
            pipe.query_async(&mut conn).await?
        } else {
            (0, call.invoke_async(&mut conn).await?)
        };
        let token = match reply {
            redis::Value::Int(n) if n <= 0 => {
                let held = (n < 0).then(|| Duration::from_millis(n.unsigned_abs()));
                return Ok(Acquired::Held(held));
            }
            other => redis::from_redis_value::<u64>(other).map_err(redis::RedisError::from)?,
        };
        if self.replication.wanted() {
            let lease_key = self.names.lease(p);
            if let Err(e) = self
                .replication
                .confirm_on(&conn, &lease_key, client, "a partition lease")
                .await
            {
                // Not confirmed: a failover could roll the fence back below
                // this token, so it is never used. Someone takes the lease
                // again later.
                self.release(p, token).await.ok();
                return Err(e);
            }
        }
        let lease = Lease {
            partition: p,
            token,
            valid_until: Mutex::new(started),
        };
        lease.extend(started, self.ttl);
        Ok(Acquired::Taken(lease))
    }

    /// Renews; `false` means the lease is lost (expired and possibly taken).
    pub async fn renew(&self, lease: &Lease) -> Result<bool> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .renew
            .key(self.names.lease(lease.partition))
            .key(self.names.fence(lease.partition))
            .arg(&self.me)
            .arg(self.ttl.as_millis() as u64)
            .arg(lease.token)
            .invoke_async(&mut conn)
            .await?;
        if ok == 1 {
            lease.extend(started, self.ttl);
        } else {
            lease.lost();
        }
        Ok(ok == 1)
    }

    /// Gives the lease of partition `p` up, only if still this tenure's
    /// (its name and its fencing `token`); `false`: it was not (expired, and
    /// maybe taken by another daemon), so nothing was released.
    pub async fn release(&self, p: u32, token: u64) -> Result<bool> {
        let mut conn = self.conn.clone();
        let released: i64 = self
            .release
            .key(self.names.lease(p))
            .key(self.names.fence(p))
            .arg(&self.me)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }
}
