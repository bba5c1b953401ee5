//! A write is acknowledged only once MongoDB confirms it at the configured
//! write concern (`w: majority`), also when a retry finds the key already
//! at its version.
//!
//! The route this guards: the first attempt commits on the primary, but the
//! majority does not confirm it in time (`writeConcernError`). The retry's
//! guard no longer matches (the key holds this version), the upsert collides
//! (E11000), and the driver drops the reply's `writeConcernError` with it. If
//! the daemon then read the key at read concern `local`, it would call the
//! write stale, cache it and ack it, and a failover before the majority
//! caught up would roll the acked write back. It must read at `majority`,
//! and wait while the majority does not hold the version.
//!
//! A SecantusDB is one node, so a proxy models the lagging majority
//! ([`support::majority_proxy`]).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mongodb::bson::doc;
use support::majority_proxy::MajorityProxy;
use support::streams::{create_groups, trim_all};
use support::{Daemon, Overrides, TestEnv};
use writ::Writ;

/// Stores `signal` key `key` with `payload` at `version` straight into the
/// server (not through the proxy): the primary holds the write, as a
/// daemon's attempt whose `w: majority` never came leaves it.
async fn on_the_primary(
    env: &TestEnv,
    mut key: mongodb::bson::Document,
    payload: mongodb::bson::Document,
    version: writ::protocol::Version,
) {
    key.insert("payload", payload);
    key.insert("removed", false);
    key.insert("_writ", doc! {"v": version.to_sortable()});
    env.mongo_db()
        .await
        .collection::<mongodb::bson::Document>("signal")
        .insert_one(key)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_until_the_majority_holds_the_write() {
    let env = TestEnv::start("write_concern");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let proxy = MajorityProxy::start(target, "symbol", "UNCONFIRMED").await;
    let o = Overrides {
        daemon: "backoff_cap_ms = 100",
        mongo_uri: Some(support::proxy::mongo_uri_via(&env.mongo_uri, proxy.port)),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "UNCONFIRMED", "strategyName": "wc", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"n": 1}).await.unwrap();
    let waiting = tokio::spawn(async move { ticket.wait_for(Duration::from_secs(120)).await });
    // The commit, then retries that find the key at its version.
    support::eventually(Duration::from_secs(60), "three attempts, or an ack", || {
        let done = waiting.is_finished();
        let writes = proxy.writes.load(Ordering::SeqCst);
        async move { (done || writes >= 3).then_some(()) }
    })
    .await;
    assert!(
        !waiting.is_finished(),
        "the write was acknowledged before the majority confirmed it: {:?}",
        waiting.await
    );
    assert!(
        proxy.hidden_reads.load(Ordering::SeqCst) > 0,
        "the key was never read at read concern majority"
    );
    assert!(
        support::cached(&config, "signal", &key).await.is_none(),
        "the cache holds a write the majority has not confirmed"
    );
    // The majority catches up: the write is acknowledged and readable.
    proxy.catch_up();
    let v = waiting.await.unwrap().expect("acknowledged once confirmed");
    assert!(support::cached(&config, "signal", &key).await.is_some());
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"n": 1}));
    // Later writes of the key go through as usual.
    let v2 = s.write(&key, &doc! {"n": 2}).await.unwrap();
    assert!(v2 > v);
    daemon.stop().await;
}

/// The same guarantee in a round's bulk. A write the primary already holds
/// (an earlier attempt whose write concern never came: a dropped connection,
/// a killed daemon) is delivered again, in a round with fresh keys, so it
/// goes to MongoDB in a bulk; its statement collides (E11000). The bulk's
/// read-back finds the key at the write's version, but that read is `local`:
/// the write must not be acked stale until a majority holds the version.
/// The fresh keys of the round are acked meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_does_not_ack_stale_what_only_the_primary_holds() {
    let env = TestEnv::start("write_concern_bulk");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let marker = "PRIMARYONLY";
    let proxy = MajorityProxy::start(target, "symbol", marker).await;
    proxy.reads_only();
    let o = Overrides {
        daemon: "backoff_cap_ms = 100",
        mongo_uri: Some(support::proxy::mongo_uri_via(&env.mongo_uri, proxy.port)),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let key = |s: &str| doc! {"symbol": s, "strategyName": "wcb", "exchangeName": "x"};
    // The marked key and 5 fresh keys of its partition, queued before any
    // daemon runs, so one round holds them all (a bulk: 4 writes or more).
    let fresh = support::same_partition(&config, "signal", key, marker, "F", 5);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let ticket = s.submit(&key(marker), &doc! {"n": 1}).await.unwrap();
    let version = ticket.version();
    // The primary holds this very write already (as its first attempt left
    // it); the majority does not, as far as the proxy tells.
    on_the_primary(&env, key(marker), doc! {"n": 1}, version).await;
    let mut others = Vec::new();
    for f in &fresh {
        others.push(s.submit(&key(f), &doc! {"f": f.as_str()}).await.unwrap());
    }
    let daemon = Daemon::start(config.clone());
    let waiting = tokio::spawn(async move { ticket.wait_for(Duration::from_secs(120)).await });
    for t in others {
        t.wait_for(Duration::from_secs(60)).await.unwrap();
    }
    // Some attempts after the bulk, all refused by the lagging majority.
    support::eventually(Duration::from_secs(60), "majority reads of the key", || {
        let n = proxy.hidden_reads.load(Ordering::SeqCst);
        let done = waiting.is_finished();
        async move { (done || n >= 3).then_some(()) }
    })
    .await;
    assert!(
        !waiting.is_finished(),
        "acknowledged stale from a local read, before the majority held it: {:?}",
        waiting.await
    );
    assert!(
        support::cached(&config, "signal", &key(marker))
            .await
            .is_none(),
        "the cache holds a version the majority has not confirmed"
    );
    proxy.catch_up();
    let v = waiting.await.unwrap().expect("acknowledged once confirmed");
    assert_eq!(v, version);
    assert_eq!(s.read(&key(marker)).await.unwrap(), Some(doc! {"n": 1}));
    daemon.stop().await;
}

/// The same guarantee in a client's look at a write whose entry is gone. A
/// Redis failover lost the write's entry and its ack; the daemon had applied
/// it on the primary, and the majority has not confirmed it. The handle asks
/// MongoDB whether the write is stored: a `local` read would settle it
/// applied, telling its writer it is durable while a MongoDB failover can
/// still roll it back. It must read at `majority`, and settle the write only
/// once the majority holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_is_not_settled_applied_from_what_only_the_primary_holds() {
    let env = TestEnv::start("write_concern_look");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let marker = "LOOKPRIMARY";
    let proxy = MajorityProxy::start(target, "symbol", marker).await;
    proxy.reads_only();
    let o = Overrides {
        // A look past lost_write_after_ms would settle a write missing from
        // MongoDB lost: the primary holds this one, so it must not.
        client: "read_timeout_ms = 300\nlost_write_after_ms = 1",
        mongo_uri: Some(support::proxy::mongo_uri_via(&env.mongo_uri, proxy.port)),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": marker, "strategyName": "look", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"n": 1}).await.unwrap();
    let version = ticket.version();
    // No daemon runs: the group past the entry and the entry gone, as a
    // failover leaves them; the primary holds the write at its version.
    create_groups(&env, &config, "$").await;
    trim_all(&env, &config).await;
    on_the_primary(&env, key.clone(), doc! {"n": 1}, version).await;
    // Two looks, the second past lost_write_after_ms.
    for _ in 0..2 {
        let err = s.read(&key).await.unwrap_err();
        assert!(
            matches!(err, writ::Error::Timeout { .. }),
            "a read answered from a write only the primary holds: {err:?}"
        );
    }
    assert!(
        proxy.hidden_reads.load(Ordering::SeqCst) > 0,
        "the look never read the key at read concern majority"
    );
    assert_eq!(writ.unacked(), 1, "settled from a local read");
    assert!(
        support::cached(&config, "signal", &key).await.is_none(),
        "the cache holds a version the majority has not confirmed"
    );
    // The majority catches up: the next look settles it applied.
    proxy.catch_up();
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"n": 1}));
    assert_eq!(writ.unacked(), 0);
    assert_eq!(ticket.wait().await.unwrap(), version);
}

/// A read-through reads at `local`, whatever read concern the URI names: on
/// the current primary `local` never answers older than an acknowledged
/// write, and `majority` can (a write with `w: 1`, a newly elected primary;
/// docs/protocol.md §6). Before session 42 a `readConcernLevel=majority` in
/// the URI made every read-through (and list) a majority read, which missed
/// the write below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_through_reads_at_local_whatever_the_uri_names() {
    let env = TestEnv::start("read_through_local");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let proxy = MajorityProxy::start(target, "symbol", "PRIMARY-ONLY").await;
    proxy.reads_only();
    let via = support::proxy::mongo_uri_via(&env.mongo_uri, proxy.port);
    let sep = if via.contains('?') { '&' } else { '?' };
    let o = Overrides {
        mongo_uri: Some(format!("{via}{sep}readConcernLevel=majority")),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let key = doc! {"symbol": "PRIMARY-ONLY", "strategyName": "rc", "exchangeName": "x"};
    let v = writ::protocol::Version { ms: 7, seq: 0 };
    on_the_primary(&env, key.clone(), doc! {"n": 1}, v).await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    assert_eq!(
        s.read(&key).await.unwrap(),
        Some(doc! {"n": 1}),
        "the read-through missed what the primary holds"
    );
    assert_eq!(
        s.keys().await.unwrap().len(),
        1,
        "the list missed what the primary holds"
    );
    assert_eq!(
        proxy.hidden_reads.load(Ordering::SeqCst),
        0,
        "a majority read was made"
    );
}

/// A reader connected straight to one replica-set member
/// (`directConnection=true`, as the harness connects) that is not the
/// primary is refused, naming why, instead of reading a copy that may be
/// behind an acknowledged write: the driver ignores the read preference on
/// such a connection (helper-102). The member here is the test's own
/// SecantusDB (a one-node replica set) inside a `replSetStepDown` window, in
/// which it answers as a secondary and still serves reads. Against a shared
/// MongoDB (`WRIT_TEST_MONGODB_URI`) a step-down would disturb every other
/// test, so there the test only checks the primary is read, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_to_a_secondary_is_refused() {
    let env = TestEnv::start("read_primary");
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    let key = doc! {"symbol": "P", "strategyName": "primary", "exchangeName": "x"};
    {
        let writ = Writ::connect(config.clone()).await.unwrap();
        let s = writ.collection("signal").unwrap();
        s.write(&key, &doc! {"n": 1}).await.unwrap();
        writ.close().await;
    }
    daemon.stop().await;
    // Read through to MongoDB: the cache entry goes.
    let names = writ::protocol::Names::new(&config.namespace);
    let k = writ::protocol::Key::from_document(&key, config.collection("signal").unwrap()).unwrap();
    let entry = names.cache(
        k.partition("signal", config.partitions),
        "signal",
        &k.canonical(),
    );
    let _: () = redis::cmd("DEL")
        .arg(&entry)
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    if env.mongo.is_none() {
        eprintln!("a shared MongoDB (WRIT_TEST_MONGODB_URI): not stepped down; checking the primary is read");
        let writ = Writ::connect(config.clone()).await.unwrap();
        let got = writ.collection("signal").unwrap().read(&key).await.unwrap();
        assert_eq!(got, Some(doc! {"n": 1}));
        return;
    }
    let stepped: mongodb::bson::Document = env
        .mongo_db()
        .await
        .client()
        .database("admin")
        .run_command(doc! {"replSetStepDown": 60, "force": true})
        .await
        .expect("the test's SecantusDB steps down");
    assert_eq!(
        stepped
            .get_f64("ok")
            .ok()
            .or(stepped.get_i32("ok").ok().map(f64::from)),
        Some(1.0)
    );
    let refused = match Writ::connect(config.clone()).await {
        Err(e) => e,
        Ok(writ) => writ
            .collection("signal")
            .unwrap()
            .read(&key)
            .await
            .expect_err("a read through a direct connection to a secondary"),
    };
    assert!(
        refused.to_string().contains("no MongoDB primary"),
        "{refused}"
    );
}
