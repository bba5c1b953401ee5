//! Redis at its memory limit. At `maxmemory` (policy `noeviction`) a write
//! is refused with an error that says it was not accepted and what to do,
//! and a read that misses the cache still answers from MongoDB. A Redis
//! whose policy may evict writ's streams (`allkeys-*` under a limit) is
//! refused by the daemon at start. What the daemon does with accepted writes
//! at the limit is tested where it happens: `tests/tools_replicas.rs` (acks)
//! and `tests/replay_trim.rs` (retention).

mod support;

use mongodb::bson::{doc, Document};
use redis::aio::MultiplexedConnection;
use support::{config_set, forget_partition_count, Daemon, Overrides, RedisServer, TestEnv};
use writ::config::Config;
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "memory", "exchangeName": "x"}
}

/// A test's servers: the shared MongoDB, its own redis-server (the tests
/// change its memory settings) and a connection to it, and the config of a
/// namespace with one partition on them.
async fn own_redis(test: &str) -> (TestEnv, RedisServer, MultiplexedConnection, Config) {
    let env = TestEnv::start(test);
    let redis = RedisServer::start();
    let o = Overrides {
        redis_url: Some(redis.url()),
        partitions: Some(1),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let conn = redis.connect().await;
    (env, redis, conn, config)
}

/// The length of `stream`.
async fn xlen(conn: &mut MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}

/// A Redis at its `maxmemory` refuses an admission before it writes
/// anything: the writer gets [`Error::RedisFull`] at once, saying the write
/// was not accepted and what to do, classed as retryable, and nothing is in
/// the stream. Once memory is freed, submits are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_the_write_saying_so() {
    let (_env, _redis, mut conn, config) = own_redis("admission_full").await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    config_set(&mut conn, "maxmemory", "1").await;
    let refused = s.submit(&key("full"), &doc! {"i": 1}).await;
    config_set(&mut conn, "maxmemory", "0").await;
    let e = refused.expect_err("a full Redis accepted a write");
    assert!(matches!(e, Error::RedisFull { partition: 0, .. }), "{e:?}");
    assert_eq!(e.accepted(), Some(writ::Accepted::No));
    let text = e.to_string();
    assert!(
        text.contains("NOT accepted") && text.contains("maxmemory") && text.contains("OOM"),
        "{text}"
    );
    assert_eq!(e.retry_class(), writ::error::RetryClass::Transient);
    let stream = writ::protocol::Names::new(&config.namespace).stream(0);
    assert_eq!(
        xlen(&mut conn, &stream).await,
        0,
        "the refused write is in the stream"
    );
    s.submit(&key("full"), &doc! {"i": 2}).await.unwrap();
    assert_eq!(
        xlen(&mut conn, &stream).await,
        1,
        "the accepted write is not in {stream}"
    );
}

/// At `maxmemory` a client still connects (recording the partition count is
/// skipped), and a read that misses the cache still answers from MongoDB:
/// the cache fill after it is only a shortcut, and Redis refuses it. Before,
/// the refused fill failed the read (`read` and `read_many`), though MongoDB
/// held the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_still_answers_reads_from_mongodb() {
    let (_env, _redis, mut conn, config) = own_redis("read_full").await;
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for name in ["R1", "R2"] {
        s.write(&key(name), &doc! {"n": name}).await.unwrap();
    }
    daemon.stop().await;
    // Both keys miss the cache from now on.
    for name in ["R1", "R2"] {
        let k =
            writ::protocol::Key::from_document(&key(name), config.collection("signal").unwrap())
                .unwrap();
        let cached =
            writ::protocol::Names::new(&config.namespace).cache(0, "signal", &k.canonical());
        let _: () = redis::cmd("DEL")
            .arg(cached)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // A fresh handle: no pending writes of its own to settle first. It
    // connects to the full Redis, with no partition count recorded (as after
    // a Redis data loss): recording it is refused, and only skipped.
    forget_partition_count(&mut conn, &config).await;
    config_set(&mut conn, "maxmemory", "1").await;
    let reader = Writ::connect(config.clone()).await;
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            config_set(&mut conn, "maxmemory", "0").await;
            panic!("a client could not connect to a full Redis: {e:?}");
        }
    };
    let r = reader.collection("signal").unwrap();
    let one = r.read(&key("R1")).await;
    let many = r.read_many(&[key("R1"), key("R2")]).await;
    config_set(&mut conn, "maxmemory", "0").await;
    assert_eq!(one.unwrap(), Some(doc! {"n": "R1"}));
    assert_eq!(
        many.unwrap(),
        vec![Some(doc! {"n": "R1"}), Some(doc! {"n": "R2"})]
    );
}

/// writ's scripts need Redis 7.0 or newer. A daemon pointed at an older
/// server (the test's Redis behind a proxy that reports its version with a
/// major of 6) does not start, touches nothing, and says which version it
/// found and which it needs. Every other test runs daemons on the same
/// Redis seen directly, so a new enough one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_redis_older_than_7() {
    fn as_six(buf: &mut [u8]) {
        const FIELD: &[u8] = b"redis_version:";
        let mut from = 0;
        while let Some(at) = buf[from..].windows(FIELD.len()).position(|w| w == FIELD) {
            let digit = from + at + FIELD.len();
            if let Some(d) = buf.get_mut(digit) {
                *d = b'6';
            }
            from = digit;
        }
    }
    let text = refused_through(own_redis("old_redis").await, as_six).await;
    assert!(
        text.contains("Redis 6.") && text.contains("7.0 or newer") && text.contains("Upgrade"),
        "{text}"
    );
}

/// Starts a daemon on the test's Redis seen through a proxy that applies
/// `rewrite` to its replies, and returns the message of the
/// [`Error::UnsupportedRedis`] it must stop with, having created nothing.
async fn refused_through(
    (env, redis, mut conn, _config): (
        TestEnv,
        support::RedisServer,
        redis::aio::MultiplexedConnection,
        writ::config::Config,
    ),
    rewrite: fn(&mut [u8]),
) -> String {
    let (_proxy, url) = support::proxy::in_front_of_redis_rewriting(&redis.url(), rewrite).await;
    let config = env.config_with(&Overrides {
        redis_url: Some(url),
        partitions: Some(1),
        ..Default::default()
    });
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        writ::serve::serve(config.clone(), tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the daemon kept running on a Redis it must refuse");
    let e = refused.expect_err("the daemon ran on a Redis it must refuse");
    assert!(matches!(e, Error::UnsupportedRedis(_)), "{e:?}");
    let stream = writ::protocol::Names::new(&config.namespace).stream(0);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "the refusing daemon created {stream}");
    e.to_string()
}

/// A cluster node reached with `redis.cluster = false` (a one-shard
/// "cluster mode" Redis that serves every slot): a round's cache script
/// carries the writers' ack streams, keys of other slots, which such a node
/// refuses (`CROSSSLOT`), and each round would be retried for ever. The
/// daemon does not start, and says to set `redis.cluster`. (The test's Redis
/// behind a proxy that reports `cluster_enabled:1`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_cluster_node_outside_cluster_mode() {
    fn as_cluster(buf: &mut [u8]) {
        const FIELD: &[u8] = b"cluster_enabled:";
        if let Some(at) = buf.windows(FIELD.len()).position(|w| w == FIELD) {
            if let Some(d) = buf.get_mut(at + FIELD.len()) {
                *d = b'1';
            }
        }
    }
    let text = refused_through(own_redis("cluster_node").await, as_cluster).await;
    assert!(
        text.contains("cluster_enabled:1") && text.contains("Set redis.cluster = true"),
        "{text}"
    );
}

/// A Redis that may evict any key at its limit could drop a partition
/// stream, and the accepted writes in it, without a word: the daemon does
/// not start on one, and says which setting to change. The same policy
/// without a limit, and `volatile-*` with one, only warn: the daemon runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_redis_that_may_evict_its_streams() {
    let (_env, _redis, mut conn, config) = own_redis("evicting").await;
    config_set(&mut conn, "maxmemory-policy", "allkeys-lru").await;
    config_set(&mut conn, "maxmemory", "1gb").await;
    let token = tokio_util::sync::CancellationToken::new();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        writ::serve::serve(config.clone(), token.clone()),
    )
    .await
    .expect("the daemon started on an evicting Redis");
    let e = refused.expect_err("the daemon ran on an evicting Redis");
    assert!(matches!(e, Error::UnsafeRedis(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("allkeys-lru")
            && text.contains("noeviction")
            && text.contains("accepted writes"),
        "{text}"
    );

    for (policy, limit) in [("allkeys-lru", "0"), ("volatile-lru", "1gb")] {
        config_set(&mut conn, "maxmemory-policy", policy).await;
        config_set(&mut conn, "maxmemory", limit).await;
        let daemon = Daemon::start(config.clone());
        let writ = Writ::connect(config.clone()).await.unwrap();
        let s = writ.collection("signal").unwrap();
        s.write(&key(policy), &doc! {"p": policy}).await.unwrap();
        daemon.stop().await;
    }
}
