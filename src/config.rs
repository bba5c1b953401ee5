//! Configuration: a serde `RawConfig` that rejects unknown fields, then
//! [`RawConfig::validate`] which returns the typed [`Config`] or one message
//! naming the bad field and the fix.
//!
//! Environment overrides (`WRIT_REDIS_URL`, `WRIT_MONGODB_URI`) are applied
//! between parsing and validation so secrets never need to live in the file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "WRIT_CONFIG";
/// Environment variable overriding `redis.url`.
pub const ENV_REDIS_URL: &str = "WRIT_REDIS_URL";
/// Environment variable overriding `mongodb.uri`.
pub const ENV_MONGODB_URI: &str = "WRIT_MONGODB_URI";
/// Environment variable overriding `daemon.consumer_name`.
pub const ENV_CONSUMER_NAME: &str = "WRIT_CONSUMER_NAME";
/// Config file used when neither `--config` nor `WRIT_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/writ.toml";

/// Largest document MongoDB stores (16 MiB).
pub const MONGO_MAX_BSON: usize = 16 * 1024 * 1024;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Redis connection and stream layout.
    pub redis: RawRedis,
    /// MongoDB connection and write concern.
    pub mongodb: RawMongo,
    /// Daemon tuning.
    #[serde(default)]
    pub daemon: RawDaemon,
    /// Client defaults.
    #[serde(default)]
    pub client: RawClient,
    /// The collections writ manages.
    #[serde(default)]
    pub collections: Vec<RawCollection>,
}

/// `[redis]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Redis URL; `WRIT_REDIS_URL` overrides it.
    #[serde(default = "default_redis_url")]
    pub url: String,
    /// Prefix of every Redis key writ uses.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Number of partition streams. Changing it needs a drained system.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
}

/// `[mongodb]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMongo {
    /// MongoDB URI; `WRIT_MONGODB_URI` overrides it.
    #[serde(default = "default_mongo_uri")]
    pub uri: String,
    /// Database holding the collections.
    #[serde(default = "default_database")]
    pub database: String,
    /// Write concern `w`: "majority" or a node count.
    #[serde(default = "default_w")]
    pub write_concern: toml::Value,
    /// Write concern `j` (journal).
    #[serde(default = "default_true")]
    pub journal: bool,
    /// Per-operation timeout in milliseconds.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
}

/// `[daemon]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// Name of this daemon in consumer groups; defaults to host + pid.
    pub consumer_name: Option<String>,
    /// Entries read per XREADGROUP.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Entries in flight per partition (read, not yet acked).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// XREADGROUP BLOCK in milliseconds (also bounds shutdown latency).
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// How long shutdown may take to drain in-flight work.
    #[serde(default = "default_shutdown_ms")]
    pub shutdown_deadline_ms: u64,
    /// Attempts before a deterministically failing write is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Cap of the jittered retry backoff, in milliseconds.
    #[serde(default = "default_backoff_cap_ms")]
    pub backoff_cap_ms: u64,
    /// Partition lease TTL: a dead daemon's partitions move within this.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How often partition stats (lag, pending, watermark) are refreshed and
    /// streams trimmed.
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u64,
    /// Committed entries older than this are trimmed from the streams.
    #[serde(default = "default_retention_age")]
    pub retention_max_age_secs: u64,
    /// At most this many committed entries are kept per partition stream.
    #[serde(default = "default_retention_entries")]
    pub retention_max_entries: u64,
    /// Listen address of the metrics and health HTTP server; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    /// Log level filter (tracing EnvFilter syntax).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Log format: "text" or "json".
    #[serde(default = "default_log_format")]
    pub log_format: String,
}

impl Default for RawDaemon {
    fn default() -> Self {
        toml::from_str("").expect("daemon defaults")
    }
}

/// `[client]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// How long `write` waits for the ack.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// How long `read` waits for this client's own pending writes.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Largest payload accepted, in bytes of BSON.
    #[serde(default = "default_max_doc")]
    pub max_document_bytes: usize,
    /// A submit fails with a backpressure error when its partition has more
    /// unapplied entries than this.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: u64,
}

impl Default for RawClient {
    fn default() -> Self {
        toml::from_str("").expect("client defaults")
    }
}

/// `[[collections]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollection {
    /// MongoDB collection name.
    pub name: String,
    /// Ordered key fields; they form the unique compound index.
    pub key: Vec<String>,
    /// `replace` (default) or `insert_once`.
    #[serde(default)]
    pub mode: WriteMode,
}

/// How a `put` changes a stored document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// `$set` the payload: the latest write wins.
    #[default]
    Replace,
    /// `$setOnInsert` the payload: the first write wins (immutable candles).
    InsertOnce,
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_namespace() -> String {
    "writ".into()
}
fn default_partitions() -> u32 {
    8
}
fn default_mongo_uri() -> String {
    "mongodb://127.0.0.1:27017/?directConnection=true".into()
}
fn default_database() -> String {
    "writ".into()
}
fn default_w() -> toml::Value {
    toml::Value::String("majority".into())
}
fn default_true() -> bool {
    true
}
fn default_op_timeout_ms() -> u64 {
    10_000
}
fn default_batch() -> usize {
    128
}
fn default_in_flight() -> usize {
    1024
}
fn default_block_ms() -> u64 {
    500
}
fn default_shutdown_ms() -> u64 {
    10_000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_cap_ms() -> u64 {
    5_000
}
fn default_lease_ttl_ms() -> u64 {
    10_000
}
fn default_stats_interval_ms() -> u64 {
    2_000
}
fn default_retention_age() -> u64 {
    86_400
}
fn default_retention_entries() -> u64 {
    1_000_000
}
fn default_max_backlog() -> u64 {
    100_000
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9108".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "text".into()
}
fn default_write_timeout_ms() -> u64 {
    10_000
}
fn default_read_timeout_ms() -> u64 {
    5_000
}
fn default_max_doc() -> usize {
    MONGO_MAX_BSON - 64 * 1024
}

/// MongoDB write concern `w`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteConcernW {
    /// `w: "majority"`.
    Majority,
    /// `w: n`.
    Nodes(u32),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A validated collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionConfig {
    /// MongoDB collection name.
    pub name: String,
    /// Ordered key fields.
    pub key: Vec<String>,
    /// Write mode.
    pub mode: WriteMode,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URL (may contain credentials: never log it, use [`redact_url`]).
    pub redis_url: String,
    /// Key prefix.
    pub namespace: String,
    /// Number of partitions.
    pub partitions: u32,
    /// MongoDB URI (may contain credentials).
    pub mongodb_uri: String,
    /// Database name.
    pub database: String,
    /// Write concern `w`.
    pub write_concern: WriteConcernW,
    /// Write concern `j`.
    pub journal: bool,
    /// Per-operation MongoDB timeout.
    pub op_timeout: Duration,
    /// Consumer name in the groups.
    pub consumer_name: String,
    /// Entries per read.
    pub batch_size: usize,
    /// Entries in flight per partition.
    pub max_in_flight: usize,
    /// XREADGROUP BLOCK.
    pub block: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_deadline: Duration,
    /// Attempts before dead-lettering a permanent failure.
    pub max_attempts: u32,
    /// Backoff cap.
    pub backoff_cap: Duration,
    /// Partition lease TTL.
    pub lease_ttl: Duration,
    /// Stats refresh and trim period.
    pub stats_interval: Duration,
    /// Retention by age of committed entries.
    pub retention_max_age: Duration,
    /// Retention by count of committed entries.
    pub retention_max_entries: u64,
    /// Backpressure bound of unapplied entries per partition.
    pub max_backlog: u64,
    /// Metrics listener, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// `write` ack timeout.
    pub write_timeout: Duration,
    /// `read` wait bound for own pending writes.
    pub read_timeout: Duration,
    /// Largest accepted payload.
    pub max_document_bytes: usize,
    /// Collections by name.
    pub collections: BTreeMap<String, CollectionConfig>,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("`{field}`: {msg}"))
}

impl Config {
    /// Loads the file at `path` (or `WRIT_CONFIG`, or the default path), applies
    /// environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os(ENV_CONFIG)
                .map(Into::into)
                .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Config(format!(
                "cannot read config file {}: {e}; pass --config PATH or set {ENV_CONFIG}",
                path.display()
            ))
        })?;
        Config::from_toml_with_env(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip_prefix(&e))))
    }

    /// Parses and validates TOML text, ignoring the environment.
    pub fn from_toml(text: &str) -> Result<Config> {
        Self::parse(text)?.validate()
    }

    fn parse(text: &str) -> Result<RawConfig> {
        toml::from_str(text)
            .map_err(|e| Error::Config(e.message().to_string() + &span_hint(text, &e)))
    }

    /// Parses TOML text, applies `WRIT_REDIS_URL` / `WRIT_MONGODB_URI`, validates.
    pub fn from_toml_with_env(text: &str) -> Result<Config> {
        let mut raw = Self::parse(text)?;
        if let Ok(url) = std::env::var(ENV_REDIS_URL) {
            raw.redis.url = url;
        }
        if let Ok(uri) = std::env::var(ENV_MONGODB_URI) {
            raw.mongodb.uri = uri;
        }
        if let Ok(name) = std::env::var(ENV_CONSUMER_NAME) {
            raw.daemon.consumer_name = Some(name);
        }
        raw.validate()
    }
}

fn strip_prefix(e: &Error) -> String {
    match e {
        Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

fn span_hint(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line}); see config/writ.toml for every field and its default")
        }
        None => "; see config/writ.toml for every field and its default".into(),
    }
}

/// Names allowed for collections, key fields, namespaces and client ids.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
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
        if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
            return Err(bad(
                "redis.url",
                format!(
                    "{} is not a redis:// or rediss:// URL; set it or {ENV_REDIS_URL}",
                    redact_url(&redis.url)
                ),
            ));
        }
        if !is_identifier(&redis.namespace) {
            return Err(bad(
                "redis.namespace",
                "use 1-64 characters of [A-Za-z0-9_.-]",
            ));
        }
        if redis.partitions == 0 || redis.partitions > 4096 {
            return Err(bad("redis.partitions", "must be between 1 and 4096"));
        }
        if !(mongodb.uri.starts_with("mongodb://") || mongodb.uri.starts_with("mongodb+srv://")) {
            return Err(bad(
                "mongodb.uri",
                format!(
                    "{} is not a mongodb:// URI; set it or {ENV_MONGODB_URI}",
                    redact_url(&mongodb.uri)
                ),
            ));
        }
        if mongodb.database.is_empty() || mongodb.database.contains(['/', '\\', '.', ' ', '"', '$'])
        {
            return Err(bad(
                "mongodb.database",
                "must be a non-empty MongoDB database name without / \\ . space \" $",
            ));
        }
        let write_concern = match &mongodb.write_concern {
            toml::Value::String(s) if s == "majority" => WriteConcernW::Majority,
            toml::Value::Integer(n) if *n >= 0 && *n <= 50 => WriteConcernW::Nodes(*n as u32),
            _ => {
                return Err(bad(
                    "mongodb.write_concern",
                    "use \"majority\" or a node count such as 1",
                ))
            }
        };
        if mongodb.op_timeout_ms == 0 {
            return Err(bad("mongodb.op_timeout_ms", "must be at least 1"));
        }
        if daemon.batch_size == 0 || daemon.batch_size > 10_000 {
            return Err(bad("daemon.batch_size", "must be between 1 and 10000"));
        }
        if daemon.max_in_flight < daemon.batch_size {
            return Err(bad(
                "daemon.max_in_flight",
                "must be at least daemon.batch_size",
            ));
        }
        if daemon.block_ms == 0 || daemon.block_ms > 60_000 {
            return Err(bad("daemon.block_ms", "must be between 1 and 60000"));
        }
        if daemon.max_attempts == 0 {
            return Err(bad("daemon.max_attempts", "must be at least 1"));
        }
        if daemon.lease_ttl_ms < 300 || daemon.lease_ttl_ms > 300_000 {
            return Err(bad("daemon.lease_ttl_ms", "must be between 300 and 300000"));
        }
        if daemon.stats_interval_ms < 100 {
            return Err(bad("daemon.stats_interval_ms", "must be at least 100"));
        }
        if daemon.retention_max_entries == 0 {
            return Err(bad("daemon.retention_max_entries", "must be at least 1"));
        }
        if client.max_backlog == 0 {
            return Err(bad("client.max_backlog", "must be at least 1"));
        }
        let metrics_listen = if daemon.metrics_listen.is_empty() {
            None
        } else {
            Some(daemon.metrics_listen.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "daemon.metrics_listen",
                    format!(
                        "{:?} is not host:port such as 127.0.0.1:9108 (empty disables it)",
                        daemon.metrics_listen
                    ),
                )
            })?)
        };
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
        let consumer_name = match daemon.consumer_name {
            Some(n) if is_identifier(&n) => n,
            Some(_) => {
                return Err(bad(
                    "daemon.consumer_name",
                    "use 1-64 characters of [A-Za-z0-9_.-]",
                ))
            }
            None => default_consumer_name(),
        };
        if client.max_document_bytes == 0 || client.max_document_bytes > MONGO_MAX_BSON {
            return Err(bad(
                "client.max_document_bytes",
                format!("must be between 1 and {MONGO_MAX_BSON}"),
            ));
        }
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
                },
            );
        }
        Ok(Config {
            redis_url: redis.url,
            namespace: redis.namespace,
            partitions: redis.partitions,
            mongodb_uri: mongodb.uri,
            database: mongodb.database,
            write_concern,
            journal: mongodb.journal,
            op_timeout: Duration::from_millis(mongodb.op_timeout_ms),
            consumer_name,
            batch_size: daemon.batch_size,
            max_in_flight: daemon.max_in_flight,
            block: Duration::from_millis(daemon.block_ms),
            shutdown_deadline: Duration::from_millis(daemon.shutdown_deadline_ms),
            max_attempts: daemon.max_attempts,
            backoff_cap: Duration::from_millis(daemon.backoff_cap_ms.max(1)),
            lease_ttl: Duration::from_millis(daemon.lease_ttl_ms),
            stats_interval: Duration::from_millis(daemon.stats_interval_ms),
            retention_max_age: Duration::from_secs(daemon.retention_max_age_secs),
            retention_max_entries: daemon.retention_max_entries,
            max_backlog: client.max_backlog,
            metrics_listen,
            log_level: daemon.log_level,
            log_format,
            write_timeout: Duration::from_millis(client.write_timeout_ms),
            read_timeout: Duration::from_millis(client.read_timeout_ms),
            max_document_bytes: client.max_document_bytes,
            collections: by_name,
        })
    }
}

/// Fields writ owns in every stored document; a key field may not use them.
pub const RESERVED_FIELDS: &[&str] = &["_id", "payload", "removed", "_writ"];

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

impl Config {
    /// Looks up a collection.
    pub fn collection(&self, name: &str) -> Option<&CollectionConfig> {
        self.collections.get(name)
    }
}

/// Replaces the password (and user) of a URL with `***` for logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparseable url>".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[redis]
[mongodb]
[[collections]]
name = "signal"
key = ["symbol", "strategyName"]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MIN).unwrap();
        assert_eq!(c.partitions, 8);
        assert_eq!(c.write_concern, WriteConcernW::Majority);
        assert!(c.journal);
        assert_eq!(c.collection("signal").unwrap().mode, WriteMode::Replace);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::from_toml(&MIN.replace("[redis]", "[redis]\npartitons = 3")).unwrap_err();
        assert!(err.to_string().contains("partitons"), "{err}");
    }

    #[test]
    fn bad_values_name_field() {
        let e = Config::from_toml(&MIN.replace("[redis]", "[redis]\npartitions = 0")).unwrap_err();
        assert!(e.to_string().contains("redis.partitions"), "{e}");
        let e = Config::from_toml(&MIN.replace("\"strategyName\"", "\"symbol\"")).unwrap_err();
        assert!(e.to_string().contains("collections[0].key"), "{e}");
        let e = Config::from_toml(&MIN.replace("[mongodb]", "[mongodb]\nwrite_concern = \"all\""))
            .unwrap_err();
        assert!(e.to_string().contains("mongodb.write_concern"), "{e}");
    }

    #[test]
    fn documented_default_file_matches_the_code_defaults() {
        let file = include_str!("../config/writ.toml");
        let documented = Config::from_toml(file).unwrap();
        // The same collections with every other table left to the defaults.
        let collections = &file[file.find("[[collections]]").unwrap()..];
        let defaults = Config::from_toml(&format!("[redis]\n[mongodb]\n{collections}")).unwrap();
        let strip = |c: &Config| {
            let mut c = c.clone();
            c.consumer_name.clear();
            format!("{c:?}")
        };
        assert_eq!(
            strip(&documented),
            strip(&defaults),
            "config/writ.toml documents other values than the defaults in code"
        );
        assert!(documented.collections.len() >= 10);
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("mongodb://u:p@h/?a=b@c"),
            "mongodb://***@h/?a=b@c"
        );
        assert_eq!(redact_url("redis://host"), "redis://host");
    }
}
