//! Redis connections. Every connection writ opens (daemon, CLI tools, the
//! Rust client) comes from [`connect`]: a [`Conn`], either a self-healing
//! single-node `ConnectionManager` or, with `redis.cluster = true`, redis-rs's
//! async cluster connection (slots discovered from the seed URLs, `MOVED` and
//! failovers followed). Both have explicit timeouts and speak TLS for
//! `rediss://` URLs (rustls; the public webpki roots, or `redis.tls_ca_file`,
//! and an optional client certificate).
//!
//! Blocking stream reads get their own connection with a response timeout
//! longer than their `BLOCK`, so they never stall other traffic: on a cluster
//! connection a `BLOCK` holds up every command to that node.
//!
//! What a cluster changes for callers lives here too: [`Conn::query_by_slot`]
//! splits a pipeline of commands on different keys into one pipeline per slot
//! (a cluster refuses cross-slot pipelines), and `replication` waits until
//! writes reached `redis.min_replicas_acked` replicas. `durability` checks
//! at start that Redis cannot evict the streams, and warns when it keeps no
//! append-only file.

pub mod durability;
mod replication;
mod scripts;

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::{redact_url, Config};
use crate::error::{Error, Result, RetryClass};

pub use replication::{Confirmer, Replication};
pub use scripts::{script, EvalRefused};

/// Response timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one Redis server or to a Redis Cluster. Cheap to clone:
/// clones share the underlying multiplexed connection(s).
#[derive(Clone)]
pub enum Conn {
    /// One server (`redis.cluster = false`, the default).
    Node(ConnectionManager),
    /// A Redis Cluster, and when this connection's user was last refused
    /// an `EVAL` ([`scripts`]).
    Cluster(ClusterConnection, scripts::EvalRefused),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            // A node without the script gets it by `EVAL`, not by redis-rs's
            // `SCRIPT LOAD` to every node ([`scripts`]).
            // (redis-rs hands a `NOSCRIPT` back as a value, and makes it an
            // error only later, in `query_async`.)
            Conn::Cluster(c, refused) => Box::pin(async move {
                let reply = c.req_packed_command(cmd).await;
                if !server_kind_is(&reply, redis::ServerErrorKind::NoScript) {
                    return reply;
                }
                let Some(eval) = scripts::as_eval(cmd, refused) else {
                    return reply;
                };
                let evaluated = c.req_packed_command(&eval).await;
                if server_kind_is(&evaluated, redis::ServerErrorKind::NoPerm) {
                    // An ACL without `+eval`: redis-rs loads the script on
                    // every node, as before ([`scripts::EvalRefused`]).
                    refused.now();
                    return reply;
                }
                evaluated
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
        }
    }
}

/// Whether `reply` is a server error of `kind`: redis-rs hands most back
/// as a value ([`Value::ServerError`]) and makes them errors only later,
/// in `query_async`.
fn server_kind_is(reply: &redis::RedisResult<Value>, kind: redis::ServerErrorKind) -> bool {
    match reply {
        Ok(Value::ServerError(e)) => e.kind() == Some(kind),
        Err(e) => e.kind() == redis::ErrorKind::Server(kind),
        Ok(_) => false,
    }
}

/// The reply code of the server error `e` carries (`OOM`, `WRONGTYPE`,
/// writ's own `FENCED` and `PARTITIONS`, ...) and its detail (the text after
/// the code), also when it came in a pipeline's reply or in an aborted
/// transaction's (then the first queued command's error, `OOM` say, not
/// `EXECABORT`). redis-rs's own `code()` sees into a pipeline's error only
/// for the codes it knows (`MOVED`, `NOPERM`, ...), and `detail()` never:
/// for the others they say `None`, so a refusal in a pipelined call (every
/// call that replicas confirm) would pass for an unknown error. Of a
/// pipeline's errors, the first.
pub fn server_error(e: &redis::RedisError) -> Option<(String, Option<String>)> {
    match e.clone().into_server_errors() {
        Some(errors) => {
            let (_, first) = errors.first()?;
            Some((
                first.code().to_string(),
                first.details().map(str::to_string),
            ))
        }
        None => Some((e.code()?.to_string(), e.detail().map(str::to_string))),
    }
}

/// The reply code of `e`, also in a pipeline's error ([`server_error`]).
pub fn code_of(e: &redis::RedisError) -> Option<String> {
    server_error(e).map(|(code, _)| code)
}

/// Whether `e` carries reply code `code`, also in a pipeline's error.
pub fn has_code(e: &redis::RedisError, code: &str) -> bool {
    code_of(e).as_deref() == Some(code)
}

/// Whether Redis refused a command because its key holds a value of another
/// type (`WRONGTYPE`): another program's value under writ's namespace.
pub fn is_wrong_type(e: &redis::RedisError) -> bool {
    has_code(e, "WRONGTYPE")
}

/// Whether a node did not run a command because its slot moved or is moving
/// (`MOVED`, `ASK`, `TRYAGAIN`: a resharding) or the cluster is down, so that
/// sending it again cannot run it twice. redis-rs follows these replies
/// itself, but only for its few retries.
pub fn not_run(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as S;
    matches!(
        e.kind(),
        redis::ErrorKind::Server(S::Moved | S::Ask | S::TryAgain | S::ClusterDown)
    )
}

impl Conn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(..))
    }

    /// Runs `cmds`, each touching the key it is paired with, and returns
    /// each one's reply in order: one pipeline on a single server; on a
    /// cluster one pipeline per hash slot, sent concurrently. Not atomic.
    /// A command the server refused (say, `WRONGTYPE` on a key another
    /// program wrote) is its own `Err`; the others' replies still count.
    /// The outer `Err` is a connection failure.
    pub async fn query_by_slot(
        &self,
        cmds: Vec<(String, Cmd)>,
    ) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut groups: HashMap<Slot, (Vec<usize>, Pipeline)> = HashMap::new();
        for (i, (key, cmd)) in cmds.into_iter().enumerate() {
            // One server: one pipeline (every key in slot 0 for grouping).
            let slot = if self.is_cluster() {
                Slot::for_key(key.as_bytes())
            } else {
                Slot::new(0).expect("slot 0 exists")
            };
            let (at, pipe) = groups.entry(slot).or_insert_with(|| {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                (Vec::new(), pipe)
            });
            at.push(i);
            pipe.add_command(cmd);
        }
        let n: usize = groups.values().map(|(at, _)| at.len()).sum();
        let replies = futures::future::try_join_all(groups.into_values().map(|(at, pipe)| {
            let mut conn = self.clone();
            async move {
                let r: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut conn).await?;
                Ok::<_, redis::RedisError>((at, r))
            }
        }))
        .await?;
        let mut out: Vec<redis::RedisResult<Value>> = (0..n).map(|_| Ok(Value::Nil)).collect();
        for (at, r) in replies {
            for (i, v) in at.into_iter().zip(r) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// The TCP settings of every Redis connection writ opens (redis-rs's
/// defaults leave both off):
/// - `TCP_NODELAY`: a multiplexed connection sends a command while earlier
///   ones are unanswered. With Nagle's algorithm on, such a small segment
///   may wait until the earlier data is acknowledged. Measured: 4–13 % more
///   submits a second, no change to sync writes (docs/performance.md,
///   session 30).
/// - keepalive probes (after 30 s idle, every 10 s, 3 unanswered): an idle
///   connection whose peer vanished without closing it (a host or a NAT
///   gone) is found dead in about a minute and replaced. (Probes go only
///   while nothing sent is unacknowledged; a call in flight is bounded by
///   its response timeout.)
pub fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10))
                .with_retries(3),
        )
}

/// The redis crate's client for `config`'s URL and TLS files (no connection
/// yet), with [`tcp_settings`]. Single-node mode only.
pub fn client(config: &Config) -> Result<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad_url(config, e))?
        .set_tcp_settings(tcp_settings());
    let client = match &config.redis_tls.certificates {
        Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
        None => redis::Client::open(info),
    };
    client.map_err(|e| bad_url(config, e))
}

fn bad_url(config: &Config, e: redis::RedisError) -> Error {
    let field = if config.redis_tls.certificates.is_some() {
        "`redis.url` / `redis.tls_*`"
    } else {
        "`redis.url`"
    };
    Error::Config(format!("{field} {}: {e}", redacted_urls(config)))
}

/// The Redis URLs with credentials masked, for messages.
pub fn redacted_urls(config: &Config) -> String {
    config
        .redis_urls
        .iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(",")
}

/// The longest `WAIT` a connection may send for `config`: none without
/// replicas to confirm, else `redis.replica_ack_timeout_ms`. A connection
/// that sends `WAIT`s (the daemon's shared one and its lease connection, the
/// tools', a writer's admissions) passes it to [`connect`] as its `block`:
/// without it, a `WAIT` longer than [`COMMAND_TIMEOUT`] timed out on the
/// client's side while a replica was down, instead of answering. The others
/// (readers, ack listeners, reads) keep the shorter timeout.
pub fn wait_bound(config: &Config) -> Duration {
    let replication = Replication::of(config);
    if replication.wanted() {
        replication.timeout
    } else {
        Duration::ZERO
    }
}

/// Opens a reconnecting connection. `block` is the longest `BLOCK` this
/// connection will issue (zero for none).
pub async fn connect(config: &Config, block: Duration) -> Result<Conn> {
    let conn = if config.redis_cluster {
        connect_cluster(config, block)
            .await
            .map(|c| Conn::Cluster(c, Default::default()))
    } else {
        let client = client(config)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(COMMAND_TIMEOUT + block))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_with_config(client, cfg)
            .await
            .map(Conn::Node)
    };
    conn.map_err(|e| {
        let detail = crate::error::said_once(&e.to_string());
        let retry = if unreachable(&e) {
            RetryClass::Transient
        } else {
            RetryClass::Permanent
        };
        Error::Connect {
            retry,
            what: "redis",
            url: redacted_urls(config),
            hint: hint(config, &e, &detail),
            detail,
        }
    })
}

async fn connect_cluster(
    config: &Config,
    block: Duration,
) -> redis::RedisResult<ClusterConnection> {
    let mut builder = redis::cluster::ClusterClient::builder(config.redis_urls.clone())
        .connection_timeout(Duration::from_secs(3))
        .response_timeout(COMMAND_TIMEOUT + block)
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .tcp_settings(tcp_settings());
    if let Some(certs) = &config.redis_tls.certificates {
        builder = builder.certs(certs.clone());
    }
    builder.build()?.get_async_connection().await
}

/// Whether a failure to connect means that the server could not be reached
/// (yet): refused, reset, timed out, unreachable, a host name that does not
/// resolve. Not a TLS failure (a certificate not trusted, TLS against a
/// plain port), a refused login or an error reply of a server that
/// answered (a database number it does not have): trying again cannot help.
/// The cluster client reports every seed failing, a wrong password
/// included, as one I/O failure with no cause: taken as unreachable.
fn unreachable(e: &redis::RedisError) -> bool {
    use std::io::ErrorKind as K;
    if !e.is_io_error() {
        return false;
    }
    let io = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>());
    match io {
        // rustls' refusals come as invalid data.
        Some(io) => !matches!(
            io.kind(),
            K::InvalidData | K::InvalidInput | K::PermissionDenied | K::Unsupported
        ),
        None => true,
    }
}

/// What to check, by what failed.
fn hint(config: &Config, e: &redis::RedisError, detail: &str) -> &'static str {
    let tls = config.redis_url.starts_with("rediss://");
    if e.kind() == redis::ErrorKind::AuthenticationFailed || detail.contains("WRONGPASS") {
        "check the user and password in redis.url / WRIT_REDIS_URL (and the ACL user: docs/operations.md, \"Redis ACL users\")"
    } else if tls && detail.contains("certificate") {
        if config.redis_tls.ca_file.is_some() {
            "the server's TLS certificate is not trusted: does redis.tls_ca_file hold the CA that signed it, and is the URL's host (name or IP) in the certificate?"
        } else {
            "the server's TLS certificate is not trusted: only the public webpki roots are; set redis.tls_ca_file to the PEM of the CA that signed it, and check that the URL's host (name or IP) is in the certificate"
        }
    } else if tls {
        "is redis-server listening with TLS there (its tls-port), and are redis.url / WRIT_REDIS_URL and redis.tls_* right?"
    } else {
        "is redis-server running, and are redis.url / WRIT_REDIS_URL right (rediss:// if it only takes TLS)?"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Names;

    /// A connection that sends `WAIT`s allows for one only with replicas to
    /// confirm.
    #[test]
    fn the_wait_bound_is_the_replica_ack_timeout_with_replicas() {
        let base = "[mongodb]\n[[collections]]\nname = \"s\"\nkey = [\"k\"]\n";
        let plain = Config::from_toml(&format!("[redis]\n{base}")).unwrap();
        assert_eq!(wait_bound(&plain), Duration::ZERO);
        let confirmed = Config::from_toml(&format!(
            "[redis]\nmin_replicas_acked = 1\nreplica_ack_timeout_ms = 8000\n{base}"
        ))
        .unwrap();
        assert_eq!(wait_bound(&confirmed), Duration::from_secs(8));
    }

    /// Every single-node connection gets writ's TCP settings (the cluster
    /// builder takes them too), not redis-rs's defaults (Nagle on, no
    /// keepalive).
    #[test]
    fn connections_get_nodelay_and_keepalive() {
        let config =
            Config::from_toml("[redis]\n[mongodb]\n[[collections]]\nname = \"s\"\nkey = [\"k\"]\n")
                .unwrap();
        let client = client(&config).unwrap();
        let tcp = client.get_connection_info().tcp_settings();
        assert!(tcp.nodelay());
        assert!(tcp.keepalive().is_some());
    }

    /// The slot table of docs/protocol.md, and every partition key of a
    /// partition in its partition's slot (scripts touch several of them).
    #[test]
    fn partition_keys_share_their_documented_slot() {
        let documented = [15882, 11819, 7752, 3689, 16014, 11951, 7884, 3821];
        let names = Names::new("writ");
        for (p, slot) in documented.into_iter().enumerate() {
            let p = p as u32;
            let keys = [
                names.stream(p),
                names.meta(p),
                names.admission(p, "c0123456789abcdef"),
                names.lease(p),
                names.acquired(p),
                names.fence(p),
                names.cache(p, "signal", r#"["BTCUSDT","{p9}","x"]"#),
            ];
            for k in keys {
                assert_eq!(Slot::for_key(k.as_bytes()), Slot::new(slot).unwrap(), "{k}");
            }
        }
    }
}
