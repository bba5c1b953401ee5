//! With `redis.min_replicas_acked`, the daemon confirms its cache writes
//! with `WAIT` and sends the acks after them, in a step of their own:
//! - the operator tools confirm their cache writes the same way: `replay` and
//!   `rebuild-cache` (and `dlq retry`, which publishes through the same call
//!   as `replay`) make entries readable, and an entry a failover loses would
//!   let a reader see the older one the promoted replica holds;
//! - acks refused because Redis is at `maxmemory` wait for memory; they are
//!   not skipped;
//! - a writer's admissions, which replicas confirm (a pipeline), report
//!   Redis's refusals by their reply code, as they do without replicas, and
//!   their `WAIT`s, which block a connection, do not hold the handle's reads.
//!
//! The tests start their own master and replica (one redis-server each, with
//! `REPLICAOF`), whatever Redis the other tests use.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use redis::aio::MultiplexedConnection;
use support::proc::writ_cli;
use support::{config_set, eventually, Daemon, Overrides, RedisServer, TestEnv};
use writ::Writ;

/// `cmdstat_<command>`'s `calls` on `master`.
async fn calls(master: &mut MultiplexedConnection, command: &str) -> u64 {
    support::command_calls(&support::commandstats(master).await, command)
}

/// A master, a replica of it that has confirmed a `WAIT`, and a connection
/// to the master.
async fn master_and_replica() -> (RedisServer, RedisServer, MultiplexedConnection) {
    let master = RedisServer::start();
    let replica = RedisServer::start();
    let m = master.connect().await;
    let mut r = replica.connect().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port)
        .query_async(&mut r)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the replica to confirm", || {
        let mut m = m.clone();
        async move {
            let n: u32 = redis::cmd("WAIT")
                .arg(1)
                .arg(200)
                .query_async(&mut m)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    (master, replica, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_confirm_their_cache_writes_with_replicas() {
    let env = TestEnv::start("toolsrepl");
    let (master, _replica, mut m) = master_and_replica().await;
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 5000",
        redis_url: Some(master.url()),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |i: i64| doc! {"symbol": format!("W{i}"), "strategyName": "s", "exchangeName": "x"};
    for i in 0..8i64 {
        s.write(&key(i), &doc! {"i": i}).await.unwrap();
    }
    daemon.stop().await;

    // Each run publishes 8 entries, each with its own WAIT.
    support::reset_stats(&mut m).await;
    let out = writ_cli(&path, &["replay", "--from", "0-0"]);
    assert!(out.status.success(), "{out:?}");
    let replay = calls(&mut m, "wait").await;
    support::reset_stats(&mut m).await;
    let out = writ_cli(&path, &["rebuild-cache"]);
    assert!(out.status.success(), "{out:?}");
    let rebuild = calls(&mut m, "wait").await;
    assert!(
        replay >= 8 && rebuild >= 8,
        "WAIT calls on the master: replay {replay}, rebuild-cache {rebuild}; want at least 8 each"
    );
    for i in 0..8i64 {
        assert_eq!(s.read(&key(i)).await.unwrap(), Some(doc! {"i": i}));
    }
}

/// Where the acks follow the cache step (here: replicas must confirm it),
/// a Redis at `maxmemory` refuses them with `OOM`. That passes once memory
/// is freed, so the acks wait for it; before, the acker took the reply for
/// one retrying cannot clear, skipped the acks and `XACK`ed the entries,
/// and the writers waited in vain.
///
/// The test brings the acks, and only them, to a full Redis: MongoDB is held
/// while the writes are accepted, the replica is stopped so the cache step
/// cannot be confirmed, and `maxmemory` is set once the master holds the
/// cache entries (the step's later tries write nothing, so they pass). The
/// replica goes on, the cache step is confirmed, and the acks meet the full
/// Redis: the entries must stay pending, then be acked once memory is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_refused_for_memory_wait_for_memory() {
    let env = TestEnv::start("ackoom");
    let (master, replica, mut m) = master_and_replica().await;
    let (proxy, uri) = support::proxy::in_front_of_mongo_pausable(&env.mongo_uri).await;
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 300",
        redis_url: Some(master.url()),
        mongo_uri: Some(uri),
        partitions: Some(1),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |i: i64| doc! {"symbol": format!("M{i}"), "strategyName": "s", "exchangeName": "x"};
    // A warm-up write. Its admission's WAIT has only 300 ms (the timeout the
    // test needs for the daemon's cache step): on a loaded machine the
    // replica may not confirm in time, which is that write's error to say,
    // not this test's failure; any other error is. (This write failed once,
    // its error not kept; a slow replica is the likely cause, not a known one.)
    for attempt in 1.. {
        match s.write(&key(-1), &doc! {"i": -1}).await {
            Ok(_) => break,
            Err(writ::Error::NotReplicated { .. }) if attempt < 5 => continue,
            Err(e) => panic!("the warm-up write failed: {e:?}"),
        }
    }
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());

    proxy.pause();
    let mut tickets = Vec::new();
    for i in 0..4i64 {
        tickets.push(s.submit(&key(i), &doc! {"i": i}).await.unwrap());
    }
    support::pause::pause(replica.pid());
    proxy.go_on();
    let cached: Vec<String> = (0..4i64)
        .map(|i| {
            let coll = config.collection("signal").unwrap();
            let k = writ::protocol::Key::from_document(&key(i), coll).unwrap();
            names.cache(0, "signal", &k.canonical())
        })
        .collect();
    // The first round's entries at least (the others may wait for a round:
    // no round ends while the replica is stopped).
    eventually(
        Duration::from_secs(30),
        "the master to hold cache entries",
        || {
            let mut m = m.clone();
            let cached = cached.clone();
            async move {
                let n: u32 = redis::cmd("EXISTS")
                    .arg(cached)
                    .query_async(&mut m)
                    .await
                    .ok()?;
                (n >= 1).then_some(())
            }
        },
    )
    .await;
    config_set(&mut m, "maxmemory", "1").await;
    support::reset_stats(&mut m).await;
    support::pause::resume(replica.pid());
    // The replica catches up, the next try of the cache step is confirmed,
    // and the acker sends its acks and XACK in one MULTI (the only MULTI the
    // daemon sends), which a full Redis refuses. Once it has, the acks must
    // not be skipped: the entries stay pending.
    eventually(
        Duration::from_secs(30),
        "the acker to send its acks to the full Redis",
        || {
            let mut m = m.clone();
            async move { (calls(&mut m, "multi").await >= 1).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending = support::pending_count(&mut m, &stream, &group).await;
    config_set(&mut m, "maxmemory", "0").await;
    assert_eq!(
        pending, 4,
        "entries pending while Redis was full: acks refused for memory were skipped and the entries XACKed"
    );
    for t in tickets {
        t.wait().await.unwrap();
    }
    for i in 0..4i64 {
        assert_eq!(s.read(&key(i)).await.unwrap(), Some(doc! {"i": i}));
    }
    daemon.stop().await;
}

/// A writer whose admissions replicas confirm (each call a pipeline that
/// starts with `CLIENT ID`) hears Redis's refusals as a writer without
/// replicas does: a Redis at its `maxmemory` (`OOM`) is
/// [`writ::Error::RedisFull`], a partition count changed under it
/// (`PARTITIONS`) is the config error that names both counts. redis-rs
/// reports a reply code it does not know, inside a pipeline's error, as no
/// code at all; before the fix, both were a bare Redis error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_admissions_name_their_refusals() {
    let env = TestEnv::start("confirmrefused");
    let (master, _replica, mut m) = master_and_replica().await;
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 5000",
        redis_url: Some(master.url()),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |i: i64| doc! {"symbol": format!("R{i}"), "strategyName": "s", "exchangeName": "x"};
    s.submit(&key(0), &doc! {"i": 0}).await.unwrap();

    config_set(&mut m, "maxmemory", "1").await;
    let full = s.submit(&key(1), &doc! {"i": 1}).await;
    config_set(&mut m, "maxmemory", "0").await;
    let e = full.expect_err("a full Redis accepted a write");
    // Redis's own words (read from the pipeline's error: empty before).
    assert!(
        matches!(&e, writ::Error::RedisFull { detail, .. } if detail.contains("maxmemory")),
        "{e:?}"
    );

    let names = writ::protocol::Names::new(&config.namespace);
    let recorded = config.partitions * 2;
    for p in 0..config.partitions {
        let _: () = redis::cmd("HSET")
            .arg(names.meta(p))
            .arg(writ::partition_count::FIELD)
            .arg(recorded)
            .query_async(&mut m)
            .await
            .unwrap();
    }
    let e = s
        .submit(&key(2), &doc! {"i": 2})
        .await
        .expect_err("a writer on another partition count was admitted");
    assert!(
        matches!(&e, writ::Error::Config(t) if t.contains(&format!("now records {recorded} partitions"))),
        "{e:?}"
    );
}

/// A `WAIT` blocks its connection until the replicas answer. With a replica
/// stopped, a writer's admission waits there up to
/// `redis.replica_ack_timeout_ms`; a read of the same handle meanwhile must
/// not queue behind it (before, both shared one connection, and the read
/// ended only after the submit had given up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_wait_does_not_hold_the_reads() {
    let env = TestEnv::start("waitreads");
    let (master, replica, m) = master_and_replica().await;
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 8000",
        redis_url: Some(master.url()),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |i: i64| doc! {"symbol": format!("B{i}"), "strategyName": "s", "exchangeName": "x"};
    s.write(&key(1), &doc! {"i": 1}).await.unwrap();

    support::pause::pause(replica.pid());
    let blocked = tokio::spawn({
        let s = s.clone();
        async move { s.submit(&key(2), &doc! {"i": 2}).await }
    });
    // The submit's WAIT is blocked on the master now.
    eventually(
        Duration::from_secs(30),
        "the submit's WAIT to block",
        || {
            let mut m = m.clone();
            async move {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut m)
                    .await
                    .ok()?;
                list.lines()
                    .any(|l| l.contains("cmd=wait") && l.contains("flags=b"))
                    .then_some(())
            }
        },
    )
    .await;
    let read = s.read(&key(1)).await.unwrap().expect("the cached value");
    let still_blocked = !blocked.is_finished();
    support::pause::resume(replica.pid());
    assert!(
        still_blocked,
        "the read ended only after the submit's WAIT: they share a connection"
    );
    assert_eq!(read, doc! {"i": 1});
    let _ = blocked.await.unwrap();
    daemon.stop().await;
}

/// A dead letter that Redis added but no replica confirmed (the replica is
/// paused) is confirmed again on its retries, not added again: one letter
/// however long the replica is away. Before, each retry added the whole
/// letter again, one more every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_waiting_for_its_replica_is_added_once() {
    let env = TestEnv::start("dlq_replica");
    let (master, replica, mut m) = master_and_replica().await;
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 200",
        redis_url: Some(master.url()),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let daemon = support::proc::DaemonProc::start(&path, dir.path(), "dlq-replica");
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let sig = doc! {"symbol": "DLQ", "strategyName": "s", "exchangeName": "x"};
    s.write(&sig, &doc! {"n": 1}).await.unwrap();

    support::pause::pause(replica.pid());
    let names = writ::protocol::Names::new(&config.namespace);
    let stream = names.stream(0);
    support::raw_json_put(
        &mut m,
        &stream,
        "no-such-collection",
        r#"{"k":"v"}"#,
        "{}",
        &[],
    )
    .await;
    let retries = |log: &str| {
        log.lines()
            .filter(|l| l.contains("redis step failed") && l.contains("dead letter"))
            .count()
    };
    eventually(
        Duration::from_secs(60),
        "four unconfirmed tries of the letter",
        || {
            let n = retries(&daemon.log_text());
            async move { (n >= 4).then_some(()) }
        },
    )
    .await;
    let letters = |mut m: MultiplexedConnection| {
        let dlq = names.dead_letters();
        async move {
            redis::cmd("XLEN")
                .arg(dlq)
                .query_async::<u64>(&mut m)
                .await
                .unwrap()
        }
    };
    assert_eq!(letters(m.clone()).await, 1, "{}", daemon.log_text());

    support::pause::resume(replica.pid());
    let group = names.group();
    eventually(Duration::from_secs(30), "the refused entry to be acknowledged", || {
        let mut m = m.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { (support::pending_count(&mut m, &stream, &group).await == 0).then_some(()) }
    })
    .await;
    assert_eq!(letters(m.clone()).await, 1);
}
