//! With `redis.min_replicas_acked`, the operator tools confirm their cache
//! writes with `WAIT`, as the daemon does: `replay` and `rebuild-cache`
//! (and `dlq retry`, which publishes through the same call as `replay`) make
//! entries readable, and an entry a failover loses would let a reader see
//! the older one the promoted replica holds.
//!
//! The test starts its own master and replica (one redis-server each, with
//! `REPLICAOF`), whatever Redis the other tests use.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::proc::writ_cli;
use support::{eventually, Daemon, Overrides, RedisServer, TestEnv};
use writ::Writ;

/// `cmdstat_wait`'s `calls` in `INFO commandstats` (0 when never called).
async fn wait_calls(master: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(master)
        .await
        .unwrap();
    support::info_field(&info, "cmdstat_wait")
        .and_then(|v| v.strip_prefix("calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

async fn reset_stats(master: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(master)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_confirm_their_cache_writes_with_replicas() {
    let env = TestEnv::start("toolsrepl");
    let master = RedisServer::start();
    let replica = RedisServer::start();
    let client = |url: String| async move {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let mut m = client(master.url()).await;
    let mut r = client(replica.url()).await;
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
    reset_stats(&mut m).await;
    let out = writ_cli(&path, &["replay", "--from", "0-0"]);
    assert!(out.status.success(), "{out:?}");
    let replay = wait_calls(&mut m).await;
    reset_stats(&mut m).await;
    let out = writ_cli(&path, &["rebuild-cache"]);
    assert!(out.status.success(), "{out:?}");
    let rebuild = wait_calls(&mut m).await;
    assert!(
        replay >= 8 && rebuild >= 8,
        "WAIT calls on the master: replay {replay}, rebuild-cache {rebuild}; want at least 8 each"
    );
    for i in 0..8i64 {
        assert_eq!(s.read(&key(i)).await.unwrap(), Some(doc! {"i": i}));
    }
}
