//! `writ serve`: wires MongoDB, Redis, the cache, partition ownership (one
//! consumer task per owned partition), health probes and housekeeping, and
//! shuts down in order: stop reading, drain and ack what is in flight, release
//! the leases, exit; at the deadline, abandon what is left (it stays pending in
//! the streams and is re-applied by the next owner).

use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::{Conn, Replication};
use tokio_util::sync::CancellationToken;

use crate::apply::Store;
use crate::cache::Cache;
use crate::config::{redact_url, Config};
use crate::error::{Error, Result};
use crate::ownership::{self, Leases};
use crate::partition::{Ctx, Halt};
use crate::protocol::Names;
use crate::telemetry::{self, Health};

use crate::source::ensure_group;

/// Runs the daemon until `shutdown` fires, then drains and returns.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<()> {
    let config = Arc::new(config);
    // The runtime's threads (`daemon.worker_threads` for `writ serve`).
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    log_start(&config, threads);
    let health = Health::default();
    if let Some(addr) = config.metrics_listen {
        telemetry::serve_http(addr, health.clone(), shutdown.clone()).await?;
    }
    telemetry::register(&config);
    // Set before the servers are awaited, so the CPU alert has its right-hand
    // side from the start.
    metrics::gauge!("writ_worker_threads").set(threads as f64);
    // The driver set up, not MongoDB reached: `writ_up` waits for the ping.
    let store = match wait_for(Awaited::Mongo, false, &shutdown, || Store::connect(&config)).await {
        Err(Error::Shutdown) => return Ok(()),
        other => other?,
    };
    // Whatever way it ends, the driver is closed before the process exits
    // (`Store::close`).
    let done = run(config, store.clone(), health, shutdown).await;
    store.close().await;
    done
}

/// [`serve`] once MongoDB's driver is set up: prepares MongoDB and Redis,
/// then runs and drains.
async fn run(
    config: Arc<Config>,
    store: Store,
    health: Health,
    shutdown: CancellationToken,
) -> Result<()> {
    match prepare_mongo(&store, &config, &shutdown).await {
        Err(Error::Shutdown) => return Ok(()),
        other => other?,
    }
    let (conn, standing) =
        match wait_for(Awaited::Redis, true, &shutdown, || prepare_redis(&config)).await {
            Err(Error::Shutdown) => return Ok(()),
            other => other?,
        };
    // Set (and the daemon stopped) when another daemon's partition count
    // appears in Redis: this daemon must not go on with its own.
    let halt = Halt::new(shutdown.clone());
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        names: Names::new(&config.namespace),
        store: store.clone(),
        cache: Cache::new(conn.clone()).with_replication(Replication::of(&config)),
        conn: conn.clone(),
        standing,
        halt: halt.clone(),
    });
    // Leases and membership get a connection of their own: on the shared
    // one, a renewal would wait behind the rounds' cache writes, which carry
    // whole documents (tens of MiB with large ones), and lapse meanwhile.
    // Waited for as the first connection was: a Redis that restarts just
    // now must not end the daemon (only an answer that refuses does).
    let control = match wait_for(Awaited::Redis, true, &shutdown, || {
        crate::redis_conn::connect(&config, crate::redis_conn::wait_bound(&config))
    })
    .await
    {
        Err(Error::Shutdown) => return Ok(()),
        other => other?,
    };
    let leases = Leases::new(
        control.clone(),
        &config.namespace,
        &config.consumer_name,
        config.lease_ttl,
    )
    .with_replication(Replication::of(&config));
    let background = shutdown.child_token();
    let probe = tokio::spawn(telemetry::probe_loop(
        store.clone(),
        conn.clone(),
        health,
        background.clone(),
    ));
    // The unique key indexes again, every so often (a collection dropped
    // while the daemon runs comes back without its index).
    let indexes = {
        let (store, collections) = (
            store.clone(),
            config.collections.values().cloned().collect(),
        );
        let every = config.stats_interval * INDEX_CHECK_INTERVALS;
        let stop = background.clone();
        tokio::spawn(async move { store.keep_indexes(collections, every, stop).await })
    };
    let keeper = tokio::spawn(housekeeping(
        config.clone(),
        conn,
        standing,
        background.clone(),
        halt.clone(),
    ));
    tracing::info!(
        partitions = config.partitions,
        lease_ttl_ms = config.lease_ttl.as_millis() as u64,
        "writ serve is running"
    );
    let spawn: ownership::Spawn =
        Box::new(move |p, run| tokio::spawn(crate::partition::run_partition(p, ctx.clone(), run)));
    ownership::run(config.clone(), control, leases, spawn, shutdown.clone()).await;
    background.cancel();
    let _ = tokio::join!(probe, keeper, indexes);
    tracing::info!("writ serve stopped");
    match halt.why() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The start-up line: where the daemon writes (credentials redacted).
fn log_start(config: &Config, worker_threads: usize) {
    tracing::info!(
        redis = %crate::redis_conn::redacted_urls(config),
        redis_cluster = config.redis_cluster,
        min_replicas_acked = config.min_replicas_acked,
        mongodb = %redact_url(&config.mongodb_uri),
        database = %config.database,
        partitions = config.partitions,
        consumer = %config.consumer_name,
        worker_threads,
        "starting writ serve"
    );
}

/// The unique key indexes are checked again every this many
/// `daemon.stats_interval_ms` (a minute at the default 2 s): a
/// `listIndexes` per collection, so rarely that MongoDB does not notice.
const INDEX_CHECK_INTERVALS: u32 = 30;

/// Waits for MongoDB and creates the unique key indexes.
/// [`Error::Shutdown`] when `shutdown` fires meanwhile (nothing was in flight).
async fn prepare_mongo(store: &Store, config: &Config, shutdown: &CancellationToken) -> Result<()> {
    if let Err(e) = wait_for(Awaited::Mongo, true, shutdown, || store.ping()).await {
        if matches!(e, Error::Shutdown) {
            tracing::info!("stopped while waiting for MongoDB; nothing was in flight");
        }
        return Err(e);
    }
    let r = store
        .ensure_indexes_waiting(config.collections.values(), config.backoff_cap, shutdown)
        .await;
    if matches!(r, Err(Error::Shutdown)) {
        tracing::info!("stopped while creating the unique key indexes; nothing was in flight");
    }
    r
}

/// Connects to Redis, checks its settings ([`crate::redis_conn::durability`]),
/// claims the namespace's partition count and creates the consumer groups.
async fn prepare_redis(config: &Config) -> Result<(Conn, crate::partition_count::Standing)> {
    let mut conn =
        crate::redis_conn::connect(config, crate::redis_conn::wait_bound(config)).await?;
    let names = Names::new(&config.namespace);
    let streams: Vec<String> = (0..config.partitions).map(|p| names.stream(p)).collect();
    crate::redis_conn::durability::check(&conn, &streams, config.min_replicas_acked > 0).await?;
    Replication::of(config).check_permitted(&conn).await?;
    let standing =
        crate::partition_count::claim_daemon(&mut conn, config, crate::protocol::wall_clock_ms())
            .await?;
    crate::database_record::record(&mut conn, config).await?;
    for stream in &streams {
        ensure_group(&mut conn, stream, &names.group()).await?;
    }
    Ok((conn, standing))
}

/// Refreshes the status metrics of the partitions this daemon owns, mends
/// the backlog bookkeeping of those whose count was not exact
/// ([`crate::heal`]), trims their streams below the committed watermark, and
/// keeps the namespace's partition count recorded (stopping the daemon
/// through `halt` if another daemon's count appears).
async fn housekeeping(
    config: Arc<Config>,
    mut conn: Conn,
    standing: crate::partition_count::Standing,
    stop: CancellationToken,
    halt: Halt,
) {
    let names = Names::new(&config.namespace);
    // The partitions the last pass could not read: said once per change.
    let mut skipped: Vec<u32> = Vec::new();
    let mut mender = crate::heal::Mender::new();
    loop {
        // A whole pass can take long when Redis stops answering (each call
        // waits for its reply timeout, per partition): a shutdown does not
        // wait for it. What a cut-off pass leaves (a trim or a mend half
        // done) is done again by the next daemon's passes.
        let pass = async {
            if let Some(e) = crate::partition_count::recheck(&mut conn, &config, &standing).await {
                tracing::error!(error = %e, "the namespace's partition count was changed, or a daemon that started earlier recorded another; this daemon stops (its partitions drain and go to the others)");
                halt.stop(e);
                return false;
            }
            pass_once(&config, &mut conn, &names, &mut skipped, &mut mender).await;
            true
        };
        let go_on = tokio::select! {
            go_on = pass => go_on,
            _ = stop.cancelled() => return,
        };
        if !go_on {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.stats_interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One housekeeping pass over the owned partitions: status gauges, the
/// mend of counts that were not exact, trims.
async fn pass_once(
    config: &Config,
    conn: &mut Conn,
    names: &Names,
    skipped: &mut Vec<u32>,
    mender: &mut crate::heal::Mender,
) {
    let me = Some(config.consumer_name.as_str());
    match crate::status::status_of(conn, &config.namespace, config.partitions, me).await {
        Ok(s) => {
            if s.skipped != *skipped {
                match &s.skipped_error {
                    Some(e) => {
                        tracing::warn!(partitions = ?s.skipped, error = %e, "cannot read these partitions' status; their gauges and trimming wait, the other partitions' go on")
                    }
                    None => tracing::info!("every owned partition's status reads again"),
                }
                *skipped = s.skipped.clone();
            }
            metrics::gauge!("writ_dead_letter_entries").set(s.dead_letters as f64);
            // Every gauge first, then the trims (which may take seconds):
            // a tenure that ends meanwhile clears its gauges after these,
            // not before, where they would be written back stale.
            for p in &s.partitions {
                publish_status(p);
            }
            // Counts that stopped at their bound (the meta hash
            // disagrees with the group): counted on in pages, then the
            // meta hash mended, before the trims (a trim between the
            // count and the mend would make the mend start over).
            let stale: Vec<u32> = s
                .partitions
                .iter()
                .filter(|p| p.unapplied_at_least)
                .map(|p| p.partition)
                .collect();
            mender.pass(conn, names, &stale).await;
            // A mend that goes on next pass holds its partition's trims
            // back (a trim of entries it counted would make it start over,
            // pass after pass); they resume once it is done or given up.
            for p in s.partitions.iter().filter(|p| !mender.mending(p.partition)) {
                trim(conn, config, names, p).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read partition status"),
    }
}

/// One owned partition's status as gauges (`writ_partition_unapplied_entries`
/// is a lower bound while the partition's count is not exact, until the
/// mend of [`crate::heal`] is done: a pass or a few), unless its tenure
/// ended since the status was read ([`telemetry::publish_partition`]).
fn publish_status(p: &crate::status::PartitionStatus) {
    telemetry::publish_partition(p.partition, || set_status_gauges(p));
}

fn set_status_gauges(p: &crate::status::PartitionStatus) {
    let label = p.partition.to_string();
    metrics::gauge!("writ_partition_unapplied_entries", "partition" => label.clone())
        .set(p.unapplied as f64);
    metrics::gauge!("writ_partition_pending_entries", "partition" => label.clone())
        .set(p.pending as f64);
    metrics::gauge!("writ_partition_oldest_unapplied_age_seconds", "partition" => label.clone())
        .set(p.oldest_unapplied_age_seconds);
    if let Some(w) = p
        .watermark
        .as_deref()
        .and_then(|w| w.parse::<crate::protocol::Version>().ok())
    {
        metrics::gauge!("writ_partition_committed_watermark_seconds", "partition" => label)
            .set(w.ms as f64 / 1000.0);
    }
}

/// Trims one owned partition's committed entries past retention
/// ([`crate::retention`]); a failure is logged and tried again next time.
async fn trim(conn: &mut Conn, config: &Config, names: &Names, p: &crate::status::PartitionStatus) {
    let stream = &names.stream(p.partition);
    let point = crate::retention::trim_point(
        conn,
        stream,
        p,
        config.retention_max_age,
        config.retention_max_entries,
    )
    .await;
    let point = match point {
        Ok(Some(point)) => point,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(partition = p.partition, error = %e, "trim point failed");
            return;
        }
    };
    match crate::retention::trim(conn, stream, &names.group(), point).await {
        Ok(0) => {}
        Ok(n) => {
            metrics::counter!("writ_stream_trimmed_entries_total").increment(n);
            tracing::debug!(
                partition = p.partition,
                trimmed = n,
                "trimmed committed entries"
            )
        }
        Err(e) => tracing::warn!(partition = p.partition, error = %e, "trim failed"),
    }
}

/// A server `serve` waits for at start, through its transient failures, and
/// what it says meanwhile.
#[derive(Clone, Copy)]
enum Awaited {
    /// MongoDB down or still starting, its mongodb+srv:// host not
    /// resolving.
    Mongo,
    /// Redis not reachable (refused, timed out, a name that does not
    /// resolve), or in a state that passes (`LOADING` its data at boot,
    /// `CLUSTERDOWN` while a cluster forms, `OOM`). A refusal that waiting
    /// cannot mend (an old version, an evicting policy, a missing ACL rule,
    /// a wrong password, a TLS certificate not trusted) stops the daemon at
    /// once (`redis_conn::connect` classes the connect failures).
    Redis,
}

impl Awaited {
    fn name(self) -> &'static str {
        match self {
            Awaited::Mongo => "MongoDB",
            Awaited::Redis => "Redis",
        }
    }

    /// Its `writ_up` label.
    fn dependency(self) -> &'static str {
        match self {
            Awaited::Mongo => "mongodb",
            Awaited::Redis => "redis",
        }
    }

    fn check(self) -> &'static str {
        match self {
            Awaited::Mongo => "check mongodb.uri / WRIT_MONGODB_URI, and that MongoDB runs",
            Awaited::Redis => "check redis.url / WRIT_REDIS_URL, and that redis-server runs",
        }
    }

    fn meanwhile(self) -> &'static str {
        match self {
            Awaited::Mongo => "writes are accepted and wait in Redis",
            Awaited::Redis => "writers cannot submit until it is back",
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good or `shutdown` fires,
/// waiting out the failures `what` waits for with backoff, and saying so
/// once a minute: a daemon started before its servers (a host's boot, a
/// restart during an outage) waits for them with `/health/ready` at 503.
/// `writ_up{dependency}` is 0 while it waits, and 1 once it succeeds if
/// success proves the server answered (`reached`).
async fn wait_for<T, F, Fut>(
    what: Awaited,
    reached: bool,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    /// How often a wait that goes on says so again.
    const REMIND: Duration = Duration::from_secs(60);
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(5));
    let since = std::time::Instant::now();
    let mut warned = false;
    let mut remind_at = since + REMIND;
    let name = what.name();
    loop {
        let result = tokio::select! {
            r = attempt() => r,
            _ = shutdown.cancelled() => return Err(Error::Shutdown),
        };
        // `writ_up` from the first attempt on, so that the alerts on it see
        // a daemon that waits at start (the probes start after the wait).
        let up = metrics::gauge!("writ_up", "dependency" => what.dependency());
        match result {
            Ok(v) => {
                if reached {
                    up.set(1.0);
                }
                if warned {
                    tracing::info!(
                        waited_secs = since.elapsed().as_secs(),
                        "{name} is reachable; starting"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.retry_class() == crate::error::RetryClass::Transient => {
                up.set(0.0);
                if !warned {
                    tracing::warn!(error = %e, "{name} is not reachable yet; retrying ({})", what.check());
                    warned = true;
                } else if std::time::Instant::now() >= remind_at {
                    remind_at += REMIND;
                    tracing::warn!(
                        waited_secs = since.elapsed().as_secs(),
                        error = %e,
                        "{name} is still not reachable; {} ({})",
                        what.meanwhile(),
                        what.check()
                    );
                }
                if !backoff.sleep(shutdown).await {
                    return Err(Error::Shutdown);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
