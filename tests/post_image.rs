//! A bulk's committed documents for keys it inserted are derived from the
//! writes, not read back (`apply::post_image`). They must equal what the
//! server stored, field for field and type for type, in every layout; keys
//! that existed are still read back and equal too.

mod support;

use mongodb::bson::{doc, Bson, Document};
use support::{Overrides, TestEnv};
use writ::apply::{doc_version, Applied, BulkItem, BulkOutcome, Store};
use writ::protocol::{Key, Op, Version, Write};

const ROWS: &str = r#"
[[collections]]
name = "rows"
key = ["symbol", "strategyName"]
layout = "fields"
timestamps = true
"#;

fn put(coll: &str, key: Key, doc: Document) -> Write {
    Write {
        collection: coll.into(),
        key,
        op: Op::Put,
        doc: Some(doc),
        reply: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_post_images_equal_the_stored_documents() {
    let env = TestEnv::start("post_image");
    let config = env.config_with(&Overrides {
        collections: ROWS,
        ..Default::default()
    });
    let store = Store::connect(&config).await.unwrap();
    store
        .ensure_indexes(config.collections.values())
        .await
        .unwrap();
    let db = env.mongo_db().await;
    for name in ["signal", "rows"] {
        let coll = config.collection(name).unwrap();
        let key = |i: usize| {
            let mut d = doc! {"symbol": format!("S{i}"), "strategyName": "pi"};
            if name == "signal" {
                d.insert("exchangeName", "x");
            }
            Key::from_document(&d, coll).unwrap()
        };
        // Key 0 exists before the bulk (an update: read back); 1..6 are new.
        let before = put(name, key(0), doc! {"n": 0_i64});
        let v0 = Version { ms: 1_000, seq: 0 };
        assert!(matches!(
            store.apply(coll, &before, v0).await.unwrap(),
            Applied::Committed(_)
        ));
        let writes: Vec<Write> = (0..6)
            .map(|i| {
                put(
                    name,
                    key(i),
                    doc! {"z": i as i32, "n": i as i64, "a": {"y": 1.5, "b": "t"}, "list": [1, "two", Bson::Null]},
                )
            })
            .collect();
        let version = Version { ms: 2_000, seq: 0 };
        let items: Vec<BulkItem> = writes
            .iter()
            .map(|w| BulkItem {
                coll,
                write: w,
                version,
            })
            .collect();
        let out = store.apply_bulk(&items).await.unwrap();
        for (i, o) in out.into_iter().enumerate() {
            let BulkOutcome::Done(Applied::Committed(got)) = o else {
                panic!("{name} {i}: {o:?}");
            };
            assert_eq!(doc_version(&got), Some(version), "{name} {i}");
            let stored = db
                .collection::<Document>(name)
                .find_one(key(i).to_document())
                .await
                .unwrap()
                .unwrap();
            // Document equality compares names, values and types (order aside).
            assert_eq!(
                got, stored,
                "{name} {i}: the cache's document equals MongoDB's"
            );
            let order = |d: &Document| d.keys().cloned().collect::<Vec<_>>();
            if order(&got) != order(&stored) {
                eprintln!(
                    "{name} {i}: field order differs: derived {:?}, stored {:?}",
                    order(&got),
                    order(&stored)
                );
            }
        }
    }
}
