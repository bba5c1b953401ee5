//! Validation: every field checked, one message naming the bad field and the
//! fix, and the typed [`Config`] out.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawClient, RawCollection, RawConfig, RawDaemon, RawMongo, RawRedis};
use super::redis_endpoint::{redis_tls, redis_urls};
use super::{
    fix_where, redact_url, CollectionConfig, Config, LogFormat, RedisTls, WriteConcernW,
    ENV_MONGODB_URI, MONGO_MAX_BSON, RESERVED_FIELDS,
};
use crate::error::{Error, Result};

pub(super) fn bad(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("`{field}`: {msg}"))
}

/// Names allowed for collections, key fields, namespaces and client ids.
pub(super) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// `value` lies in `lo..=hi`; else the config error for `field` ("must be
/// between lo and hi", or "at least lo" when there is no upper bound).
fn within(field: &str, value: u64, lo: u64, hi: u64) -> Result<()> {
    match (lo..=hi).contains(&value) {
        true => Ok(()),
        false if hi == u64::MAX => Err(bad(field, format!("must be at least {lo}"))),
        false => Err(bad(field, format!("must be between {lo} and {hi}"))),
    }
}

impl RawConfig {
    /// Checks every field and returns the typed config.
    pub fn validate(self) -> Result<Config> {
        let RawConfig {
            redis,
            mongodb,
            daemon,
            client,
            collections,
        } = self;
        let (urls, redis_tls) = check_redis(&redis)?;
        let write_concern = check_mongodb(&mongodb)?;
        let daemon_checked = check_daemon(&daemon)?;
        check_client(&client)?;
        if daemon.max_in_flight_bytes < 2 * client.max_document_bytes {
            return Err(bad(
                "daemon.max_in_flight_bytes",
                format!(
                    "must be at least twice client.max_document_bytes ({}), so that one \
                     document MongoDB refuses, retried, never holds up the rest of its partition",
                    client.max_document_bytes
                ),
            ));
        }
        let collections = check_collections(collections)?;
        Ok(Config {
            redis_url: urls[0].clone(),
            redis_urls: urls,
            redis_cluster: redis.cluster,
            min_replicas_acked: redis.min_replicas_acked,
            replica_ack_timeout: Duration::from_millis(redis.replica_ack_timeout_ms),
            redis_tls,
            namespace: redis.namespace,
            partitions: redis.partitions,
            mongodb_uri: mongodb.uri,
            database: mongodb.database,
            write_concern,
            journal: mongodb.journal,
            op_timeout: Duration::from_millis(mongodb.op_timeout_ms),
            max_concurrency: mongodb.max_concurrency,
            consumer_name: daemon_checked.consumer_name,
            batch_size: daemon.batch_size,
            max_in_flight: daemon.max_in_flight,
            max_in_flight_bytes: daemon.max_in_flight_bytes,
            block: Duration::from_millis(daemon.block_ms),
            shutdown_deadline: Duration::from_millis(daemon.shutdown_deadline_ms),
            max_attempts: daemon.max_attempts,
            max_timeouts: daemon.max_timeouts,
            backoff_cap: Duration::from_millis(daemon.backoff_cap_ms),
            lease_ttl: Duration::from_millis(daemon.lease_ttl_ms),
            stats_interval: Duration::from_millis(daemon.stats_interval_ms),
            retention_max_age: Duration::from_secs(daemon.retention_max_age_secs),
            retention_max_entries: daemon.retention_max_entries,
            max_backlog: client.max_backlog,
            metrics_listen: daemon_checked.metrics_listen,
            log_level: daemon.log_level,
            log_format: daemon_checked.log_format,
            worker_threads: daemon.worker_threads,
            write_timeout: Duration::from_millis(client.write_timeout_ms),
            read_timeout: Duration::from_millis(client.read_timeout_ms),
            lost_write_after: Duration::from_millis(client.lost_write_after_ms),
            max_document_bytes: client.max_document_bytes,
            collections,
        })
    }
}

/// `[redis]`: the URLs and the TLS files.
fn check_redis(redis: &RawRedis) -> Result<(Vec<String>, RedisTls)> {
    let field = if redis.url_from_env {
        "WRIT_REDIS_URL (environment, overrides redis.url)"
    } else {
        "redis.url"
    };
    let urls = redis_urls(&redis.url.list(), redis.cluster, field)?;
    if redis.min_replicas_acked > 16 {
        return Err(bad(
            "redis.min_replicas_acked",
            "must be between 0 and 16 (replicas that confirm each write)",
        ));
    }
    within(
        "redis.replica_ack_timeout_ms",
        redis.replica_ack_timeout_ms,
        1,
        60_000,
    )?;
    if !is_identifier(&redis.namespace) {
        return Err(bad(
            "redis.namespace",
            "use 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    within(
        "redis.partitions",
        redis.partitions.into(),
        1,
        super::MAX_PARTITIONS.into(),
    )?;
    let tls = redis_tls(
        &urls[0],
        redis.tls_ca_file.clone(),
        redis.tls_cert_file.clone(),
        redis.tls_key_file.clone(),
    )?;
    Ok((urls, tls))
}

/// `[mongodb]`: the URI, the database name and the write concern.
fn check_mongodb(mongodb: &RawMongo) -> Result<WriteConcernW> {
    let field = if mongodb.uri_from_env {
        "WRIT_MONGODB_URI (environment, overrides mongodb.uri)"
    } else {
        "mongodb.uri"
    };
    if !(mongodb.uri.starts_with("mongodb://") || mongodb.uri.starts_with("mongodb+srv://")) {
        return Err(bad(
            field,
            format!(
                "{} is not a mongodb:// URI; {}",
                redact_url(&mongodb.uri),
                fix_where(field, ENV_MONGODB_URI, "mongodb.uri")
            ),
        ));
    }
    // The driver's own parse, as `serve` meets it, so `check-config` refuses
    // what `serve` would (a bad port, an unknown option, a password with an
    // unencoded `@`). It reads no DNS: a mongodb+srv:// host is looked up at
    // connect time.
    if let Err(e) = mongodb::options::ConnectionString::parse(&mongodb.uri) {
        return Err(bad(
            field,
            format!(
                "{} does not parse: {}; {} (special characters in the user or password must be %-encoded)",
                redact_url(&mongodb.uri),
                super::redact::scrub(&driver_message(&e), &mongodb.uri),
                fix_where(field, ENV_MONGODB_URI, "mongodb.uri")
            ),
        ));
    }
    if mongodb.database.is_empty() || mongodb.database.contains(['/', '\\', '.', ' ', '"', '$']) {
        return Err(bad(
            "mongodb.database",
            "must be a non-empty MongoDB database name without / \\ . space \" $",
        ));
    }
    let write_concern = match &mongodb.write_concern {
        toml::Value::String(s) if s == "majority" => WriteConcernW::Majority,
        toml::Value::Integer(0) => {
            return Err(bad(
                "mongodb.write_concern",
                "0 asks MongoDB not to answer writes, and writ acks a write only once MongoDB \
                 has answered it; use \"majority\" or a node count of at least 1",
            ))
        }
        toml::Value::Integer(n) if *n >= 1 && *n <= 50 => WriteConcernW::Nodes(*n as u32),
        _ => {
            return Err(bad(
                "mongodb.write_concern",
                "use \"majority\" or a node count such as 1",
            ))
        }
    };
    // MongoDB refuses a `maxTimeMS` above a 32-bit integer, and writ sends
    // this as every operation's `maxTimeMS`.
    within(
        "mongodb.op_timeout_ms",
        mongodb.op_timeout_ms,
        1,
        i32::MAX as u64,
    )?;
    within(
        "mongodb.max_concurrency",
        mongodb.max_concurrency as u64,
        1,
        1000,
    )?;
    Ok(write_concern)
}

/// The message of a driver error, without the fields it prints for every
/// error (`labels: {}, source: None, ...`).
fn driver_message(e: &mongodb::error::Error) -> String {
    let message = match e.kind.as_ref() {
        mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
        other => other.to_string(),
    };
    // The one option writ's build leaves out, said in an operator's terms.
    if message.contains("tlsCertificateKeyFilePassword") {
        return "writ does not read encrypted client keys (tlsCertificateKeyFilePassword): decrypt the key file (openssl pkey -in key.pem -out plain.pem), point tlsCertificateKeyFile at it and drop the password".into();
    }
    message
}

/// What `[daemon]` yields beyond its plain numbers.
struct DaemonChecked {
    consumer_name: String,
    metrics_listen: Option<SocketAddr>,
    log_format: LogFormat,
}

/// `[daemon]`: the bounds, the listen address, the log format and the
/// consumer name.
fn check_daemon(daemon: &RawDaemon) -> Result<DaemonChecked> {
    within("daemon.batch_size", daemon.batch_size as u64, 1, 10_000)?;
    if daemon.max_in_flight < daemon.batch_size {
        return Err(bad(
            "daemon.max_in_flight",
            "must be at least daemon.batch_size",
        ));
    }
    within(
        "daemon.max_in_flight",
        daemon.max_in_flight as u64,
        1,
        1_000_000,
    )?;
    within(
        "daemon.max_in_flight_bytes",
        daemon.max_in_flight_bytes as u64,
        1024 * 1024,
        u64::MAX,
    )?;
    within("daemon.block_ms", daemon.block_ms, 1, 60_000)?;
    within(
        "daemon.max_attempts",
        daemon.max_attempts.into(),
        1,
        u64::MAX,
    )?;
    within("daemon.max_timeouts", daemon.max_timeouts.into(), 0, 1000)?;
    // 0 would drain nothing on SIGTERM; an hour outlasts any supervisor.
    within(
        "daemon.shutdown_deadline_ms",
        daemon.shutdown_deadline_ms,
        100,
        3_600_000,
    )?;
    // Below 10 ms a failing write is retried in a hot loop.
    within("daemon.backoff_cap_ms", daemon.backoff_cap_ms, 10, 600_000)?;
    within("daemon.lease_ttl_ms", daemon.lease_ttl_ms, 300, 300_000)?;
    within(
        "daemon.worker_threads",
        daemon.worker_threads as u64,
        1,
        256,
    )?;
    within(
        "daemon.stats_interval_ms",
        daemon.stats_interval_ms,
        100,
        // Retention, the status gauges and the partition-count recheck run
        // at this pace; an hour's pause would leave them all off.
        300_000,
    )?;
    // 100 years: the age is counted in milliseconds, and a larger one wrapped
    // around there (18446744073709552 s became 384 ms: trim everything).
    within(
        "daemon.retention_max_age_secs",
        daemon.retention_max_age_secs,
        0,
        3_153_600_000,
    )?;
    within(
        "daemon.retention_max_entries",
        daemon.retention_max_entries,
        1,
        u64::MAX,
    )?;
    let metrics_listen = metrics_listen(&daemon.metrics_listen)?;
    let log_format = match daemon.log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(bad(
                "daemon.log_format",
                format!("{other:?} is not \"text\" or \"json\""),
            ))
        }
    };
    check_log_level("daemon.log_level", &daemon.log_level)?;
    let consumer_name = match &daemon.consumer_name {
        Some(n) if is_identifier(n) => n.clone(),
        Some(_) => {
            return Err(bad(
                "daemon.consumer_name",
                "use 1-64 characters of [A-Za-z0-9_.-]",
            ))
        }
        None => default_consumer_name(),
    };
    Ok(DaemonChecked {
        consumer_name,
        metrics_listen,
        log_format,
    })
}

/// `daemon.metrics_listen`: host:port, or "" for none.
fn metrics_listen(text: &str) -> Result<Option<SocketAddr>> {
    if text.is_empty() {
        return Ok(None);
    }
    let addr = text.parse::<SocketAddr>().map_err(|_| {
        bad(
            "daemon.metrics_listen",
            format!(
                "{text:?} is not an IP address and port such as 127.0.0.1:9108 or [::1]:9108 \
                 (host names are not resolved; empty disables it)"
            ),
        )
    })?;
    Ok(Some(addr))
}

/// `daemon.log_level` (or `WRIT_LOG`, named `field`): a level, or
/// `EnvFilter` directives.
pub(super) fn check_log_level(field: &str, level: &str) -> Result<()> {
    // A bare word is a level to EnvFilter only if it names one; anything
    // else is taken as a target, so a typo ("debgu") would turn every log
    // line off without a word.
    let levels = ["trace", "debug", "info", "warn", "error", "off"];
    if let Some(word) = level.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', '[', ':'])
            && !levels.contains(&d.to_ascii_lowercase().as_str())
    }) {
        return Err(bad(
            field,
            format!(
                "{word:?} is not a level (trace, debug, info, warn, error, off); for one target's level write \"{word}=debug\""
            ),
        ));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
        return Err(bad(
            field,
            format!(
                "{level:?} is not a log filter ({e}); use a level such as \"info\" or \"debug\", or directives such as \"info,writ=debug\""
            ),
        ));
    }
    Ok(())
}

/// `[client]`: the backlog bound, the timeouts and the document size cap.
fn check_client(client: &RawClient) -> Result<()> {
    within("client.max_backlog", client.max_backlog, 1, u64::MAX)?;
    // 0 would time every write and read out before Redis could answer.
    within(
        "client.write_timeout_ms",
        client.write_timeout_ms,
        1,
        86_400_000,
    )?;
    within(
        "client.read_timeout_ms",
        client.read_timeout_ms,
        1,
        86_400_000,
    )?;
    within(
        "client.lost_write_after_ms",
        client.lost_write_after_ms,
        1,
        u64::MAX,
    )?;
    within(
        "client.max_document_bytes",
        client.max_document_bytes as u64,
        1,
        MONGO_MAX_BSON as u64,
    )
}

/// `[[collections]]`: at least one; names and key fields valid, none twice.
fn check_collections(
    collections: Vec<RawCollection>,
) -> Result<BTreeMap<String, CollectionConfig>> {
    if collections.is_empty() {
        return Err(bad(
            "collections",
            "declare at least one [[collections]] with name and key",
        ));
    }
    let mut by_name = BTreeMap::new();
    for (i, c) in collections.into_iter().enumerate() {
        let at = format!("collections[{i}]");
        if !is_identifier(&c.name) || c.name.starts_with("system.") {
            return Err(bad(
                &format!("{at}.name"),
                format!(
                    "{:?} must be 1-64 characters of [A-Za-z0-9_.-] and not start with system.",
                    c.name
                ),
            ));
        }
        check_key(&at, &c)?;
        if by_name.contains_key(&c.name) {
            return Err(bad(
                &format!("{at}.name"),
                format!("collection {:?} is declared twice", c.name),
            ));
        }
        by_name.insert(
            c.name.clone(),
            CollectionConfig {
                name: c.name,
                key: c.key,
                mode: c.mode,
                layout: c.layout,
                timestamps: c.timestamps,
            },
        );
    }
    Ok(by_name)
}

/// A collection's key fields: at least one, each a plain field name, none
/// reserved, none twice.
fn check_key(at: &str, c: &RawCollection) -> Result<()> {
    if c.key.is_empty() {
        return Err(bad(
            &format!("{at}.key"),
            format!("collection {:?} needs at least one key field", c.name),
        ));
    }
    let mut seen = HashSet::new();
    for k in &c.key {
        if k.is_empty()
            || k.starts_with('$')
            || k.contains('.')
            || RESERVED_FIELDS.contains(&k.as_str())
        {
            return Err(bad(&format!("{at}.key"), format!("{k:?} cannot be a key field (no $ prefix, no dots, not one of {RESERVED_FIELDS:?})")));
        }
        if !seen.insert(k) {
            return Err(bad(&format!("{at}.key"), format!("{k:?} is listed twice")));
        }
    }
    Ok(())
}

fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "writ".into());
    format!("{host}-{}", std::process::id())
}
