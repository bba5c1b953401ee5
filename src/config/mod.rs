//! Configuration: a serde `RawConfig` that rejects unknown fields, then
//! [`RawConfig::validate`] which returns the typed [`Config`] or one message
//! naming the bad field and the fix.
//!
//! Environment overrides (`WRIT_REDIS_URL`, `WRIT_MONGODB_URI`) are applied
//! between parsing and validation so secrets never need to live in the file.

mod raw;
mod validate;

pub use raw::{
    Layout, RawClient, RawCollection, RawConfig, RawDaemon, RawMongo, RawRedis, WriteMode,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub redis_url: String,
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

/// Fields writ owns in every stored document; a key field may not use them.
pub const RESERVED_FIELDS: &[&str] = &["_id", "payload", "removed", "_writ"];

impl Config {
    /// Looks up a collection.
    pub fn collection(&self, name: &str) -> Option<&CollectionConfig> {
        self.collections.get(name)
    }
}

/// A URL fit for logs and error messages: the user and password, and the value
/// of every query parameter that may hold a secret, replaced by `***`.
///
/// The user information is everything before the last `@` ahead of the query,
/// so a password with an unescaped `/` (base64) is hidden too; a password with
/// an unescaped `?` or `#` is found by the `@` after it (when no `=` comes
/// before that `@`). A query parameter is secret when its name
/// (percent-decoded, any case) contains `password`, `passwd`, `pwd`, `secret`
/// or `token`, or is `pass` (redis-rs's `redis+unix` URLs); in
/// `authMechanismProperties` only the secret properties
/// (`AWS_SESSION_TOKEN:...`) are hidden. Text that follows a secret value up
/// to the next `name=value` (`name:value` for properties), as an unescaped `&`
/// or `,` inside a secret would leave it, is hidden with it.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparseable url>".into();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let first_query = rest.find(['?', '#']).unwrap_or(rest.len());
    let at = rest[..first_query].rfind('@').or_else(|| {
        let first_eq = rest.find('=').unwrap_or(rest.len());
        rest[..first_eq].rfind('@')
    });
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    let after = match at {
        Some(at) => {
            out.push_str("***");
            &rest[at..]
        }
        None => rest,
    };
    let query_start = after.find(['?', '#']).unwrap_or(after.len());
    out.push_str(&after[..query_start]);
    let query = &after[query_start..];
    let (query, fragment) = match query.find('#') {
        Some(i) => query.split_at(i),
        None => (query, ""),
    };
    if let Some(params) = query.strip_prefix('?') {
        out.push('?');
        out.push_str(&redact_params(params));
    }
    out.push_str(fragment);
    out
}

/// Whether a URL parameter or `authMechanismProperties` property of this
/// name may hold a secret.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "pass"
        || ["password", "passwd", "pwd", "secret", "token"]
            .iter()
            .any(|s| name.contains(s))
}

/// A query string (`a=1&b=2`, `;` also separates), secret values redacted.
fn redact_params(params: &str) -> String {
    let mut out = String::with_capacity(params.len());
    let mut in_secret = false;
    let mut start = 0;
    for (i, c) in params.char_indices().chain([(params.len(), '&')]) {
        if c != '&' && c != ';' {
            continue;
        }
        let param = &params[start..i];
        match param.split_once('=') {
            // A piece of the secret before it: already hidden.
            None if in_secret => {}
            None => push_separated(&mut out, param, params, start),
            Some((name, value)) => {
                let decoded = percent_decode(name);
                in_secret = is_secret_name(&decoded);
                let shown = if in_secret {
                    format!("{name}=***")
                } else if decoded.eq_ignore_ascii_case("authMechanismProperties") {
                    format!("{name}={}", redact_properties(value))
                } else {
                    param.to_string()
                };
                push_separated(&mut out, &shown, params, start);
            }
        }
        start = i + 1;
    }
    out
}

/// Appends `piece` to `out`, after the separator (`&` or `;`) that preceded
/// it in `params`.
fn push_separated(out: &mut String, piece: &str, params: &str, start: usize) {
    if start > 0 {
        out.push_str(&params[start - 1..start]);
    }
    out.push_str(piece);
}

/// `authMechanismProperties` (`NAME:value,NAME:value`, possibly
/// percent-encoded): the values of secret properties redacted. Unchanged
/// when it holds no secret.
fn redact_properties(value: &str) -> String {
    let props = percent_decode(value);
    let mut any = false;
    let mut in_secret = false;
    let mut kept: Vec<String> = Vec::new();
    for p in props.split(',') {
        match p.split_once(':') {
            None if in_secret => {}
            Some((k, _)) if is_secret_name(k) => {
                any = true;
                in_secret = true;
                kept.push(format!("{k}:***"));
            }
            _ => {
                in_secret = false;
                kept.push(p.to_string());
            }
        }
    }
    if any {
        kept.join(",")
    } else {
        value.to_string()
    }
}

/// `%xx` escapes decoded (lossy UTF-8; a bad escape is kept as it is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        assert_eq!(
            redact_url("mongodb://user@h1:27017,h2:27017/db"),
            "mongodb://***@h1:27017,h2:27017/db"
        );
        assert_eq!(redact_url("redis://host"), "redis://host");
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }

    #[test]
    fn redacts_a_password_with_an_unescaped_slash_question_mark_or_hash() {
        assert_eq!(
            redact_url("redis://:ab/c+d=@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://:ab?cd@host/0?protocol=resp3"),
            "redis://***@host/0?protocol=resp3"
        );
        assert_eq!(redact_url("redis://:a#b@host/0"), "redis://***@host/0");
    }

    /// `url` redacted is `want`, and holds none of `secrets`.
    fn redacted(url: &str, want: &str, secrets: &[&str]) {
        let got = redact_url(url);
        assert_eq!(got, want, "{url}");
        for s in secrets {
            assert!(!got.contains(s), "{s} left in {got}");
        }
    }

    #[test]
    fn redacts_the_password_parameter() {
        redacted(
            "mongodb://h/?password=hunter2&authSource=admin",
            "mongodb://h/?password=***&authSource=admin",
            &["hunter2"],
        );
        redacted(
            "mongodb://u:p@h/db?password=hunter2",
            "mongodb://***@h/db?password=***",
            &["hunter2"],
        );
    }

    #[test]
    fn redacts_tls_certificate_key_file_password_and_keeps_the_file() {
        redacted(
            "mongodb://h/?tls=true&tlsCertificateKeyFile=/etc/k.pem&tlsCertificateKeyFilePassword=pem-pw",
            "mongodb://h/?tls=true&tlsCertificateKeyFile=/etc/k.pem&tlsCertificateKeyFilePassword=***",
            &["pem-pw"],
        );
    }

    #[test]
    fn redacts_ssl_password() {
        redacted(
            "mongodb://h/?ssl=true&sslPassword=ssl-pw&w=1",
            "mongodb://h/?ssl=true&sslPassword=***&w=1",
            &["ssl-pw"],
        );
    }

    #[test]
    fn redacts_the_aws_session_token_in_auth_mechanism_properties() {
        redacted(
            "mongodb+srv://c.example.net/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:FQoG/ZX+z=&authSource=$external",
            "mongodb+srv://c.example.net/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***&authSource=$external",
            &["FQoG"],
        );
        // Percent-encoded as a whole (as drivers' docs write it).
        redacted(
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN%3AFQoG%2FZX%2Cmore",
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:***",
            &["FQoG", "more"],
        );
        // Without a secret property it is left as written.
        redacted(
            "mongodb://h/?authMechanismProperties=SERVICE_NAME%3Amongodb",
            "mongodb://h/?authMechanismProperties=SERVICE_NAME%3Amongodb",
            &[],
        );
    }

    #[test]
    fn redacts_any_parameter_named_like_a_password_secret_or_token() {
        redacted(
            "mongodb://h/?MyPassWord=a1&client_SECRET=b2&accessToken=c3&TOKEN=d4&pass%77ord=e5&dbPasswd=f6&pwd=g7&appName=writ",
            "mongodb://h/?MyPassWord=***&client_SECRET=***&accessToken=***&TOKEN=***&pass%77ord=***&dbPasswd=***&pwd=***&appName=writ",
            &["a1", "b2", "c3", "d4", "e5", "f6", "g7"],
        );
        // redis-rs: `redis+unix:///path?db=0&pass=...`.
        redacted(
            "redis+unix:///run/redis.sock?db=0&user=u&pass=p9",
            "redis+unix:///run/redis.sock?db=0&user=u&pass=***",
            &["p9"],
        );
    }

    #[test]
    fn a_secret_with_an_unescaped_separator_is_hidden_whole() {
        redacted(
            "mongodb://h/?password=ab&cd;ef&authSource=admin;w=1#frag",
            "mongodb://h/?password=***&authSource=admin;w=1#frag",
            &["ab", "cd", "ef"],
        );
        redacted(
            "mongodb://h/?a=1;b=2&flag&c=",
            "mongodb://h/?a=1;b=2&flag&c=",
            &[],
        );
    }
}
