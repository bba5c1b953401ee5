//! Configuration: a serde `RawConfig` that rejects unknown fields, then
//! [`RawConfig::validate`] which returns the typed [`Config`] or one message
//! naming the bad field and the fix.
//!
//! Environment overrides (`WRIT_REDIS_URL`, `WRIT_MONGODB_URI`) are applied
//! between parsing and validation so secrets never need to live in the file.

mod raw;
mod redact;
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

/// The validated configuration.
#[derive(Debug, Clone)]
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
            raw.redis.url = raw::RawUrls::One(url);
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

/// Fields writ owns in every stored document; a key field may not use them.
pub const RESERVED_FIELDS: &[&str] = &["_id", "payload", "removed", "_writ"];

impl Config {
    /// Looks up a collection.
    pub fn collection(&self, name: &str) -> Option<&CollectionConfig> {
        self.collections.get(name)
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

    /// Every numeric bound: the value just outside is refused with the
    /// field and its range, the value at the edge is accepted.
    #[test]
    fn numeric_bounds_are_checked_at_their_edges() {
        let with = |section: &str, line: &str| {
            let header = format!("[{section}]");
            let text = if MIN.contains(&header) {
                MIN.replace(&header, &format!("{header}\n{line}"))
            } else {
                format!("{header}\n{line}\n{MIN}")
            };
            Config::from_toml(&text)
        };
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            (
                "redis",
                "min_replicas_acked",
                "17",
                "16",
                "between 0 and 16",
            ),
            (
                "redis",
                "replica_ack_timeout_ms",
                "0",
                "1",
                "between 1 and 60000",
            ),
            (
                "redis",
                "replica_ack_timeout_ms",
                "60001",
                "60000",
                "between 1 and 60000",
            ),
            ("redis", "partitions", "4097", "4096", "between 1 and 4096"),
            ("mongodb", "op_timeout_ms", "0", "1", "at least 1"),
            (
                "mongodb",
                "max_concurrency",
                "1001",
                "1000",
                "between 1 and 1000",
            ),
            ("daemon", "batch_size", "0", "1", "between 1 and 10000"),
            (
                "daemon",
                "block_ms",
                "60001",
                "60000",
                "between 1 and 60000",
            ),
            ("daemon", "max_attempts", "0", "1", "at least 1"),
            (
                "daemon",
                "lease_ttl_ms",
                "299",
                "300",
                "between 300 and 300000",
            ),
            ("daemon", "stats_interval_ms", "99", "100", "at least 100"),
            ("daemon", "retention_max_entries", "0", "1", "at least 1"),
            ("client", "max_backlog", "0", "1", "at least 1"),
            (
                "client",
                "max_document_bytes",
                "16777217",
                "16777216",
                "between 1 and 16777216",
            ),
        ];
        for (section, field, bad, edge, range) in cases {
            let e = with(section, &format!("{field} = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{section}.{field}`: must be {range}")),
                "{field} = {bad}: {e}"
            );
            if let Err(e) = with(section, &format!("{field} = {edge}")) {
                panic!("{field} = {edge} refused: {e}");
            }
        }
        let e = with("daemon", "batch_size = 64\nmax_in_flight = 63").unwrap_err();
        assert!(e.to_string().contains("daemon.max_in_flight"), "{e}");
    }

    /// The shipped configs parse: the default, docker-compose's, and its
    /// cluster profile's (with all six seed nodes and replica acks).
    #[test]
    fn shipped_configs_are_valid() {
        for text in [
            include_str!("../../config/writ.toml"),
            include_str!("../../docker/writ.toml"),
        ] {
            assert!(!Config::from_toml(text).unwrap().redis_cluster);
        }
        let c = Config::from_toml(include_str!("../../docker/writ-cluster.toml")).unwrap();
        assert!(c.redis_cluster);
        assert_eq!(c.redis_urls.len(), 6);
        assert_eq!(c.min_replicas_acked, 1);
    }

    #[test]
    fn cluster_urls_lists_and_replica_acks() {
        let with =
            |lines: &str| Config::from_toml(&MIN.replace("[redis]", &format!("[redis]\n{lines}")));
        let list = r#"url = ["redis://a:1", "redis://b:2"]"#;
        let e = with(list).unwrap_err().to_string();
        assert!(e.contains("redis.cluster = true"), "{e}");
        let c = with(&format!("cluster = true\n{list}")).unwrap();
        assert_eq!(c.redis_urls, ["redis://a:1", "redis://b:2"]);
        assert_eq!(c.redis_url, "redis://a:1");
        assert!(c.redis_cluster);
        // WRIT_REDIS_URL's form: one string, comma-separated.
        let c = with("cluster = true\nurl = \"redis://a:1, redis://b:2\"").unwrap();
        assert_eq!(c.redis_urls.len(), 2);
        let e = with("cluster = true\nurl = [\"redis://a:1\", \"rediss://b:2\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mixes"), "{e}");
        let e = with("url = []").unwrap_err().to_string();
        assert!(e.contains("redis.url"), "{e}");
        let c = with("min_replicas_acked = 1").unwrap();
        assert_eq!(c.min_replicas_acked, 1);
        assert_eq!(c.replica_ack_timeout, Duration::from_millis(1000));
        let e = with("replica_ack_timeout_ms = 0").unwrap_err().to_string();
        assert!(e.contains("redis.replica_ack_timeout_ms"), "{e}");
    }

    #[test]
    fn redis_tls_files_are_checked_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        };
        let ca = pem(
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let key = pem(
            "k.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let with = |url: &str, lines: &str| {
            Config::from_toml(
                &MIN.replace("[redis]", &format!("[redis]\nurl = \"{url}\"\n{lines}")),
            )
        };
        // Without files: no TLS material (a rediss:// URL trusts the webpki roots).
        let c = with("rediss://h:6380", "").unwrap();
        assert!(c.redis_tls.certificates.is_none());
        // A CA and a client certificate with its key.
        let c = with(
            "rediss://h:6380",
            &format!("tls_ca_file = {ca:?}\ntls_cert_file = {ca:?}\ntls_key_file = {key:?}"),
        )
        .unwrap();
        let certs = c.redis_tls.certificates.as_ref().unwrap();
        assert!(certs
            .root_cert
            .as_ref()
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE"));
        assert!(certs
            .client_tls
            .as_ref()
            .unwrap()
            .client_key
            .starts_with(b"-----BEGIN PRIVATE"));
        assert!(
            !format!("{c:?}").contains("BEGIN PRIVATE KEY"),
            "the key is never printed"
        );
        // Each rule names its field.
        let cases = [
            (
                "redis://h",
                format!("tls_ca_file = {ca:?}"),
                "`redis.tls_ca_file`: is set but the Redis URL redis://h is not rediss://",
            ),
            (
                "rediss://h",
                format!("tls_cert_file = {ca:?}"),
                "`redis.tls_key_file`: mutual TLS needs both",
            ),
            (
                "rediss://h",
                format!("tls_key_file = {key:?}"),
                "`redis.tls_cert_file`: mutual TLS needs both",
            ),
            (
                "rediss://h",
                "tls_ca_file = \"/nonexistent/ca.pem\"".into(),
                "`redis.tls_ca_file`: cannot read /nonexistent/ca.pem",
            ),
            (
                "rediss://h",
                format!("tls_ca_file = {key:?}"),
                "holds no PEM certificate",
            ),
            (
                "rediss://h",
                "tls_ca_file = \"\"".into(),
                "`redis.tls_ca_file`: is empty",
            ),
            (
                "rediss://h",
                format!("tls_ca_file = {ca:?}\ntls_cert_file = {ca:?}\ntls_key_file = {ca:?}"),
                "`redis.tls_key_file`: ",
            ),
        ];
        for (url, lines, want) in cases {
            let e = with(url, &lines).unwrap_err().to_string();
            assert!(e.contains(want), "{lines}: {e}");
        }
    }

    #[test]
    fn documented_default_file_matches_the_code_defaults() {
        let file = include_str!("../../config/writ.toml");
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
}
