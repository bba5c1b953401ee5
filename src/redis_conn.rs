//! Redis connections. Every connection writ opens (daemon, CLI tools, the
//! Rust client) comes from [`connect`]: a self-healing `ConnectionManager`
//! with explicit timeouts, over TLS for a `rediss://` URL (rustls; the public
//! webpki roots, or `redis.tls_ca_file`, and an optional client certificate).
//! Blocking stream reads get their own connection with a response timeout
//! longer than their `BLOCK`, so they never stall other traffic.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{redact_url, Config};
use crate::error::{Error, Result};

/// Response timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The redis crate's client for `config`'s URL and TLS files (no connection
/// yet).
pub fn client(config: &Config) -> Result<redis::Client> {
    let url = config.redis_url.as_str();
    let client = match &config.redis_tls.certificates {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
        None => redis::Client::open(url),
    };
    client.map_err(|e| {
        let field = if config.redis_tls.certificates.is_some() {
            "`redis.url` / `redis.tls_*`"
        } else {
            "`redis.url`"
        };
        Error::Config(format!("{field} {}: {e}", redact_url(url)))
    })
}

/// Opens a reconnecting connection. `block` is the longest `BLOCK` this
/// connection will issue (zero for none).
pub async fn connect(config: &Config, block: Duration) -> Result<ConnectionManager> {
    let client = client(config)?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(COMMAND_TIMEOUT + block))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, cfg)
        .await
        .map_err(|e| {
            let detail = crate::error::said_once(&e.to_string());
            let retry = if e.kind() == redis::ErrorKind::AuthenticationFailed {
                crate::error::RetryClass::Permanent
            } else {
                crate::error::RetryClass::Transient
            };
            Error::Connect {
                retry,
                what: "redis",
                url: redact_url(&config.redis_url),
                hint: hint(config, &e, &detail),
                detail,
            }
        })
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
