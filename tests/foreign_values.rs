//! Another program's value at one of writ's cache keys (a string `SET` by
//! hand, a list from a namespace clash) must not stop a partition. The cache
//! is only a copy of MongoDB: the daemon replaces the foreign value with the
//! committed document, and a reader treats it as a miss and reads through.
//! The other writes of the same round are cached and acked as usual. The
//! same holds for a writer's ack stream key: its ack is skipped and counted,
//! every other ack goes.

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{Daemon, TestEnv};
use writ::protocol::{Key, Names};
use writ::Writ;

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "foreign", "exchangeName": "x"}
}

/// The cache key of `name` in the `signal` collection.
fn cache_key(config: &writ::config::Config, name: &str) -> String {
    let k = Key::from_document(&key(name), config.collection("signal").unwrap()).unwrap();
    Names::new(&config.namespace).cache(
        k.partition("signal", config.partitions),
        "signal",
        &k.canonical(),
    )
}

/// `writ_cache_foreign_total` of this process (the daemon runs in it).
fn foreign_count() -> f64 {
    support::own_counter("writ_cache_foreign_total", "")
}

/// Held by the tests of this file that meet foreign cache values, so that
/// each sees the counter move by its own count only (it is the process's).
static FOREIGN_COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn type_of(conn: &mut writ::redis_conn::Conn, k: &str) -> String {
    redis::cmd("TYPE").arg(k).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_at_a_cache_key_is_replaced_and_blocks_nothing() {
    let _counter = FOREIGN_COUNTER.lock().await;
    let env = TestEnv::start("foreign_cache");
    let config = env.config();
    // All in one partition, so one round holds the foreign keys and the others.
    let names = support::same_partition(&config, "signal", key, "G0", "K", 6);
    let (as_string, as_list, plain) = (&names[0], &names[1], &names[2..]);
    let mut conn = env.redis().await;
    support::foreign_string(&mut conn, &cache_key(&config, as_string)).await;
    let _: () = redis::cmd("RPUSH")
        .arg(cache_key(&config, as_list))
        .arg("a")
        .query_async(&mut conn)
        .await
        .unwrap();

    let before = foreign_count();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut tickets = Vec::new();
    for (i, name) in names.iter().enumerate() {
        tickets.push(s.submit(&key(name), &doc! {"n": i as i32}).await.unwrap());
    }
    let daemon = Daemon::start(config.clone());
    for (name, t) in names.iter().zip(tickets) {
        t.wait_for(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("the write of {name} was not acked: {e}"));
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            s.read(&key(name)).await.unwrap(),
            Some(doc! {"n": i as i32}),
            "{name}"
        );
    }
    for name in [as_string, as_list] {
        assert_eq!(type_of(&mut conn, &cache_key(&config, name)).await, "hash");
    }
    assert_eq!(plain.len(), 4);
    // Counted once each.
    assert_eq!(foreign_count() - before, 2.0, "from {before}");
    daemon.stop().await;
}

/// `writ_acks_skipped_total` of this process (the daemon runs in it).
fn acks_skipped() -> f64 {
    support::own_counter("writ_acks_skipped_total", "")
}

/// A writer whose ack stream key holds another program's value: its ack is
/// skipped and counted (`writ_acks_skipped_total`), the key is left as it is
/// (no expiry either), its write is committed all the same, and the other
/// writer of the same round gets its ack. On one server the round's cache
/// script adds the acks; on Redis Cluster (`WRIT_TEST_REDIS_CLUSTER=1`) the
/// acker's own script (`src/lua/ack_stream.lua`) does: both count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_at_an_ack_stream_skips_that_ack_only() {
    let env = TestEnv::start("foreign_ack");
    let config = env.config();
    let names = support::same_partition(&config, "signal", key, "A0", "A", 2);
    let bad = Writ::connect(config.clone()).await.unwrap();
    let good = Writ::connect(config.clone()).await.unwrap();
    let mut conn = env.redis().await;
    let ack_key = Names::new(&config.namespace).acks(bad.client_id());
    support::foreign_string(&mut conn, &ack_key).await;
    let before = acks_skipped();
    // Both queued before the daemon starts: one round holds both.
    let lost = bad
        .collection("signal")
        .unwrap()
        .submit(&key(&names[0]), &doc! {"n": 0})
        .await
        .unwrap();
    let acked = good
        .collection("signal")
        .unwrap()
        .submit(&key(&names[1]), &doc! {"n": 1})
        .await
        .unwrap();
    let daemon = Daemon::start(config.clone());
    acked
        .wait_for(Duration::from_secs(20))
        .await
        .expect("the other writer's ack");
    support::eventually(
        Duration::from_secs(10),
        "the skipped ack counted",
        || async { (acks_skipped() - before >= 1.0).then_some(()) },
    )
    .await;
    // Committed and readable all the same, by a handle with nothing pending.
    let reader = Writ::connect(config.clone()).await.unwrap();
    let r = reader.collection("signal").unwrap();
    assert_eq!(r.read(&key(&names[0])).await.unwrap(), Some(doc! {"n": 0}));
    assert_eq!(type_of(&mut conn, &ack_key).await, "string", "not replaced");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&ack_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "another program's key got no expiry");
    let good_ttl: i64 = redis::cmd("TTL")
        .arg(Names::new(&config.namespace).acks(good.client_id()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        good_ttl > 0,
        "the ack stream expires a day after its last ack"
    );
    drop(lost);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_through_a_foreign_value_and_repairs_the_entry() {
    let _counter = FOREIGN_COUNTER.lock().await;
    let env = TestEnv::start("foreign_read");
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("R1"), &doc! {"price": 7}).await.unwrap();
    s.write(&key("R2"), &doc! {"price": 8}).await.unwrap();
    daemon.stop().await;

    let mut conn = env.redis().await;
    let entry = cache_key(&config, "R1");
    let _: () = redis::cmd("DEL")
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(&entry)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A new handle has no pending writes: it reads the cache, then MongoDB.
    let reader = Writ::connect(config.clone()).await.unwrap();
    let r = reader.collection("signal").unwrap();
    let before = foreign_count();
    assert_eq!(r.read(&key("R1")).await.unwrap(), Some(doc! {"price": 7}));
    assert_eq!(type_of(&mut conn, &entry).await, "hash");
    // Counted when read as a miss, and again when the read-through
    // replaced it.
    assert_eq!(foreign_count() - before, 2.0, "the foreign value counted");
    // One foreign entry does not fail a read of several keys.
    assert_eq!(r.read(&key("R2")).await.unwrap(), Some(doc! {"price": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_lease_keys_leave_the_other_partitions_owned() {
    let env = TestEnv::start("foreign_lease");
    let config = env.config();
    assert!(config.partitions >= 3);
    let names = Names::new(&config.namespace);
    let mut conn = env.redis().await;
    // Partition 0: a lease with no expiry (writ always sets one): taken over.
    let _: () = redis::cmd("SET")
        .arg(names.lease(0))
        .arg("set-by-hand")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Partition 1: a lease key of another type: that partition stays
    // unowned, and the partitions after it are still taken.
    let _: () = redis::cmd("HSET")
        .arg(names.lease(1))
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Partition 2: a fence that is a string but no integer (`1e3` is a
    // number to Lua, not to INCR): the same (before, taking its lease failed
    // after setting it, and stopped the pass there).
    assert!(config.partitions >= 4);
    let _: () = redis::cmd("SET")
        .arg(names.fence(2))
        .arg("1e3")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A daemon process, to read its log.
    let dir = tempfile::tempdir().unwrap();
    let daemon = support::proc::DaemonProc::start(
        &env.config_file(dir.path(), ""),
        dir.path(),
        "foreign-lease",
    );
    let consumer = |v: Option<String>| v.filter(|o| o != "set-by-hand");
    for p in (0..config.partitions).filter(|p| *p != 1 && *p != 2) {
        support::eventually(
            Duration::from_secs(20),
            "every partition but the foreign one owned",
            || {
                let (mut conn, key) = (conn.clone(), names.lease(p));
                async move {
                    let owner: Option<String> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    consumer(owner)
                }
            },
        )
        .await;
    }
    assert_eq!(type_of(&mut conn, &names.lease(1)).await, "hash");
    let lease2: Option<String> = redis::cmd("GET")
        .arg(names.lease(2))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lease2, None, "no lease is left without a token");
    // `writ status` (and the daemon's stats and retention) still report the
    // other partitions.
    let st = writ::status::status(&mut conn, &config.namespace, config.partitions)
        .await
        .expect("status with a foreign lease key");
    let listed: Vec<u32> = st.partitions.iter().map(|p| p.partition).collect();
    assert_eq!(listed, (0..config.partitions).collect::<Vec<u32>>());
    assert_eq!(st.partitions[1].owner, None);
    assert_eq!(st.partitions[2].owner, None);
    assert!(st.partitions[0].owner.is_some());
    // A write to partition 0 commits.
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let k = (0..10_000)
        .map(|i| format!("L{i}"))
        .find(|n| {
            Key::from_document(&key(n), config.collection("signal").unwrap())
                .unwrap()
                .partition("signal", config.partitions)
                == 0
        })
        .expect("a key of partition 0");
    s.write(&key(&k), &doc! {"p": 0})
        .await
        .expect("partition 0 is served");
    // Each foreign partition is named once, not at every ownership pass
    // (ten a second: before session 44, helper-100). The pass goes on
    // meanwhile: at least a second of them since the daemon started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = daemon.log_text();
    for p in [1, 2] {
        let said = log
            .lines()
            .filter(|l| l.contains("holds a value writ did not write; delete it"))
            .filter(|l| l.contains(&format!("partition={p} ")))
            .count();
        assert_eq!(said, 1, "partition {p} named {said} times:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_values_that_are_not_numbers_strand_nothing_and_refuse_nothing() {
    let env = TestEnv::start("foreign_meta");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let ks = support::same_partition(&config, "signal", key, "M0", "M", 3);
    let p = Key::from_document(&key(&ks[0]), config.collection("signal").unwrap())
        .unwrap()
        .partition("signal", config.partitions);
    let mut conn = env.redis().await;
    // The group as a daemon creates it, so that `at` below names its
    // last-delivered-id (0-0) and the daemon's read takes the O(1) path.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(names.stream(p))
        .arg(names.group())
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let spoil = |mut conn: writ::redis_conn::Conn| {
        let meta = names.meta(p);
        async move {
            let _: () = redis::cmd("HSET")
                .arg(meta)
                .arg("at")
                .arg("0-0")
                .arg("read")
                .arg("x")
                .arg("est")
                .arg("y")
                .arg("since")
                .arg("z")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    spoil(conn.clone()).await;
    // Admission still admits (it counts the backlog exactly instead).
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut tickets = Vec::new();
    for (i, k) in ks.iter().enumerate() {
        tickets.push(s.submit(&key(k), &doc! {"i": i as i32}).await.unwrap());
    }
    // The daemon's first read meets them too: the entries it takes must be
    // applied, not stranded as pending.
    spoil(conn.clone()).await;
    let daemon = Daemon::start(config.clone());
    for (k, t) in ks.iter().zip(tickets) {
        t.wait_for(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("the write of {k} was not acked: {e}"));
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_version_writ_did_not_write_is_dead_lettered_saying_so() {
    let env = TestEnv::start("foreign_version");
    let o = support::Overrides {
        daemon: "max_attempts = 2\nbackoff_cap_ms = 50",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // The daemon made the key's unique index; now another program stores a
    // document whose `_writ.v` is no version of writ's.
    s.write(&key("OTHER"), &doc! {"n": 0}).await.unwrap();
    let mut theirs = key("V1");
    theirs.insert("payload", doc! {"n": -1});
    // (A string that sorts after every version of writ's; a value of another
    // type is older than any version, and simply overwritten.)
    theirs.insert("_writ", doc! {"v": "1700000000000-5"});
    env.mongo_db()
        .await
        .collection::<Document>("signal")
        .insert_one(theirs)
        .await
        .unwrap();
    let err = s.write(&key("V1"), &doc! {"n": 1}).await.unwrap_err();
    let writ::Error::DeadLettered { reason } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains(r#"_writ.v = "1700000000000-5""#),
        "{reason}"
    );
    assert!(reason.contains("not a version writ wrote"), "{reason}");
    // The key's later writes meet the same document; other keys are fine.
    s.write(&key("OTHER"), &doc! {"n": 2}).await.unwrap();
    daemon.stop().await;
}

/// `writ status` with a partition stream key that holds another program's
/// value: the other partitions are shown, the unreadable one is named, and
/// the command fails ("0 unapplied everywhere" is a go/no-go check that a
/// partition with an unknown backlog must not pass). Before, the partition
/// was left out of the table without a word, and the exit code was 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_a_partition_it_cannot_read_and_fails() {
    let env = TestEnv::start("foreign_status");
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file(dir.path(), "");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let mut conn = env.redis().await;
    let _: () = redis::cmd("SET")
        .arg(names.stream(1))
        .arg("another program's value")
        .query_async(&mut conn)
        .await
        .unwrap();
    let st = writ::status::status(&mut conn, &config.namespace, config.partitions)
        .await
        .unwrap();
    assert_eq!(st.left_out, [1]);
    let listed: Vec<u32> = st.partitions.iter().map(|p| p.partition).collect();
    assert_eq!(listed, [0, 2, 3]);
    let out = support::proc::writ_cli(&path, &["status"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("partitions [1] left out"), "{stdout}");
    assert!(stderr.contains("WRONGTYPE"), "{stderr}");
    // The same for the dead-letter stream: not "0 dead letters".
    let _: () = redis::cmd("DEL")
        .arg(names.stream(1))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(names.dead_letters())
        .arg("another program's value")
        .query_async(&mut conn)
        .await
        .unwrap();
    let out = support::proc::writ_cli(&path, &["status"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("dead letters: unknown"), "{stdout}");
    assert!(stderr.contains("dead-letter stream"), "{stderr}");
}

/// While the dead-letter stream cannot be written (here another program's
/// string sits at its key), an entry refused at decode waits to be parked,
/// and the other keys of its partition keep flowing. Before, the refused
/// entry was parked inline by the partition's dispatcher, which stopped every
/// key of the partition until the stream could be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_waiting_for_the_dead_letter_stream_blocks_nothing() {
    let env = TestEnv::start("foreign_dlq");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let mut conn = env.redis().await;
    support::foreign_string(&mut conn, &names.dead_letters()).await;
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signals = writ.collection("signal").unwrap();
    let k = Key::from_document(&key("DLQ0"), config.collection("signal").unwrap()).unwrap();
    let p = k.partition("signal", config.partitions);
    // An entry of an undeclared collection in that key's partition: refused.
    support::raw_json_put(
        &mut conn,
        &names.stream(p),
        "no-such",
        r#"{"k":"v"}"#,
        "{}",
        &[],
    )
    .await;
    for i in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(20),
            signals.write(&key("DLQ0"), &doc! {"n": i}),
        )
        .await
        .expect("a write of the refused entry's partition is acked while the entry waits")
        .unwrap();
    }
    let pending = |mut conn: writ::redis_conn::Conn| {
        let (stream, group) = (names.stream(p), names.group());
        async move { support::pending_count(&mut conn, &stream, &group).await }
    };
    // On a cluster the `XACK` follows the writer's ack in a call of its own,
    // so the last write's entry may still be pending for a moment.
    support::eventually(
        Duration::from_secs(10),
        "only the refused entry pending",
        || {
            let c = conn.clone();
            let pending = &pending;
            async move { (pending(c).await == 1).then_some(()) }
        },
    )
    .await;
    let _: () = redis::cmd("DEL")
        .arg(names.dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    support::eventually(Duration::from_secs(30), "the refused entry parked", || {
        let c = conn.clone();
        let f = pending(c);
        async move { (f.await == 0).then_some(()) }
    })
    .await;
    let letters: u64 = redis::cmd("XLEN")
        .arg(names.dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(letters, 1);
    daemon.stop().await;
}

/// A cache entry whose document is not BSON (another program's value, a
/// truncated write) under a version writ can read is a miss: the read goes
/// to MongoDB. Before session 44 the read failed with `Encode` (which also
/// said a write was not accepted) until the key's next write (helper-102).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_cached_document_reads_through() {
    let _counter = FOREIGN_COUNTER.lock().await;
    let env = TestEnv::start("foreign_doc");
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("D1"), &doc! {"price": 9}).await.unwrap();
    daemon.stop().await;
    let _: () = redis::cmd("HSET")
        .arg(cache_key(&config, "D1"))
        .arg("doc")
        .arg("not bson")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    let reader = Writ::connect(config.clone()).await.unwrap();
    let r = reader.collection("signal").unwrap();
    let before = foreign_count();
    assert_eq!(r.read(&key("D1")).await.unwrap(), Some(doc! {"price": 9}));
    assert_eq!(
        foreign_count() - before,
        1.0,
        "the unreadable entry counted"
    );
    assert_eq!(
        r.read_many(&[key("D1")]).await.unwrap(),
        vec![Some(doc! {"price": 9})]
    );
}

/// Writes whose acks never arrive (the handle's ack stream holds another
/// program's value, so the daemon skips the acks) and whose keys are never
/// read again are settled by the handle's overdue sweep once applied: the
/// pending maps do not grow for the life of the handle. Before session 44
/// only a read or a list of the key settled them (helper-102).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_acks_never_come_are_swept() {
    let env = TestEnv::start("foreign_sweep");
    let o = support::Overrides {
        client: "write_timeout_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let bad = Writ::connect(config.clone()).await.unwrap();
    let mut conn = env.redis().await;
    let ack_key = Names::new(&config.namespace).acks(bad.client_id());
    support::foreign_string(&mut conn, &ack_key).await;
    let s = bad.collection("signal").unwrap();
    for i in 0..20 {
        // Submitted and forgotten: the tickets are dropped at once.
        s.submit(&key(&format!("S{i}")), &doc! {"n": i})
            .await
            .unwrap();
    }
    assert_eq!(bad.unacked(), 20);
    let daemon = Daemon::start(config.clone());
    support::eventually(
        Duration::from_secs(60),
        "the sweep to settle the applied writes",
        || async { (bad.unacked() == 0).then_some(()) },
    )
    .await;
    // They were applied, not dropped.
    let reader = Writ::connect(config.clone()).await.unwrap();
    assert_eq!(
        reader
            .collection("signal")
            .unwrap()
            .read(&key("S7"))
            .await
            .unwrap(),
        Some(doc! {"n": 7})
    );
    daemon.stop().await;
}
