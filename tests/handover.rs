//! A daemon that loses a partition stops exporting that partition's backlog,
//! age and watermark: its gauges are cleared when the tenure ends, so no
//! alert fires on a frozen value.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::proc::DaemonProc;
use support::{eventually, http_get, lease_holders, listen_port, Overrides, TestEnv};
use writ::Writ;

/// `partition -> value` of a gauge in a scrape.
fn per_partition(body: &str, name: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let p = l
                .split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_string();
            Some((p, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_partition_stops_exporting_its_gauges() {
    let env = TestEnv::start("handover_gauges");
    let port = listen_port();
    let lines = format!("metrics_listen = \"127.0.0.1:{port}\"");
    let o = Overrides {
        daemon: &lines,
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let d1 = DaemonProc::start(&path, dir.path(), "gauges-d1");
    let scrape = || http_get(port, "/metrics").map(|(_, b)| b);
    eventually(
        Duration::from_secs(30),
        "d1 to own every partition",
        || async {
            let owned = per_partition(&scrape()?, "writ_partition_owned");
            (owned.len() == 4 && owned.values().all(|v| *v == 1.0)).then_some(())
        },
    )
    .await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..40 {
        s.write(
            &doc! {"symbol": format!("G{i}"), "strategyName": "g", "exchangeName": "x"},
            &doc! {"i": i},
        )
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "d1 to export every watermark",
        || async {
            let w = per_partition(&scrape()?, "writ_partition_committed_watermark_seconds");
            (w.len() == 4 && w.values().all(|v| *v > 0.0)).then_some(())
        },
    )
    .await;
    // d1 pauses past its lease; d2 takes the partitions; d1 resumes and finds
    // its leases gone.
    let o2 = Overrides::default();
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = env.config_file_with(dir2.path(), &o2);
    d1.pause();
    let _d2 = DaemonProc::start(&path2, dir2.path(), "gauges-d2");
    // d1 resumes once d2 holds a lease of d1's: d1 then finds it lost.
    eventually(Duration::from_secs(30), "d2 to take a lease", || async {
        let held = lease_holders(&env, 4).await;
        (held.get("gauges-d2").copied().unwrap_or(0) > 0).then_some(())
    })
    .await;
    d1.resume();
    // Some partition ends up not owned by d1; for every such partition d1
    // exports no backlog, age or watermark.
    let lost = eventually(
        Duration::from_secs(30),
        "d1 to clear a lost partition's gauges",
        || async {
            let body = scrape()?;
            let owned = per_partition(&body, "writ_partition_owned");
            let lost: Vec<String> = owned
                .iter()
                .filter(|(_, v)| **v == 0.0)
                .map(|(p, _)| p.clone())
                .collect();
            if lost.is_empty() {
                return None;
            }
            for name in [
                "writ_partition_committed_watermark_seconds",
                "writ_partition_unapplied_entries",
                "writ_partition_oldest_unapplied_age_seconds",
                "writ_partition_pending_entries",
            ] {
                let g = per_partition(&body, name);
                if lost.iter().any(|p| g.get(p).copied().unwrap_or(0.0) != 0.0) {
                    return None;
                }
            }
            Some(lost)
        },
    )
    .await;
    assert!(!lost.is_empty());
}

/// A partition handed over to balance the daemons is released within
/// `daemon.shutdown_deadline_ms` even when some of its work cannot finish:
/// here an entry refused at decode waits to be parked while another
/// program's string sits at the dead-letter stream's key. Before session 42
/// the hand-over waited for it for ever, renewing the lease, and no write of
/// the partition was applied by either daemon (helper-87).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_that_cannot_drain_is_abandoned_at_the_deadline() {
    let env = TestEnv::start("handover_bound");
    let o = Overrides {
        partitions: Some(2),
        daemon: "shutdown_deadline_ms = 2000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let names = writ::protocol::Names::new(&config.namespace);
    let mut conn = env.redis().await;
    support::foreign_string(&mut conn, &names.dead_letters()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let d1 = DaemonProc::start(&path, dir.path(), "bound-d1");
    holds(&env, "bound-d1", 2, "d1 to own both partitions").await;
    // The partition d1 hands over first is its highest, 1. An entry of an
    // undeclared collection there: refused, and it cannot be parked.
    support::raw_json_put(
        &mut conn,
        &names.stream(1),
        "no-such",
        r#"{"k":"v"}"#,
        "{}",
        &[],
    )
    .await;
    let key = signal_key_in(&config, "B", 1);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // d1 applies the partition's other keys meanwhile; then d2 joins.
    s.write(&key, &doc! {"n": 0}).await.unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = env.config_file_with(dir2.path(), &o);
    let _d2 = DaemonProc::start(&path2, dir2.path(), "bound-d2");
    holds(
        &env,
        "bound-d2",
        1,
        "d2 to take the partition d1 handed over",
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), s.write(&key, &doc! {"n": 1}))
        .await
        .expect("a write of the handed-over partition is applied by its new owner")
        .unwrap();
    assert!(
        d1.log_text()
            .contains("did not drain within daemon.shutdown_deadline_ms"),
        "{}",
        d1.log_text()
    );
}

/// A `signal` key (symbols `<prefix>0`, `<prefix>1`, ...) of partition `p`.
fn signal_key_in(config: &writ::Config, prefix: &str, p: u32) -> Document {
    let coll = config.collection("signal").unwrap();
    (0..)
        .map(|i| doc! {"symbol": format!("{prefix}{i}"), "strategyName": "b", "exchangeName": "x"})
        .find(|k| {
            writ::protocol::Key::from_document(k, coll)
                .unwrap()
                .partition("signal", config.partitions)
                == p
        })
        .unwrap()
}

/// A hand-over aborted at the deadline while its partition waits for a
/// MongoDB limiter slot (every slot held by another partition's operation)
/// ends then, not when that operation frees the slot: before session 44 the
/// abort was not even looked at while the tenure had stopped reading and
/// had no round running, so the lease stayed renewed and the next owner
/// waited for the other partition's operation to time out (helper-100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_waiting_for_a_mongodb_slot_ends_at_the_deadline() {
    let env = TestEnv::start("handover_slot");
    // Every operation carrying the marker hangs until it times out (30 s);
    // one operation at a time reaches MongoDB.
    let (_proxy, proxied) =
        support::proxy::in_front_of_mongo_swallowing(&env.mongo_uri, b"HOLDS-THE-SLOT").await;
    let port = listen_port();
    let lines = format!("shutdown_deadline_ms = 2000\nmetrics_listen = \"127.0.0.1:{port}\"");
    let o = Overrides {
        partitions: Some(2),
        daemon: &lines,
        mongo: "op_timeout_ms = 30000\nmax_concurrency = 1",
        mongo_uri: Some(proxied),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let d1 = DaemonProc::start(&path, dir.path(), "slot-d1");
    holds(&env, "slot-d1", 2, "d1 to own both partitions").await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // Partition 0's write holds the one slot (it is the only write, so it
    // takes the slot as soon as it is read); partition 1's waits for it.
    let in_flight = |p: &'static str| async move {
        let body = http_get(port, "/metrics")?.1;
        (per_partition(&body, "writ_inflight_entries").get(p) == Some(&1.0)).then_some(())
    };
    let _stuck = s
        .submit(
            &signal_key_in(&config, "H", 0),
            &doc! {"x": "HOLDS-THE-SLOT"},
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "d1 reads the write that holds the slot",
        || in_flight("0"),
    )
    .await;
    let waiting = s
        .submit(&signal_key_in(&config, "W", 1), &doc! {"x": "waits"})
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "d1 reads the write that waits",
        || in_flight("1"),
    )
    .await;
    // d2 joins (its MongoDB is the same one behind the proxy); d1 hands
    // partition 1 over, which cannot drain while the slot is held.
    let o2 = Overrides {
        daemon: "shutdown_deadline_ms = 2000",
        ..o
    };
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = env.config_file_with(dir2.path(), &o2);
    let d2 = DaemonProc::start(&path2, dir2.path(), "slot-d2");
    // Within the 2 s deadline and a take-over, far under the 30 s the
    // held slot would take to time out.
    if let Err(e) = waiting.wait_for(Duration::from_secs(15)).await {
        panic!(
            "partition 1's write is not applied before partition 0's operation times out: {e:?}\n--- d1:\n{}\n--- d2:\n{}",
            d1.log_text(),
            d2.log_text()
        );
    }
    assert_eq!(lease_holders(&env, 2).await.get("slot-d2"), Some(&1));
    drop(d1);
}

/// A tenure whose reader cannot open its Redis connection (Redis at its
/// `maxclients`, no file descriptors left) retries the connection within
/// the tenure. Before session 44 the reader gave up, the tenure ended, and
/// the next ownership pass took the partition again at once: a new lease
/// and a new failed connection every 100 ms, without a backoff
/// (helper-100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_connect_retries_within_its_tenure() {
    let env = TestEnv::start("handover_connect");
    let (proxy, via) = support::proxy::in_front_of_redis(&env.redis_url).await;
    let o1 = Overrides {
        partitions: Some(2),
        ..Default::default()
    };
    let dir1 = tempfile::tempdir().unwrap();
    let mut d1 = DaemonProc::start(
        &env.config_file_with(dir1.path(), &o1),
        dir1.path(),
        "connect-d1",
    );
    holds(&env, "connect-d1", 2, "d1 to own both partitions").await;
    // d2 reaches Redis through the proxy; d1 hands it partition 1.
    let port = listen_port();
    let lines = format!("metrics_listen = \"127.0.0.1:{port}\"");
    let o2 = Overrides {
        daemon: &lines,
        redis_url: Some(via),
        partitions: Some(2),
        ..Default::default()
    };
    let dir2 = tempfile::tempdir().unwrap();
    let d2 = DaemonProc::start(
        &env.config_file_with(dir2.path(), &o2),
        dir2.path(),
        "connect-d2",
    );
    holds(
        &env,
        "connect-d2",
        1,
        "d2 to take the partition d1 hands over",
    )
    .await;
    // No new connection reaches Redis from d2 now; d1 dies, and d2 takes
    // partition 0 when its lease expires.
    proxy.refuse_new(true);
    d1.kill9();
    holds(&env, "connect-d2", 2, "d2 to take partition 0").await;
    // Two seconds of refused connections: 20 ownership passes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = http_get(port, "/metrics").expect("d2's metrics").1;
    let taken = per_partition(&body, "writ_lease_acquired_total");
    assert!(
        taken.get("0").is_some_and(|n| *n <= 1.0),
        "partition 0 taken {:?} times while its reader could not connect\n{}",
        taken.get("0"),
        d2.log_text()
    );
    assert!(
        d2.log_text()
            .contains("the partition's reader cannot connect to redis; retrying"),
        "{}",
        d2.log_text()
    );
    // Connections come back: the same tenure reads, and applies partition 0.
    proxy.refuse_new(false);
    let config = env.config_with(&o1);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        s.write(&signal_key_in(&config, "C", 0), &doc! {"n": 1}),
    )
    .await
    .expect("partition 0's write is applied once d2's reader connects")
    .unwrap();
}

/// A lease found lost at a renewal (here another name written over it, as
/// after a failover that lost the key and another daemon's take) is
/// counted lost, not also released: the tenure's end finds nothing of its
/// own to release. Before session 44 the local validity still ran, the
/// release script released nothing, and `writ_lease_released_total` counted
/// it anyway (helper-100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_not_also_counted_released() {
    let env = TestEnv::start("handover_lost");
    let port = listen_port();
    let lines = format!("metrics_listen = \"127.0.0.1:{port}\"");
    let o = Overrides {
        partitions: Some(2),
        daemon: &lines,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProc::start(&env.config_file_with(dir.path(), &o), dir.path(), "lost-d1");
    holds(&env, "lost-d1", 2, "the daemon to own both partitions").await;
    let names = writ::protocol::Names::new(&env.config_with(&o).namespace);
    let _: () = redis::cmd("SET")
        .arg(names.lease(1))
        .arg("another-daemon")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    let counters = eventually(
        Duration::from_secs(30),
        "the loss to be seen and the tenure to end",
        || async {
            let body = http_get(port, "/metrics")?.1;
            let owned = per_partition(&body, "writ_partition_owned");
            let lost = per_partition(&body, "writ_lease_lost_total");
            (owned.get("1") == Some(&0.0) && lost.get("1") == Some(&1.0)).then_some(body)
        },
    )
    .await;
    drop(counters);
    // The gauges are cleared before the tenure's end releases (or not): wait
    // for that end in the log, then a second more, before reading the count.
    eventually(Duration::from_secs(10), "the tenure's end", || async {
        d.log_text()
            .contains("partition tenure ended")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = http_get(port, "/metrics").expect("metrics").1;
    assert_eq!(
        per_partition(&body, "writ_lease_released_total").get("1"),
        Some(&0.0),
        "{}",
        d.log_text()
    );
}

/// Waits (30 s at most) until daemon `name` holds `n` of the 2 partitions'
/// leases; `what` names the wait if it times out.
async fn holds(env: &TestEnv, name: &str, n: u32, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        (lease_holders(env, 2).await.get(name) == Some(&n)).then_some(())
    })
    .await;
}
