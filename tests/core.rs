//! The core contract, end to end on real redis-server + SecantusDB (or the
//! servers named by WRIT_TEST_REDIS_URL / WRIT_TEST_MONGODB_URI).

mod support;

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::history::{Event, History};
use support::{eventually, Daemon, TestEnv};
use writ::apply::{doc_version, Applied, Store};
use writ::protocol::{Key, Names, RejectReason, Version};
use writ::{Error, Writ};

fn sig(symbol: &str) -> Document {
    doc! {"symbol": symbol, "strategyName": "trend", "exchangeName": "binance"}
}

async fn stored(env: &TestEnv, coll: &str, key: Document) -> Option<Document> {
    env.mongo_db()
        .await
        .collection::<Document>(coll)
        .find_one(key)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_from_this_and_another_client() {
    let env = TestEnv::start("write_read");
    let daemon = Daemon::start(env.config());
    let a = Writ::connect(env.config()).await.unwrap();
    let b = Writ::connect(env.config()).await.unwrap();
    let signals = a.collection("signal").unwrap();
    assert_eq!(signals.read(&sig("BTCUSDT")).await.unwrap(), None);
    let v1 = signals
        .write(&sig("BTCUSDT"), &doc! {"price": 100, "side": "long"})
        .await
        .unwrap();
    assert_eq!(
        signals.read(&sig("BTCUSDT")).await.unwrap(),
        Some(doc! {"price": 100, "side": "long"})
    );
    let other = b.collection("signal").unwrap();
    let rec = other
        .read_record(&sig("BTCUSDT"))
        .await
        .unwrap()
        .expect("second client sees the write");
    assert!(rec.version >= v1);
    assert_eq!(rec.payload, Some(doc! {"price": 100, "side": "long"}));
    // MongoDB holds the committed document with its version.
    let d = stored(&env, "signal", sig("BTCUSDT")).await.unwrap();
    assert_eq!(
        d.get_document("payload").unwrap(),
        &doc! {"price": 100, "side": "long"}
    );
    assert_eq!(doc_version(&d), Some(v1));
    // A newer write wins.
    let v2 = signals
        .write(&sig("BTCUSDT"), &doc! {"price": 101})
        .await
        .unwrap();
    assert!(v2 > v1);
    assert_eq!(
        other.read(&sig("BTCUSDT")).await.unwrap(),
        Some(doc! {"price": 101})
    );
    assert!(other.has(&sig("BTCUSDT")).await.unwrap());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_read_backwards_and_last_write_wins() {
    let env = TestEnv::start("concurrent");
    let daemon = Daemon::start(env.config());
    let history = Arc::new(History::default());
    let keys: Vec<String> = (0..5).map(|i| format!("K{i}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..8usize {
        let (config, history, keys) = (env.config(), history.clone(), keys.clone());
        tasks.spawn(async move {
            let writ = Writ::connect(config).await.unwrap();
            let c = writ.collection("signal").unwrap();
            for i in 0..40i64 {
                let key = &keys[(i as usize + client) % keys.len()];
                let value = client as i64 * 1000 + i;
                let ticket = c
                    .submit(&sig(key), &doc! {"value": value, "client": client as i64})
                    .await
                    .unwrap();
                let own = ticket.version();
                // Read-your-writes holds already after submit.
                let r = c.read_record(&sig(key)).await.unwrap().unwrap();
                assert!(
                    r.version >= own,
                    "read-your-writes: read {} after submitting {own}",
                    r.version
                );
                ticket.wait().await.unwrap();
                history.push(Event::Acked {
                    client,
                    key: key.clone(),
                    version: own,
                    value,
                    at: std::time::Instant::now(),
                });
                for probe in [key, &keys[(i as usize * 3 + client) % keys.len()]] {
                    let started = std::time::Instant::now();
                    let r = c.read_record(&sig(probe)).await.unwrap();
                    history.push(Event::Read {
                        client,
                        at: started,
                        key: probe.clone(),
                        version: r.as_ref().map(|r| r.version),
                        value: r
                            .and_then(|r| r.payload)
                            .map(|p| p.get_i64("value").unwrap()),
                    });
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let bad = history.regressions();
    assert!(bad.is_empty(), "version regressions: {bad:?}");
    let acked = history
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Acked { .. }))
        .count();
    assert_eq!(acked, 320);
    // MongoDB and the cache hold the last accepted write of every key.
    let config = env.config();
    for (key, (version, value)) in history.last_acked() {
        let d = stored(&env, "signal", sig(&key)).await.unwrap();
        assert_eq!(doc_version(&d), Some(version), "mongodb version of {key}");
        assert_eq!(
            d.get_document("payload").unwrap().get_i64("value").unwrap(),
            value,
            "mongodb value of {key}"
        );
        let cached = support::cached(&config, "signal", &sig(&key))
            .await
            .unwrap();
        assert_eq!(cached.version, version, "cache version of {key}");
        assert_eq!(
            cached
                .doc
                .unwrap()
                .get_document("payload")
                .unwrap()
                .get_i64("value")
                .unwrap(),
            value
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_once_keeps_the_first_value() {
    let env = TestEnv::start("insert_once");
    let daemon = Daemon::start(env.config());
    let writ = Writ::connect(env.config()).await.unwrap();
    let candles = writ.collection("candle").unwrap();
    let key = doc! {"symbol": "BTCUSDT", "interval": "1m", "timestamp": 1_700_000_000_000_i64};
    candles
        .write(&key, &doc! {"open": 1.0, "close": 2.0})
        .await
        .unwrap();
    candles
        .write(&key, &doc! {"open": 9.0, "close": 9.0})
        .await
        .unwrap();
    assert_eq!(
        candles.read(&key).await.unwrap(),
        Some(doc! {"open": 1.0, "close": 2.0})
    );
    let d = stored(&env, "candle", key.clone()).await.unwrap();
    assert_eq!(
        d.get_document("payload").unwrap(),
        &doc! {"open": 1.0, "close": 2.0}
    );
    // A fresh client (cache or MongoDB) agrees.
    let other = Writ::connect(env.config()).await.unwrap();
    assert_eq!(
        other
            .collection("candle")
            .unwrap()
            .read(&key)
            .await
            .unwrap(),
        Some(doc! {"open": 1.0, "close": 2.0})
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_reads_as_absent_everywhere() {
    let env = TestEnv::start("soft_delete");
    let daemon = Daemon::start(env.config());
    let writ = Writ::connect(env.config()).await.unwrap();
    let m = writ.collection("measure").unwrap();
    let key = |k: &str| doc! {"bucket": "b", "entryKey": k};
    for k in ["a", "b", "c"] {
        m.write(&key(k), &doc! {"x": k}).await.unwrap();
    }
    assert_eq!(m.count().await.unwrap(), 3);
    m.remove(&key("b")).await.unwrap();
    assert_eq!(m.read(&key("b")).await.unwrap(), None);
    assert!(!m.has(&key("b")).await.unwrap());
    assert_eq!(m.count().await.unwrap(), 2);
    assert_eq!(m.keys().await.unwrap(), vec![key("a"), key("c")]);
    let values: Vec<Document> = m
        .values()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec![doc! {"x": "a"}, doc! {"x": "c"}]);
    // Soft: the document stays in MongoDB, flagged.
    let d = stored(&env, "measure", key("b")).await.unwrap();
    assert!(d.get_bool("removed").unwrap());
    // A client with a cold view agrees (cache entry, then MongoDB).
    let other = Writ::connect(env.config())
        .await
        .unwrap()
        .collection("measure")
        .unwrap();
    assert_eq!(other.read(&key("b")).await.unwrap(), None);
    // Writing again revives the key.
    m.write(&key("b"), &doc! {"x": "b2"}).await.unwrap();
    assert_eq!(other.read(&key("b")).await.unwrap(), Some(doc! {"x": "b2"}));
    assert_eq!(m.count().await.unwrap(), 3);
    // Hard delete removes the payload, leaving a versioned tombstone.
    m.delete(&key("c")).await.unwrap();
    let tomb = stored(&env, "measure", key("c")).await.unwrap();
    assert!(tomb.get_bool("removed").unwrap());
    assert!(!tomb.contains_key("payload"), "{tomb}");
    assert!(tomb
        .get_document("_writ")
        .unwrap()
        .get_bool("deleted")
        .unwrap());
    assert_eq!(other.read(&key("c")).await.unwrap(), None);
    assert_eq!(m.count().await.unwrap(), 2);
    // Its cache entry lost (a Redis data loss), a read-through fills it from
    // the tombstone as `gone`, as the daemon wrote it, not as a document
    // (which a reader that tells "exists" from "live" would take as a
    // soft-removed key).
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let k = writ::protocol::Key::from_document(&key("c"), config.collection("measure").unwrap())
        .unwrap();
    let entry = names.cache(
        k.partition("measure", config.partitions),
        "measure",
        &k.canonical(),
    );
    let mut r = env.redis().await;
    let _: i64 = redis::cmd("DEL")
        .arg(&entry)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(other.read(&key("c")).await.unwrap(), None);
    let refilled = support::cached(&config, "measure", &key("c"))
        .await
        .expect("the read filled the cache");
    assert_eq!(refilled.doc, None, "a tombstone is cached as gone");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_an_applied_range_changes_nothing_and_is_counted() {
    let env = TestEnv::start("reapply");
    // Its own collection: the metrics recorder is global to this test binary.
    let config = support::TestEnv::config_with(
        &env,
        &support::Overrides {
            collections: REAPPLY_COLLECTION,
            ..Default::default()
        },
    );
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("reapplied").unwrap();
    for i in 0..20i64 {
        s.write(&sig(&format!("S{}", i % 4)), &doc! {"i": i})
            .await
            .unwrap();
    }
    daemon.stop().await;
    let before: Vec<Document> = env.all_docs("reapplied").await;
    // The guard, directly: an old version of a key is stale, never applied.
    let store = Store::connect(&config).await.unwrap();
    let coll = config.collection("reapplied").unwrap();
    let key = Key::from_document(&sig("S0"), coll).unwrap();
    let old = writ::protocol::Write {
        collection: "reapplied".into(),
        key,
        op: writ::protocol::Op::Put,
        doc: Some(doc! {"i": -1}),
        reply: None,
    };
    match store
        .apply(coll, &old, Version { ms: 1, seq: 0 })
        .await
        .unwrap()
    {
        Applied::Stale(Some(d)) => {
            assert_eq!(d.get_document("payload").unwrap().get_i64("i").unwrap(), 16)
        }
        other => panic!("expected stale, got {other:?}"),
    }
    // Rewind every partition's group to the start: the daemon re-reads all 20.
    let names = Names::new(&config.namespace);
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(names.stream(p))
            .arg(names.group())
            .arg("0")
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let handle = writ::telemetry::recorder().clone();
    let count = |outcome: &str| {
        metric(
            &handle.render(),
            &format!("writ_writes_total{{collection=\"reapplied\",outcome=\"{outcome}\"}}"),
        )
    };
    let (stale0, coalesced0, applied0) = (count("stale"), count("coalesced"), count("applied"));
    let daemon = Daemon::start(config.clone());
    // Each re-read entry ends as a guard skip (stale), or, when a later entry
    // of its key is in the same batch, coalesced into that skip.
    eventually(
        Duration::from_secs(60),
        "20 re-read entries skipped",
        || async {
            (count("stale") - stale0 + count("coalesced") - coalesced0 >= 20.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        count("stale") - stale0 + count("coalesced") - coalesced0,
        20.0
    );
    assert!(
        count("stale") - stale0 >= 4.0,
        "every key's last entry hits the guard"
    );
    assert_eq!(count("applied"), applied0, "nothing was applied again");
    daemon.stop().await;
    let after: Vec<Document> = env.all_docs("reapplied").await;
    assert_eq!(before, after, "re-applying changed MongoDB");
}

const REAPPLY_COLLECTION: &str =
    "[[collections]]\nname = \"reapplied\"\nkey = [\"symbol\", \"strategyName\", \"exchangeName\"]";

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_daemon_between_batches_loses_nothing() {
    let env = TestEnv::start("restart");
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut tickets = Vec::new();
    let daemon = Daemon::start(config.clone());
    for i in 0..30i64 {
        tickets.push((
            i,
            s.submit(&sig(&format!("R{}", i % 6)), &doc! {"i": i})
                .await
                .unwrap(),
        ));
    }
    daemon.stop().await;
    // Written while no daemon runs: accepted by the stream, applied later.
    for i in 30..60i64 {
        tickets.push((
            i,
            s.submit(&sig(&format!("R{}", i % 6)), &doc! {"i": i})
                .await
                .unwrap(),
        ));
    }
    let daemon = Daemon::start(config.clone());
    for i in 60..90i64 {
        tickets.push((
            i,
            s.submit(&sig(&format!("R{}", i % 6)), &doc! {"i": i})
                .await
                .unwrap(),
        ));
    }
    for (_, t) in tickets {
        t.wait().await.unwrap();
    }
    for k in 0..6i64 {
        let last = 84 + k;
        let d = stored(&env, "signal", sig(&format!("R{k}"))).await.unwrap();
        assert_eq!(
            d.get_document("payload").unwrap().get_i64("i").unwrap(),
            last
        );
        assert_eq!(
            s.read(&sig(&format!("R{k}"))).await.unwrap(),
            Some(doc! {"i": last})
        );
    }
    daemon.stop().await;
    // Nothing is left pending in any partition.
    let names = Names::new(&config.namespace);
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(names.stream(p))
            .arg(names.group())
            .query_async(&mut r)
            .await
            .unwrap();
        let count = match &pending {
            redis::Value::Array(a) => redis::from_redis_value::<i64>(a[0].clone()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(count, 0, "partition {p} has pending entries");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_bad_writes_before_the_stream() {
    let env = TestEnv::start("client_refuses");
    let writ = Writ::connect(env.config()).await.unwrap();
    match writ.collection("nope") {
        Err(Error::Rejected(r)) => assert_eq!(r.reason, RejectReason::UnknownCollection),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("unknown collection accepted"),
    }
    let s = writ.collection("signal").unwrap();
    let reason = |r: writ::Result<writ::Ticket>| match r {
        Err(Error::Rejected(r)) => r.reason,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bad write accepted"),
    };
    assert_eq!(
        reason(
            s.submit(&doc! {"symbol": "X", "strategyName": "s"}, &doc! {})
                .await
        ),
        RejectReason::KeyField
    );
    assert_eq!(
        reason(
            s.submit(
                &doc! {"symbol": "X", "strategyName": "s", "exchangeName": "e", "extra": 1},
                &doc! {}
            )
            .await
        ),
        RejectReason::KeyField
    );
    assert_eq!(
        reason(
            s.submit(
                &doc! {"symbol": 1.5, "strategyName": "s", "exchangeName": "e"},
                &doc! {}
            )
            .await
        ),
        RejectReason::KeyField
    );
    let big = doc! {"blob": "x".repeat(70_000)};
    assert_eq!(
        reason(s.submit(&sig("X"), &big).await),
        RejectReason::TooLarge
    );
    // Nested past MongoDB's 100 levels: the daemon would dead-letter it.
    let mut deep = doc! {"x": 1};
    for _ in 0..=writ::protocol::MAX_NESTING {
        deep = doc! {"a": deep};
    }
    assert_eq!(
        reason(s.submit(&sig("X"), &deep).await),
        RejectReason::Payload
    );
    // Nothing reached any stream.
    let config = env.config();
    let names = Names::new(&config.namespace);
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        let len: i64 = redis::cmd("XLEN")
            .arg(names.stream(p))
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(len, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_key_over_the_size_limit_before_the_stream() {
    let env = TestEnv::start("client_key_limit");
    let writ = Writ::connect(env.config()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // `["<symbol>","trend","binance"]` is the symbol plus 22 bytes.
    let limit = writ::protocol::MAX_KEY_BYTES;
    let over = sig(&"S".repeat(limit - 22 + 1));
    let err = s.submit(&over, &doc! {"a": 1}).await.unwrap_err();
    match &err {
        Error::KeyTooLarge(e) => {
            assert_eq!(e.collection, "signal");
            assert_eq!(e.bytes, limit + 1);
            assert_eq!(e.limit, limit);
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(err.retry_class(), writ::RetryClass::Permanent);
    let text = err.to_string();
    assert!(
        text.contains("\"signal\"")
            && text.contains("1025 bytes")
            && text.contains("limit of 1024"),
        "{text}"
    );
    // Every other op and a read refuse it the same way.
    assert!(matches!(s.remove(&over).await, Err(Error::KeyTooLarge(_))));
    assert!(matches!(s.delete(&over).await, Err(Error::KeyTooLarge(_))));
    assert!(matches!(s.read(&over).await, Err(Error::KeyTooLarge(_))));
    // Nothing reached any stream; a key at the limit does.
    let config = env.config();
    let names = Names::new(&config.namespace);
    let mut r = env.redis().await;
    let mut total = 0;
    for p in 0..config.partitions {
        let len: i64 = redis::cmd("XLEN")
            .arg(names.stream(p))
            .query_async(&mut r)
            .await
            .unwrap();
        total += len;
    }
    assert_eq!(total, 0);
    let at_limit = sig(&"S".repeat(limit - 22));
    s.submit(&at_limit, &doc! {"a": 1}).await.unwrap();
    let key = Key::from_document(&at_limit, config.collection("signal").unwrap()).unwrap();
    assert_eq!(key.canonical().len(), limit);
    let len: i64 = redis::cmd("XLEN")
        .arg(names.stream(key.partition("signal", config.partitions)))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(len, 1);
}

/// Order, observed per key in the acks: 4 submit writers on 6 keys for 2 s,
/// no fault. Each write gets exactly one ack, none `stale`; an applied write
/// is readable at its own version, a coalesced one at a later applied write
/// of its key; and a key's writes are acked in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_acked_in_stream_order_with_no_stale_write() {
    let env = TestEnv::start("ack_order");
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    let load = support::load::Load::start_submit(
        &config,
        4,
        6,
        Duration::from_millis(1),
        500,
        Duration::from_secs(180),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = load.stop().await; // waits for every ticket's ack
    let seen = support::acks::check_ack_order(&config, &mut env.redis().await).await;
    eprintln!("ack order: {seen:?}");
    load.verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(60))
        .await;
    assert_eq!(seen.writes as u64, load.accepted_count());
    assert!(seen.applied > 0 && seen.keys == 6, "{seen:?}");
    daemon.stop().await;
}

/// An `insert_once` key that was hard-deleted is gone, so the next put
/// creates it again with that put's payload, as an insert does (and as
/// `deleteOne` then an upsert does with the official adapter); puts after
/// that are no-ops again. Before, the put only moved the tombstone's
/// version: it was acked `applied` while the key read as absent, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_once_put_after_a_hard_delete_inserts_again() {
    let env = TestEnv::start("insert_once_delete");
    let daemon = Daemon::start(env.config());
    let writ = Writ::connect(env.config()).await.unwrap();
    let candles = writ.collection("candle").unwrap();
    let key = |i: i64| doc! {"symbol": "IOD", "interval": "1m", "timestamp": i};
    let n = 6;
    for i in 0..n {
        candles.write(&key(i), &doc! {"p": 1}).await.unwrap();
        candles.write(&key(i), &doc! {"p": 11}).await.unwrap();
        candles.delete(&key(i)).await.unwrap();
    }
    // Submitted together, so that a round may carry them in one bulk.
    let mut tickets = Vec::new();
    for i in 0..n {
        tickets.push(candles.submit(&key(i), &doc! {"p": 2}).await.unwrap());
    }
    for t in tickets {
        t.wait_for(Duration::from_secs(60)).await.unwrap();
    }
    let other = Writ::connect(env.config())
        .await
        .unwrap()
        .collection("candle")
        .unwrap();
    for i in 0..n {
        assert_eq!(
            candles.read(&key(i)).await.unwrap(),
            Some(doc! {"p": 2}),
            "key {i}"
        );
        assert_eq!(
            other.read(&key(i)).await.unwrap(),
            Some(doc! {"p": 2}),
            "key {i}"
        );
        let d = stored(&env, "candle", key(i)).await.unwrap();
        assert_eq!(d.get_document("payload").unwrap(), &doc! {"p": 2}, "{d}");
        assert!(!d.get_bool("removed").unwrap(), "{d}");
        assert!(
            !d.get_document("_writ").unwrap().contains_key("deleted"),
            "{d}"
        );
    }
    // Inserted again, the key keeps its first payload as before.
    candles.write(&key(0), &doc! {"p": 3}).await.unwrap();
    assert_eq!(other.read(&key(0)).await.unwrap(), Some(doc! {"p": 2}));
    assert_eq!(candles.count().await.unwrap(), n as u64);
    let dlq: u64 = redis::cmd("XLEN")
        .arg(writ::protocol::Names::new(&env.config().namespace).dead_letters())
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    assert_eq!(dlq, 0);
    daemon.stop().await;
}

/// A collection dropped while the daemon runs (by hand, or with its
/// database) comes back with its next write without the unique key index
/// the sequence guard relies on: a write applied again there (after a lost
/// reply) would insert a second document for its key instead of being
/// refused as stale. The daemon makes the index again every 30 status
/// intervals, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_dropped_while_the_daemon_runs_gets_its_key_index_back() {
    let env = TestEnv::start("index_back");
    let config = env.config_with(&support::Overrides {
        daemon: "stats_interval_ms = 100",
        ..Default::default()
    });
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let k = doc! {"symbol": "IX", "strategyName": "index", "exchangeName": "x"};
    s.write(&k, &doc! {"n": 1}).await.unwrap();
    let signal = env.mongo_db().await.collection::<Document>("signal");
    signal.drop().await.unwrap();
    s.write(&k, &doc! {"n": 2}).await.unwrap();
    let key_fields = config.collection("signal").unwrap().key.clone();
    eventually(
        Duration::from_secs(30),
        "the unique key index made again",
        || async {
            use futures::TryStreamExt;
            let indexes: Vec<mongodb::IndexModel> =
                signal.list_indexes().await.ok()?.try_collect().await.ok()?;
            indexes
                .iter()
                .any(|ix| {
                    ix.options.as_ref().and_then(|o| o.unique) == Some(true)
                        && ix.keys.keys().cloned().collect::<Vec<_>>() == key_fields
                })
                .then_some(())
        },
    )
    .await;
    // A second document for the key is refused again.
    assert!(signal.insert_one(k.clone()).await.is_err());
    s.write(&k, &doc! {"n": 3}).await.unwrap();
    assert_eq!(s.read(&k).await.unwrap(), Some(doc! {"n": 3}));
    assert_eq!(signal.count_documents(k.clone()).await.unwrap(), 1);
    daemon.stop().await;
}
