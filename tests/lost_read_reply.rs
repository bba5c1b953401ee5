//! A group read whose reply never reaches the daemon: Redis delivered the
//! entries (they are pending on the daemon's consumer), the daemon saw its
//! connection drop. Those entries must still be applied, in order, in this
//! tenure: the next read finds the group's last-delivered id ahead of what
//! the daemon received, and the daemon claims the gap before anything newer.
//! (Before, they stayed pending until the partition changed owner: their
//! writers timed out, and retention stopped at them.)
//!
//! A proxy in front of the daemon's Redis closes the connection that carries
//! the first reply with a marker (the write's payload).

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::{Daemon, Overrides, TestEnv};
use writ::Writ;

/// A daemon config whose Redis is behind a proxy that cuts the first group
/// read reply carrying `marker`. Only a group read's reply: an `XREAD` (the
/// reader waiting for new entries, which delivers nothing) names the stream,
/// `...:in`. A long lease: the tenure must outlive the cut (a hand-over
/// would claim the entries anyway and hide the bug).
async fn cutting(env: &TestEnv, marker: &'static [u8]) -> (support::proxy::Proxy, writ::Config) {
    let (proxy, proxied) =
        support::proxy::in_front_of_redis_cutting_reply(&env.redis_url, marker, b":in\r\n").await;
    let o = Overrides {
        daemon: "lease_ttl_ms = 60000\nbackoff_cap_ms = 200",
        redis_url: Some(proxied),
        ..Default::default()
    };
    (proxy, env.config_with(&o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_whose_read_reply_was_lost_are_applied_in_order() {
    let env = TestEnv::start("lost_read_reply");
    let (proxy, daemon_config) = cutting(&env, b"LOST-IN-TRANSIT").await;
    let daemon = Daemon::start(daemon_config);
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "LOST", "strategyName": "read", "exchangeName": "x"};
    s.write(&key, &doc! {"n": 0}).await.unwrap();
    let lost = s
        .submit(&key, &doc! {"n": 1, "tag": "LOST-IN-TRANSIT"})
        .await
        .unwrap();
    let after = s.submit(&key, &doc! {"n": 2}).await.unwrap();
    let lost = lost.wait_for(Duration::from_secs(60)).await;
    assert!(
        proxy.cut_done(),
        "the proxy never cut a read reply: the test did not run its case"
    );
    let after = after.wait_for(Duration::from_secs(60)).await;
    let (lost, after) = (
        lost.expect("the write whose read reply was lost is applied"),
        after.expect("the write after it is applied"),
    );
    assert!(after >= lost, "{lost:?} {after:?}");
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"n": 2}));
    // Nothing is left pending in the group.
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        let stream = writ::protocol::Names::new(&config.namespace).stream(p);
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(&config.namespace)
            .query_async(&mut r)
            .await
            .unwrap_or(redis::Value::Nil);
        if let redis::Value::Array(v) = pending {
            assert!(
                matches!(v.first(), Some(redis::Value::Int(0)) | None),
                "partition {p} still has pending entries: {v:?}"
            );
        }
    }
    daemon.stop().await;
}

/// The same on the first read of a tenure, right after its claim of the
/// pending entries: the claim tells the reader where the group stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_of_a_tenures_first_read_is_claimed_too() {
    let env = TestEnv::start("lost_first_read");
    let (proxy, daemon_config) = cutting(&env, b"LOST-AT-START").await;
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "LOST", "strategyName": "first", "exchangeName": "x"};
    // In the stream before any daemon: its tenure's first read delivers it.
    let lost = s
        .submit(&key, &doc! {"n": 1, "tag": "LOST-AT-START"})
        .await
        .unwrap();
    let daemon = Daemon::start(daemon_config);
    let lost = lost.wait_for(Duration::from_secs(60)).await;
    assert!(
        proxy.cut_done(),
        "the proxy never cut a read reply: the test did not run its case"
    );
    lost.expect("the write whose first read's reply was lost is applied");
    assert_eq!(
        s.read(&key).await.unwrap(),
        Some(doc! {"n": 1, "tag": "LOST-AT-START"})
    );
    daemon.stop().await;
}
