//! One round of a partition: fresh keys, a stale write, a poison write and a
//! coalesced run go to MongoDB as one bulk, and each write gets its own
//! outcome. The poison write fails only itself: the others are applied,
//! cached and acked before it is dead-lettered.

mod support;

use std::collections::HashMap;

use mongodb::bson::{doc, Document};
use support::{Daemon, Overrides, TestEnv};
use writ::protocol::Version;
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "bulk", "exchangeName": "x"}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_of_a_bulk_gets_its_own_outcome() {
    let env = TestEnv::start("bulk_outcomes");
    let o = Overrides {
        daemon: "max_attempts = 2\nbackoff_cap_ms = 50",
        ..Default::default()
    };
    let config = env.config_with(&o);
    // Every key in one partition, so one round holds them all.
    let names = support::same_partition(&config, "signal", key, "F0", "K", 9);
    let (fresh, stale, coalesced, poison, holder) =
        (&names[0..5], &names[5], &names[6], &names[7], &names[8]);

    // Before any daemon: the stale key already holds a newer version, and a
    // second unique index makes the poison write collide for good.
    let db = env.mongo_db().await;
    let signals = db.collection::<Document>("signal");
    let future = Version {
        ms: 9_999_999_999_999,
        seq: 0,
    };
    let mut newer = key(stale);
    newer.insert("payload", doc! {"who": "newer"});
    newer.insert("removed", false);
    newer.insert("_writ", doc! {"v": future.to_sortable()});
    signals.insert_one(newer).await.unwrap();
    env.poison_payload_u("signal", key(holder), "dup").await;

    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut tickets = Vec::new();
    for f in fresh {
        tickets.push((
            "fresh",
            s.submit(&key(f), &doc! {"f": f.as_str()}).await.unwrap(),
        ));
    }
    tickets.push((
        "stale",
        s.submit(&key(stale), &doc! {"who": "old"}).await.unwrap(),
    ));
    for i in 1..=3 {
        let kind = if i < 3 { "coalesced" } else { "last" };
        tickets.push((
            kind,
            s.submit(&key(coalesced), &doc! {"c": i}).await.unwrap(),
        ));
    }
    tickets.push((
        "poison",
        s.submit(&key(poison), &doc! {"u": "dup"}).await.unwrap(),
    ));

    let daemon = Daemon::start(config.clone());
    let mut results = Vec::new();
    for (kind, t) in tickets {
        let id = t.version();
        results.push((kind, id, t.wait().await));
    }
    // What each write's ack said, by entry id.
    let mut outcome: HashMap<String, String> = HashMap::new();
    let mut order = Vec::new();
    for a in support::acks::of_client(&env, writ.client_id()).await {
        order.push(a["id"].clone());
        outcome.insert(a["id"].clone(), a["outcome"].clone());
    }
    for (kind, id, res) in &results {
        let got = outcome.get(&id.to_stream_id()).map(String::as_str);
        match *kind {
            "fresh" | "last" => {
                assert_eq!(got, Some("applied"), "{kind} {id}");
                assert_eq!(res.as_ref().unwrap(), id);
            }
            "coalesced" => assert_eq!(got, Some("coalesced"), "{kind} {id}"),
            "stale" => {
                assert_eq!(got, Some("stale"), "{kind} {id}");
                assert_eq!(res.as_ref().unwrap(), &future);
            }
            "poison" => {
                assert_eq!(got, Some("dead_lettered"), "{kind} {id}");
                assert!(matches!(res, Err(Error::DeadLettered { .. })), "{res:?}");
                let held = res.as_ref().err().and_then(Error::accepted);
                assert_eq!(held, Some(writ::Accepted::Yes), "{kind} {id}");
            }
            _ => unreachable!(),
        }
    }
    // The poison write touched only itself: every other write was acked
    // before it was dead-lettered.
    let poison_id = results
        .iter()
        .find(|r| r.0 == "poison")
        .unwrap()
        .1
        .to_stream_id();
    assert_eq!(order.last(), Some(&poison_id), "ack order {order:?}");
    // MongoDB and the cache hold what they should.
    assert_eq!(
        s.read(&key(stale)).await.unwrap(),
        Some(doc! {"who": "newer"})
    );
    assert_eq!(s.read(&key(coalesced)).await.unwrap(), Some(doc! {"c": 3}));
    for f in fresh {
        assert_eq!(s.read(&key(f)).await.unwrap(), Some(doc! {"f": f.as_str()}));
    }
    assert_eq!(s.read(&key(poison)).await.unwrap(), None);
    daemon.stop().await;
}

/// Post-images and read-many look keys up with one `$in` per key field. When
/// their cross product is large the query is limited; if a dense collection
/// fills the limit, the keys it did not return are looked up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_many_keys_survives_a_dense_cross_product() {
    let env = TestEnv::start("find_many_dense");
    let config = env.config();
    let store = writ::apply::Store::connect(&config).await.unwrap();
    let coll = env.mongo_db().await.collection::<Document>("measure");
    // A 30 x 30 grid of documents: every combination of bucket and entryKey.
    let grid: Vec<Document> = (0..30)
        .flat_map(|i| (0..30).map(move |j| doc! {"bucket": format!("b{i}"), "entryKey": format!("e{j}"), "n": i * 100 + j}))
        .collect();
    coll.insert_many(grid).await.unwrap();
    let cc = config.collection("measure").unwrap();
    let key = |i: i32, j: i32| {
        writ::protocol::Key::from_document(
            &doc! {"bucket": format!("b{i}"), "entryKey": format!("e{j}")},
            cc,
        )
        .unwrap()
    };
    // The diagonal: 30 keys, a cross product of 900 (over the limit of 184).
    let diagonal: Vec<_> = (0..30).map(|i| key(i, i)).collect();
    assert!(matches!(
        writ::apply::keys_query(&diagonal),
        writ::apply::KeysQuery::Bounded { .. }
    ));
    let found = store.find_many("measure", &diagonal).await.unwrap();
    let ns: std::collections::BTreeSet<i32> =
        found.iter().map(|d| d.get_i32("n").unwrap()).collect();
    for i in 0..30 {
        assert!(
            ns.contains(&(i * 101)),
            "key ({i}, {i}) not found among {} documents",
            found.len()
        );
    }
    assert!(
        found.len() <= 184 + 30,
        "fetched {} documents for 30 keys",
        found.len()
    );
    // A sparse product (one row): no fallback needed, exactly the row.
    let row: Vec<_> = (0..30).map(|j| key(7, j)).collect();
    let found = store.find_many("measure", &row).await.unwrap();
    assert_eq!(found.len(), 30);
}
