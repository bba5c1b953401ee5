//! Membership: how many daemons are alive, judged on Redis's clock.
//!
//! Each daemon heartbeats into `<ns>:members`, a sorted set scored by time,
//! and counts the members heard from within one lease TTL. The heartbeat
//! script scores with Redis's `TIME` and returns it, and the count's cut-off
//! is this daemon's clock corrected by the offset that reply measured, so
//! the hosts' clocks need not agree: a daemon whose clock ran behind was
//! pruned by the others (who then kept its share), and one whose clock ran
//! ahead stayed counted after its death for as long as it ran ahead (its
//! partitions waited that long for a new owner).
//!
//! A Redis ACL without `+time` (the documented one before 2026-12-04)
//! refuses the script: the daemon then asks for `TIME` alone, and on
//! `NOPERM` says so once and heartbeats on its own wall clock, as before.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

use crate::protocol::wall_clock_ms;
use crate::redis_conn::Conn;

const HEARTBEAT: &str = include_str!("../lua/members_heartbeat.lua");

/// This daemon's membership: its heartbeat and its count of the live ones.
pub(super) struct Members {
    key: String,
    me: String,
    ttl_ms: u64,
    script: redis::Script,
    /// Redis's clock minus this host's, as the last heartbeat measured.
    offset_ms: AtomicI64,
    /// Redis refused `TIME` (an ACL without `+time`): use this host's clock.
    own_clock: AtomicBool,
    /// The last heartbeat failed (said once per failing streak: at Redis's
    /// `maxmemory` it fails every renewal, every 500 ms by default).
    failing: AtomicBool,
    /// Out of the member set while it cannot count the members: no
    /// heartbeat ([`Members::step_out`]).
    out: AtomicBool,
    /// Held for a whole heartbeat (a few round trips): a step out waits for
    /// the one under way, so none lands after its `ZREM`.
    beat: tokio::sync::Mutex<()>,
}

impl Members {
    pub(super) fn new(key: String, me: &str, ttl: std::time::Duration) -> Members {
        Members {
            key,
            me: me.to_string(),
            ttl_ms: ttl.as_millis() as u64,
            script: crate::redis_conn::script(HEARTBEAT),
            offset_ms: AtomicI64::new(0),
            own_clock: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            out: AtomicBool::new(false),
            beat: tokio::sync::Mutex::new(()),
        }
    }

    /// Leaves the member set and heartbeats no more until [`Members::step_in`]:
    /// a daemon that cannot count the members takes no partition, and counted
    /// by the others it would keep their shares below what they could take,
    /// leaving partitions nobody owns.
    pub(super) async fn step_out(&self, conn: &Conn) {
        self.out.store(true, Relaxed);
        let _beat = self.beat.lock().await;
        self.leave(conn).await;
    }

    /// Whether it stepped out ([`Members::step_out`]).
    pub(super) fn is_out(&self) -> bool {
        self.out.load(Relaxed)
    }

    /// Heartbeats again from the next tick on.
    pub(super) fn step_in(&self) {
        self.out.store(false, Relaxed);
    }

    /// Refreshes this daemon's score and prunes members silent for a lease
    /// TTL; a failure is logged and retried at the next heartbeat.
    pub(super) async fn heartbeat(&self, conn: &Conn) {
        let _beat = self.beat.lock().await;
        if self.out.load(Relaxed) {
            return;
        }
        if !self.own_clock.load(Relaxed) {
            let before = local_ms();
            let res = self
                .script
                .key(&self.key)
                .arg(&self.me)
                .arg(self.ttl_ms)
                .invoke_async::<i64>(&mut conn.clone())
                .await;
            match res {
                Ok(redis_ms) => {
                    let mid = (before + local_ms()) / 2;
                    self.offset_ms.store(redis_ms - mid as i64, Relaxed);
                    self.worked();
                    return;
                }
                // A command refused inside a script comes back as a plain
                // error, so ask for `TIME` alone: only that says NOPERM.
                Err(e) if !time_refused(conn).await => {
                    self.failed(&e);
                    return;
                }
                Err(_) => {
                    tracing::warn!("Redis refuses TIME to this daemon (an ACL without +time, see docs/operations.md): membership uses this host's clock from now on, so keep the daemons' clocks in step");
                    self.own_clock.store(true, Relaxed);
                    self.offset_ms.store(0, Relaxed);
                }
            }
        }
        let now = local_ms();
        let res: redis::RedisResult<()> = redis::pipe()
            .cmd("ZADD")
            .arg(&self.key)
            .arg(now)
            .arg(&self.me)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.key)
            .arg("-inf")
            .arg(now.saturating_sub(self.ttl_ms))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&self.key)
            .arg(self.ttl_ms * 3)
            .ignore()
            .query_async(&mut conn.clone())
            .await;
        match res {
            Ok(()) => self.worked(),
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&self, e: &redis::RedisError) {
        if !self.failing.swap(true, Relaxed) {
            tracing::warn!(error = %e, "cannot heartbeat; retrying at each renewal, silently until it works again");
        }
    }

    fn worked(&self) {
        if self.failing.swap(false, Relaxed) {
            tracing::info!("the heartbeat works again");
        }
    }

    /// The members heard from within one lease TTL, on Redis's clock.
    pub(super) async fn count(&self, conn: &Conn) -> redis::RedisResult<u64> {
        let now = (local_ms() as i64 + self.offset_ms.load(Relaxed)).max(0) as u64;
        heard_since(conn, &self.key, now.saturating_sub(self.ttl_ms)).await
    }

    /// Leaves the member set (a graceful stop), so the others' share grows.
    pub(super) async fn leave(&self, conn: &Conn) {
        let _: redis::RedisResult<()> = redis::cmd("ZREM")
            .arg(&self.key)
            .arg(&self.me)
            .query_async(&mut conn.clone())
            .await;
    }
}

/// The members of `key` heard from within `ttl`, judged on Redis's clock
/// (its `TIME`; this host's clock if Redis refuses `TIME`): for a tool that
/// must know whether any daemon runs, without heartbeating itself.
pub(crate) async fn live(
    conn: &Conn,
    key: &str,
    ttl: std::time::Duration,
) -> redis::RedisResult<u64> {
    let now = match redis::cmd("TIME")
        .query_async::<(u64, u64)>(&mut conn.clone())
        .await
    {
        Ok((secs, micros)) => secs * 1000 + micros / 1000,
        Err(e) if crate::redis_conn::has_code(&e, "NOPERM") => wall_clock_ms(),
        Err(e) => return Err(e),
    };
    heard_since(conn, key, now.saturating_sub(ttl.as_millis() as u64)).await
}

/// The members of `key` whose last heartbeat is after `cutoff_ms`.
async fn heard_since(conn: &Conn, key: &str, cutoff_ms: u64) -> redis::RedisResult<u64> {
    redis::cmd("ZCOUNT")
        .arg(key)
        .arg(format!("({cutoff_ms}"))
        .arg("+inf")
        .query_async::<u64>(&mut conn.clone())
        .await
}

/// Whether Redis refuses `TIME` to this daemon's user (`NOPERM`).
async fn time_refused(conn: &Conn) -> bool {
    matches!(
        redis::cmd("TIME").query_async::<redis::Value>(&mut conn.clone()).await,
        Err(e) if crate::redis_conn::has_code(&e, "NOPERM")
    )
}

/// This host's wall clock in ms, shifted by `WRIT_TEST_CLOCK_SKEW_MS` (a
/// test hook: a host whose clock runs ahead or behind; membership only).
fn local_ms() -> u64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("WRIT_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    });
    (wall_clock_ms() as i64 + skew).max(0) as u64
}
