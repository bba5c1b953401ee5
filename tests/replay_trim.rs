//! Retention keeps trimming while a long `writ replay` runs. Entries it
//! removes ahead of the replay's position are missed by the replay, and the
//! summary must say so (`trimmed`), as it does for a range trimmed before
//! the replay began.

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{Overrides, TestEnv};
use writ::protocol::{Names, Version};
use writ::Writ;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_trimmed_during_a_replay_is_reported() {
    let env = TestEnv::start("replay_trim");
    let config = env.config();
    // 1200 writes of one key (one partition), never applied: no daemon runs.
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "TRIM", "strategyName": "replay", "exchangeName": "x"};
    let mut ids = Vec::new();
    for i in 0..1200i64 {
        ids.push(s.submit(&key, &doc! {"i": i}).await.unwrap().version());
    }
    let coll = config.collection("signal").unwrap();
    let p = writ::protocol::Key::from_document(&key, coll)
        .unwrap()
        .partition("signal", config.partitions);
    let stream = Names::new(&config.namespace).stream(p);
    // A slow MongoDB, so the first page (500 entries) takes seconds on any
    // server.
    let (_proxy, proxied) =
        support::proxy::in_front_of_mongo_with_latency(&env.mongo_uri, Duration::from_millis(5))
            .await;
    let tools = writ::tools::Tools::connect(env.config_with(&Overrides {
        mongo_uri: Some(proxied),
        ..Default::default()
    }))
    .await
    .unwrap();
    let replay = tokio::spawn(async move {
        tools
            .replay(Version { ms: 0, seq: 0 }, None, Some("signal"))
            .await
    });
    // Once the replay is inside its first page, retention trims the stream
    // up to entry 1100.
    let signal = env.mongo_db().await.collection::<Document>("signal");
    let tenth = ids[10];
    support::eventually(
        Duration::from_secs(60),
        "the replay to start applying",
        || {
            let signal = signal.clone();
            let key = key.clone();
            async move {
                let d = signal.find_one(key).await.unwrap()?;
                (writ::apply::doc_version(&d)? >= tenth).then_some(())
            }
        },
    )
    .await;
    let mut r = env.redis().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg(ids[1100].to_stream_id())
        .query_async(&mut r)
        .await
        .unwrap();
    let sum = tokio::time::timeout(Duration::from_secs(120), replay)
        .await
        .expect("the replay ends")
        .unwrap()
        .unwrap();
    assert!(sum.read < 1200, "{sum:?}");
    assert_eq!(
        sum.trimmed,
        vec![p],
        "the entries trimmed ahead of the replay are reported: {sum:?}"
    );
}
