//! Admission deadlines (docs/protocol.md §2a, "A deadline"): a call that
//! Redis runs after its caller gave up on it adds nothing, so a write its
//! caller was told "may or may not have been accepted" never lands after
//! that, over whatever the caller wrote next.

mod support;

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use support::{Overrides, TestEnv};
use writ::{Accepted, Writ};

/// Redis's clock in unix ms.
async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1000 + micros / 1000
}

/// Every entry of `stream`.
async fn whole_stream(r: &mut redis::aio::MultiplexedConnection, stream: &str) -> redis::Value {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(r)
        .await
        .unwrap()
}

/// The script's rule: a call past its deadline is refused with `EXPIRED`
/// and adds and writes nothing (no entry, no record); the same call number
/// with a later deadline runs; once it ran, it is answered from its record
/// whatever its deadline says; `0` is no deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_adds_nothing_and_one_that_ran_keeps_its_reply() {
    let redis = support::RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../src/lua/admit.lua"));
    let (stream, meta, record) = ("w:{p0}:in", "w:{p0}:meta", "w:{p0}:adm:c1");
    let call = |seq: u64, deadline: i64| {
        let mut inv = script.key(stream);
        inv.key(meta).key(record);
        inv.arg("w")
            .arg(100)
            .arg(1)
            .arg("")
            .arg(1)
            .arg(seq)
            .arg(1)
            .arg(deadline);
        inv.arg(2).arg("i").arg(format!("{seq}"));
        inv
    };
    let count = |cmd: &'static str, key: &'static str| redis::cmd(cmd).arg(key).clone();

    let now = redis_now_ms(&mut conn).await;
    let late: redis::RedisResult<redis::Value> = call(1, now - 1).invoke_async(&mut conn).await;
    let e = late.expect_err("a call past its deadline was admitted");
    assert_eq!(e.code(), Some("EXPIRED"), "{e}");
    let xlen: u64 = count("XLEN", stream).query_async(&mut conn).await.unwrap();
    assert_eq!(xlen, 0, "the expired call added an entry");
    let exists: u64 = count("EXISTS", record)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the expired call wrote its record");

    let first: Vec<redis::Value> = call(1, now + 60_000).invoke_async(&mut conn).await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let again: Vec<redis::Value> = call(1, now - 1).invoke_async(&mut conn).await.unwrap();
    assert_eq!(again, first, "a call that ran is answered from its record");
    let none: Vec<redis::Value> = call(2, 0).invoke_async(&mut conn).await.unwrap();
    assert_eq!(none.len(), 1, "deadline 0 is none: {none:?}");
    let xlen: u64 = count("XLEN", stream).query_async(&mut conn).await.unwrap();
    assert_eq!(xlen, 2);
}

/// A Redis paused while a write's admission call is out: the submit gives up
/// and says "may or may not have been accepted". When Redis resumes, it runs
/// the held call (and any copy the client sent again), now past its
/// deadline: refused, so the write never lands after its caller was told.
/// Before, it landed then, after the caller's next write of the key had
/// been decided, and its older value would win over that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_by_a_paused_redis_past_its_deadline_never_lands() {
    let env = TestEnv::start("adm_deadline");
    let redis = support::RedisServer::start();
    let o = Overrides {
        redis_url: Some(redis.url()),
        client: "write_timeout_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "HELD", "strategyName": "deadline", "exchangeName": "x"};
    // A first write takes the partition's clock sample.
    s.submit(&key, &doc! {"tag": "BEFORE"}).await.unwrap();

    support::pause::pause(redis.pid());
    let asked = Instant::now();
    let held = s.submit(&key, &doc! {"tag": "HELD-WRITE"}).await;
    let waited = asked.elapsed();
    support::pause::resume(redis.pid());
    let e = held.expect_err("a paused Redis answered");
    assert_eq!(e.accepted(), Some(Accepted::Unknown), "{e}");
    // The documented bound is write_timeout_ms (1 s here), asserted with
    // seconds of margin: before, the connection's 5 s reply timeout set it.
    assert!(
        waited < Duration::from_secs(4),
        "the submit waited {waited:?}, past write_timeout_ms"
    );

    let k = writ::protocol::Key::from_document(&key, config.collection("signal").unwrap()).unwrap();
    let stream = writ::protocol::Names::new(&config.namespace)
        .stream(k.partition("signal", config.partitions));
    let mut r = redis.connect().await;
    let held_entries = |all: &redis::Value| {
        writ::stream::parse_entries(all)
            .into_iter()
            .filter(|e| {
                e.fields.as_ref().is_some_and(|f| {
                    f.iter()
                        .any(|(_, v)| v.windows(10).any(|w| w == b"HELD-WRITE"))
                })
            })
            .count()
    };
    // Until Redis has run the held call: its entry is in the stream, or
    // Redis refused it as expired (INFO errorstats counts the refusal).
    let start = Instant::now();
    let (landed, expired) = loop {
        let all = whole_stream(&mut r, &stream).await;
        let info: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut r)
            .await
            .unwrap();
        let expired = info.contains("errorstat_EXPIRED:");
        let landed = held_entries(&all);
        if landed > 0 || expired {
            break (landed, expired);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Redis never ran the held call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        landed, 0,
        "the write whose caller was told 'unknown' landed when Redis resumed"
    );
    assert!(expired);

    // The handle goes on: the next write of the key is admitted.
    s.submit(&key, &doc! {"tag": "AFTER"}).await.unwrap();
    let all = whole_stream(&mut r, &stream).await;
    assert_eq!(held_entries(&all), 0);
    assert_eq!(
        writ::stream::parse_entries(&all).len(),
        2,
        "BEFORE and AFTER"
    );
    writ.close().await;
}

/// `sync(timeout)` keeps its bound when Redis stops answering: it says the
/// daemon has not applied the earlier writes within `timeout`. (Not in the
/// Redis Cluster pass: the proxy stands in front of one server.) Before
/// session 44 its first pass over the partitions ran outside the deadline,
/// and each command could wait for its reply timeout (5 s) first, so the
/// call failed later, with a Redis timeout instead (helper-102).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_keeps_its_bound_when_redis_stops_answering() {
    let env = TestEnv::start("sync_bound");
    let (proxy, via) = support::proxy::in_front_of_redis_pausable(&env.redis_url).await;
    let o = Overrides {
        redis_url: Some(via),
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    proxy.pause();
    let err = writ.sync(Duration::from_secs(1)).await.unwrap_err();
    proxy.go_on();
    assert!(
        matches!(&err, writ::Error::Timeout { what, .. } if what.contains("apply the writes accepted")),
        "{err}"
    );
}
