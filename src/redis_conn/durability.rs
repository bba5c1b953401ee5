//! The Redis settings that decide whether accepted writes survive, checked
//! when the daemon starts: the server's version, the eviction policy and the
//! append-only file.
//!
//! writ's scripts need Redis 7.0 or newer (`XINFO STREAM`'s `entries-added`,
//! exclusive `XRANGE` bounds, `XAUTOCLAIM`'s deleted ids). On an older
//! server they would fail at the first write or read with a Lua error that
//! names none of this, so the daemon refuses to start and says so.
//!
//! The partition streams hold accepted writes that are not in MongoDB yet.
//! Under a memory limit, a policy that may evict any key (`allkeys-*`) could
//! drop a stream, and with it writes whose writers were told they were
//! accepted; nothing would say so. The daemon then refuses to start. A
//! policy that evicts only keys with an expiry (`volatile-*`) never touches
//! a stream or a cache entry (they have none), but may evict writers' ack
//! streams (their waits time out), leases (partitions change hands, fenced)
//! and admission records: allowed, with a warning. The same policies without
//! a limit (`maxmemory 0`) evict nothing yet: a warning. `noeviction` is
//! the documented setting (docs/operations.md).
//!
//! Without an append-only file (`appendonly no`) a Redis restart loses what
//! was accepted since the last snapshot, acked writes included. That is a
//! documented trade-off (docs/operations.md, "Failure modes"), so it is a
//! warning, unless replicas confirm every write (`redis.min_replicas_acked`).
//!
//! The check reads `INFO` (its default sections) on the node of each partition
//! stream. A Redis that refuses `INFO` (an ACL without `+info`), or a node
//! that does not answer it, is not checked; that is logged as a warning.

use redis::{Pipeline, Value};

use super::Conn;
use crate::error::{Error, Result};

/// What `INFO memory` says about eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `maxmemory` in bytes (0: no limit).
    pub maxmemory: u64,
    /// `maxmemory_policy`.
    pub policy: String,
}

impl Policy {
    /// Reads `maxmemory` and `maxmemory_policy` from an `INFO memory` reply.
    pub fn from_info(info: &str) -> Option<Policy> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
        };
        Some(Policy {
            maxmemory: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_string(),
        })
    }

    /// Whether the daemon may run on a node with this policy.
    pub fn verdict(&self) -> Verdict {
        let Policy { maxmemory, policy } = self;
        let limited = *maxmemory > 0;
        if policy.starts_with("allkeys-") && limited {
            Verdict::Refuse(format!(
                "Redis may evict writ's partition streams, which hold accepted writes not yet in MongoDB: \
                 its maxmemory-policy is {policy} with maxmemory {maxmemory} bytes. Set maxmemory-policy \
                 noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf), then start writ again"
            ))
        } else if policy.starts_with("allkeys-") {
            Verdict::Warn(format!(
                "Redis's maxmemory-policy is {policy}: harmless while maxmemory is 0 (no limit), but once a \
                 limit is set Redis may evict partition streams, which hold accepted writes. Set \
                 maxmemory-policy noeviction"
            ))
        } else if policy.starts_with("volatile-") && limited {
            Verdict::Warn(format!(
                "Redis's maxmemory-policy is {policy} with maxmemory {maxmemory} bytes: at the limit it \
                 evicts keys with an expiry: writers' ack streams (their waits time out; the writes are \
                 safe), partition leases (partitions change hands) and admission records (a client's \
                 re-sent admission could then add its writes twice). noeviction is recommended"
            ))
        } else {
            Verdict::Safe
        }
    }
}

/// The warning for a node that keeps no append-only file (`aof_enabled:0`
/// in `INFO persistence`), unless `replicas` confirm every write.
pub fn persistence_warning(info: &str, replicas: bool) -> Option<String> {
    let aof = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("aof_enabled:"))?;
    (aof == "0" && !replicas).then(|| {
        "Redis keeps no append-only file (appendonly no): if it restarts, the writes it accepted since \
         its last snapshot are lost, acked ones included. For writ's durability contract set appendonly \
         yes and appendfsync always (docs/operations.md, Failure modes), or have replicas confirm writes \
         (redis.min_replicas_acked)"
            .to_string()
    })
}

/// The oldest Redis major version writ runs on.
pub const MIN_MAJOR: u32 = 7;

/// The refusal for a server older than Redis 7.0, from its `INFO server`
/// (`redis_version:6.2.14`). `None` for a new enough server, or one whose
/// version cannot be read (a proxy or fork that hides it is not refused).
pub fn version_refusal(info: &str) -> Option<String> {
    let version = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("redis_version:"))?;
    let major: u32 = version.split('.').next()?.parse().ok()?;
    (major < MIN_MAJOR).then(|| {
        format!(
            "Redis {version} is too old for writ, which needs Redis {MIN_MAJOR}.0 or newer (its scripts use \
             XINFO STREAM's entries-added, exclusive XRANGE bounds and XAUTOCLAIM). Upgrade this Redis \
             (docs/operations.md, Requirements), then start writ again"
        )
    })
}

/// The refusal for a cluster node reached with `redis.cluster = false`, from
/// its `INFO` (`cluster_enabled:1`): a round's cache script also carries
/// the writers' ack streams, keys of other hash slots, which a cluster node
/// refuses (`CROSSSLOT`) even when it serves every slot; each round would be
/// retried for ever, holding its partition. `cluster`: the config's mode.
pub fn cluster_refusal(info: &str, cluster: bool) -> Option<String> {
    let enabled = info.lines().any(|l| l.trim_end() == "cluster_enabled:1");
    (enabled && !cluster).then(|| {
        "this Redis runs in cluster mode (INFO: cluster_enabled:1), but redis.cluster is false: writ's \
         scripts would reach keys of several hash slots in one call, which a cluster node refuses \
         (CROSSSLOT), even one that serves every slot. Set redis.cluster = true and give the nodes' URLs \
         (docs/operations.md, Redis Cluster)"
            .to_string()
    })
}

/// Whether a policy lets the daemon run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing writ keeps can be evicted.
    Safe,
    /// Runs; the message is logged as a warning.
    Warn(String),
    /// Accepted writes could be evicted; the daemon does not start.
    Refuse(String),
}

/// Checks the node of each of `streams` (the partition streams; one
/// server: its only node). `replicas`: whether replicas confirm every write.
/// `Err` only when a node's policy could evict a stream
/// ([`Error::UnsafeRedis`]), or a node is older than Redis 7.0 or a cluster
/// node while `redis.cluster` is false ([`Error::UnsupportedRedis`]); warnings are logged once each, and a check
/// that cannot run is logged and passes.
pub async fn check(conn: &Conn, streams: &[String], replicas: bool) -> Result<()> {
    let keys: &[String] = if conn.is_cluster() {
        streams
    } else {
        &streams[..streams.len().min(1)]
    };
    let mut warned = Vec::new();
    for key in keys {
        let info = match info_memory(conn, key).await {
            Ok(info) => info,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
                tracing::warn!("Redis's ACL refuses INFO to this daemon, so its maxmemory-policy and persistence are not checked (add +info to the daemon's user; docs/operations.md); writ needs noeviction and an append-only file");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(stream = %key, error = %e, "cannot read INFO of this stream's node, so its maxmemory-policy and persistence are not checked; writ needs noeviction and an append-only file");
                continue;
            }
        };
        if let Some(message) =
            version_refusal(&info).or_else(|| cluster_refusal(&info, conn.is_cluster()))
        {
            return Err(Error::UnsupportedRedis(message));
        }
        let Some(policy) = Policy::from_info(&info) else {
            tracing::warn!(stream = %key, "INFO memory has no maxmemory_policy; this node's eviction policy is not checked");
            continue;
        };
        let warning = match policy.verdict() {
            Verdict::Safe => None,
            Verdict::Warn(message) => Some(message),
            Verdict::Refuse(message) => return Err(Error::UnsafeRedis(message)),
        };
        for message in warning
            .into_iter()
            .chain(persistence_warning(&info, replicas))
        {
            if !warned.contains(&message) {
                tracing::warn!(stream = %key, "{message}");
                warned.push(message);
            }
        }
    }
    Ok(())
}

/// `INFO` (default sections: server, memory and persistence among them) of
/// the node that holds `key`.
async fn info_memory(conn: &Conn, key: &str) -> redis::RedisResult<String> {
    use redis::aio::ConnectionLike;
    use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
    let mut pipe = Pipeline::new();
    // Plain INFO (its default sections include these three): Redis before
    // 7.0 refuses INFO with more than one section (a syntax error), which
    // would skip the version check meant for it.
    pipe.cmd("INFO");
    let replies = match conn.clone() {
        Conn::Cluster(mut c, _) => {
            let to = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
            c.route_pipeline(pipe, 0, 1, to).await?
        }
        Conn::Node(mut c) => c.req_packed_commands(&pipe, 0, 1).await?,
    };
    let reply = replies
        .into_iter()
        .next()
        .unwrap_or(Value::Nil)
        .extract_error()?;
    redis::from_redis_value(reply).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(maxmemory: u64, policy: &str) -> Policy {
        Policy {
            maxmemory,
            policy: policy.into(),
        }
    }

    #[test]
    fn reads_info_memory() {
        let info = "# Memory\r\nused_memory:1000\r\nmaxmemory:104857600\r\nmaxmemory_human:100.00M\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(
            Policy::from_info(info),
            Some(policy(104_857_600, "allkeys-lru"))
        );
        assert_eq!(Policy::from_info("# Memory\r\nused_memory:1\r\n"), None);
    }

    #[test]
    fn no_append_only_file_warns_unless_replicas_confirm() {
        let off = "# Persistence\r\nloading:0\r\naof_enabled:0\r\n";
        let on = "# Persistence\r\nloading:0\r\naof_enabled:1\r\n";
        assert!(persistence_warning(off, false).is_some_and(|m| m.contains("appendonly yes")));
        assert_eq!(persistence_warning(off, true), None);
        assert_eq!(persistence_warning(on, false), None);
        assert_eq!(persistence_warning("# Memory\r\n", false), None);
    }

    #[test]
    fn a_cluster_node_is_refused_unless_cluster_mode_is_on() {
        let node = "# Cluster\r\ncluster_enabled:1\r\n";
        let refusal = cluster_refusal(node, false).unwrap();
        assert!(refusal.contains("redis.cluster = true"), "{refusal}");
        assert_eq!(cluster_refusal(node, true), None);
        assert_eq!(
            cluster_refusal("# Cluster\r\ncluster_enabled:0\r\n", false),
            None
        );
        assert_eq!(cluster_refusal("redis_version:7.0.15\r\n", false), None);
    }

    #[test]
    fn a_redis_older_than_7_is_refused() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_git_sha1:0\r\n");
        assert!(version_refusal(&info("6.2.14"))
            .is_some_and(|m| m.contains("Redis 6.2.14") && m.contains("7.0 or newer")));
        assert!(version_refusal(&info("5.0.7")).is_some());
        assert_eq!(version_refusal(&info("7.0.15")), None);
        assert_eq!(version_refusal(&info("7.4.1")), None);
        assert_eq!(version_refusal(&info("8.0.0")), None);
        assert_eq!(version_refusal(&info("255.255.255")), None);
        // No version to read: not refused.
        assert_eq!(version_refusal("# Memory\r\nmaxmemory:0\r\n"), None);
        assert_eq!(version_refusal(&info("unstable")), None);
    }

    #[test]
    fn only_a_limit_with_allkeys_refuses() {
        assert!(matches!(
            policy(1 << 20, "allkeys-lru").verdict(),
            Verdict::Refuse(m) if m.contains("allkeys-lru") && m.contains("noeviction")
        ));
        assert!(matches!(
            policy(1 << 20, "allkeys-random").verdict(),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            policy(0, "allkeys-lfu").verdict(),
            Verdict::Warn(_)
        ));
        assert!(matches!(
            policy(1 << 20, "volatile-ttl").verdict(),
            Verdict::Warn(_)
        ));
        assert_eq!(policy(0, "volatile-lru").verdict(), Verdict::Safe);
        assert_eq!(policy(1 << 20, "noeviction").verdict(), Verdict::Safe);
        assert_eq!(policy(0, "noeviction").verdict(), Verdict::Safe);
    }
}
