//! Group-committed admission (`client::batch`): the submits that queue
//! while a call to their partition is in flight go in one script call. Each
//! entry still gets its own id and its own answer, in order, and the backlog
//! bound holds entry by entry inside a batch.

mod support;

use std::collections::HashSet;

use mongodb::bson::{doc, Document};
use support::{Daemon, Overrides, TestEnv};
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "admit", "exchangeName": "x"}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_each_get_their_own_entry() {
    let env = TestEnv::start("admission_batch");
    let config = env.config();
    let names = support::same_partition(&config, "signal", key, "A0", "K", 20);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // 400 submits at once to one partition: they queue behind each other's
    // calls, so most go in batches.
    let mut conn = env.redis().await;
    let calls = || {
        let mut conn = conn.clone();
        async move { support::command_calls(&support::commandstats(&mut conn).await, "evalsha") }
    };
    let before = calls().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400usize {
        let (s, name) = (s.clone(), names[i % names.len()].clone());
        tasks.spawn(async move {
            let t = s.submit(&key(&name), &doc! {"i": i as i64}).await.unwrap();
            (name, i, t)
        });
    }
    let mut tickets = Vec::new();
    while let Some(r) = tasks.join_next().await {
        tickets.push(r.unwrap());
    }
    let ids: HashSet<_> = tickets.iter().map(|(_, _, t)| t.version()).collect();
    assert_eq!(ids.len(), 400, "every submit has its own entry id");
    // They went in batches (with one script call a submit, everything above
    // passes too). Only where this test owns Redis: another test's calls on
    // a shared server would count here.
    if env.redis.is_some() {
        let used = calls().await - before;
        assert!(
            used < 200,
            "{used} admission script calls for 400 concurrent submits: not batched"
        );
    }
    let p =
        writ::protocol::Key::from_document(&key(&names[0]), config.collection("signal").unwrap())
            .unwrap()
            .partition("signal", config.partitions);
    let len: u64 = redis::cmd("XLEN")
        .arg(writ::protocol::Names::new(&config.namespace).stream(p))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 400, "400 entries in the partition stream");

    // Applied in order: each key ends at the value of its highest entry id.
    let daemon = Daemon::start(config.clone());
    let mut last: std::collections::HashMap<String, (writ::protocol::Version, i64)> =
        Default::default();
    for (name, i, t) in tickets {
        let v = t.version();
        t.wait().await.unwrap();
        let slot = last.entry(name).or_insert((v, i as i64));
        if v > slot.0 {
            *slot = (v, i as i64);
        }
    }
    for (name, (_, i)) in last {
        assert_eq!(
            s.read(&key(&name)).await.unwrap(),
            Some(doc! {"i": i}),
            "{name}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_inside_a_batch() {
    let env = TestEnv::start("admission_bound");
    let config = env.config_with(&Overrides {
        client: "max_backlog = 50",
        ..Default::default()
    });
    let names = support::same_partition(&config, "signal", key, "B0", "K", 10);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // No daemon: nothing drains, so exactly 50 are admitted.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200usize {
        let (s, name) = (s.clone(), names[i % names.len()].clone());
        tasks.spawn(async move { s.submit(&key(&name), &doc! {"i": i as i64}).await });
    }
    let (mut admitted, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => admitted += 1,
            Err(
                e @ Error::Backpressure {
                    unapplied, limit, ..
                },
            ) => {
                assert_eq!(e.accepted(), Some(writ::Accepted::No), "{e}");
                assert_eq!(limit, 50);
                assert!(unapplied >= 50, "refused at a backlog of {unapplied}");
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((admitted, refused), (50, 150));
}

/// A batch that reaches the kept upper bound of the backlog counts it again
/// before refusing anything: entries the daemon already applied must not
/// count (a refusal on the estimate is a phantom backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_refused_only_on_an_exact_count() {
    let env = TestEnv::start("admission_exact");
    let config = env.config_with(&Overrides {
        client: "max_backlog = 50",
        ..Default::default()
    });
    let names = support::same_partition(&config, "signal", key, "E0", "K", 10);
    let _daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    // 45 writes, each applied before the next: the exact backlog is back to
    // 0, while the kept upper bound (est + since) has grown to 45.
    for i in 0..45i64 {
        s.write(&key(&names[i as usize % names.len()]), &doc! {"i": i})
            .await
            .unwrap();
    }
    // 40 submits at once: after the first, they queue and go in batches that
    // cross the upper bound of 50. The real backlog never exceeds 40.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40usize {
        let (s, name) = (s.clone(), names[i % names.len()].clone());
        tasks.spawn(async move { s.submit(&key(&name), &doc! {"i": i as i64}).await });
    }
    let mut refused = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => {}
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 40 submits refused on a backlog of at most 40 (bound 50): {:?}",
        refused.len(),
        refused.first()
    );
}

/// The kept upper bound's fields in the meta hash hold what another program
/// wrote there: "1.5", "1e3" or "0x10" pass Lua's `tonumber` but not
/// `HINCRBY`, which the batch form runs after its `XADD`s: the entries were
/// added and the call refused, so the writer was told NOT accepted for a
/// write in the stream. Such a value counts as absent (the backlog is
/// counted again), and the write is admitted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_count_that_is_not_a_whole_number_counts_as_absent() {
    let env = TestEnv::start("admission_meta_values");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let signal = config.collection("signal").unwrap();
    let mut conn = env.redis().await;
    for (i, (est, since)) in [("0", "1.5"), ("1e3", "0"), ("0x10", "2")]
        .into_iter()
        .enumerate()
    {
        let name = format!("meta{i}");
        let p = writ::protocol::Key::from_document(&key(&name), signal)
            .unwrap()
            .partition("signal", config.partitions);
        let _: () = redis::cmd("HSET")
            .arg(names.meta(p))
            .arg("est")
            .arg(est)
            .arg("since")
            .arg(since)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ticket = s.submit(&key(&name), &doc! {"i": i as i64}).await;
        assert!(
            ticket.is_ok(),
            "est {est}, since {since}: {:?}",
            ticket.err()
        );
        let entries: Vec<redis::Value> = redis::cmd("XRANGE")
            .arg(names.stream(p))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(entries.len(), 1, "est {est}, since {since}: one entry");
        let _: () = redis::cmd("DEL")
            .arg(names.stream(p))
            .query_async(&mut conn)
            .await
            .unwrap();
        let since: String = redis::cmd("HGET")
            .arg(names.meta(p))
            .arg("since")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            since.parse::<u64>().is_ok(),
            "since is {since:?} after the call"
        );
    }
}

/// A call that runs twice (a client library sent it again after its reply
/// was lost: ioredis at a reconnect, redis-rs in cluster mode after a
/// timeout) adds its entries once and gets the first run's reply again,
/// refusals included. A number at or under the last one whose reply is no
/// longer kept is refused, not added. The script is called by hand here;
/// `clients/node/test/core.test.ts` loses a real reply through a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_twice_adds_its_entries_once() {
    let redis = support::RedisServer::start_with(true);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../src/lua/admit.lua"));
    let (stream, meta, record) = ("w:{p0}:in", "w:{p0}:meta", "w:{p0}:adm:c1");
    let call = |seq: u64, entries: usize| {
        let mut inv = script.key(stream);
        inv.key(meta).key(record);
        inv.arg("w")
            .arg(5)
            .arg(1)
            .arg("")
            .arg(entries)
            .arg(seq)
            .arg(1)
            .arg(0);
        for i in 0..entries {
            inv.arg(2).arg("i").arg(format!("{seq}.{i}"));
        }
        inv
    };
    let xlen = |mut c: redis::aio::MultiplexedConnection| async move {
        redis::cmd("XLEN")
            .arg(stream)
            .query_async::<u64>(&mut c)
            .await
            .unwrap()
    };

    let first: Vec<redis::Value> = call(1, 2).invoke_async(&mut conn).await.unwrap();
    let again: Vec<redis::Value> = call(1, 2).invoke_async(&mut conn).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(
        again, first,
        "the second run answers with the first run's ids"
    );
    assert_eq!(xlen(conn.clone()).await, 2, "call 1's two entries, once");

    // Call 2 reaches the bound (5) after three entries: its reply ends with
    // the backlog, and so does its second run.
    let second: Vec<redis::Value> = call(2, 4).invoke_async(&mut conn).await.unwrap();
    assert_eq!(second.len(), 4, "three ids and the backlog: {second:?}");
    assert_eq!(second[3], redis::Value::Int(5));
    // The second run writes (it renews the record's expiry), so that a WAIT
    // after it on its connection covers the first run: Redis 7 moves a
    // connection's replication offset only for commands that write. Seen
    // here as the AOF growing.
    let aof_before = support::aof_size(&mut conn).await;
    let again: Vec<redis::Value> = call(2, 4).invoke_async(&mut conn).await.unwrap();
    assert_eq!(again, second);
    assert_eq!(xlen(conn.clone()).await, 5);
    assert!(
        support::aof_size(&mut conn).await > aof_before,
        "the second run propagated nothing"
    );

    // The window is one call: call 1's reply is gone, and it is refused.
    let old: redis::RedisResult<redis::Value> = call(1, 2).invoke_async(&mut conn).await;
    let e = old.expect_err("a call older than the window is refused");
    assert_eq!(e.code(), Some("DUPLICATE"), "{e}");
    assert_eq!(xlen(conn.clone()).await, 5, "nothing added by the old call");

    // Another caller numbers its own calls.
    let mut inv = script.key(stream);
    inv.key(meta).key("w:{p0}:adm:c2");
    inv.arg("w")
        .arg(50)
        .arg(1)
        .arg("")
        .arg(1)
        .arg(1)
        .arg(1)
        .arg(0);
    inv.arg(2).arg("i").arg("c2");
    let theirs: Vec<redis::Value> = inv.invoke_async(&mut conn).await.unwrap();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(xlen(conn.clone()).await, 6);

    // The record expires.
    let ttl: i64 = redis::cmd("TTL")
        .arg(record)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=3600).contains(&ttl), "record TTL {ttl}");
    let fields: u64 = redis::cmd("HLEN")
        .arg(record)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fields, 2, "`last` and the last call's reply");

    // A window of 3 keeps three replies in three slots; a number that never
    // reached Redis (4) leaves nothing behind, and the record stays at four
    // fields.
    let windowed = |seq: u64| {
        let mut inv = script.key(stream);
        inv.key(meta).key("w:{p0}:adm:c3");
        inv.arg("w")
            .arg(1000)
            .arg(1)
            .arg("")
            .arg(1)
            .arg(seq)
            .arg(3)
            .arg(0);
        inv.arg(2).arg("i").arg(format!("c3.{seq}"));
        inv
    };
    let mut replies = std::collections::HashMap::new();
    for seq in [1u64, 2, 3, 5, 6, 7] {
        let r: Vec<redis::Value> = windowed(seq).invoke_async(&mut conn).await.unwrap();
        replies.insert(seq, r);
    }
    let len_before = xlen(conn.clone()).await;
    for seq in [5u64, 6, 7] {
        let r: Vec<redis::Value> = windowed(seq).invoke_async(&mut conn).await.unwrap();
        assert_eq!(r, replies[&seq], "call {seq} within the window");
    }
    for seq in [3u64, 4] {
        let r: redis::RedisResult<redis::Value> = windowed(seq).invoke_async(&mut conn).await;
        assert_eq!(
            r.expect_err("refused").code(),
            Some("DUPLICATE"),
            "call {seq}: its slot was reused, or it never ran and a later call did"
        );
    }
    assert_eq!(xlen(conn.clone()).await, len_before, "nothing added");
    let fields: u64 = redis::cmd("HLEN")
        .arg("w:{p0}:adm:c3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fields, 4, "`last` and three slots");
}

/// The script refuses a caller whose partition count differs from the one
/// the partition's meta hash records (`PARTITIONS <recorded>`), in both
/// write forms, and adds nothing; a call that ran before the count changed
/// still gets its reply again; a count that is not a number is not checked.
/// `tests/partition_count.rs` covers who records the copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_another_partition_count_is_refused_by_the_script() {
    let redis = support::RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../src/lua/admit.lua"));
    let (stream, meta, record) = ("w:{p1}:in", "w:{p1}:meta", "w:{p1}:adm:c1");
    let batch = |seq: u64, count: u32| {
        let mut inv = script.key(stream);
        inv.key(meta).key(record);
        inv.arg("w")
            .arg(100)
            .arg(count)
            .arg("")
            .arg(1)
            .arg(seq)
            .arg(1)
            .arg(0);
        inv.arg(2).arg("i").arg(format!("{seq}"));
        inv
    };
    let single = |count: u32| {
        let mut inv = script.key(stream);
        inv.key(meta);
        inv.arg("w").arg(100).arg(count).arg("i").arg("single");
        inv
    };
    let set_count = |v: &'static str| {
        redis::cmd("HSET")
            .arg(meta)
            .arg("partitions")
            .arg(v)
            .clone()
    };
    let xlen = redis::cmd("XLEN").arg(stream).clone();

    // Nothing recorded: not checked.
    let first: Vec<redis::Value> = batch(1, 4).invoke_async(&mut conn).await.unwrap();
    assert_eq!(first.len(), 1);
    let _: () = set_count("2").query_async(&mut conn).await.unwrap();
    let again: Vec<redis::Value> = batch(1, 4).invoke_async(&mut conn).await.unwrap();
    assert_eq!(
        again, first,
        "a call that ran before the change is answered again"
    );
    for refused in [
        batch(2, 4).invoke_async::<redis::Value>(&mut conn).await,
        single(4).invoke_async::<redis::Value>(&mut conn).await,
    ] {
        let e = refused.expect_err("another count was admitted");
        assert_eq!(e.code(), Some("PARTITIONS"), "{e}");
        assert!(e.detail().unwrap().starts_with("2 "), "{e}");
    }
    assert_eq!(
        xlen.query_async::<u64>(&mut conn).await.unwrap(),
        1,
        "nothing added"
    );
    let _: Vec<redis::Value> = batch(2, 2).invoke_async(&mut conn).await.unwrap();
    let _: String = single(2).invoke_async(&mut conn).await.unwrap();
    assert_eq!(xlen.query_async::<u64>(&mut conn).await.unwrap(), 3);
    let _: () = set_count("two").query_async(&mut conn).await.unwrap();
    let _: Vec<redis::Value> = batch(3, 4).invoke_async(&mut conn).await.unwrap();
    assert_eq!(xlen.query_async::<u64>(&mut conn).await.unwrap(), 4);
}

/// An admission call whose reply is lost (Redis ran it, then the connection
/// dropped) is sent again under its number: the admission record answers
/// it with the first run's ids, so the submit learns that its write was
/// added, and the entry is added once. Before, the submit failed with a
/// Redis error that could not say, and a caller that retried added a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_whose_reply_was_lost_is_sent_again_and_added_once() {
    let env = TestEnv::start("adm_lost_reply");
    let (proxy, proxied) =
        support::proxy::in_front_of_redis_dropping_reply_to(&env.redis_url, b"REPLY-LOST-ONCE")
            .await;
    let o = Overrides {
        redis_url: Some(proxied),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "LOSTREPLY", "strategyName": "adm", "exchangeName": "x"};
    let ticket = s
        .submit(&key, &doc! {"tag": "REPLY-LOST-ONCE"})
        .await
        .expect("the call sent again is answered from the admission record");
    assert!(
        proxy.cut_done(),
        "the proxy never dropped a reply: the test did not run its case"
    );
    let k = writ::protocol::Key::from_document(&key, config.collection("signal").unwrap()).unwrap();
    let stream = writ::protocol::Names::new(&config.namespace)
        .stream(k.partition("signal", config.partitions));
    let mut r = env.redis().await;
    let all: redis::Value = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    let copies: Vec<_> = writ::stream::parse_entries(&all)
        .into_iter()
        .filter(|e| {
            e.fields.as_ref().is_some_and(|f| {
                f.iter()
                    .any(|(_, v)| v.windows(15).any(|w| w == b"REPLY-LOST-ONCE"))
            })
        })
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the write was added {} times",
        copies.len()
    );
    assert_eq!(copies[0].id, ticket.version());
}

/// A submit dropped while its admission call is out (a `timeout` around it)
/// takes its ack waiter back: the call may never add the write, and a
/// waiter left behind would count in `unacked()` and stay for the life of
/// the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_dropped_during_its_admission_leaves_no_waiter() {
    let env = TestEnv::start("adm_dropped");
    let (_proxy, proxied) =
        support::proxy::in_front_of_redis_swallowing(&env.redis_url, b"NEVER-ANSWERED").await;
    let o = Overrides {
        redis_url: Some(proxied),
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "DROPPED", "strategyName": "adm", "exchangeName": "x"};
    let stalled = doc! {"tag": "NEVER-ANSWERED"};
    let submit = s.submit(&key, &stalled);
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(300), submit).await;
    assert!(
        gave_up.is_err(),
        "the stalled admission answered: {gave_up:?}"
    );
    assert_eq!(writ.unacked(), 0, "the dropped submit left its waiter");
}

/// A submit made on a runtime that then shuts down (a short-lived runtime
/// per request, or per test, beside a long-lived handle) starts its
/// partition's flush task on that runtime, which drops the task mid-way.
/// Later submits to the partition, from a runtime that lives on, are
/// answered; before, they waited for good behind a task that no longer ran.
#[test]
fn a_submit_on_a_runtime_that_shuts_down_does_not_strand_its_partition() {
    let env = TestEnv::start("admission_runtime");
    let config = env.config();
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writ = main.block_on(Writ::connect(config.clone())).unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |k: &str| doc! {"symbol": k, "strategyName": "rt", "exchangeName": "x"};
    let other = support::same_partition(&config, "signal", key, "A", "B", 1).remove(0);
    let short = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    short.block_on(async {
        let s = s.clone();
        let k = key("A");
        tokio::spawn(async move {
            let _ = s.submit(&k, &doc! {"n": 1}).await;
        });
        tokio::task::yield_now().await;
    });
    drop(short);
    let answered = main.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            s.submit(&key(&other), &doc! {"n": 2}),
        )
        .await
    });
    let admitted = answered.expect("the submit waited behind a flush task that no longer runs");
    admitted.expect("admitted");
    drop(writ);
    drop(main);
}

/// The `CLIENT ID` of a connection blocked in `WAIT`, once there is one.
async fn blocked_in_wait(admin: &writ::redis_conn::Conn) -> String {
    support::eventually(
        std::time::Duration::from_secs(20),
        "a write's WAIT to block",
        || {
            let mut admin = admin.clone();
            async move {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut admin)
                    .await
                    .ok()?;
                list.lines()
                    .find(|l| l.contains("cmd=wait"))
                    .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                    .map(str::to_string)
            }
        },
    )
    .await
}

/// With `min_replicas_acked = 1` and no replica, the `WAIT` after an
/// admission never gets its replica; the daemon (confirming nothing itself
/// here) applies and acks the write meanwhile. The ack settles it: the write
/// is committed in MongoDB, and "not replicated" would make its caller send
/// it again. Before, the caller got `NotReplicated` after the full wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_write_is_not_reported_unconfirmed() {
    let env = TestEnv::start("admission_acked_unconfirmed");
    let _daemon = Daemon::start(env.config());
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 5000",
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "ACKED", "strategyName": "unconfirmed", "exchangeName": "x"};
    let version = s
        .write(&key, &doc! {"v": 1})
        .await
        .expect("a write the daemon applied and acked was reported as failed");
    let stored = env
        .mongo_db()
        .await
        .collection::<Document>("signal")
        .find_one(doc! {"symbol": "ACKED", "strategyName": "unconfirmed"})
        .await
        .unwrap()
        .expect("in MongoDB");
    assert_eq!(
        stored
            .get_document("payload")
            .ok()
            .and_then(|d| d.get_i32("v").ok()),
        Some(1),
        "{stored}"
    );
    assert_eq!(s.read_record(&key).await.unwrap().unwrap().version, version);
}

/// A `WAIT` in flight on a runtime that shuts down (a handle used from a
/// short-lived runtime): its driver is dropped mid-way. Later writes of that
/// partition, from a runtime that lives on, are still confirmed (here: told
/// "not confirmed" after the wait, there being no replica); before, they
/// waited for good behind a driver that no longer ran.
#[test]
fn a_wait_on_a_runtime_that_shuts_down_does_not_strand_its_partition() {
    let env = TestEnv::start("admission_wait_runtime");
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 2000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writ = main.block_on(Writ::connect(config.clone())).unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |k: &str| doc! {"symbol": k, "strategyName": "wrt", "exchangeName": "x"};
    let other = support::same_partition(&config, "signal", key, "A", "B", 1).remove(0);
    let admin = main.block_on(env.redis());
    let short = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    short.block_on(async {
        let s = s.clone();
        let k = key("A");
        tokio::spawn(async move {
            let _ = s.submit(&k, &doc! {"n": 1}).await;
        });
        // Until that write's WAIT blocks in Redis.
        blocked_in_wait(&admin).await;
    });
    drop(short);
    let answered = main.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            s.submit(&key(&other), &doc! {"n": 2}),
        )
        .await
    });
    let r = answered.expect("the submit waited behind a WAIT driver that no longer runs");
    assert!(
        matches!(r, Err(Error::NotReplicated { .. })),
        "no replica: not confirmed, got {r:?}"
    );
    drop(writ);
    drop(main);
}

/// With `min_replicas_acked = 1`, a write whose admission returned its id
/// but whose `WAIT` lost its connection (killed here while it blocked, no
/// replica answering) is on the master: the error says it may be held
/// ([`Error::ConfirmFailed`], accepted `Unknown`), and the entry is in the
/// stream. Before, the caller got the bare connection error, which said
/// nothing of the write, and would send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_wait_is_cut_off_says_it_may_be_held() {
    let env = TestEnv::start("admission_wait_cut");
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 20000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let write = tokio::spawn(async move { s.submit(&key("CUT"), &doc! {"n": 1}).await });
    let mut admin = env.redis().await;
    let waiting = blocked_in_wait(&admin).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&waiting)
        .query_async(&mut admin)
        .await
        .unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(15), write)
        .await
        .expect("the write returned once its WAIT's connection was gone")
        .unwrap()
        .expect_err("no replica confirmed it");
    assert!(matches!(e, Error::ConfirmFailed { .. }), "{e:?}");
    assert_eq!(e.accepted(), Some(writ::Accepted::Unknown), "{e}");
    let k = writ::protocol::Key::from_document(&key("CUT"), config.collection("signal").unwrap())
        .unwrap();
    let stream = writ::protocol::Names::new(&config.namespace)
        .stream(k.partition("signal", config.partitions));
    let len: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(len, 1, "the write is in its stream");
}

/// `submit_op` refuses what the daemon's decode would refuse of an op and
/// its document (a put with none, a remove or delete with one, a document
/// over `client.max_document_bytes`) before the stream, as `submit` does.
/// Before, such writes were added and then dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_op_refuses_an_op_the_daemon_would_refuse() {
    use writ::protocol::Op;
    let env = TestEnv::start("admission_submit_op");
    let config = env.config_with(&Overrides {
        client: "max_document_bytes = 1024",
        ..Default::default()
    });
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let big = doc! {"v": "x".repeat(2048)};
    let small = doc! {"v": 1};
    for (op, doc) in [
        (Op::Put, None),
        (Op::Remove, Some(&small)),
        (Op::Delete, Some(&small)),
        (Op::Put, Some(&big)),
    ] {
        let e = s
            .submit_op(&key("OP"), op, doc)
            .await
            .expect_err("refused before the stream");
        assert!(matches!(e, Error::Rejected(_)), "{op:?}: {e:?}");
        assert_eq!(e.accepted(), Some(writ::Accepted::No), "{op:?}: {e}");
    }
    let mut admin = env.redis().await;
    let names = writ::protocol::Names::new(&config.namespace);
    for p in 0..config.partitions {
        let len: u64 = redis::cmd("XLEN")
            .arg(names.stream(p))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(len, 0, "partition {p}");
    }
    s.submit_op(&key("OP"), Op::Remove, None).await.unwrap();
}
