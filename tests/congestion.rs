//! A backlog larger than in-flight × latency allows, on a slow MongoDB, drains
//! with monotonic progress and no retry storm.
//!
//! Before the daemon-wide adaptive limiter, every partition ran up to
//! `max_in_flight` applies at once: they queued in the driver's pool, timed
//! out while queued, and were retried while the first attempts still ran, so
//! the load on MongoDB multiplied and the drain collapsed. Rounds (one bulk
//! per partition round) bound that by themselves to two bulks per partition,
//! so the test uses enough partitions for those bulks to time out without
//! the limiter (see `PARTITIONS`).

mod support;

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use support::proc::DaemonProc;
use support::proxy::in_front_of_mongo_with_latency;
use support::{http_get, listen_port, Overrides, TestEnv};
use writ::Writ;

/// Sum of every sample of `name` (all label sets).
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const BACKLOG: usize = 4000;
const LATENCY: Duration = Duration::from_millis(40);
/// Partitions: each may have two rounds (bulks of up to `batch_size` writes)
/// at MongoDB at once, so without the limiter 32 partitions send up to 64
/// bulks of 64-128 writes at once. On a server that runs them one by one
/// they outlast the bulk's bound (`op_timeout` + 5 s) and time out: this test
/// fails with the limiter disabled (checked 2026-12-03: "operations timed
/// out while draining"). With 4 partitions and 1000 entries it did not: the
/// eight bulks finished within the bound, limiter or not.
const PARTITIONS: u32 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_on_a_slow_mongodb_drains_without_a_retry_storm() {
    let env = TestEnv::start("congestion");
    let (_proxy, slow_uri) = in_front_of_mongo_with_latency(&env.mongo_uri, LATENCY).await;
    let metrics_port = listen_port();
    let daemon_lines = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    // A short op timeout: queueing of more than ~5.5 s in the driver would
    // time writes out (the old failure).
    let o = Overrides {
        mongo_uri: Some(slow_uri.clone()),
        daemon: &daemon_lines,
        mongo: "op_timeout_ms = 500",
        partitions: Some(PARTITIONS),
        ..Default::default()
    };
    let config = env.config_with(&o);

    // The backlog an outage leaves behind: distinct keys, no daemon running.
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    for i in 0..BACKLOG {
        measure
            .submit(
                &doc! {"bucket": "backlog", "entryKey": format!("k{i:05}")},
                &doc! {"i": i as i64},
            )
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let started = Instant::now();
    let mut daemon = DaemonProc::start(&path, dir.path(), "congestion-d1");
    let mut samples: Vec<(Duration, f64)> = Vec::new();
    // The stall clock starts when the daemon first serves /metrics, not
    // before its start-up (a loaded machine can take seconds to start it).
    let mut last_progress: Option<Instant> = None;
    let mut last_applied = 0.0;
    let metrics = loop {
        let body = http_get(metrics_port, "/metrics").map(|(_, b)| b);
        if let Some(body) = body {
            last_progress.get_or_insert_with(Instant::now);
            let applied = counter_sum(&body, "writ_writes_total");
            assert!(
                applied >= last_applied,
                "the applied count went backwards: {last_applied} -> {applied}"
            );
            if applied > last_applied {
                last_progress = Some(Instant::now());
                last_applied = applied;
            }
            samples.push((started.elapsed(), applied));
            if applied as usize >= BACKLOG {
                break body;
            }
        }
        assert!(
            last_progress.is_none_or(|t| t.elapsed() < Duration::from_secs(15)),
            "the drain stalled for 15 s at {last_applied} of {BACKLOG} applied; samples {samples:?}\n{}",
            daemon.log_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the drain did not finish in 180 s: {last_applied} of {BACKLOG}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drain = started.elapsed();
    let retries = counter_sum(&metrics, "writ_retries_total");
    let errors = counter_sum(&metrics, "writ_mongodb_errors_total");
    let limit = counter_sum(&metrics, "writ_mongodb_concurrency_limit");
    assert!(
        retries <= (BACKLOG / 100) as f64,
        "retry storm: {retries} retries for {BACKLOG} writes\n{}",
        daemon.log_text()
    );
    assert_eq!(errors, 0.0, "MongoDB errors while draining");
    let log = daemon.log_text();
    assert!(
        !log.contains("timed out"),
        "operations timed out while draining:\n{log}"
    );
    // Everything is in MongoDB at its version.
    let db = env.mongo_db().await;
    let n = db
        .collection::<Document>("measure")
        .count_documents(doc! {"bucket": "backlog"})
        .await
        .unwrap();
    assert_eq!(n as usize, BACKLOG);
    assert_eq!(daemon.terminate(Duration::from_secs(20)), Some(0));

    // A reference through the same slow link, in the same run: the same
    // guarded upsert on fresh keys, one findAndModify per write, from as many
    // concurrent callers as the daemon's limit allows at most.
    let callers = config.max_concurrency;
    let per = 300 / callers + 1;
    let client = mongodb::Client::with_uri_str(&slow_uri).await.unwrap();
    let coll = client.database(&env.name).collection::<Document>("ceiling");
    // The same unique index the daemon makes for `measure`'s key.
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"bucket": 1, "entryKey": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..callers {
        let coll = coll.clone();
        tasks.spawn(async move {
            for i in 0..per {
                let v = format!("{:020}-{:020}", 1, i);
                coll.find_one_and_update(
                    doc! {"bucket": "c", "entryKey": format!("{c}-{i}"), "_writ.v": {"$not": {"$gte": &v}}},
                    doc! {"$set": {"payload": {"i": i as i64}, "removed": false, "_writ": {"v": &v}}},
                )
                .upsert(true)
                .return_document(mongodb::options::ReturnDocument::After)
                .await
                .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let ceiling = (callers * per) as f64 / t.elapsed().as_secs_f64();
    let rate = BACKLOG as f64 / drain.as_secs_f64();
    eprintln!(
        "congestion: {BACKLOG} entries behind a {LATENCY:?} link drained in {drain:.2?} ({rate:.0}/s; {:.2}x the {ceiling:.0}/s of {callers} callers applying one write each); {retries} retries, final limit {limit}",
        rate / ceiling
    );
}
