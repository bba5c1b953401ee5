//! Metrics and health state: the Prometheus recorder, the table of every
//! metric writ exports, the process metrics, and the readiness flags the probe
//! loop keeps. It exists so the rest of the daemon records metrics and health
//! in one place; serving them over HTTP is `http.rs`.
//!
//! Ready means Redis and MongoDB answered the last probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::redis_conn::Conn;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::apply::Store;

mod events;
mod http;

pub use events::Event;
pub use http::serve_http;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The buckets of the histograms that count (entries, statements).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Installs the global Prometheus recorder once; later calls return it.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .expect("static buckets are valid")
            // Counts, not seconds: entries a read brought, statements a bulk
            // carried (up to `daemon.batch_size`, at most 4096).
            .set_buckets_for_metric(Matcher::Full("writ_batch_entries".into()), COUNT_BUCKETS)
            .expect("static buckets are valid")
            .set_buckets_for_metric(Matcher::Full("writ_bulk_writes".into()), COUNT_BUCKETS)
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Emits `writ_build_info`.
pub fn build_info() {
    metrics::gauge!("writ_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Every metric writ exports: name, kind, help. `dashboards/` may only query
/// these (tests check the live `/metrics` against the dashboard and alerts).
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "writ_writes_total",
        "counter",
        "Writes by collection and outcome (applied, coalesced, stale, dead_lettered).",
    ),
    (
        "writ_rejected_total",
        "counter",
        "Entries refused, by reason; each was dead-lettered.",
    ),
    (
        "writ_retries_total",
        "counter",
        "Retried steps, by error class (transient, permanent).",
    ),
    (
        "writ_mongodb_errors_total",
        "counter",
        "MongoDB apply errors, by error class.",
    ),
    (
        "writ_stream_trimmed_entries_total",
        "counter",
        "Committed entries removed from partition streams by retention.",
    ),
    (
        "writ_lease_acquired_total",
        "counter",
        "Partition leases taken by this daemon.",
    ),
    (
        "writ_lease_lost_total",
        "counter",
        "Partition leases this daemon lost without releasing them.",
    ),
    (
        "writ_fenced_total",
        "counter",
        "Partition operations (read, claim, cache, dead_letter) refused by the fence: this daemon lost the lease.",
    ),
    (
        "writ_cache_foreign_total",
        "counter",
        "Cache keys found holding another program's value (not a hash, or a document that is not BSON); each was read as a miss or replaced.",
    ),
    (
        "writ_acks_skipped_total",
        "counter",
        "Writers' acks not added: their ack stream key holds another program's value (not a stream), or Redis refused the ack for good.",
    ),
    (
        "writ_lease_released_total",
        "counter",
        "Partition leases this daemon handed back.",
    ),
    (
        "writ_end_to_end_seconds",
        "histogram",
        "Seconds from XADD to the writer's ack.",
    ),
    (
        "writ_apply_seconds",
        "histogram",
        "Seconds a statement spent in MongoDB: its bulk's time, or its own with retries on the single path; one sample per distinct key, a coalesced run counts once.",
    ),
    (
        "writ_cache_update_seconds",
        "histogram",
        "Seconds to compare-and-set the cache.",
    ),
    ("writ_batch_entries", "histogram", "Entries per read batch."),
    (
        "writ_bulk_seconds",
        "histogram",
        "Seconds per MongoDB bulk (one round of a partition).",
    ),
    (
        "writ_bulk_writes",
        "histogram",
        "Statements per MongoDB bulk: one per distinct key, a coalesced run counts once.",
    ),
    (
        "writ_mongodb_concurrency_limit",
        "gauge",
        "Adaptive limit of MongoDB operations in flight, daemon-wide.",
    ),
    (
        "writ_inflight_entries",
        "gauge",
        "Entries read and not yet acked, per partition.",
    ),
    (
        "writ_inflight_bytes",
        "gauge",
        "Bytes of the entries read and not yet acked, per partition (bounded by daemon.max_in_flight_bytes, plus at most one entry).",
    ),
    (
        "writ_partition_unapplied_entries",
        "gauge",
        "Entries not yet applied (undelivered + pending), per owned partition.",
    ),
    (
        "writ_partition_oldest_unapplied_age_seconds",
        "gauge",
        "Age of the oldest unapplied entry, per owned partition.",
    ),
    (
        "writ_partition_pending_entries",
        "gauge",
        "Entries delivered and not yet acked, per owned partition.",
    ),
    (
        "writ_partition_owned",
        "gauge",
        "1 while this daemon holds the partition lease.",
    ),
    (
        "writ_partitions",
        "gauge",
        "Configured number of partitions.",
    ),
    (
        "writ_partition_committed_watermark_seconds",
        "gauge",
        "Unix time of the committed watermark: every older entry is applied.",
    ),
    (
        "writ_dead_letter_entries",
        "gauge",
        "Entries in the dead-letter stream.",
    ),
    (
        "writ_up",
        "gauge",
        "1 if the dependency (redis, mongodb) answered the last probe.",
    ),
    ("writ_build_info", "gauge", "Build information; always 1."),
    (
        "writ_worker_threads",
        "gauge",
        "Threads of the daemon's async runtime (daemon.worker_threads): the CPU it can use is this many cores.",
    ),
];

/// The process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, ...), collected on every scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static C: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    C.get_or_init(metrics_process::Collector::default)
}

/// The `/metrics` body: the recorder's exposition, with the process metrics
/// collected just before and `process_cpu_seconds_total` to the clock tick.
/// `metrics` counters are integers, so metrics-process records the CPU time
/// in whole seconds: a daemon using a few percent of a core showed a flat
/// line with a one-second step now and then, and `rate()` over it was 0 or
/// a spike. The sample is rewritten with the exact value (still a counter).
pub(crate) fn render_metrics(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    process_collector().collect();
    let cpu = metrics_process::collector::collect().cpu_seconds_total;
    with_precise_cpu(handle.render(), cpu)
}

fn with_precise_cpu(text: String, cpu: Option<f64>) -> String {
    const NAME: &str = "process_cpu_seconds_total ";
    let Some(cpu) = cpu else { return text };
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        if line.starts_with(NAME) {
            out.push_str(NAME);
            out.push_str(&cpu.to_string());
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The partitions whose tenure this process holds, as far as the gauges go:
/// [`publish_partition`] writes a partition's status gauges only while it is
/// here, under the same lock [`clear_partition`] takes. A status read before
/// a tenure ended and published after it would otherwise write the gauges
/// back after they were cleared, and nothing would write them again (the
/// partition no longer owned): an age alert would fire on a frozen value.
static OWNED: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A tenure of `p` began: its status gauges may be written.
pub fn own_partition(p: u32) {
    OWNED.lock().expect("owned lock").insert(p);
    metrics::gauge!("writ_partition_owned", "partition" => p.to_string()).set(1.0);
}

/// Runs `publish` (which writes `p`'s status gauges) only while a tenure of
/// `p` is held.
pub fn publish_partition(p: u32, publish: impl FnOnce()) {
    let owned = OWNED.lock().expect("owned lock");
    if owned.contains(&p) {
        publish();
    }
}

/// Zeroes a partition's gauges when this daemon's tenure of it ends, so a
/// handed-over or lost partition does not keep exporting its last backlog,
/// age or watermark from here (and no alert fires on a frozen value).
pub fn clear_partition(p: u32) {
    let mut owned = OWNED.lock().expect("owned lock");
    owned.remove(&p);
    let label = p.to_string();
    for name in [
        "writ_partition_owned",
        "writ_partition_unapplied_entries",
        "writ_partition_pending_entries",
        "writ_partition_oldest_unapplied_age_seconds",
        "writ_partition_committed_watermark_seconds",
        "writ_inflight_entries",
        "writ_inflight_bytes",
    ] {
        metrics::gauge!(name, "partition" => label.clone()).set(0.0);
    }
}

/// Describes every metric and registers the fixed label sets at zero, so
/// dashboards and alerts see every series from the start.
pub fn register(config: &crate::config::Config) {
    process_collector().describe();
    for (name, kind, help) in METRICS {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "histogram" => metrics::describe_histogram!(*name, *help),
            _ => metrics::describe_gauge!(*name, *help),
        }
    }
    for coll in config.collections.keys() {
        for outcome in ["applied", "coalesced", "stale", "dead_lettered"] {
            metrics::counter!("writ_writes_total", "collection" => coll.clone(), "outcome" => outcome).absolute(0);
        }
    }
    for reason in crate::protocol::RejectReason::ALL {
        metrics::counter!("writ_rejected_total", "reason" => reason.as_str()).absolute(0);
    }
    for class in ["transient", "permanent"] {
        metrics::counter!("writ_retries_total", "error_class" => class).absolute(0);
        metrics::counter!("writ_mongodb_errors_total", "error_class" => class).absolute(0);
    }
    metrics::counter!("writ_cache_foreign_total").absolute(0);
    metrics::counter!("writ_acks_skipped_total").absolute(0);
    for op in ["read", "claim", "cache", "dead_letter"] {
        metrics::counter!("writ_fenced_total", "op" => op).absolute(0);
    }
    for p in 0..config.partitions {
        let p = p.to_string();
        for name in [
            "writ_lease_acquired_total",
            "writ_lease_lost_total",
            "writ_lease_released_total",
        ] {
            metrics::counter!(name, "partition" => p.clone()).absolute(0);
        }
        metrics::gauge!("writ_partition_owned", "partition" => p.clone()).set(0.0);
        metrics::gauge!("writ_inflight_entries", "partition" => p.clone()).set(0.0);
        metrics::gauge!("writ_inflight_bytes", "partition" => p).set(0.0);
    }
    metrics::counter!("writ_stream_trimmed_entries_total").absolute(0);
    metrics::gauge!("writ_partitions").set(f64::from(config.partitions));
    // The adaptive limit starts at 1 (src/apply/limit/mod.rs) and the limiter
    // sets the gauge from its first completion on.
    metrics::gauge!("writ_mongodb_concurrency_limit").set(1.0);
    metrics::gauge!("writ_dead_letter_entries").set(0.0);
    build_info();
}

/// Readiness flags, set by the probe loop.
#[derive(Clone, Default)]
pub struct Health {
    redis_ok: Arc<AtomicBool>,
    mongo_ok: Arc<AtomicBool>,
}

impl Health {
    /// Whether both servers answered the last probe.
    pub fn ready(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed) && self.mongo_ok.load(Ordering::Relaxed)
    }
}

/// Probes Redis and MongoDB every second until `stop` fires. A probe under
/// way gives way to `stop` too: a server that does not answer would
/// otherwise hold a shutdown for up to the probes' timeouts.
pub async fn probe_loop(store: Store, mut conn: Conn, health: Health, stop: CancellationToken) {
    loop {
        let (mongo, redis) = tokio::select! {
            r = probe(&store, &mut conn) => r,
            _ = stop.cancelled() => return,
        };
        health.mongo_ok.store(mongo, Ordering::Relaxed);
        health.redis_ok.store(redis, Ordering::Relaxed);
        metrics::gauge!("writ_up", "dependency" => "mongodb").set(if mongo { 1.0 } else { 0.0 });
        metrics::gauge!("writ_up", "dependency" => "redis").set(if redis { 1.0 } else { 0.0 });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One probe of both servers, side by side, each bounded by 3 s: whether
/// MongoDB and Redis answered.
async fn probe(store: &Store, conn: &mut Conn) -> (bool, bool) {
    let ping = redis::cmd("PING");
    let mongo = tokio::time::timeout(Duration::from_secs(3), store.ping());
    let redis = tokio::time::timeout(Duration::from_secs(3), ping.query_async::<String>(conn));
    let (mongo, redis) = tokio::join!(mongo, redis);
    (
        mongo.is_ok_and(|r| r.is_ok()),
        redis.is_ok_and(|r| r.is_ok()),
    )
}

#[cfg(test)]
mod tests {
    /// Every exported metric has a row in docs/operations.md's table, with
    /// its type, so the table cannot fall behind the code.
    #[test]
    fn every_metric_is_documented_in_operations_md() {
        let doc = include_str!("../../docs/operations.md");
        for (name, kind, _) in super::METRICS {
            let row = format!("| `{name}` | {kind} |");
            assert!(doc.contains(&row), "docs/operations.md has no row {row}");
        }
    }

    #[test]
    fn the_cpu_counter_keeps_its_fraction() {
        let text = "# HELP process_cpu_seconds_total Total CPU.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 3\n\
                    process_cpu_seconds_total_other 1\n\
                    writ_up{dependency=\"redis\"} 1\n";
        let out = super::with_precise_cpu(text.to_string(), Some(3.47));
        assert!(out.contains("\nprocess_cpu_seconds_total 3.47\n"), "{out}");
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{out}"
        );
        assert!(out.contains("process_cpu_seconds_total_other 1\n"), "{out}");
        assert!(out.ends_with("writ_up{dependency=\"redis\"} 1\n"), "{out}");
        assert_eq!(super::with_precise_cpu(text.to_string(), None), text);
    }

    /// The count histograms get count buckets (before session 42 they had
    /// the seconds buckets, up to 30, and a bulk of 128 fell in `+Inf`).
    #[test]
    fn count_histograms_have_count_buckets() {
        let handle = super::recorder();
        metrics::histogram!("writ_bulk_writes").record(100.0);
        metrics::histogram!("writ_batch_entries").record(100.0);
        let out = handle.render();
        for name in ["writ_bulk_writes", "writ_batch_entries"] {
            let bucket = format!("{name}_bucket{{le=\"128\"}}");
            assert!(out.contains(&bucket), "no {bucket} in:\n{out}");
        }
    }
}
