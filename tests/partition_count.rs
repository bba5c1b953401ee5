//! Daemons and clients agree on `redis.partitions`. A key's stream is its
//! hash modulo the count, so a writer with another count writes to streams
//! no daemon reads, or splits one key's writes between two streams. The
//! first daemon records its count in Redis; a client with another count is
//! refused when it connects, and a daemon with another count is refused
//! while the recorded count's partitions hold unapplied writes. On a drained
//! namespace a daemon with a new count records it (that is how the count is
//! changed).

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{eventually, Daemon, Overrides, TestEnv};
use writ::config::Config;
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "count", "exchangeName": "x"}
}

fn with_partitions(env: &TestEnv, n: u32) -> Config {
    env.config_with(&Overrides {
        partitions: Some(n),
        ..Default::default()
    })
}

/// The count recorded in Redis, read directly.
async fn recorded(config: &Config) -> Option<String> {
    let mut conn = writ::redis_conn::connect(config, Duration::ZERO)
        .await
        .unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(writ::partition_count::FIELD)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// `Writ::connect`'s refusal, which must name both counts.
async fn refused_client(config: Config, configured: u32, recorded: u32) {
    let e = match Writ::connect(config).await {
        Ok(_) => {
            panic!("a client with {configured} partitions connected to a namespace of {recorded}")
        }
        Err(e) => e,
    };
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("redis.partitions = {configured}"))
            && text.contains(&format!("run with {recorded}"))
            && text.contains(&format!("Set partitions = {recorded}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_daemons_with_another_partition_count_are_refused() {
    let env = TestEnv::start("partition_count");
    let four = with_partitions(&env, 4);
    let eight = with_partitions(&env, 8);

    // No daemon has run: nothing is recorded, and a client of any count connects.
    assert_eq!(recorded(&four).await, None);
    drop(Writ::connect(eight.clone()).await.unwrap());

    // The first daemon records its count.
    let daemon = Daemon::start(four.clone());
    let writ = Writ::connect(four.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("first"), &doc! {"n": 0}).await.unwrap();
    daemon.stop().await;
    assert_eq!(recorded(&four).await.as_deref(), Some("4"));
    refused_client(eight.clone(), 8, 4).await;

    // Writes accepted while no daemon runs stay unapplied in the 4 streams:
    // a daemon with 8 partitions does not start, and says why.
    for i in 0..10 {
        s.submit(&key(&format!("k{i}")), &doc! {"n": i})
            .await
            .unwrap();
    }
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        writ::serve::serve(eight.clone(), tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("a daemon with another count kept running");
    let e = refused.expect_err("a daemon with another count ran over unapplied writes");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("redis.partitions = 8")
            && text.contains("ran with 4 partitions")
            && text.contains("unapplied"),
        "{text}"
    );
    assert_eq!(recorded(&four).await.as_deref(), Some("4"));

    // Drained by a daemon with the recorded count, the namespace takes the
    // new count: the daemon with 8 starts, and clients with 4 are refused.
    let daemon = Daemon::start(four.clone());
    writ.sync(Duration::from_secs(60)).await.unwrap();
    daemon.stop().await;
    drop(writ);
    let daemon = Daemon::start(eight.clone());
    eventually(
        Duration::from_secs(30),
        "the new count recorded",
        || async { (recorded(&eight).await.as_deref() == Some("8")).then_some(()) },
    )
    .await;
    let writ = Writ::connect(eight.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("k3"), &doc! {"n": 33}).await.unwrap();
    refused_client(four.clone(), 4, 8).await;
    // Nothing written under the old count was lost.
    assert_eq!(s.read(&key("k9")).await.unwrap(), Some(doc! {"n": 9}));
    assert_eq!(s.read(&key("k3")).await.unwrap(), Some(doc! {"n": 33}));
    daemon.stop().await;
}
