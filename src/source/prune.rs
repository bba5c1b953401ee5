//! Consumers of earlier daemons, removed from a partition's group.
//!
//! A daemon reads its partitions' groups as its `daemon.consumer_name`
//! (hostname-pid by default), and Redis keeps a consumer in a group until it
//! is deleted: every restart or redeploy left one more in every partition's
//! group, for ever (`XINFO CONSUMERS` grows, and so does the memory). A
//! tenure's reader, once its claim has moved every earlier consumer's pending
//! entries to itself, removes the consumers that hold none
//! (`src/lua/consumers_prune.lua`), once per tenure.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::redis_conn::Conn;

/// The pruning script.
pub const PRUNE_LUA: &str = include_str!("../lua/consumers_prune.lua");

/// Where a tenure prunes: its partition's stream and group, and its fence.
pub struct Tenure<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub fence: &'a str,
    pub token: u64,
}

/// The most consumers one call removes: a group that collected thousands
/// over years is emptied over the next tenures, in short script runs.
const MOST: u32 = 1_000;

/// Removes the consumers of `group` on `stream` that hold no pending entry,
/// except `me`, while `fence` still holds this tenure's `token`. A failure (an ACL without `xinfo|consumers` or
/// `xgroup|delconsumer`, Redis unavailable) is logged, once per process for
/// a refusal, and costs nothing else: reading goes on.
pub async fn prune(conn: &mut Conn, p: u32, at: Tenure<'_>, me: &str) {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    static REFUSAL_SAID: AtomicBool = AtomicBool::new(false);
    let res: redis::RedisResult<(u64, u64)> = SCRIPT
        .get_or_init(|| crate::redis_conn::script(PRUNE_LUA))
        .key(at.stream)
        .key(at.fence)
        .arg(at.group)
        .arg(me)
        .arg(MOST)
        .arg(at.token)
        .invoke_async(conn)
        .await;
    match res {
        Ok((0, _)) => {}
        Ok((removed, left)) => {
            tracing::info!(
                partition = p,
                removed,
                left,
                "removed consumers of earlier daemons that held no pending entry"
            );
        }
        // Redis 7.0 reports a command a script's user may not run as `ERR`
        // (7.2 and later: `NOPERM`); other codes (READONLY, LOADING, BUSY,
        // CLUSTERDOWN, ...) pass, and the next tenure tries again.
        Err(e)
            if matches!(
                crate::redis_conn::code_of(&e).as_deref(),
                Some("ERR" | "NOPERM")
            ) =>
        {
            if !REFUSAL_SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(partition = p, error = %e, "cannot remove the consumers of earlier daemons from the partitions' groups (each restart leaves one per partition); if Redis refused for the ACL, give the daemon's user +xinfo|consumers and +xgroup|delconsumer (docs/operations.md). Said once");
            }
        }
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "consumer pruning failed; the next tenure tries again");
        }
    }
}
