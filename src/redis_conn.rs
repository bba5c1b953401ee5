//! Redis connections. Every connection is a self-healing `ConnectionManager`
//! with explicit timeouts; blocking stream reads get their own connection with a
//! response timeout longer than their `BLOCK`, so they never stall other traffic.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::redact_url;
use crate::error::{Error, Result};

/// Response timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a reconnecting connection. `block` is the longest `BLOCK` this
/// connection will issue (zero for none).
pub async fn connect(url: &str, block: Duration) -> Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::Config(format!("`redis.url` {}: {e}", redact_url(url))))?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(COMMAND_TIMEOUT + block))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, cfg)
        .await
        .map_err(|e| Error::Connect {
            what: "redis",
            url: redact_url(url),
            detail: crate::error::said_once(&e.to_string()),
            hint: "is redis-server running, and are redis.url / WRIT_REDIS_URL right?",
        })
}
