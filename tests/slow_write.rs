//! A write MongoDB never finishes, while it answers every other: the daemon
//! must not retry it for ever (holding its key, and in time its partition).
//! After `max_timeouts` timeouts in a row with other operations answered in
//! between, it is dead-lettered (`mongo_rejected`, saying it timed out); the
//! key's later write and the other keys' writes are applied.
//!
//! The stall comes from a proxy in front of MongoDB that swallows every
//! connection sending a marker string (the stuck write's payload).

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{Daemon, Overrides, TestEnv};
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "slow", "exchangeName": "x"}
}

/// A daemon whose MongoDB is behind the proxy at `proxied`, with
/// `max_timeouts = 2` and a 2 s operation bound (long enough that no healthy
/// write times out on a loaded machine), and a client of `signal`.
async fn daemon_through(env: &TestEnv, proxied: String) -> (Daemon, writ::Collection) {
    let o = Overrides {
        daemon: "max_timeouts = 2\nbackoff_cap_ms = 100",
        mongo: "op_timeout_ms = 2000",
        mongo_uri: Some(proxied),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config).await.unwrap();
    let s = writ.collection("signal").unwrap();
    (daemon, s)
}

/// Writes to ten other keys (`<prefix>0`..`<prefix>9`), one every 100 ms
/// until `stop`: MongoDB answers them while the stuck write times out.
fn feed(
    s: &writ::Collection,
    prefix: &'static str,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<writ::Ticket>> {
    let (s, stop) = (s.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tickets = Vec::new();
        for i in 0i64.. {
            tickets.push(
                s.submit(&key(&format!("{prefix}{}", i % 10)), &doc! {"i": i})
                    .await
                    .unwrap(),
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.cancelled() => break,
            }
        }
        tickets
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_always_times_out_is_dead_lettered_and_the_rest_flows() {
    let env = TestEnv::start("slow_write");
    let (_proxy, proxied) =
        support::proxy::in_front_of_mongo_swallowing(&env.mongo_uri, b"NEVER-FINISHES").await;
    let (daemon, s) = daemon_through(&env, proxied).await;
    let stuck = s
        .submit(&key("STUCK"), &doc! {"x": "NEVER-FINISHES"})
        .await
        .unwrap();
    // Other keys keep going meanwhile, and the server answers them.
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = feed(&s, "O", &stop);
    let waited = stuck.wait_for(Duration::from_secs(150)).await;
    stop.cancel();
    let others = feeder.await.unwrap();
    let Err(Error::DeadLettered { reason }) = &waited else {
        panic!("the stuck write: {waited:?}")
    };
    assert!(reason.contains("did not complete"), "{reason}");
    // The key is free again: its next write is applied.
    let later = s.submit(&key("STUCK"), &doc! {"x": "fine"}).await.unwrap();
    later.wait_for(Duration::from_secs(60)).await.unwrap();
    for t in others {
        t.wait_for(Duration::from_secs(60)).await.unwrap();
    }
    assert_eq!(
        s.read(&key("STUCK")).await.unwrap(),
        Some(doc! {"x": "fine"})
    );
    let mut r = env.redis().await;
    let letters: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("{}:dlq", env.name))
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|(_, f)| f["dlq.reason"].as_str())
        .collect();
    assert_eq!(reasons, ["mongo_rejected"]);
    daemon.stop().await;
}

/// A write that MongoDB commits but whose replies never arrive times out
/// just the same; before it is dead-lettered for its timeouts, the daemon
/// reads the key. It finds the write's own version there, so the write is
/// settled as committed (cached, acknowledged), not parked as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_committed_but_never_answered_is_not_dead_lettered() {
    let env = TestEnv::start("unheard_write");
    let (proxy, proxied) =
        support::proxy::in_front_of_mongo_deafening(&env.mongo_uri, b"COMMITS-UNHEARD").await;
    let (daemon, s) = daemon_through(&env, proxied).await;
    s.write(&key("UNHEARD"), &doc! {"x": "old"}).await.unwrap();
    let unheard = s
        .submit(&key("UNHEARD"), &doc! {"x": "COMMITS-UNHEARD"})
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = feed(&s, "U", &stop);
    let waited = unheard.wait_for(Duration::from_secs(150)).await;
    stop.cancel();
    feeder.await.unwrap();
    assert!(
        proxy.cut_done(),
        "no reply was withheld: the write was answered, and the test staged nothing"
    );
    let v = waited.expect("committed, so acknowledged, not dead-lettered");
    assert_eq!(
        s.read(&key("UNHEARD")).await.unwrap(),
        Some(doc! {"x": "COMMITS-UNHEARD"}),
        "the cache holds what MongoDB committed"
    );
    let stored = env
        .mongo_db()
        .await
        .collection::<Document>("signal")
        .find_one(key("UNHEARD"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(writ::apply::doc_version(&stored), Some(v));
    let mut r = env.redis().await;
    let letters: usize = redis::cmd("XLEN")
        .arg(format!("{}:dlq", env.name))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(letters, 0, "no dead letter for a committed write");
    daemon.stop().await;
}

/// A read-through MongoDB never answers (the request taken, no reply: a
/// black-holed link, a stalled primary) fails within `op_timeout_ms` and a
/// few seconds, as the daemon's own operations do. Before session 44 the
/// client's read of a cache miss waited for ever: its `find` had no time
/// limit, and the driver has none of its own (helper-102).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_mongodb_never_answers_fails_in_bounded_time() {
    let env = TestEnv::start("slow_read");
    let (_proxy, proxied) =
        support::proxy::in_front_of_mongo_swallowing(&env.mongo_uri, b"NEVER-ANSWERED").await;
    let o = Overrides {
        mongo: "op_timeout_ms = 1000",
        mongo_uri: Some(proxied),
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // Not in the cache: read through to MongoDB, whose reply never comes.
    let read = tokio::time::timeout(Duration::from_secs(30), s.read(&key("NEVER-ANSWERED")))
        .await
        .expect("the read returns within its bound (1 s + 5 s), not after 30 s");
    assert!(
        matches!(read, Err(Error::Timeout { accepted: None, .. })),
        "{read:?}"
    );
    // Other keys read as before.
    assert_eq!(s.read(&key("ANSWERED")).await.unwrap(), None);
    writ.close().await;
}
