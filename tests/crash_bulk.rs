//! A crash between a round's MongoDB bulk and its cache step loses nothing and
//! reorders nothing: the next owner re-applies the pending entries (the guard
//! finds them committed), fills the cache and acks every writer.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::proc::DaemonProc;
use support::{eventually, Overrides, TestEnv};
use writ::apply::doc_version;
use writ::protocol::Version;
use writ::Writ;

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "crash", "exchangeName": "x"}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_bulk_and_cache_loses_and_reorders_nothing() {
    let env = TestEnv::start("crash_bulk");
    let o = Overrides::default();
    let config = env.config_with(&o);
    let names = support::same_partition(&config, "signal", key, "K0", "K", 10);
    // 40 writes on 10 keys of one partition, queued before any daemon runs,
    // so the first round holds them all (runs of puts coalesce).
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut last: HashMap<String, (Version, i64)> = HashMap::new();
    let mut tickets = Vec::new();
    for round in 0..4i64 {
        for n in &names {
            let t = s.submit(&key(n), &doc! {"round": round}).await.unwrap();
            last.insert(n.clone(), (t.version(), round));
            tickets.push(t);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let mut crashing = DaemonProc::start_with_env(
        &path,
        dir.path(),
        "crash-d1",
        &[("WRIT_TEST_FAILPOINT", "after_bulk")],
    );
    eventually(
        Duration::from_secs(30),
        "the daemon to crash after its bulk",
        || {
            let done = crashing.exited();
            async move { done.then_some(()) }
        },
    )
    .await;
    // MongoDB has the round; nothing was cached or acked.
    let db = env.mongo_db().await;
    let signals = db.collection::<Document>("signal");
    assert_eq!(
        signals.count_documents(doc! {}).await.unwrap(),
        10,
        "the bulk committed"
    );
    assert!(support::cached(&config, "signal", &key(&names[0]))
        .await
        .is_none());

    let _next = DaemonProc::start(&path, dir.path(), "crash-d2");
    for t in tickets {
        let own = t.version();
        let got = tokio::time::timeout(Duration::from_secs(60), t.wait())
            .await
            .expect("every writer is acked after the takeover")
            .unwrap();
        assert!(got >= own, "acked at {got}, older than the write {own}");
    }
    // Nothing lost, nothing reordered: MongoDB and the cache hold each key's
    // last write, at its version.
    for (n, (version, round)) in &last {
        let d = signals.find_one(key(n)).await.unwrap().unwrap();
        assert_eq!(doc_version(&d), Some(*version), "{n}");
        assert_eq!(
            d.get_document("payload")
                .unwrap()
                .get_i64("round")
                .ok()
                .or(d
                    .get_document("payload")
                    .unwrap()
                    .get_i32("round")
                    .ok()
                    .map(i64::from)),
            Some(*round),
            "{n}"
        );
        let c = support::cached(&config, "signal", &key(n)).await.unwrap();
        assert_eq!(c.version, *version, "cache of {n}");
        assert_eq!(c.doc.as_ref(), Some(&d), "cache equals MongoDB for {n}");
    }
}
