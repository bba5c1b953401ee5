//! What backtest-kit's adapters need from writ, on real servers: documents
//! interchangeable with the official MongoDB adapter's (in both directions),
//! boolean keys, any BSON value in a stored field, listing by key prefix,
//! reading many keys at once, insert-once collections, and the crash-restart
//! rule (`sync`).

mod support;

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use support::{Daemon, Overrides, TestEnv};
use writ::{Error, Writ};

/// The preset's shapes for the collections these tests use.
const COLLECTIONS: &str = r#"
[[collections]]
name = "signal-items"
key = ["symbol", "strategyName", "exchangeName"]
layout = "fields"
timestamps = true

[[collections]]
name = "risk-items"
key = ["riskName", "exchangeName"]
layout = "fields"
timestamps = true

[[collections]]
name = "candle-items"
key = ["exchangeName", "symbol", "interval", "timestamp"]
mode = "insert_once"
layout = "fields"
timestamps = true

[[collections]]
name = "storage-items"
key = ["backtest", "signalId"]
layout = "fields"
timestamps = true

[[collections]]
name = "measure-items"
key = ["bucket", "entryKey"]
layout = "fields"
timestamps = true
"#;

fn env_config(env: &TestEnv) -> writ::Config {
    env.config_with(&Overrides {
        collections: COLLECTIONS,
        ..Default::default()
    })
}

fn sig_key(symbol: &str) -> Document {
    doc! {"symbol": symbol, "strategyName": "trend", "exchangeName": "binance"}
}

fn candle_key(ts: i64) -> Document {
    doc! {"exchangeName": "binance", "symbol": "BTCUSDT", "interval": "1m", "timestamp": ts}
}

fn field_names(d: &Document) -> Vec<&str> {
    let mut v: Vec<&str> = d.keys().map(|k| k.as_str()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_interchangeable_with_the_official_adapter() {
    let env = TestEnv::start("bk_interchange");
    let config = env_config(&env);
    let db = env.mongo_db().await;
    let signals = db.collection::<Document>("signal-items");
    let candles = db.collection::<Document>("candle-items");
    // The official package's indexes (mongoose names them by their keys),
    // and a unique key index named by an earlier writ.
    official_indexes(
        &signals,
        doc! {"symbol": 1, "strategyName": 1, "exchangeName": 1},
    )
    .await;
    official_indexes(
        &candles,
        doc! {"exchangeName": 1, "symbol": 1, "interval": 1, "timestamp": 1},
    )
    .await;
    let risks = db.collection::<Document>("risk-items");
    let old_writ = IndexOptions::builder()
        .unique(true)
        .name("writ_key".to_string())
        .build();
    risks
        .create_index(
            IndexModel::builder()
                .keys(doc! {"riskName": 1, "exchangeName": 1})
                .options(old_writ)
                .build(),
        )
        .await
        .unwrap();
    // Written by the official package before writ ever ran: no `_writ`.
    let created = DateTime::from_millis(1_600_000_000_000);
    let mut official = sig_key("BTCUSDT");
    official.insert("payload", doc! {"id": "s1", "priceOpen": 100.5});
    official.insert("createDate", created);
    official.insert("updatedDate", created);
    signals.insert_one(official.clone()).await.unwrap();
    let mut old_candle = candle_key(60_000);
    old_candle.extend(doc! {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0, "createDate": created, "updatedDate": created});
    candles.insert_one(old_candle).await.unwrap();

    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signal = writ.collection("signal-items").unwrap();

    // Read: the official document is seen as it is.
    let read = signal.read(&sig_key("BTCUSDT")).await.unwrap().unwrap();
    assert_eq!(read, doc! {"payload": {"id": "s1", "priceOpen": 100.5}});

    // Adopted by writ's first write: the same document, cleared to null.
    signal
        .write(&sig_key("BTCUSDT"), &doc! {"payload": Bson::Null})
        .await
        .unwrap();
    assert_eq!(signals.count_documents(doc! {}).await.unwrap(), 1);
    // Found by the official package's query (the unique key), same names and types.
    let stored = signals.find_one(sig_key("BTCUSDT")).await.unwrap().unwrap();
    assert_eq!(
        field_names(&stored),
        vec![
            "_id",
            "_writ",
            "createDate",
            "exchangeName",
            "payload",
            "strategyName",
            "symbol",
            "updatedDate"
        ]
    );
    assert_eq!(stored.get("payload"), Some(&Bson::Null));
    assert_eq!(stored.get_datetime("createDate").unwrap(), &created);
    assert!(stored.get_datetime("updatedDate").unwrap() > &created);
    assert_eq!(
        signal.read(&sig_key("BTCUSDT")).await.unwrap().unwrap(),
        doc! {"payload": Bson::Null}
    );

    // A new key: inserted with both timestamps, in the official shape.
    signal
        .write(&sig_key("ETHUSDT"), &doc! {"payload": {"id": "s2"}})
        .await
        .unwrap();
    let fresh = signals.find_one(sig_key("ETHUSDT")).await.unwrap().unwrap();
    assert_eq!(fresh.get_document("payload").unwrap(), &doc! {"id": "s2"});
    assert!(fresh.get_datetime("createDate").is_ok());
    assert!(fresh.get_datetime("updatedDate").is_ok());
    assert!(
        !fresh.contains_key("removed"),
        "no field the official shape lacks"
    );

    // Risk: an array payload under `positions`, a numeric `when`, Infinity kept.
    let risk = writ.collection("risk-items").unwrap();
    let rkey = doc! {"riskName": "conservative", "exchangeName": "bybit"};
    let positions = Bson::Array(vec![Bson::Array(vec![
        "BTCUSDT:trend".into(),
        Bson::Document(doc! {"hold": f64::INFINITY}),
    ])]);
    risk.write(
        &rkey,
        &doc! {"positions": positions.clone(), "when": 1_700_000_000_000_i64},
    )
    .await
    .unwrap();
    let r = db
        .collection::<Document>("risk-items")
        .find_one(rkey.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.get("positions"), Some(&positions));
    assert_eq!(r.get_i64("when").unwrap(), 1_700_000_000_000);

    // Candles: top-level prices, insert-once (the first write wins).
    let candle = writ.collection("candle-items").unwrap();
    candle
        .write(
            &candle_key(120_000),
            &doc! {"open": 3.0, "high": 4.0, "low": 2.0, "close": 3.5, "volume": 1.0},
        )
        .await
        .unwrap();
    candle
        .write(
            &candle_key(120_000),
            &doc! {"open": 9.0, "high": 9.0, "low": 9.0, "close": 9.0, "volume": 9.0},
        )
        .await
        .unwrap();
    let c = candles
        .find_one(candle_key(120_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        c.get_f64("open").unwrap(),
        3.0,
        "insert-once kept the first candle"
    );
    assert!(c.get_datetime("createDate").is_ok());

    // Many keys in one round trip: one cached, one only in MongoDB (the
    // official candle), one absent.
    let many = candle
        .read_many(&[candle_key(120_000), candle_key(60_000), candle_key(180_000)])
        .await
        .unwrap();
    assert_eq!(many[0].as_ref().unwrap().get_f64("open").unwrap(), 3.0);
    assert_eq!(many[1].as_ref().unwrap().get_f64("close").unwrap(), 1.5);
    assert!(many[2].is_none());
    // The miss was read through into the cache.
    assert!(
        support::cached(&config, "candle-items", &candle_key(60_000))
            .await
            .is_some()
    );

    // Reserved fields are refused with a clear reason.
    let err = signal
        .write(
            &sig_key("XRPUSDT"),
            &doc! {"payload": 1, "createDate": created},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected(_)), "{err}");
    assert!(err.to_string().contains("createDate"), "{err}");
    // The official package starting on a collection writ created: mongoose
    // asks for the same indexes, and MongoDB has them already.
    official_indexes(
        &db.collection::<Document>("storage-items"),
        doc! {"backtest": 1, "signalId": 1},
    )
    .await;
    // One unique index on each collection's key fields: the official
    // package's and the earlier writ's were used, the others created under
    // the name mongoose gives them.
    for (coll, name) in [
        ("signal-items", "symbol_1_strategyName_1_exchangeName_1"),
        (
            "candle-items",
            "exchangeName_1_symbol_1_interval_1_timestamp_1",
        ),
        ("risk-items", "writ_key"),
        ("storage-items", "backtest_1_signalId_1"),
    ] {
        let unique: Vec<String> = db
            .collection::<Document>(coll)
            .list_indexes()
            .await
            .unwrap()
            .try_collect::<Vec<IndexModel>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|ix| ix.options.as_ref().and_then(|o| o.unique) == Some(true))
            .filter_map(|ix| ix.options.and_then(|o| o.name))
            .collect();
        assert_eq!(unique, vec![name.to_string()], "{coll}");
    }
    daemon.stop().await;
}

/// The indexes mongoose creates for an official collection, as it asks for
/// them (the Node driver's `createIndexes`): the unique key index, named by
/// its keys, and one index per key field, each with `background: true`.
async fn official_indexes(coll: &mongodb::Collection<Document>, keys: Document) {
    let name = |keys: &Document| {
        let parts: Vec<String> = keys.keys().map(|k| format!("{k}_1")).collect();
        parts.join("_")
    };
    let mut indexes = vec![Bson::Document(
        doc! {"key": keys.clone(), "unique": true, "background": true, "name": name(&keys)},
    )];
    for field in keys.keys() {
        let single = doc! {field: 1};
        indexes.push(Bson::Document(
            doc! {"key": single.clone(), "background": true, "name": name(&single)},
        ));
    }
    let db = coll.client().database(&coll.namespace().db);
    db.run_command(doc! {"createIndexes": coll.name(), "indexes": indexes})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_on_the_key_fields_that_is_not_unique_stops_the_daemon_naming_it() {
    let env = TestEnv::start("bk_unfit_index");
    let config = env_config(&env);
    let db = env.mongo_db().await;
    db.collection::<Document>("storage-items")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"backtest": 1, "signalId": 1})
                .build(),
        )
        .await
        .unwrap();
    let err = writ::serve::serve(config, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyIndex { .. }), "{err}");
    assert_eq!(err.retry_class(), writ::RetryClass::Permanent);
    let text = err.to_string();
    for part in [
        "storage-items",
        "backtest_1_signalId_1",
        "not unique",
        "drop",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
}

/// Switching back to writ after the official adapter wrote: `rebuild-cache
/// --since <when writ stopped>` reads only what changed since (by
/// `updatedDate`, which the official adapter's mongoose timestamps set) and
/// replaces the stale cache entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_back_needs_one_rebuild_of_what_changed_since_writ_stopped() {
    let env = TestEnv::start("bk_switch_back");
    let config = env_config(&env);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(
        dir.path(),
        &Overrides {
            collections: COLLECTIONS,
            ..Default::default()
        },
    );
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signal = writ.collection("signal-items").unwrap();
    for symbol in ["A", "B"] {
        signal
            .write(&sig_key(symbol), &doc! {"payload": {"v": 1}})
            .await
            .unwrap();
    }
    daemon.stop().await;
    let stopped = DateTime::now();

    // The official adapter, back for a while: `findOneAndUpdate` with `$set`
    // (mongoose sets `updatedDate`); writ's version stays as it was.
    let signals = env.mongo_db().await.collection::<Document>("signal-items");
    signals
        .update_one(
            sig_key("A"),
            doc! {"$set": {"payload": {"v": 2}, "updatedDate": DateTime::now()}},
        )
        .await
        .unwrap();
    let read = |symbol: &'static str| {
        let config = config.clone();
        async move {
            let w = Writ::connect(config).await.unwrap();
            let c = w.collection("signal-items").unwrap();
            c.read(&sig_key(symbol)).await.unwrap().unwrap()
        }
    };
    assert_eq!(
        read("A").await,
        doc! {"payload": {"v": 1}},
        "stale until the rebuild"
    );

    let since = stopped.timestamp_millis().to_string();
    let out = support::proc::writ_cli(&path, &["rebuild-cache", "--since", &since]);
    assert!(out.status.success(), "{out:?}");
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&sum["read"], &sum["stored"], &sum["kept"]),
        (&1.into(), &1.into(), &0.into()),
        "only the document changed since writ stopped: {sum}"
    );
    // The harness's own collections have no timestamps: read whole (empty).
    assert_eq!(
        sum["whole"],
        serde_json::json!(["candle", "measure", "signal"]),
        "{sum}"
    );
    assert_eq!(read("A").await, doc! {"payload": {"v": 2}});
    assert_eq!(read("B").await, doc! {"payload": {"v": 1}});

    let bad = support::proc::writ_cli(&path, &["rebuild-cache", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since \"yesterday\""),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_keys_prefix_lists_and_soft_delete() {
    let env = TestEnv::start("bk_lists");
    let config = env_config(&env);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let storage = writ.collection("storage-items").unwrap();
    for (bt, id) in [(true, "s3"), (true, "s1"), (false, "s2"), (true, "s2")] {
        storage
            .submit(
                &doc! {"backtest": bt, "signalId": id},
                &doc! {"payload": {"id": id, "bt": bt}},
            )
            .await
            .unwrap();
    }
    // Own pending writes are settled before listing; sorted by signalId.
    let live = storage.list(&doc! {"backtest": true}).await.unwrap();
    let ids: Vec<&str> = live
        .iter()
        .map(|(k, _)| k.get_str("signalId").unwrap())
        .collect();
    assert_eq!(ids, vec!["s1", "s2", "s3"]);
    assert!(live[0].0.get_bool("backtest").unwrap());
    assert_eq!(live[0].1, doc! {"payload": {"id": "s1", "bt": true}});
    let other = storage.list(&doc! {"backtest": false}).await.unwrap();
    assert_eq!(other.len(), 1);
    // A prefix must be the leading key fields.
    assert!(storage.list(&doc! {"signalId": "s1"}).await.is_err());
    // Stored with a BSON boolean, found by the official query.
    let db = env.mongo_db().await;
    let d = db
        .collection::<Document>("storage-items")
        .find_one(doc! {"backtest": true, "signalId": "s2"})
        .await
        .unwrap();
    assert!(d.is_some());

    // Soft delete: removed records leave lists and reads, and stay stored.
    let measure = writ.collection("measure-items").unwrap();
    for k in ["a", "b", "c"] {
        measure
            .write(
                &doc! {"bucket": "m", "entryKey": k},
                &doc! {"payload": k, "removed": false},
            )
            .await
            .unwrap();
    }
    measure
        .remove(&doc! {"bucket": "m", "entryKey": "b"})
        .await
        .unwrap();
    let keys: Vec<String> = measure
        .list(&doc! {"bucket": "m"})
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.get_str("entryKey").unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["a", "c"]);
    assert_eq!(
        measure
            .read(&doc! {"bucket": "m", "entryKey": "b"})
            .await
            .unwrap(),
        None
    );
    let removed = db
        .collection::<Document>("measure-items")
        .find_one(doc! {"bucket": "m", "entryKey": "b"})
        .await
        .unwrap()
        .unwrap();
    assert!(removed.get_bool("removed").unwrap());
    // Written again, it is live again.
    measure
        .write(
            &doc! {"bucket": "m", "entryKey": "b"},
            &doc! {"payload": "b2", "removed": false},
        )
        .await
        .unwrap();
    assert_eq!(measure.list(&doc! {"bucket": "m"}).await.unwrap().len(), 3);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_waits_for_every_write_accepted_before_it() {
    let env = TestEnv::start("bk_sync");
    let config = env_config(&env);
    // A process submits and "crashes" before the daemon applied anything.
    let writer = Writ::connect(config.clone()).await.unwrap();
    let signal = writer.collection("signal-items").unwrap();
    for round in 0..3 {
        for i in 0..40 {
            signal
                .submit(
                    &sig_key(&format!("S{i}")),
                    &doc! {"payload": {"round": round}},
                )
                .await
                .unwrap();
        }
    }
    drop(writer);
    // A new process: with no daemon, sync cannot succeed (it really waits).
    let reader = Writ::connect(config.clone()).await.unwrap();
    let err = reader.sync(Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let daemon = Daemon::start(config.clone());
    reader.sync(Duration::from_secs(60)).await.unwrap();
    // Right after sync, with no waiting, every key reads its last write.
    let signal = reader.collection("signal-items").unwrap();
    let keys: Vec<Document> = (0..40).map(|i| sig_key(&format!("S{i}"))).collect();
    for (i, got) in signal
        .read_many(&keys)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        assert_eq!(got, Some(doc! {"payload": {"round": 2}}), "key S{i}");
    }
    daemon.stop().await;
}

/// A `put` after a `remove` brings the key back in the `fields` layout too,
/// without adding a `removed` field that the official adapter never writes
/// on rows that carry none (`signal-items`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_after_a_remove_brings_a_fields_row_back() {
    let env = TestEnv::start("bk_put_after_remove");
    let config = env_config(&env);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signals = writ.collection("signal-items").unwrap();
    let key = sig_key("REVIVE");
    signals
        .write(&key, &doc! {"payload": {"n": 1}})
        .await
        .unwrap();
    signals.remove(&key).await.unwrap();
    assert_eq!(signals.read(&key).await.unwrap(), None);
    signals
        .write(&key, &doc! {"payload": {"n": 2}})
        .await
        .unwrap();
    assert_eq!(
        signals.read(&key).await.unwrap(),
        Some(doc! {"payload": {"n": 2}}),
        "a put after a remove must read as present"
    );
    let db = env.mongo_db().await;
    let stored = db
        .collection::<Document>("signal-items")
        .find_one(key.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored.contains_key("removed"),
        "the row is live again in the official shape (no `removed` field): {stored:?}"
    );
    assert_eq!(
        signals
            .list(&doc! {"symbol": "REVIVE"})
            .await
            .unwrap()
            .len(),
        1
    );
    daemon.stop().await;
}
