//! Guarded upserts racing on one new key, straight at MongoDB (no daemon
//! ordering in between). Every call must end as a committed post-image of its
//! own version, a stale skip, or a retryable error — never "success" without
//! a document — and MongoDB must end at the highest version.

mod support;

use std::sync::Arc;

use mongodb::bson::doc;
use support::TestEnv;
use writ::apply::{doc_version, Applied, Store};
use writ::protocol::{Key, Op, Version, Write};
use writ::RetryClass;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_upserts_on_a_new_key_never_fake_success() {
    let env = TestEnv::start("upsert_race");
    let config = env.config();
    let store = Arc::new(Store::connect(&config).await.unwrap());
    store
        .ensure_indexes(config.collections.values())
        .await
        .unwrap();
    let coll = config.collection("signal").unwrap().clone();
    for round in 0..5u64 {
        let key = Key::from_document(
            &doc! {"symbol": format!("RACE{round}"), "strategyName": "r", "exchangeName": "x"},
            &coll,
        )
        .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..=8u64 {
            let (store, coll, key) = (store.clone(), coll.clone(), key.clone());
            tasks.spawn(async move {
                let v = Version {
                    ms: 1_000 + n,
                    seq: 0,
                };
                let w = Write {
                    collection: "signal".into(),
                    key,
                    op: Op::Put,
                    doc: Some(doc! {"n": n as i64}),
                    reply: None,
                };
                // Retry what is retryable, as the daemon does.
                for _ in 0..20 {
                    match store.apply(&coll, &w, v).await {
                        Ok(Applied::Committed(d)) => {
                            assert_eq!(
                                doc_version(&d),
                                Some(v),
                                "a committed post-image carries its own version"
                            );
                            assert_eq!(
                                d.get_document("payload").unwrap().get_i64("n").unwrap(),
                                n as i64
                            );
                            return;
                        }
                        Ok(Applied::Stale(Some(d))) => {
                            assert!(
                                doc_version(&d).unwrap() >= v,
                                "stale means MongoDB holds a newer version"
                            );
                            return;
                        }
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(e) => assert_eq!(
                            e.retry_class(),
                            RetryClass::Transient,
                            "only retryable errors: {e}"
                        ),
                    }
                }
                panic!("upsert of version {v} never settled");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let d = store.find("signal", &key).await.unwrap().unwrap();
        assert_eq!(
            doc_version(&d),
            Some(Version { ms: 1_008, seq: 0 }),
            "highest version wins"
        );
        assert_eq!(d.get_document("payload").unwrap().get_i64("n").unwrap(), 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_written_before_writ_are_adopted_by_the_first_write() {
    let env = TestEnv::start("adopt");
    let config = env.config();
    let store = Store::connect(&config).await.unwrap();
    store
        .ensure_indexes(config.collections.values())
        .await
        .unwrap();
    let coll = config.collection("signal").unwrap().clone();
    let db = env.mongo_db().await;
    let raw = db.collection::<mongodb::bson::Document>("signal");
    // As the seed's adapters left them: key fields and payload, no version.
    for s in ["OLD1", "OLD2"] {
        raw.insert_one(
            doc! {"symbol": s, "strategyName": "r", "exchangeName": "x", "payload": {"old": true}},
        )
        .await
        .unwrap();
    }
    let put = |s: &str, op: Op| Write {
        collection: "signal".into(),
        key: Key::from_document(
            &doc! {"symbol": s, "strategyName": "r", "exchangeName": "x"},
            &coll,
        )
        .unwrap(),
        op,
        doc: (op == Op::Put).then(|| doc! {"new": true}),
        reply: None,
    };
    let v = Version { ms: 5, seq: 0 };
    match store.apply(&coll, &put("OLD1", Op::Put), v).await.unwrap() {
        Applied::Committed(d) => {
            assert_eq!(doc_version(&d), Some(v));
            assert_eq!(d.get_document("payload").unwrap(), &doc! {"new": true});
        }
        other => panic!("expected the old document to be adopted, got {other:?}"),
    }
    assert_eq!(
        store
            .apply(&coll, &put("OLD2", Op::Delete), v)
            .await
            .unwrap(),
        Applied::Deleted
    );
    // Only a versioned tombstone is left.
    let tomb = raw
        .find_one(doc! {"symbol": "OLD2"})
        .await
        .unwrap()
        .unwrap();
    assert!(tomb.get_bool("removed").unwrap());
    assert!(!tomb.contains_key("payload"));
    assert_eq!(doc_version(&tomb), Some(v));
    // A client reads a document writ never wrote (version 0-0, older than any write).
    raw.insert_one(
        doc! {"symbol": "OLD3", "strategyName": "r", "exchangeName": "x", "payload": {"old": 3}},
    )
    .await
    .unwrap();
    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let rec = writ
        .collection("signal")
        .unwrap()
        .read_record(&doc! {"symbol": "OLD3", "strategyName": "r", "exchangeName": "x"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.version, rec.payload),
        (Version::default(), Some(doc! {"old": 3}))
    );
    // Once adopted, the guard holds as usual.
    assert!(matches!(
        store
            .apply(&coll, &put("OLD1", Op::Put), Version { ms: 4, seq: 0 })
            .await
            .unwrap(),
        Applied::Stale(Some(_))
    ));
}

/// Bug 7: an E11000 while the stored version is older is an insert race, not
/// bad data. The race is staged (see `support::race_proxy`): the upsert of
/// version 2 finds no document, and before its insert another upsert stores
/// version 1 of the key; the server answers E11000. writ re-runs the upsert
/// at once, which now matches version 1 and commits version 2. Before the
/// fix this was a permanent error, dead-lettered after `max_attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_error_over_an_older_version_is_a_race_and_is_re_run() {
    let env = TestEnv::start("insert_race");
    let config = env.config();
    let direct = Store::connect(&config).await.unwrap();
    direct
        .ensure_indexes(config.collections.values())
        .await
        .unwrap();
    let coll = config.collection("signal").unwrap().clone();
    let key_doc = doc! {"symbol": "RACE-STAGED", "strategyName": "r", "exchangeName": "x"};
    let key = Key::from_document(&key_doc, &coll).unwrap();
    let write = |n: i64| Write {
        collection: "signal".into(),
        key: key.clone(),
        op: Op::Put,
        doc: Some(doc! {"n": n}),
        reply: None,
    };
    let (v1, v2) = (Version { ms: 1_000, seq: 0 }, Version { ms: 2_000, seq: 0 });
    // The other upsert's document (version 1), made by writ itself, then
    // removed: the key starts absent.
    let older = match direct.apply(&coll, &write(1), v1).await.unwrap() {
        Applied::Committed(d) => d,
        other => panic!("{other:?}"),
    };
    let raw = direct.raw_collection("signal");
    raw.delete_one(key_doc.clone()).await.unwrap();

    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let inject = {
        let (raw, older) = (raw.clone(), older.clone());
        move || {
            let (raw, older) = (raw.clone(), older.clone());
            async move {
                raw.insert_one(older).await.unwrap();
            }
        }
    };
    let proxy =
        support::race_proxy::RaceProxy::start(target, "symbol", "RACE-STAGED", inject).await;
    let mut via = config.clone();
    via.mongodb_uri = support::proxy::mongo_uri_via(&env.mongo_uri, proxy.port);
    let store = Store::connect(&via).await.unwrap();

    let applied = store.apply(&coll, &write(2), v2).await;
    assert!(
        proxy.fired.load(std::sync::atomic::Ordering::SeqCst),
        "the race was staged"
    );
    match applied {
        Ok(Applied::Committed(d)) => {
            assert_eq!(doc_version(&d), Some(v2));
            assert_eq!(d.get_document("payload").unwrap().get_i64("n").unwrap(), 2);
        }
        other => panic!("an insert race must be re-run and commit version 2, got {other:?}"),
    }
    let stored = raw.find_one(key_doc).await.unwrap().unwrap();
    assert_eq!(doc_version(&stored), Some(v2), "MongoDB holds version 2");
}
