//! A lost ack must not wedge a handle: `keys`, `values` and `count` settle a
//! pending write by the cache version, as `read` does, and forget it.

mod support;

use mongodb::bson::doc;
use support::{Daemon, Overrides, TestEnv};
use writ::Writ;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_does_not_wedge_lists() {
    let env = TestEnv::start("lost_ack");
    let o = Overrides {
        client: "read_timeout_ms = 3000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    // The ack stream's key holds something else: the daemon cannot ack this
    // handle (it logs and skips the acks), but applies and caches its writes.
    let mut r = env.redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:ack:{}", env.name, writ.client_id()))
        .arg("not a stream")
        .query_async(&mut r)
        .await
        .unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "LOST", "strategyName": "ack", "exchangeName": "x"};
    let _ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let daemon = Daemon::start(config.clone());
    // The write is applied and cached although its ack never arrives.
    support::eventually(
        std::time::Duration::from_secs(30),
        "the write to be cached",
        || {
            let (config, key) = (config.clone(), key.clone());
            async move { support::cached(&config, "signal", &key).await }
        },
    )
    .await;
    assert_eq!(
        s.count().await.unwrap(),
        1,
        "count settles by the cache version"
    );
    assert_eq!(s.keys().await.unwrap().len(), 1);
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 1}));
    daemon.stop().await;
}
