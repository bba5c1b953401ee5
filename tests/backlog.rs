//! The unapplied backlog has one definition (src/lua/admit.lua) that status,
//! the daemon's gauge and writers' admission share, and it stays true across
//! Redis restarts. Redis 7.0 replays the daemon's script-issued group reads
//! from the AOF as `XCLAIM ... LASTID`, which moves `last-delivered-id` but not
//! `entries-read`, so XINFO's `lag` stays too high after a restart: a backlog
//! counted from it never drains, and `submit` refuses writes for good.
//! The same fenced read script keeps the count; the last two tests check the
//! reader runs it once per batch of new entries, not twice, and not entry by
//! entry while the keys it read wait for a round.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::load::Load;
use support::proc::{writ_cli, DaemonProc};
use support::{eventually, http_get, listen_port, Overrides, TestEnv};
use writ::Writ;

/// Sum of XINFO GROUPS `lag` over every partition (what the old code used).
async fn lag_sum(url: &str, partitions: u32, ns: &str) -> i64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut sum = 0;
    for p in 0..partitions {
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(format!("{ns}:{{p{p}}}:in"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if let redis::Value::Array(gs) = groups {
            for g in gs {
                if let redis::Value::Array(m) = g {
                    for c in m.chunks(2) {
                        if matches!(&c[0], redis::Value::BulkString(b) if b == b"lag") {
                            if let redis::Value::Int(i) = c[1] {
                                sum += i;
                            }
                        }
                    }
                }
            }
        }
    }
    sum
}

fn gauge_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_stays_true_across_redis_restarts() {
    // Always a harness-owned redis-server with AOF: the test restarts it.
    let mut redis = support::RedisServer::start_with(true);
    let env = TestEnv::start("backlog_restart");
    let metrics_port = listen_port();
    let daemon_lines = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let o = Overrides {
        redis_url: Some(redis.url()),
        daemon: &daemon_lines,
        client: "max_backlog = 50\nwrite_timeout_ms = 20000\nread_timeout_ms = 5000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let _daemon = DaemonProc::start(&path, dir.path(), "backlog-d1");
    let conn_url = redis.url();
    let admin = || async {
        redis::Client::open(conn_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let run_load = |secs: u64| {
        let config = config.clone();
        async move {
            let load = Load::start(
                &config,
                4,
                40,
                Duration::from_millis(2),
                Duration::from_secs(30),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            load.stop().await
        }
    };
    // A bench, an AOF rewrite, another bench, then kill -9 and restart, twice.
    let l1 = run_load(2).await;
    let mut c = admin().await;
    let _: String = redis::cmd("BGREWRITEAOF")
        .query_async(&mut c)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the AOF rewrite to finish", || {
        let mut c = c.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut c)
                .await
                .ok()?;
            info.contains("aof_rewrite_in_progress:0").then_some(())
        }
    })
    .await;
    let l2 = run_load(2).await;
    redis.restart();
    let l3 = run_load(2).await;
    redis.restart();
    let l4 = run_load(2).await;
    let accepted: u64 = [&l1, &l2, &l3, &l4]
        .iter()
        .map(|l| l.accepted_count())
        .sum();
    assert!(accepted > 200, "the load ran: {accepted} writes accepted");
    let db = env.mongo_db().await;
    l4.verify_quiescent(&config, &db, Duration::from_secs(60))
        .await;

    // The true backlog is 0 now. Status says so...
    let status = eventually(Duration::from_secs(30), "status to show no backlog", || {
        let path = path.clone();
        async move {
            let out = writ_cli(&path, &["status", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let total: u64 = v["partitions"]
                .as_array()?
                .iter()
                .map(|p| p["unapplied"].as_u64().unwrap_or(u64::MAX / 8))
                .sum();
            (total == 0).then_some(v)
        }
    })
    .await;
    assert_eq!(status["partitions"].as_array().unwrap().len(), 4);
    // ...the daemon's gauge says so...
    eventually(
        Duration::from_secs(30),
        "the unapplied gauge to read 0",
        || async {
            let (_, body) = http_get(metrics_port, "/metrics")?;
            let has = body.contains("writ_partition_unapplied_entries{");
            (has && gauge_sum(&body, "writ_partition_unapplied_entries") == 0.0).then_some(())
        },
    )
    .await;
    // ...and admission admits a write on every partition (bound 50).
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..200 {
        let key = doc! {"bucket": "admit", "entryKey": format!("k{i}")};
        let k = writ::protocol::Key::from_document(&key, config.collection("measure").unwrap())
            .unwrap();
        if seen.insert(k.partition("measure", config.partitions)) {
            measure
                .submit(&key, &doc! {"i": i})
                .await
                .unwrap_or_else(|e| panic!("admission refused a write with no backlog: {e}"));
        }
        if seen.len() == config.partitions as usize {
            break;
        }
    }
    assert_eq!(seen.len(), config.partitions as usize);
    // What XINFO's lag says now (the old definition): informational, it is
    // Redis's own count and may or may not be off on this Redis version.
    eprintln!(
        "backlog after 2 restarts: {accepted} accepted; XINFO lag sum {} (the true backlog was 0)",
        lag_sum(&conn_url, config.partitions, &config.namespace).await
    );
}

/// Writers keep writing while no daemon reads (a daemon outage). Admission
/// must count the backlog without scanning it on every write: the first count
/// after the group last moved scans the undelivered entries once and is kept
/// in the partition's meta hash; later writes extend it in O(1). (Before, every
/// write re-counted up to `max_backlog` entries with XRANGE, so a long outage
/// made each write cost O(backlog) in Redis.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_counts_once_while_no_daemon_reads() {
    // A redis-server of its own: the command counts are server-wide, and
    // other clients of a shared server (`WRIT_TEST_REDIS_URL`) would add to
    // them.
    let env = TestEnv::start_own_redis("backlog_no_daemon");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let mut conn = env.redis().await;
    // As a daemon that has run before leaves it: every group exists, nothing is read now.
    for p in 0..config.partitions {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(names.stream(p))
            .arg(names.group())
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    support::reset_stats(&mut conn).await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    let writes = 300u64;
    for i in 0..writes {
        let key = doc! {"bucket": "outage", "entryKey": format!("k{}", i % 40)};
        measure.submit(&key, &doc! {"i": i as i64}).await.unwrap();
    }
    let info = support::commandstats(&mut conn).await;
    let scans = support::command_calls(&info, "xrange");
    assert!(
        scans <= config.partitions as u64,
        "admission scanned the backlog {scans} times for {writes} writes on {} partitions",
        config.partitions
    );
    // Nor does it count at all while its kept upper bound (an exact count
    // plus the writes admitted since) is under max_backlog.
    let counts = support::command_calls(&info, "xinfo|stream");
    assert!(
        counts <= config.partitions as u64,
        "admission counted the backlog {counts} times for {writes} writes on {} partitions",
        config.partitions
    );
    // And the count is still exact.
    let mut cm = writ::redis_conn::connect(&env.config(), std::time::Duration::ZERO)
        .await
        .unwrap();
    let mut total = 0;
    for p in 0..config.partitions {
        let b = writ::status::backlog(&mut cm, &names, p, 0).await.unwrap();
        assert_eq!(b.pending, 0);
        assert!(b.exact);
        assert_eq!(b.unapplied, b.undelivered);
        total += b.unapplied;
    }
    assert_eq!(total, writes, "the backlog of {writes} unread writes");
}

/// The reader spends one group read per batch of new entries. A read that
/// delivers fewer entries than it asked for delivered all there were (the
/// read is one atomic script, and only the tenure's reader reads the group),
/// so the reader waits for a newer entry straight away. (Before, it read
/// once more to learn that nothing came: two fenced-read scripts, each
/// running XINFO GROUPS, for every wake-up, which made a daemon under
/// one-at-a-time writes spend about 1.9 group reads per write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_reads_once_per_batch_of_new_entries() {
    // A redis-server of its own: the command counts are server-wide (as in
    // the test above).
    let env = TestEnv::start_own_redis("reads_per_batch");
    // A long block: no idle wake-up adds a read while the test counts.
    let o = Overrides {
        daemon: "block_ms = 60000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = support::Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    // Every partition's reader is past its start-up claim and read.
    for i in 0..16 {
        let key = doc! {"bucket": "warm", "entryKey": format!("k{i}")};
        measure.write(&key, &doc! {"i": i}).await.unwrap();
    }
    let mut conn = env.redis().await;
    support::reset_stats(&mut conn).await;
    let writes = 40u64;
    for i in 0..writes {
        // One at a time: each write is its own batch.
        let key = doc! {"bucket": "one-by-one", "entryKey": format!("k{}", i % 8)};
        measure.write(&key, &doc! {"i": i as i64}).await.unwrap();
    }
    let info = support::commandstats(&mut conn).await;
    let reads = support::command_calls(&info, "xreadgroup");
    assert!(
        reads >= writes && reads <= writes + config.partitions as u64,
        "the daemon made {reads} group reads for {writes} writes written one at a time \
         (one per write expected, plus at most one per partition)"
    );
    daemon.stop().await;
}

/// Under a backlog, a reader that has caught up with its stream does not read
/// entry by entry while the keys it read wait for a round: new entries stay
/// in the stream until a round ends, then come in full reads. Read one by one
/// meanwhile, each cost a fenced read script in Redis (in a 64-writer submit
/// bench, about 8,000 group reads for 80,000 writes before the hold, about
/// 1,100 after).
///
/// MongoDB is held at a proxy, so the partition's round waits there (at most
/// 4 keys; the limiter starts at one operation in flight, so a second round
/// waits for a slot) while more keys wait for a round. Of 40 writes to 40
/// keys, written one at a time, the reader then takes the round's keys, the
/// keys waiting and one more read: about 4 + 4 + 3 (6 to 8 when checked),
/// and 20 allows for a reader that fell behind for a while (its reads came
/// back full, so it did not hold back yet). A reader without the hold reads
/// all 40 within milliseconds (the test fails: checked). Once MongoDB
/// answers again, every write applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holds_back_while_read_keys_wait_for_a_round() {
    let env = TestEnv::start("reader_hold");
    let (proxy, uri) = support::proxy::in_front_of_mongo_pausable(&env.mongo_uri).await;
    // One partition, rounds of at most 4 keys, and an operation timeout that
    // the held rounds do not reach.
    let o = Overrides {
        mongo_uri: Some(uri),
        partitions: Some(1),
        daemon: "batch_size = 4\nblock_ms = 60000",
        mongo: "op_timeout_ms = 30000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = support::Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    // The reader is past its start-up claim.
    measure
        .write(&doc! {"bucket": "warm", "entryKey": "k"}, &doc! {"i": -1})
        .await
        .unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let mut conn = env.redis().await;

    proxy.pause();
    let writes = 40i64;
    let mut tickets = Vec::new();
    for i in 0..writes {
        let key = doc! {"bucket": "held", "entryKey": format!("k{i}")};
        tickets.push(measure.submit(&key, &doc! {"i": i}).await.unwrap());
    }
    // A negative check needs a window: a reader that does not hold back
    // reads each entry within milliseconds of its XADD.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = support::pending_count(&mut conn, &stream, &group).await;
    assert!(
        (1..=20).contains(&delivered),
        "the reader took {delivered} of {writes} entries while its round waited at MongoDB \
         (expected about 11 at most: a round of 4, 4 keys waiting, one more read of up to 3)"
    );

    proxy.go_on();
    for t in tickets {
        t.wait().await.unwrap();
    }
    let docs = env.all_docs("measure").await;
    for i in 0..writes {
        let k = format!("k{i}");
        let d = docs
            .iter()
            .find(|d| d.get_str("bucket") == Ok("held") && d.get_str("entryKey") == Ok(&k))
            .unwrap_or_else(|| panic!("{k} is not in MongoDB"));
        assert_eq!(d.get_document("payload").unwrap().get_i64("i"), Ok(i));
    }
    // On Redis Cluster the XACK follows the acks in a call of its own.
    eventually(Duration::from_secs(10), "every entry XACKed", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { (support::pending_count(&mut conn, &stream, &group).await == 0).then_some(()) }
    })
    .await;
    daemon.stop().await;
}

/// A first start behind writers (the documented order: writers may start
/// before any daemon): the streams hold a backlog, and the daemon makes the
/// groups from the start. Its first group read of each partition, and every
/// count of the backlog after it, must not read the backlog to count it.
/// (Before, the first fenced read of each partition copied every entry after
/// its batch into the script to count them, and each admission until then
/// read up to `max_backlog` of them: with 100,000 large entries, one script
/// holding Redis and its memory for the whole backlog.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_behind_writers_counts_the_backlog_without_reading_it() {
    let env = TestEnv::start("backlog_first_start");
    // Small batches, so every partition's backlog outlasts its first read.
    let o = support::Overrides {
        daemon: "batch_size = 8",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    let writes = 400u64;
    let mut tickets = Vec::new();
    for i in 0..writes {
        let key = doc! {"bucket": "first", "entryKey": format!("k{i}")};
        tickets.push(measure.submit(&key, &doc! {"i": i as i64}).await.unwrap());
    }
    // Every command Redis runs from now on, scripts' commands included (on
    // a cluster, those of the seed node).
    let seed = env.redis_url.split(',').next().unwrap().trim().to_string();
    let monitor = support::monitor::Monitor::start(&[seed], |l| l.contains("\"XRANGE\"")).await;
    let daemon = support::Daemon::start(config.clone());
    // Writers keep writing while the daemon starts.
    for i in 0..40u64 {
        let key = doc! {"bucket": "first", "entryKey": format!("late{i}")};
        tickets.push(measure.submit(&key, &doc! {"i": i as i64}).await.unwrap());
    }
    for t in tickets {
        t.wait().await.unwrap();
    }
    let seen = monitor.finish().await;
    // Bounded looks (the oldest unapplied entry's age: COUNT 1) are fine; a
    // range of a partition stream to its end without COUNT reads it all.
    // Only this test's streams: a shared server's other clients show too.
    let ours = format!("\"{}:{{p", config.namespace);
    let whole: Vec<String> = seen
        .iter()
        .filter(|l| l.contains(&ours) && l.contains(":in\"") && !l.contains("\"COUNT\""))
        .cloned()
        .collect();
    assert!(
        whole.is_empty(),
        "the backlog was read to count it: {whole:?}"
    );
    // And the count is exact: nothing is left.
    let names = writ::protocol::Names::new(&config.namespace);
    let mut cm = writ::redis_conn::connect(&config, std::time::Duration::ZERO)
        .await
        .unwrap();
    for p in 0..config.partitions {
        let b = writ::status::backlog(&mut cm, &names, p, 0).await.unwrap();
        assert_eq!((b.unapplied, b.exact), (0, true), "partition {p}");
    }
    daemon.stop().await;
}

/// A partition whose stream holds entries but has no consumer group (never
/// created, or deleted by hand under a backlog) reports its first entry as
/// the oldest unapplied one, with its age: before, the age was 0, so the
/// lag alert could not fire for a backlog nothing reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_group_ages_its_backlog() {
    let env = TestEnv::start("no_group_age");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let mut conn = env.redis().await;
    // An entry of 2001-09-09 (id 1000000000000-0): old enough to show.
    let _: String = redis::cmd("XADD")
        .arg(names.stream(1))
        .arg("1000000000000-0")
        .arg("v")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let st = writ::status::status(&mut conn, &config.namespace, config.partitions)
        .await
        .unwrap();
    let p = st.partitions.iter().find(|s| s.partition == 1).unwrap();
    assert_eq!(p.unapplied, 1);
    assert_eq!(p.oldest_unapplied.as_deref(), Some("1000000000000-0"));
    assert!(p.oldest_unapplied_age_seconds > 7.0e8, "{p:?}");
    let empty = st.partitions.iter().find(|s| s.partition == 0).unwrap();
    assert_eq!(empty.oldest_unapplied_age_seconds, 0.0);
    assert_eq!(empty.oldest_unapplied, None);
}

/// The slow-log entries of the server behind `conn` (`SLOWLOG GET`): each
/// command's duration in microseconds and its first arguments.
async fn slowlog<C: redis::aio::ConnectionLike>(conn: &mut C) -> Vec<(i64, String)> {
    let v: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100)
        .query_async(conn)
        .await
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(f) if f.len() >= 4 => {
                let micros = match &f[2] {
                    redis::Value::Int(i) => *i,
                    _ => -1,
                };
                let args = match &f[3] {
                    redis::Value::Array(a) => a.iter().take(4).map(text).collect::<Vec<_>>(),
                    _ => Vec::new(),
                };
                Some((micros, args.join(" ")))
            }
            _ => None,
        })
        .collect()
}

/// The partition's `writ status --json` entry.
fn status_of_partition(path: &std::path::Path, p: usize) -> serde_json::Value {
    let out = writ_cli(path, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "writ status --json: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["partitions"][p].clone()
}

/// A large backlog (250,000 undelivered entries) whose meta hash disagrees
/// with the group (an operator's `XGROUP SETID` back to the stream's first
/// entry, and the meta's `at`/`read` lost). The count must never walk the
/// backlog inside a script: that held Redis for 6.4 s at 1M entries (past the
/// lease TTL, so every daemon lost every lease), and the daemon counted every
/// `stats_interval` for every partition. Now `writ status` and the daemon's
/// gauge count at most 1,024 undelivered entries and say the count is a
/// lower bound (`unapplied_at_least`); the owning daemon counts the rest in
/// pages outside any script and mends the meta hash, after which the count
/// is exact and reads no entry at all.
///
/// MongoDB is cut off so the daemon's reader holds (`max_in_flight`
/// entries read, then no more): the group stays where the test put it.
/// Before (checked): the first status walked the whole backlog in one
/// script (SLOWLOG: the script 0.86 s, its XRANGE without COUNT 0.23 s),
/// and said nothing of it. Now: the first status counts 1,024 and says so,
/// the count is exact about 0.7 s later, and nothing takes 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_count_of_a_large_backlog_is_bounded_then_mended() {
    // Its own redis-server: SLOWLOG, MONITOR and the command counts are
    // server-wide.
    let env = TestEnv::start_own_redis("backlog_stale_large");
    let (proxy, proxied) = support::proxy::in_front_of_mongo(&env.mongo_uri).await;
    let o = Overrides {
        mongo_uri: Some(proxied),
        partitions: Some(1),
        daemon: "stats_interval_ms = 200",
        mongo: "op_timeout_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let mut daemon = DaemonProc::start(&path, dir.path(), "stale-d");
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    let key = doc! {"bucket": "stale", "entryKey": "k"};
    measure.write(&key, &doc! {"i": 0}).await.unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, meta, group) = (names.stream(0), names.meta(0), names.group());
    let mut conn = env.redis().await;

    // MongoDB gone: what is added from now on stays unapplied. One write
    // through the client, then 250,000 copies of its entry added raw.
    proxy.cut();
    let _unapplied = measure.submit(&key, &doc! {"i": 1}).await.unwrap();
    let fill = redis::Script::new(
        "local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1] \
         for _ = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', unpack(e[2])) end \
         return 1",
    );
    let copies = 250_000u64;
    for _ in 0..copies / 25_000 {
        let _: i64 = fill
            .key(&stream)
            .arg(25_000)
            .invoke_async(&mut conn)
            .await
            .unwrap();
    }
    // The reader takes its fill (max_in_flight) and holds.
    let mut pending = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = support::pending_count(&mut conn, &stream, &group).await;
        if now == pending {
            break;
        }
        pending = now;
    }
    assert!(
        pending > 0 && pending < 10_000,
        "the reader holds {pending} entries"
    );
    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    let first: redis::Value = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let first = writ::stream::parse_entries(&first)[0].id.to_stream_id();

    // The daemon paused while the meta is made stale and status looks.
    daemon.pause();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(&group)
        .arg(&first)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(&meta)
        .arg("at")
        .arg("read")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Every entry after the first is undelivered now, and the held ones
    // are still pending.
    let truth = pending + len - 1;
    support::config_set(&mut conn, "slowlog-log-slower-than", "50000").await;
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .unwrap();
    let seed = env.redis_url.clone();
    let monitor = support::monitor::Monitor::start(&[seed], |l| l.contains("\"XRANGE\"")).await;
    let at_first = status_of_partition(&path, 0);
    daemon.resume();

    // The owning daemon makes the count exact within a few passes (200 ms).
    let t = std::time::Instant::now();
    let exact = eventually(Duration::from_secs(20), "status to be exact", || {
        let path = path.clone();
        async move {
            let p = status_of_partition(&path, 0);
            (p["unapplied_at_least"] != serde_json::json!(true)
                && p["unapplied"].as_u64() == Some(truth))
            .then_some(p)
        }
    })
    .await;
    let healed_after = t.elapsed();
    // A few more passes: nothing slow, nothing walks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let slow = slowlog(&mut conn).await;
    let seen = monitor.finish().await;
    let ours = format!("\"{stream}\"");
    let count_of = |l: &str| -> Option<u64> {
        let i = l.find("\"COUNT\" \"")? + "\"COUNT\" \"".len();
        l[i..].split('"').next()?.parse().ok()
    };
    let walks: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains(&ours) && count_of(l).is_none_or(|c| c > 10_000))
        .collect();
    let pages = seen.iter().filter(|l| l.contains(&ours)).count();

    // Now the count reads nothing: O(1) from the mended meta hash.
    daemon.kill9();
    support::reset_stats(&mut conn).await;
    let status_form = redis::Script::new(include_str!("../src/lua/admit.lua"));
    let counted: Vec<redis::Value> = status_form
        .key(&stream)
        .key(&meta)
        .arg(&group)
        .arg(0)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let scans = support::command_calls(&support::commandstats(&mut conn).await, "xrange");
    eprintln!(
        "stale count of {truth} unapplied: first status {at_first}; exact after {healed_after:?}; \
         {pages} XRANGEs of the stream meanwhile; slow log {slow:?}; unbounded or large ranges {}",
        walks.len()
    );
    assert_eq!(
        at_first["unapplied_at_least"],
        serde_json::json!(true),
        "the first status after the meta went stale must say its count is a lower bound: {at_first}"
    );
    assert!(
        at_first["unapplied"].as_u64().unwrap() < truth,
        "{at_first}"
    );
    assert!(
        walks.is_empty(),
        "the backlog was read in one range: {:?}",
        walks.iter().take(3).collect::<Vec<_>>()
    );
    assert!(slow.is_empty(), "commands over 50 ms: {slow:?}");
    assert_eq!(exact["unapplied"].as_u64(), Some(truth));
    assert_eq!(
        redis::from_redis_value::<u64>(counted[0].clone()).unwrap(),
        truth
    );
    assert_eq!(scans, 0, "the mended count read entries");
}

/// `n` raw entries added to `stream` (fields `v x`), in one script call.
async fn fill_raw<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    n: u64,
) -> Vec<String> {
    let ids: Vec<String> = redis::Script::new(
        "local out = {} for i = 1, tonumber(ARGV[1]) do \
         out[i] = redis.call('XADD', KEYS[1], '*', 'v', 'x') end return out",
    )
    .key(stream)
    .arg(n)
    .invoke_async(conn)
    .await
    .unwrap();
    ids
}

async fn meta_pair<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    meta: &str,
) -> (Option<String>, Option<u64>) {
    let (at, read): (Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(meta)
        .arg("at")
        .arg("read")
        .query_async(conn)
        .await
        .unwrap();
    (at, read)
}

async fn set_group<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
    id: &str,
) {
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg(group)
        .arg(id)
        .query_async(conn)
        .await
        .unwrap();
}

/// A meta hash a few reads behind its group (its pair is for an older id:
/// a write-back Redis refused at its maxmemory, a small `XGROUP SETID`) is
/// mended by the daemon's next read, however many entries follow: the read
/// carries the pair over, read(before) = read(at) + |(at, before]|, counting
/// at most 1,024 entries. Not when an entry above the pair's id was removed
/// (the carried count would be off by it). Before, the read mended it only
/// when fewer than 128 entries followed the read, so under a backlog the
/// pair stayed stale and every count stopped at its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_hash_a_few_reads_behind_is_mended_at_the_next_read() {
    let env = TestEnv::start("backlog_carry");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let mut conn = env.redis().await;
    let read_script = redis::Script::new(include_str!("../src/lua/fenced_read.lua"));
    for (p, delete) in [(0u32, false), (1, true)] {
        let (stream, meta, group) = (names.stream(p), names.meta(p), names.group());
        let ids = fill_raw(&mut conn, &stream, 2000).await;
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(&group)
            .arg(&ids[99])
            .query_async(&mut conn)
            .await
            .unwrap();
        // The pair as a read that delivered the first 100 entries left it,
        // and the group 300 entries further on.
        let _: () = redis::cmd("HSET")
            .arg(&meta)
            .arg("at")
            .arg(&ids[99])
            .arg("read")
            .arg(100)
            .query_async(&mut conn)
            .await
            .unwrap();
        set_group(&mut conn, &stream, &group, &ids[399]).await;
        if delete {
            let _: u64 = redis::cmd("XDEL")
                .arg(&stream)
                .arg(&ids[199])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let _: () = redis::cmd("SET")
            .arg(names.fence(p))
            .arg("tok")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: redis::Value = read_script
            .key(&stream)
            .key(names.fence(p))
            .key(&meta)
            .arg("tok")
            .arg(&group)
            .arg("c")
            .arg(10)
            .arg("read")
            .arg("")
            .arg(1 << 20)
            .arg(0)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let pair = meta_pair(&mut conn, &meta).await;
        if delete {
            // An entry above the pair's id went: nothing carried over.
            assert_eq!(pair, (Some(ids[99].clone()), Some(100)), "partition {p}");
        } else {
            assert_eq!(pair, (Some(ids[409].clone()), Some(410)), "partition {p}");
            let mut cm = env.redis().await;
            let b = writ::status::backlog(&mut cm, &names, p, 0).await.unwrap();
            assert_eq!((b.undelivered, b.pending, b.exact), (1590, 10, true));
        }
    }
}

/// The mend of `src/heal.rs` step by step: a look, a count in short steps,
/// and the write, which follows a group that moved meanwhile (forward or
/// back, counting the difference), says `moved` when the group went
/// further than it counts, and starts over when an entry that may have been
/// counted was removed; an entry removed below the count does not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mend_follows_the_group_and_starts_over_after_a_removal() {
    use writ::heal::{look, mend, Mend, Mender, Outcome, RangeCount};
    let env = TestEnv::start("backlog_mend");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, meta, group) = (names.stream(0), names.meta(0), names.group());
    let mut conn = env.redis().await;
    let ids = fill_raw(&mut conn, &stream, 25_000).await;
    let id = |i: usize| ids[i].parse::<writ::protocol::Version>().unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg(&ids[99])
        .query_async(&mut conn)
        .await
        .unwrap();
    let count = |b: &writ::status::Backlog| (b.undelivered, b.exact);

    // Looked at with the group after entry 100: 24,900 after it.
    let l = look(&mut conn, &names, 0).await.unwrap();
    assert_eq!(l.last_delivered, Some(id(99)));
    assert_eq!((l.entries_added, l.removed), (25_000, 0));
    let mut c = RangeCount::between(l.last_generated, id(99));
    c.run(&mut conn, &names, 0, u64::MAX).await.unwrap();
    assert!(c.done);
    assert_eq!((c.counted, c.lowest), (24_900, Some(id(100))));
    // Meanwhile the group moved on 50 entries: the mend counts them.
    set_group(&mut conn, &stream, &group, &ids[149]).await;
    let m = mend(&mut conn, &names, 0, id(99), 100, 0, c.lowest)
        .await
        .unwrap();
    assert_eq!(m, Mend::Mended(id(149), 24_850));
    let b = writ::status::backlog(&mut conn, &names, 0, 0)
        .await
        .unwrap();
    assert_eq!(count(&b), (24_850, true));
    // Already agreeing: nothing to write.
    let m = mend(&mut conn, &names, 0, id(99), 100, 0, c.lowest)
        .await
        .unwrap();
    assert_eq!(m, Mend::Fresh);

    // The pair lost and the group moved back: a mender pass mends it.
    let _: () = redis::cmd("DEL")
        .arg(&meta)
        .query_async(&mut conn)
        .await
        .unwrap();
    set_group(&mut conn, &stream, &group, &ids[49]).await;
    let b = writ::status::backlog(&mut conn, &names, 0, 0)
        .await
        .unwrap();
    assert_eq!(count(&b), (1024, false));
    let mut mender = Mender::new();
    assert_eq!(
        mender
            .step(&mut conn, &names, 0, &mut 2_000_000)
            .await
            .unwrap(),
        Outcome::Mended {
            undelivered: 24_950
        }
    );
    let b = writ::status::backlog(&mut conn, &names, 0, 0)
        .await
        .unwrap();
    assert_eq!(count(&b), (24_950, true));

    // A group that went further than the mend script counts (10,000).
    let _: () = redis::cmd("DEL")
        .arg(&meta)
        .query_async(&mut conn)
        .await
        .unwrap();
    set_group(&mut conn, &stream, &group, &ids[20_049]).await;
    let m = mend(&mut conn, &names, 0, id(49), 50, 0, Some(id(50)))
        .await
        .unwrap();
    assert_eq!(m, Mend::Moved(id(20_049)));

    // An entry removed within the count: start over. Below it: fine.
    let l = look(&mut conn, &names, 0).await.unwrap();
    let mut c = RangeCount::between(l.last_generated, id(20_049));
    c.run(&mut conn, &names, 0, u64::MAX).await.unwrap();
    assert_eq!(c.counted, 4950);
    let read = l.entries_added - c.counted;
    let _: u64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&ids[10])
        .query_async(&mut conn)
        .await
        .unwrap();
    let m = mend(&mut conn, &names, 0, id(20_049), read, l.removed, c.lowest)
        .await
        .unwrap();
    assert_eq!(m, Mend::Mended(id(20_049), 4950));
    let _: () = redis::cmd("DEL")
        .arg(&meta)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&ids[22_000])
        .query_async(&mut conn)
        .await
        .unwrap();
    let m = mend(&mut conn, &names, 0, id(20_049), read, l.removed, c.lowest)
        .await
        .unwrap();
    assert_eq!(m, Mend::Removed);
    // The next pass starts over, and counts what is there.
    assert_eq!(
        mender
            .step(&mut conn, &names, 0, &mut 2_000_000)
            .await
            .unwrap(),
        Outcome::Mended { undelivered: 4949 }
    );
}

/// Admission at its bound while the meta hash's pair is stale (20,000
/// undelivered entries behind a group made by hand, no pair): the recount
/// reads at most 1,024 entries, not `max_backlog` (100,000: 0.4 s of Redis
/// per refused write on 7.0 at that size), and decides conservatively. With
/// an upper bound kept at the bound (`est + since`) it refuses, though the
/// backlog may be under the bound (before, it counted 19,999 and admitted);
/// with none (the meta hash lost it) it admits, and keeps the lower bound;
/// a lower bound at or over the bound refuses, exactly. Once the pair is
/// mended (src/heal.rs: the owning daemon does it within a pass) the
/// recount is exact again and the write is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_with_a_stale_count_reads_at_most_1024_entries() {
    let env = TestEnv::start("admission_stale");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, meta, group) = (names.stream(0), names.meta(0), names.group());
    let mut conn = env.redis().await;
    let ids = fill_raw(&mut conn, &stream, 20_000).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg(&ids[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let admit = redis::Script::new(include_str!("../src/lua/admit.lua"));
    let seed = env.redis_url.split(',').next().unwrap().trim().to_string();
    let monitor = support::monitor::Monitor::start(&[seed], |l| l.contains("\"XRANGE\"")).await;
    let keep = |est: u64, since: u64| {
        redis::cmd("HSET")
            .arg(&meta)
            .arg("est")
            .arg(est)
            .arg("since")
            .arg(since)
            .to_owned()
    };
    let kept = |conn: &mut writ::redis_conn::Conn| {
        let mut c = conn.clone();
        let meta = meta.clone();
        async move {
            let v: (Option<u64>, Option<u64>) = redis::cmd("HMGET")
                .arg(&meta)
                .arg("est")
                .arg("since")
                .query_async(&mut c)
                .await
                .unwrap();
            v
        }
    };
    let writer = conn.clone();
    let write = |bound: u64| {
        let (mut c, admit) = (writer.clone(), admit.clone());
        let (stream, meta, group) = (stream.clone(), meta.clone(), group.clone());
        let partitions = config.partitions;
        async move {
            admit
                .key(&stream)
                .key(&meta)
                .arg(&group)
                .arg(bound)
                .arg(partitions)
                .arg("v")
                .arg("y")
                .invoke_async::<String>(&mut c)
                .await
        }
    };

    // An upper bound kept at the bound: refused, on the kept bound.
    let _: () = keep(100_000, 0).query_async(&mut conn).await.unwrap();
    let e = write(100_000).await.unwrap_err();
    assert_eq!(e.code(), Some("BACKPRESSURE"), "{e}");
    assert!(e.to_string().contains("100000"), "{e}");
    // A lower bound at or over the bound: refused, exactly.
    let _: () = keep(1000, 0).query_async(&mut conn).await.unwrap();
    let e = write(1000).await.unwrap_err();
    assert!(
        e.to_string().contains("BACKPRESSURE") && e.to_string().contains("1000"),
        "{e}"
    );
    // No kept bound: admitted, and the lower bound kept.
    let _: () = redis::cmd("HDEL")
        .arg(&meta)
        .arg("est")
        .arg("since")
        .query_async(&mut conn)
        .await
        .unwrap();
    write(100_000).await.unwrap();
    assert_eq!(kept(&mut conn).await, (Some(1024), Some(1)));
    let seen = monitor.finish().await;
    let ours = format!("\"{stream}\"");
    let large: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains(&ours))
        .filter(|l| {
            let count = l
                .find("\"COUNT\" \"")
                .and_then(|i| l[i + 9..].split('"').next()?.parse::<u64>().ok());
            count.is_none_or(|c| c > 1024)
        })
        .collect();
    assert!(
        large.is_empty(),
        "admission read more than 1,024 entries at once: {:?}",
        large.iter().take(3).collect::<Vec<_>>()
    );

    // Mended: exact (20,000 undelivered now), admitted, in O(1).
    let _: () = keep(100_000, 0).query_async(&mut conn).await.unwrap();
    let mut mender = writ::heal::Mender::new();
    assert_eq!(
        mender
            .step(&mut conn, &names, 0, &mut 2_000_000)
            .await
            .unwrap(),
        writ::heal::Outcome::Mended {
            undelivered: 20_000
        }
    );
    write(100_000).await.unwrap();
    assert_eq!(kept(&mut conn).await, (Some(20_000), Some(1)));
}
