//! Configuration: a serde `RawConfig` that rejects unknown fields, then
//! [`RawConfig::validate`] which returns the typed [`Config`] or one message
//! naming the bad field and the fix.
//!
//! Environment overrides (`WRIT_REDIS_URL`, `WRIT_MONGODB_URI`,
//! `WRIT_CONSUMER_NAME`, `WRIT_LOG`) are applied between parsing and
//! validation so secrets never need to live in the file, and a bad override
//! is refused as a bad field would be.

mod raw;
mod redact;
mod redis_endpoint;
mod validate;

pub use raw::{
    Layout, RawClient, RawCollection, RawConfig, RawDaemon, RawMongo, RawRedis, WriteMode,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
pub use redact::redact_url;

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "WRIT_CONFIG";
/// The most partitions a namespace may have (`redis.partitions`).
pub const MAX_PARTITIONS: u32 = 4096;
/// Environment variable overriding `redis.url`.
pub const ENV_REDIS_URL: &str = "WRIT_REDIS_URL";
/// Environment variable overriding `mongodb.uri`.
pub const ENV_MONGODB_URI: &str = "WRIT_MONGODB_URI";
/// Environment variable overriding `daemon.consumer_name`.
pub const ENV_CONSUMER_NAME: &str = "WRIT_CONSUMER_NAME";
/// Environment variable overriding `daemon.log_level`.
pub const ENV_LOG: &str = "WRIT_LOG";
/// Config file used when neither `--config` nor `WRIT_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/writ.toml";

/// Largest document MongoDB stores (16 MiB).
pub const MONGO_MAX_BSON: usize = 16 * 1024 * 1024;

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
    /// Where a put's document goes.
    pub layout: Layout,
    /// Whether writes keep `createDate`/`updatedDate`.
    pub timestamps: bool,
}

/// The TLS files of a `rediss://` URL (`redis.tls_*`), read when the config
/// is validated. With none of them, `rediss://` trusts the public webpki roots
/// and sends no client certificate.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// `redis.tls_ca_file`: the CA(s) trusted instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// `redis.tls_cert_file`: client certificate chain (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// `redis.tls_key_file`: its private key.
    pub key_file: Option<PathBuf>,
    /// The files' contents as the redis crate takes them; `None` when no file
    /// is set. Its `Debug` prints no PEM (the key is a secret).
    pub certificates: Option<redis::TlsCertificates>,
}

/// The validated configuration. Its `Debug` blanks the credentials of the
/// URLs.
#[derive(Clone)]
pub struct Config {
    /// Redis URL (may contain credentials: never log it, use [`redact_url`]).
    /// In cluster mode, the first seed node.
    pub redis_url: String,
    /// Every seed URL (one in single-node mode).
    pub redis_urls: Vec<String>,
    /// Redis Cluster mode.
    pub redis_cluster: bool,
    /// Replicas that must confirm writes writ relies on (`WAIT`); 0: none.
    pub min_replicas_acked: u32,
    /// Bound of each such `WAIT`.
    pub replica_ack_timeout: Duration,
    /// TLS files of a `rediss://` URL.
    pub redis_tls: RedisTls,
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
    /// Per-operation MongoDB timeout (also the server-side `maxTimeMS`).
    pub op_timeout: Duration,
    /// Upper bound of the adaptive MongoDB concurrency limit.
    pub max_concurrency: usize,
    /// Consumer name in the groups.
    pub consumer_name: String,
    /// Entries per read.
    pub batch_size: usize,
    /// Entries in flight per partition.
    pub max_in_flight: usize,
    /// Entry bytes in flight per partition: reads ask for no more than
    /// what is free, and return at most one entry past it.
    pub max_in_flight_bytes: usize,
    /// XREADGROUP BLOCK.
    pub block: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_deadline: Duration,
    /// Attempts before dead-lettering a permanent failure.
    pub max_attempts: u32,
    /// Timeouts in a row (others answered meanwhile) before dead-lettering
    /// a write that never finishes; 0: never.
    pub max_timeouts: u32,
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
    /// Threads of `writ serve`'s async runtime.
    pub worker_threads: usize,
    /// `write` ack timeout.
    pub write_timeout: Duration,
    /// `read` wait bound for own pending writes.
    pub read_timeout: Duration,
    /// How long a write whose entry is gone and that MongoDB does not hold
    /// is waited for before it is settled lost (`client.lost_write_after_ms`).
    pub lost_write_after: Duration,
    /// Largest accepted payload.
    pub max_document_bytes: usize,
    /// Collections by name.
    pub collections: BTreeMap<String, CollectionConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field by name, so a new one cannot slip past unredacted.
        let Config {
            redis_url,
            redis_urls,
            redis_cluster,
            min_replicas_acked,
            replica_ack_timeout,
            redis_tls,
            namespace,
            partitions,
            mongodb_uri,
            database,
            write_concern,
            journal,
            op_timeout,
            max_concurrency,
            consumer_name,
            batch_size,
            max_in_flight,
            max_in_flight_bytes,
            block,
            shutdown_deadline,
            max_attempts,
            max_timeouts,
            backoff_cap,
            lease_ttl,
            stats_interval,
            retention_max_age,
            retention_max_entries,
            max_backlog,
            metrics_listen,
            log_level,
            log_format,
            worker_threads,
            write_timeout,
            read_timeout,
            lost_write_after,
            max_document_bytes,
            collections,
        } = self;
        f.debug_struct("Config")
            .field("redis_url", &redact_url(redis_url))
            .field(
                "redis_urls",
                &redis_urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("redis_cluster", redis_cluster)
            .field("min_replicas_acked", min_replicas_acked)
            .field("replica_ack_timeout", replica_ack_timeout)
            .field("redis_tls", redis_tls)
            .field("namespace", namespace)
            .field("partitions", partitions)
            .field("mongodb_uri", &redact_url(mongodb_uri))
            .field("database", database)
            .field("write_concern", write_concern)
            .field("journal", journal)
            .field("op_timeout", op_timeout)
            .field("max_concurrency", max_concurrency)
            .field("consumer_name", consumer_name)
            .field("batch_size", batch_size)
            .field("max_in_flight", max_in_flight)
            .field("max_in_flight_bytes", max_in_flight_bytes)
            .field("block", block)
            .field("shutdown_deadline", shutdown_deadline)
            .field("max_attempts", max_attempts)
            .field("max_timeouts", max_timeouts)
            .field("backoff_cap", backoff_cap)
            .field("lease_ttl", lease_ttl)
            .field("stats_interval", stats_interval)
            .field("retention_max_age", retention_max_age)
            .field("retention_max_entries", retention_max_entries)
            .field("max_backlog", max_backlog)
            .field("metrics_listen", metrics_listen)
            .field("log_level", log_level)
            .field("log_format", log_format)
            .field("worker_threads", worker_threads)
            .field("write_timeout", write_timeout)
            .field("read_timeout", read_timeout)
            .field("lost_write_after", lost_write_after)
            .field("max_document_bytes", max_document_bytes)
            .field("collections", collections)
            .finish()
    }
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
            Error::Config(if e.kind() == std::io::ErrorKind::InvalidData {
                format!(
                    "config file {} is not UTF-8 text: a writ config is TOML (config/writ.toml shows every field)",
                    path.display()
                )
            } else {
                format!(
                    "cannot read config file {}: {e}; pass --config PATH or set {ENV_CONFIG}",
                    path.display()
                )
            })
        })?;
        Config::from_toml_with_env(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip_prefix(&e))))
    }

    /// Parses and validates TOML text, ignoring the environment.
    pub fn from_toml(text: &str) -> Result<Config> {
        Self::parse(text)?.validate()
    }

    fn parse(text: &str) -> Result<RawConfig> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| Error::Config(e.message().to_string() + &span_hint(text, &e)))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            // The field's path (`redis.partitions`), so a wrong type names
            // its field as a bad value does; Rust's type names made plain.
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = plain_types(inner.message());
            let hint = span_hint(text, &inner);
            Error::Config(match path.as_str() {
                "." | "" => message + &hint,
                _ => format!("`{path}`: {message}{hint}"),
            })
        })
    }

    /// Parses TOML text, applies the environment overrides, validates.
    pub fn from_toml_with_env(text: &str) -> Result<Config> {
        let mut raw = Self::parse(text)?;
        if let Ok(url) = std::env::var(ENV_REDIS_URL) {
            raw.redis.url = raw::RawUrls::One(url);
            raw.redis.url_from_env = true;
        }
        if let Ok(uri) = std::env::var(ENV_MONGODB_URI) {
            raw.mongodb.uri = uri;
            raw.mongodb.uri_from_env = true;
        }
        if let Ok(name) = std::env::var(ENV_CONSUMER_NAME) {
            if !validate::is_identifier(&name) {
                return Err(validate::bad(
                    &format!("{ENV_CONSUMER_NAME} (environment, overrides daemon.consumer_name)"),
                    format!("{name:?}: use 1-64 characters of [A-Za-z0-9_.-]"),
                ));
            }
            raw.daemon.consumer_name = Some(name);
        }
        if let Ok(level) = std::env::var(ENV_LOG) {
            // Checked under its own name: the file's field is not the culprit.
            validate::check_log_level(
                &format!("{ENV_LOG} (environment, overrides daemon.log_level)"),
                &level,
            )?;
            raw.daemon.log_level = level;
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

/// serde's "expected u32" and the like, in words.
fn plain_types(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, plain) in [
        ("expected u8", "expected a whole number 0-255"),
        ("expected u16", "expected a whole number 0-65535"),
        ("expected u32", "expected a whole number 0-4294967295"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected a sequence", "expected a list [ ... ]"),
    ] {
        m = m.replace(rust, plain);
    }
    m
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

/// Fields writ owns in every stored document; a key field may not use them.
pub const RESERVED_FIELDS: &[&str] = &["_id", "payload", "removed", "_writ"];

impl Config {
    /// Looks up a collection.
    pub fn collection(&self, name: &str) -> Option<&CollectionConfig> {
        self.collections.get(name)
    }
}

/// Where to fix a URL refused from `field`: the environment variable `env`
/// when it came from there (it overrides `key`), else `key` or `env`.
fn fix_where(field: &str, env: &str, key: &str) -> String {
    if field.starts_with(env) {
        format!("fix {env}, or unset it to use {key} from the config file")
    } else {
        format!("fix {key}, or set {env}")
    }
}

#[cfg(test)]
mod tests;
