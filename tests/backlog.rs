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
