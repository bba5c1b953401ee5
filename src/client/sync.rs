//! The crash-restart rule (docs/protocol.md, "Crash-restart"): a process that
//! starts after another one crashed waits, before its first read, until the
//! daemon has applied every write accepted before that moment.
//!
//! For every partition it reads the stream's last entry id `T` once, then
//! waits until the consumer group's last-delivered-id is at least `T` and no
//! entry at or below `T` is still pending. Writes accepted later are not waited
//! for: they are newer than this process's start.

use std::time::Duration;

use redis::Value;

use super::Writ;
use crate::error::{Error, Result};
use crate::protocol::Version;
use crate::stream::{cmd, parse_entries};

const POLL: Duration = Duration::from_millis(10);

impl Writ {
    /// Waits until every write accepted before this call is applied and
    /// readable, at most `timeout`. backtest-kit's `waitForInit(true)` is the
    /// place to call it.
    pub async fn sync(&self, timeout: Duration) -> Result<()> {
        // The whole of it, reading the targets included: each command may
        // wait for its reply timeout (more, with cluster retries) before the
        // loop would look at the deadline again.
        let timed_out = || {
            Error::Timeout {
            after: timeout,
            what: "the daemon to apply the writes accepted before this process started (is `writ serve` running? see `writ status`)",
            accepted: None,
        }
        };
        tokio::time::timeout(timeout, self.sync_within(timeout, timed_out))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    async fn sync_within(&self, timeout: Duration, timed_out: impl Fn() -> Error) -> Result<()> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let mut targets = Vec::new();
        for p in 0..inner.config.partitions {
            let stream = inner.names.stream(p);
            let last: Value = cmd::newest(&stream).query_async(&mut conn).await?;
            if let Some(e) = parse_entries(&last).first() {
                targets.push((stream, e.id));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for (stream, target) in targets {
            while !applied_through(&mut conn, &stream, &inner.names.group(), target).await? {
                if tokio::time::Instant::now() >= deadline {
                    return Err(timed_out());
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
}

/// Whether every entry of `stream` up to `target` is delivered and acked.
pub(super) async fn applied_through(
    conn: &mut crate::redis_conn::Conn,
    stream: &str,
    group: &str,
    target: Version,
) -> Result<bool> {
    if !delivered_through(conn, stream, group, target).await? {
        return Ok(false);
    }
    let pending: Value = cmd::pending_through(stream, group, target)
        .query_async(conn)
        .await?;
    Ok(matches!(pending, Value::Array(ref a) if a.is_empty()))
}

/// Whether `group` has delivered `stream`'s entries up to `target`.
pub(super) async fn delivered_through(
    conn: &mut crate::redis_conn::Conn,
    stream: &str,
    group: &str,
    target: Version,
) -> Result<bool> {
    let groups: Value = cmd::groups(stream).query_async(conn).await?;
    let mut delivered = None;
    if let Value::Array(gs) = &groups {
        for g in gs {
            let Value::Array(m) = g else { continue };
            let get = |name: &str| {
                m.chunks(2).find_map(|c| match (&c[0], &c[1]) {
                    (Value::BulkString(k), Value::BulkString(v)) if k == name.as_bytes() => {
                        String::from_utf8(v.clone()).ok()
                    }
                    _ => None,
                })
            };
            if get("name").as_deref() == Some(group) {
                delivered = get("last-delivered-id").and_then(|s| s.parse::<Version>().ok());
            }
        }
    }
    Ok(delivered.is_some_and(|d| d >= target))
}
