//! `writ serve`: wires MongoDB, Redis, the cache and one consumer task per
//! partition, and shuts down in order: stop reading, drain and ack what is in
//! flight, exit; at the deadline, abandon what is left (it stays pending in
//! the streams and is re-applied by the next owner).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apply::Store;
use crate::cache::Cache;
use crate::config::{redact_url, Config};
use crate::consumer::{run_partition, Ctx};
use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::telemetry::{self, Health};

/// Creates the consumer group of a stream (and the stream) if missing.
pub async fn ensure_group(conn: &mut ConnectionManager, stream: &str, group: &str) -> Result<()> {
    let res: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the daemon until `shutdown` fires, then drains and returns.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<()> {
    let config = Arc::new(config);
    tracing::info!(
        redis = %redact_url(&config.redis_url),
        mongodb = %redact_url(&config.mongodb_uri),
        database = %config.database,
        partitions = config.partitions,
        consumer = %config.consumer_name,
        "starting writ serve"
    );
    let health = Health::default();
    if let Some(addr) = config.metrics_listen {
        telemetry::serve_http(addr, health.clone(), shutdown.clone()).await?;
    }
    telemetry::build_info();
    let store = Store::connect(&config).await?;
    wait_for_mongo(&store, &shutdown).await?;
    store.ensure_indexes(config.collections.values()).await?;
    let mut conn = crate::redis_conn::connect(&config.redis_url, Duration::ZERO).await?;
    let names = Names::new(&config.namespace);
    for p in 0..config.partitions {
        ensure_group(&mut conn, &names.stream(p), &names.group()).await?;
    }
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        names,
        store: store.clone(),
        cache: Cache::new(conn.clone()),
        conn: conn.clone(),
        stop_reading: shutdown.child_token(),
        abort: CancellationToken::new(),
    });
    let tracker = TaskTracker::new();
    for p in 0..config.partitions {
        tracker.spawn(run_partition(p, ctx.clone()));
    }
    tracker.close();
    let probe = tracker.spawn(telemetry::probe_loop(
        store,
        conn,
        health,
        ctx.stop_reading.clone(),
    ));
    drop(probe);
    tracing::info!(partitions = config.partitions, "writ serve is running");
    shutdown.cancelled().await;
    tracing::info!(
        deadline_ms = config.shutdown_deadline.as_millis() as u64,
        "shutting down: stopped reading, draining in-flight writes"
    );
    if tokio::time::timeout(config.shutdown_deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed; abandoning what is left (it stays pending and is re-applied on restart)");
        ctx.abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
    tracing::info!("writ serve stopped");
    Ok(())
}

async fn wait_for_mongo(store: &Store, shutdown: &CancellationToken) -> Result<()> {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(5));
    let mut warned = false;
    loop {
        match store.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if e.retry_class() == crate::error::RetryClass::Transient => {
                if !warned {
                    tracing::warn!(error = %e, "MongoDB is not reachable yet; retrying (check mongodb.uri / WRIT_MONGODB_URI)");
                    warned = true;
                }
                if !backoff.sleep(shutdown).await {
                    return Err(Error::Shutdown);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
