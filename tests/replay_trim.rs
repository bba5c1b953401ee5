//! Retention keeps trimming while a long `writ replay` runs. Entries it
//! removes ahead of the replay's position are missed by the replay, and the
//! summary must say so (`trimmed`), as it does for a range trimmed before
//! the replay began. Retention also keeps trimming while Redis is at its
//! `maxmemory`, which is when the memory it frees is needed.

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{streams, Overrides, TestEnv};
use writ::protocol::{Names, Version};
use writ::Writ;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_trimmed_during_a_replay_is_reported() {
    let env = TestEnv::start("replay_trim");
    let config = env.config();
    // 1200 writes of one key (one partition), never applied: no daemon runs.
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "TRIM", "strategyName": "replay", "exchangeName": "x"};
    let mut ids = Vec::new();
    for i in 0..1200i64 {
        ids.push(s.submit(&key, &doc! {"i": i}).await.unwrap().version());
    }
    let coll = config.collection("signal").unwrap();
    let p = writ::protocol::Key::from_document(&key, coll)
        .unwrap()
        .partition("signal", config.partitions);
    let stream = Names::new(&config.namespace).stream(p);
    // A slow MongoDB, so the first page (500 entries) takes seconds on any
    // server.
    let (_proxy, proxied) =
        support::proxy::in_front_of_mongo_with_latency(&env.mongo_uri, Duration::from_millis(5))
            .await;
    let tools = writ::tools::Tools::connect(env.config_with(&Overrides {
        mongo_uri: Some(proxied),
        ..Default::default()
    }))
    .await
    .unwrap();
    let replay = tokio::spawn(async move {
        tools
            .replay(Version { ms: 0, seq: 0 }, None, Some("signal"))
            .await
    });
    // Once the replay is inside its first page, retention trims the stream
    // up to entry 1100.
    let signal = env.mongo_db().await.collection::<Document>("signal");
    let tenth = ids[10];
    support::eventually(
        Duration::from_secs(60),
        "the replay to start applying",
        || {
            let signal = signal.clone();
            let key = key.clone();
            async move {
                let d = signal.find_one(key).await.unwrap()?;
                (writ::apply::doc_version(&d)? >= tenth).then_some(())
            }
        },
    )
    .await;
    let mut r = env.redis().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg(ids[1100].to_stream_id())
        .query_async(&mut r)
        .await
        .unwrap();
    let sum = tokio::time::timeout(Duration::from_secs(120), replay)
        .await
        .expect("the replay ends")
        .unwrap()
        .unwrap();
    assert!(sum.read < 1200, "{sum:?}");
    assert_eq!(
        sum.trimmed,
        vec![p],
        "the entries trimmed ahead of the replay are reported: {sum:?}"
    );
}

/// The daemon's housekeeping counts each partition's backlog with the
/// admission script's count, which writes a shortcut for the next count back
/// to the partition's meta hash when it had to count entry by entry. At
/// `maxmemory` Redis refused that write, the count failed, and with it the
/// status gauges and retention, for every partition, for as long as Redis
/// stayed full. The shortcut is now optional (`pcall`).
///
/// The test makes the count go entry by entry (it removes the meta hash's
/// `read`, which the daemon's reads do not restore while nothing new comes),
/// fills Redis, and waits for retention (`retention_max_age_secs = 2`) to
/// trim the applied entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_while_redis_is_full() {
    let env = TestEnv::start("trim_full");
    let redis = support::RedisServer::start();
    let o = Overrides {
        redis_url: Some(redis.url()),
        partitions: Some(1),
        daemon: "retention_max_age_secs = 2",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = support::Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..20i64 {
        let key = doc! {"symbol": format!("F{i}"), "strategyName": "full", "exchangeName": "x"};
        s.write(&key, &doc! {"i": i}).await.unwrap();
    }
    let names = Names::new(&config.namespace);
    let stream = names.stream(0);
    let mut conn = redis.connect().await;
    let _: () = redis::cmd("HDEL")
        .arg(names.meta(0))
        .arg("read")
        .query_async(&mut conn)
        .await
        .unwrap();
    support::config_set(&mut conn, "maxmemory", "1").await;
    let mut reader = conn.clone();
    let trimmed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let len: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut reader)
                .await
                .unwrap();
            if len == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    support::config_set(&mut conn, "maxmemory", "0").await;
    assert!(
        trimmed.is_ok(),
        "retention did not trim the 20 applied entries within 20 s while Redis was full"
    );
    daemon.stop().await;
}

/// A partition that retention trimmed empty (idle for longer than
/// `retention_max_age_secs`) held nothing at or after a `from` later than its
/// last entry: a replay from there reports it whole. From that last entry
/// on, it was trimmed, and says so. Before, any empty stream that had held
/// entries was reported trimmed, and `writ replay` exited 2 ("writes removed
/// from there were not replayed") after every short outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_trimmed_empty_is_trimmed_only_up_to_its_last_entry() {
    let env = TestEnv::start("replay_idle");
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "IDLE", "strategyName": "replay", "exchangeName": "x"};
    let last = s.submit(&key, &doc! {"i": 1}).await.unwrap().version();
    let p = writ::protocol::Key::from_document(&key, config.collection("signal").unwrap())
        .unwrap()
        .partition("signal", config.partitions);
    let mut r = env.redis().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(Names::new(&config.namespace).stream(p))
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut r)
        .await
        .unwrap();
    let tools = writ::tools::Tools::connect(config.clone()).await.unwrap();
    let after = Version {
        ms: last.ms + 1,
        seq: 0,
    };
    let sum = tools.replay(after, None, None).await.unwrap();
    assert!(sum.trimmed.is_empty(), "from after the last entry: {sum:?}");
    let sum = tools.replay(last, None, None).await.unwrap();
    assert_eq!(sum.trimmed, vec![p], "from the last entry: {sum:?}");
}

/// A replay that was told to stop (SIGINT, SIGTERM or SIGHUP cancel
/// `Tools::abort`) stops between pages, also over entries of other
/// collections, which apply nothing. Before, it noticed a stop only inside
/// an apply, so `replay --collection <rare>` over a long stream ran to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_told_to_stop_stops_between_pages() {
    let env = TestEnv::start("replay_stop");
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..20i64 {
        let key = doc! {"symbol": format!("S{i}"), "strategyName": "replay", "exchangeName": "x"};
        s.submit(&key, &doc! {"i": i}).await.unwrap();
    }
    let tools = writ::tools::Tools::connect(config.clone()).await.unwrap();
    tools.abort.cancel();
    let stopped = tools
        .replay(Version { ms: 0, seq: 0 }, None, Some("measure"))
        .await;
    assert!(
        matches!(stopped, Err(writ::Error::Shutdown)),
        "a stopped replay: {stopped:?}"
    );
}

/// Retention's trim point comes from a status read made before the trim (a
/// count bound searches for it page by page), and the group can move back in
/// between: an operator's `XGROUP SETID`, or a failover to a replica whose
/// clock gives out ids below the old point. The trim itself is capped by
/// the group as Redis holds it then: it never removes an entry that is
/// pending or not yet delivered, whatever point it is given. Before session
/// 41 it was a plain `XTRIM MINID <point>`, and every step below but the
/// first removed all it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_never_removes_what_the_group_has_not_applied() {
    let env = TestEnv::start("trim_capped");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let mut r = env.redis().await;
    let adder = r.clone();
    let add = |n: usize| {
        let (mut r, stream) = (adder.clone(), stream.clone());
        async move {
            for i in 0..n {
                support::raw_json_put(
                    &mut r,
                    &stream,
                    "signal",
                    &format!(r#"{{"i":{i}}}"#),
                    "{}",
                    &[],
                )
                .await;
            }
        }
    };
    // A point past everything, as a stale status could give.
    let far = Version {
        ms: writ::protocol::wall_clock_ms() + 3_600_000,
        seq: 0,
    };
    let trim = |conn: &mut writ::redis_conn::Conn| {
        let (stream, group) = (stream.clone(), group.clone());
        let mut conn = conn.clone();
        async move {
            writ::retention::trim(&mut conn, &stream, &group, far)
                .await
                .unwrap()
        }
    };
    // Applied (the group past them): all go.
    add(5).await;
    streams::create_group(&mut r, &stream, &group, "$").await;
    assert_eq!(trim(&mut conn).await, 5);
    // Not yet delivered: none goes.
    add(5).await;
    assert_eq!(trim(&mut conn).await, 0);
    assert_eq!(streams::xlen(&mut r, &stream).await, 5);
    // Delivered, the first two applied: only those go.
    streams::deliver_all(&mut r, &stream, &group, "c").await;
    let ids = streams::ids(&mut r, &stream).await;
    assert_eq!(ids.len(), 5);
    streams::ack(&mut r, &stream, &group, &ids[..2]).await;
    assert_eq!(trim(&mut conn).await, 2);
    // Every pending entry applied, then the group moved back before them
    // (`XGROUP SETID`): they are to be delivered again, and stay.
    streams::ack(&mut r, &stream, &group, &ids[2..]).await;
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(trim(&mut conn).await, 0);
    assert_eq!(streams::xlen(&mut r, &stream).await, 3);
}

/// `n` raw entries of about `bytes` bytes added to `stream`, in calls of
/// 50,000.
async fn fill<C: redis::aio::ConnectionLike>(conn: &mut C, stream: &str, n: u64, bytes: usize) {
    let script = redis::Script::new(
        "for _ = 1, tonumber(ARGV[1]) do \
         redis.call('XADD', KEYS[1], '*', 'v', ARGV[2]) end return 1",
    );
    let mut left = n;
    while left > 0 {
        let now = left.min(50_000);
        let _: i64 = script
            .key(stream)
            .arg(now)
            .arg("x".repeat(bytes))
            .invoke_async(conn)
            .await
            .unwrap();
        left -= now;
    }
}

/// A trim removes about 10,000 entries at most a call (`XTRIM MINID ~
/// <point> LIMIT 10000`, whole nodes, then the rest below the point exactly
/// once at most 1,000 are left): the next pass goes on. Before, it was one
/// exact `XTRIM MINID` of everything below the point, whatever its size
/// (about 1M entries after retention was held back: 104 ms of Redis in the
/// audit; 200,000 entries of 100 B here: one call, about 4 ms on the test
/// machine, which is why this test counts entries per call, not time).
/// And the count bound's search for its point stops at the watermark: with
/// an old entry left pending at the head, it reads nothing (before, every
/// pass read up to 100,000 entries past it, for a point the watermark then
/// overrode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_removes_a_bounded_number_of_entries_a_call() {
    // Its own redis-server: the command counts are server-wide.
    let env = TestEnv::start_own_redis("trim_bounded");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let mut r = env.redis().await;
    let total = 200_000u64;
    fill(&mut r, &stream, total, 100).await;
    // All applied: the group past them.
    streams::create_group(&mut r, &stream, &group, "$").await;
    let newest: redis::Value = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut r)
        .await
        .unwrap();
    let last = writ::stream::parse_entries(&newest)[0].id;
    let mut calls = Vec::new();
    loop {
        let n = writ::retention::trim(&mut conn, &stream, &group, last)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        calls.push(n);
        assert!(calls.len() < 100, "{calls:?}");
    }
    eprintln!("{} calls trimmed {total} entries: {calls:?}", calls.len());
    assert!(
        calls.iter().all(|n| *n <= 11_000),
        "a call removed more than about 10,000 entries: {calls:?}"
    );
    // Down to the point exactly: only the newest entry is left.
    assert_eq!(calls.iter().sum::<u64>(), total - 1);
    assert_eq!(streams::xlen(&mut r, &stream).await, 1);

    // A server whose stream nodes hold more than the step (20,000 entries a
    // node): the approximate trim can remove no whole node within its
    // LIMIT, and the rest below the point is more than 1,000 entries, so
    // before the review (helper-107) nothing was ever trimmed; now each call
    // trims exactly up to at most about 1,000 entries below the point.
    for (param, value) in [
        ("stream-node-max-entries", "20000"),
        ("stream-node-max-bytes", "0"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(param)
            .arg(value)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let big = names.stream(2);
    fill(&mut r, &big, 30_000, 100).await;
    streams::create_group(&mut r, &big, &group, "$").await;
    let ids = streams::ids(&mut r, &big).await;
    let last: Version = ids.last().unwrap().parse().unwrap();
    let mut removed = 0u64;
    for call in 0.. {
        let n = writ::retention::trim(&mut conn, &big, &group, last)
            .await
            .unwrap();
        assert!(n <= 11_000, "call {call} removed {n}");
        removed += n;
        if n == 0 || call > 200 {
            break;
        }
    }
    assert_eq!(
        removed, 29_999,
        "large stream nodes: trimmed {removed} of 29,999"
    );

    // An old entry left pending at the head, 20,000 applied entries after
    // it, and a count bound of 1,000: nothing can go (the watermark is the
    // head), and the search finds that without reading the entries past it.
    let other = names.stream(1);
    fill(&mut r, &other, 1, 100).await;
    streams::create_group(&mut r, &other, &group, "0").await;
    streams::deliver_all(&mut r, &other, &group, "c").await;
    fill(&mut r, &other, 20_000, 100).await;
    streams::deliver_all(&mut r, &other, &group, "c").await;
    let ids = streams::ids(&mut r, &other).await;
    let first: Version = ids[0].parse().unwrap();
    streams::ack(&mut r, &other, &group, &ids[1..]).await;
    let status = writ::status::PartitionStatus {
        partition: 1,
        owner: None,
        length: 20_001,
        undelivered: 0,
        pending: 1,
        unapplied: 1,
        unapplied_at_least: false,
        oldest_unapplied_age_seconds: 0.0,
        oldest_unapplied: Some(first.to_stream_id()),
        watermark: Some(first.to_stream_id()),
    };
    support::reset_stats(&mut r).await;
    let point =
        writ::retention::trim_point(&mut conn, &other, &status, Duration::from_secs(3600), 1000)
            .await
            .unwrap();
    let info = support::commandstats(&mut r).await;
    assert!(point.is_some_and(|p| p <= first), "{point:?}");
    assert!(
        support::command_calls(&info, "xrange") <= 1,
        "the count search read past the watermark: {info}"
    );
}

/// Retention by count over many passes: 100,000 applied entries and
/// `retention_max_entries = 1000` are trimmed about 10,000 a pass, and end
/// with exactly 1,000 left (the last step trims the rest below the point
/// exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_converges_over_passes() {
    let env = TestEnv::start("trim_converges");
    let o = Overrides {
        partitions: Some(1),
        daemon: "retention_max_entries = 1000\nstats_interval_ms = 100",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let names = Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let mut r = env.redis().await;
    fill(&mut r, &stream, 100_000, 100).await;
    streams::create_group(&mut r, &stream, &group, "$").await;
    let daemon = support::Daemon::start(config.clone());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    support::eventually(Duration::from_secs(60), "1,000 entries left", || {
        let (mut r, stream, seen) = (r.clone(), stream.clone(), seen.clone());
        async move {
            let len = streams::xlen(&mut r, &stream).await;
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&len) {
                seen.push(len);
            }
            (len == 1000).then_some(())
        }
    })
    .await;
    eprintln!("stream lengths seen: {:?}", seen.lock().unwrap());
    daemon.stop().await;
}
