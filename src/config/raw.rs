//! The config file as written: serde structs that reject unknown fields, with
//! the documented defaults. [`RawConfig::validate`](super::validate) turns it
//! into the typed [`Config`](super::Config).

use serde::Deserialize;

use super::MONGO_MAX_BSON;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Redis connection and stream layout.
    #[serde(default)]
    pub redis: RawRedis,
    /// MongoDB connection and write concern.
    #[serde(default)]
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
    /// Redis URL; `WRIT_REDIS_URL` overrides it. In cluster mode, one or
    /// more seed nodes: a list, or one string of comma-separated URLs.
    #[serde(default = "default_redis_url")]
    pub url: RawUrls,
    /// Redis Cluster mode: `url` names seed nodes, slots are discovered.
    #[serde(default)]
    pub cluster: bool,
    /// Replicas that must confirm (`WAIT`) an accepted entry, a cache write,
    /// a lease, or a dead letter before writ relies on it. 0: none.
    #[serde(default)]
    pub min_replicas_acked: u32,
    /// How long a `WAIT` for `min_replicas_acked` replicas may take.
    #[serde(default = "default_replica_ack_timeout_ms")]
    pub replica_ack_timeout_ms: u64,
    /// Prefix of every Redis key writ uses.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Number of partition streams. Changing it needs a drained system.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// PEM file of the CA certificate(s) a `rediss://` server's certificate
    /// must chain to, instead of the public webpki roots.
    pub tls_ca_file: Option<String>,
    /// PEM client certificate chain for mutual TLS (with `tls_key_file`).
    pub tls_cert_file: Option<String>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<String>,
    /// Whether `url` came from `WRIT_REDIS_URL`: its errors name that.
    #[serde(skip)]
    pub url_from_env: bool,
}

/// `[mongodb]`
#[derive(Deserialize)]
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
    /// Most MongoDB operations in flight at once, daemon-wide (the adaptive
    /// limit moves between 1 and this).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Whether `uri` came from `WRIT_MONGODB_URI`: its errors name that.
    #[serde(skip)]
    pub uri_from_env: bool,
}

/// The fields with the URI's credentials blanked.
impl std::fmt::Debug for RawMongo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let RawMongo {
            uri,
            database,
            write_concern,
            journal,
            op_timeout_ms,
            max_concurrency,
            uri_from_env,
        } = self;
        f.debug_struct("RawMongo")
            .field("uri", &super::redact_url(uri))
            .field("database", database)
            .field("write_concern", write_concern)
            .field("journal", journal)
            .field("op_timeout_ms", op_timeout_ms)
            .field("max_concurrency", max_concurrency)
            .field("uri_from_env", uri_from_env)
            .finish()
    }
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
    /// Entry bytes in flight per partition (read, not yet acked).
    #[serde(default = "default_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How long an idle reader's `XREAD BLOCK` waits for new entries, in
    /// milliseconds (shutdown and hand-over do not wait it out).
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// How long shutdown may take to drain in-flight work.
    #[serde(default = "default_shutdown_ms")]
    pub shutdown_deadline_ms: u64,
    /// Attempts before a deterministically failing write is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Timeouts in a row, each while MongoDB answered other operations on the
    /// write's collection, before the write is dead-lettered; 0: never.
    #[serde(default = "default_max_timeouts")]
    pub max_timeouts: u32,
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
    /// Threads of `writ serve`'s async runtime (docs/operations.md,
    /// "Threads").
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
}

impl Default for RawRedis {
    fn default() -> Self {
        toml::from_str("").expect("redis defaults")
    }
}

impl Default for RawMongo {
    fn default() -> Self {
        toml::from_str("").expect("mongodb defaults")
    }
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
    /// How long a write whose stream entry is gone, with no ack or dead
    /// letter and an older version in MongoDB, is still waited for before it
    /// is settled lost.
    #[serde(default = "default_lost_write_after_ms")]
    pub lost_write_after_ms: u64,
    /// Largest payload accepted, in bytes of BSON.
    #[serde(default = "default_max_doc")]
    pub max_document_bytes: usize,
    /// A submit fails with a backpressure error when its partition has this
    /// many unapplied entries or more.
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
    /// `payload` (default) or `fields`: how a `put`'s document is stored.
    #[serde(default)]
    pub layout: Layout,
    /// Keep mongoose-style `createDate` (on insert) and `updatedDate` (on
    /// every write).
    #[serde(default)]
    pub timestamps: bool,
}

/// How a `put`'s document is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Under the `payload` field (the document must be an object).
    #[default]
    Payload,
    /// As top-level fields of the stored document, exactly as given (the
    /// shape of backtest-kit's official MongoDB adapter: `payload`,
    /// `positions`, `when`, candle prices...).
    Fields,
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

/// `redis.url`: one string, or a list of seed URLs.
pub enum RawUrls {
    /// One URL (or, in cluster mode, comma-separated URLs).
    One(String),
    /// Seed nodes.
    Many(Vec<String>),
}

/// By hand, for the message: serde's untagged enums say only "data did
/// not match any variant".
impl<'de> Deserialize<'de> for RawUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Urls;
        impl<'de> serde::de::Visitor<'de> for Urls {
            type Value = RawUrls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a URL string (\"redis://host:6379\") or a list of URL strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUrls, E> {
                Ok(RawUrls::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawUrls, A::Error> {
                let mut v = Vec::new();
                while let Some(u) = seq.next_element::<String>()? {
                    v.push(u);
                }
                Ok(RawUrls::Many(v))
            }
        }
        d.deserialize_any(Urls)
    }
}

/// The URLs with their credentials blanked: a password never reaches a
/// `{:?}` print.
impl std::fmt::Debug for RawUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.list().iter().map(|u| super::redact_url(u)).collect();
        f.debug_tuple("RawUrls").field(&shown).finish()
    }
}

impl RawUrls {
    /// The URLs, each trimmed, empty ones dropped. In one string, a comma
    /// starts the next URL only where a scheme follows it (`,redis://`): a
    /// password may hold a comma.
    pub fn list(&self) -> Vec<String> {
        let all: Vec<&str> = match self {
            RawUrls::One(s) => split_urls(s),
            RawUrls::Many(v) => v.iter().map(String::as_str).collect(),
        };
        all.into_iter()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// `s` cut at each comma that a URL scheme (`redis://`, `rediss://`, ...) or
/// the end follows, spaces and more commas (empty items) allowed between.
fn split_urls(s: &str) -> Vec<&str> {
    let scheme_next = |rest: &str| {
        let rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        rest.is_empty()
            || rest.find("://").is_some_and(|end| {
                end > 0
                    && rest[..end]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            })
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in s.match_indices(',') {
        if scheme_next(&s[i + 1..]) {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn default_replica_ack_timeout_ms() -> u64 {
    1000
}

fn default_redis_url() -> RawUrls {
    RawUrls::One("redis://127.0.0.1:6379".into())
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
fn default_max_concurrency() -> usize {
    32
}
fn default_batch() -> usize {
    128
}
fn default_in_flight() -> usize {
    1024
}
fn default_in_flight_bytes() -> usize {
    32 * 1024 * 1024
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
fn default_max_timeouts() -> u32 {
    5
}
fn default_backoff_cap_ms() -> u64 {
    5_000
}
fn default_lease_ttl_ms() -> u64 {
    2_000
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
fn default_worker_threads() -> usize {
    1
}
fn default_write_timeout_ms() -> u64 {
    10_000
}
fn default_read_timeout_ms() -> u64 {
    5_000
}
fn default_lost_write_after_ms() -> u64 {
    60_000
}
fn default_max_doc() -> usize {
    MONGO_MAX_BSON - 64 * 1024
}
