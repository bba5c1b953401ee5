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

/// The daemon writes the cache before it sends the ack. A read in between
/// settles the pending write for reads, and the ticket must still get its
/// ack (it used to end with `Shutdown`: the read dropped the ack's sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_between_the_cache_write_and_the_ack_leaves_the_ticket_its_ack() {
    use writ::ack::{Ack, Outcome};
    let env = TestEnv::start("read_before_ack");
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "RACE", "strategyName": "ack", "exchangeName": "x"};
    // No daemon: play its two steps by hand.
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let v = ticket.version();
    let k = writ::protocol::Key::from_document(&key, config.collection("signal").unwrap()).unwrap();
    let entry = writ::protocol::Names::new(&config.namespace).cache(
        k.partition("signal", config.partitions),
        "signal",
        &k.canonical(),
    );
    let mut stored = key.clone();
    stored.insert("payload", doc! {"v": 1});
    stored.insert("_writ", doc! {"v": v.to_sortable()});
    let cache = writ::cache::Cache::new(env.redis().await);
    assert!(cache.put_if_newer(&entry, v, Some(&stored)).await.unwrap());
    let r = s.read_record(&key).await.unwrap().unwrap();
    assert_eq!(r.version, v);
    // The first request id of a handle is "1".
    let ack = Ack {
        request: "1".into(),
        outcome: Outcome::Applied,
        version: v,
        entry: v,
        reason: None,
    };
    let mut conn = env.redis().await;
    for (_, cmd) in Ack::commands([(writ.client_id(), &ack)], |c| {
        format!("{}:ack:{c}", config.namespace)
    }) {
        let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
    }
    let got = ticket
        .wait_for(std::time::Duration::from_secs(10))
        .await
        .expect("the ticket gets its ack");
    assert_eq!(got, v);
}
