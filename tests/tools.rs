//! Poison writes and the operator tools, through the real `writ` binary:
//! `writ dlq`, `writ replay`, `writ rebuild-cache`; plus backpressure and
//! retention.

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::proc::writ_cli;
use support::{eventually, Daemon, Overrides, TestEnv};
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "tools", "exchangeName": "x"}
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "writ failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_write_is_dead_lettered_and_blocks_nothing() {
    let env = TestEnv::start("poison");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        client: "max_document_bytes = 16777216",
        daemon: "max_attempts = 3\nbackoff_cap_ms = 100",
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("P"), &doc! {"v": 1}).await.unwrap();
    // Within the client's limit, but MongoDB refuses the stored document
    // (payload + key + bookkeeping > 16 MiB) every time.
    let poison = doc! {"blob": "x".repeat(16 * 1024 * 1024 - 64)};
    let t_poison = s.submit(&key("P"), &poison).await.unwrap();
    let t_poison_version = t_poison.version();
    // Not a put right after it: a run of puts is coalesced (only the last
    // applies), which would hide the poison write instead of testing it.
    s.submit_op(&key("P"), writ::protocol::Op::Remove, None)
        .await
        .unwrap();
    let t_later = s.submit(&key("P"), &doc! {"v": 3}).await.unwrap();
    // Another key of the same partition keeps committing meanwhile.
    let q = support::same_partition(&config, "signal", key, "P", "Q", 1).remove(0);
    let t_q = s.submit(&key(&q), &doc! {"q": 1}).await.unwrap();
    let q_version = t_q.version();
    t_q.wait().await.unwrap();
    match t_poison.wait().await {
        Err(Error::DeadLettered { reason }) => {
            assert!(reason.contains("mongo_rejected"), "{reason}")
        }
        other => panic!("poison write should be dead-lettered, got {other:?}"),
    }
    // The later full-state write of the same key is not blocked behind it.
    t_later.wait().await.unwrap();
    assert_eq!(s.read(&key("P")).await.unwrap(), Some(doc! {"v": 3}));
    // The other key was acked before the poison write was given up on: it did
    // not wait behind it (the ack stream is in the daemon's order).
    let order: Vec<String> = support::acks::of_client(&env, writ.client_id())
        .await
        .into_iter()
        .map(|a| a["id"].clone())
        .collect();
    let pos =
        |v: writ::protocol::Version| order.iter().position(|id| *id == v.to_stream_id()).unwrap();
    assert!(
        pos(q_version) < pos(t_poison_version),
        "ack order: {order:?}"
    );

    let letters = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "mongo_rejected");
    assert_eq!(letters[0]["attempts"], "3");
    assert_eq!(
        letters[0]["source_id"],
        t_poison_version.to_stream_id().as_str()
    );
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let shown = json(&writ_cli(&path, &["dlq", "show", &id]));
    assert!(
        shown["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f[0] == "doc"),
        "original fields kept"
    );
    assert!(shown["detail"]
        .as_str()
        .unwrap()
        .contains("MongoDB refused"));
    // Retrying applies at the original version: MongoDB already holds the
    // newer v3, so the guard turns it into a stale no-op and it leaves the
    // dead-letter stream without ever overwriting v3.
    let retry = writ_cli(&path, &["dlq", "retry", &id]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stdout)
    );
    assert!(
        String::from_utf8_lossy(&retry.stdout).contains("stale"),
        "{}",
        String::from_utf8_lossy(&retry.stdout)
    );
    assert_eq!(s.read(&key("P")).await.unwrap(), Some(doc! {"v": 3}));
    assert_eq!(
        json(&writ_cli(&path, &["dlq", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // A poison write that is still the newest of its key keeps failing on
    // retry, stays parked, and can be dropped.
    let t = s.submit(&key("Z"), &poison).await.unwrap();
    assert!(matches!(t.wait().await, Err(Error::DeadLettered { .. })));
    let letters = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let retry = writ_cli(&path, &["dlq", "retry", &id]);
    assert!(
        !retry.status.success(),
        "a retry that fails again reports failure"
    );
    assert!(String::from_utf8_lossy(&retry.stdout).contains("still failing"));
    assert_eq!(
        json(&writ_cli(&path, &["dlq", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(writ_cli(&path, &["dlq", "drop", &id]).status.success());
    assert_eq!(
        json(&writ_cli(&path, &["dlq", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(s.read(&key("Z")).await.unwrap(), None);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_applies_once_the_cause_is_fixed() {
    let env = TestEnv::start("dlq_retry");
    let dir = tempfile::tempdir().unwrap();
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    // Raw writes to a collection the config does not declare yet: two of
    // key k1, then one of k2 added to a partition that is not its own.
    let r = env.redis().await;
    let put = |k: &'static str, n: i32, wrong: bool| {
        let canonical = format!(r#"["{k}"]"#);
        let own = writ::protocol::partition_of("later", &canonical, config.partitions);
        let p = if wrong {
            (own + 1) % config.partitions
        } else {
            own
        };
        let stream = format!("{}:{{p{p}}}:in", env.name);
        let mut r = r.clone();
        async move {
            let id = support::raw_json_put(
                &mut r,
                &stream,
                "later",
                &format!(r#"{{"k":"{k}"}}"#),
                &format!(r#"{{"n":{n}}}"#),
                &[],
            )
            .await;
            // Entry ids are per stream: two partitions can give out the same.
            format!("{stream} {id}")
        }
    };
    let older = put("k1", 7, false).await;
    let newer = put("k1", 8, false).await;
    let misplaced = put("k2", 9, true).await;
    // A raw entry with a field the protocol does not have, named like the
    // dead-letter stream's own fields: refused as malformed.
    let odd: String = {
        let canonical = r#"["k3"]"#;
        let p = writ::protocol::partition_of("later", canonical, config.partitions);
        let stream = format!("{}:{{p{p}}}:in", env.name);
        let id = support::raw_json_put(
            &mut r.clone(),
            &stream,
            "later",
            r#"{"k":"k3"}"#,
            r#"{"n":10}"#,
            &[("dlq.x", "1")],
        )
        .await;
        format!("{stream} {id}")
    };
    let path = env.config_file_with(dir.path(), &Overrides::default());
    let letters = eventually(Duration::from_secs(30), "dead letters", || async {
        let l = json(&writ_cli(&path, &["dlq", "list", "--json"]));
        (l.as_array().unwrap().len() == 4).then_some(l)
    })
    .await;
    let letter_of = |source: &str| {
        letters
            .as_array()
            .unwrap()
            .iter()
            .find(|l| {
                format!(
                    "{} {}",
                    l["source"].as_str().unwrap(),
                    l["source_id"].as_str().unwrap()
                ) == source
            })
            .unwrap_or_else(|| panic!("no letter for {source}: {letters}"))
    };
    for id in [&older, &newer, &misplaced] {
        assert_eq!(letter_of(id)["reason"], "unknown_collection");
    }
    daemon.stop().await;
    // The operator declares the collection and retries, newest first. No
    // daemon ran with it declared, so the retry itself must create the
    // unique key index: without it the older write would be inserted as a
    // second document of k1 instead of being found stale.
    let fixed = env.config_file_with(
        dir.path(),
        &Overrides {
            collections: "[[collections]]\nname = \"later\"\nkey = [\"k\"]",
            ..Default::default()
        },
    );
    let retry = |source: &str| {
        let id = letter_of(source)["id"].as_str().unwrap().to_string();
        writ_cli(&fixed, &["dlq", "retry", &id])
    };
    let out = retry(&newer);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    let out = retry(&older);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stale"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The entry in another partition's stream is refused, as the daemon
    // would refuse it, and stays parked.
    let out = retry(&misplaced);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still failing"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A retry re-adds the writer's fields unchanged, its `dlq.x` included:
    // still refused (before, every `dlq.*` field was dropped, and the entry
    // the daemon refused as malformed was applied).
    assert_eq!(letter_of(&odd)["reason"], "malformed", "{letters}");
    let out = retry(&odd);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("still failing"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let docs: Vec<Document> = env.all_docs("later").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].get_str("k").unwrap(), "k1");
    assert_eq!(docs[0].get_document("payload").unwrap(), &doc! {"n": 8});
    let left = json(&writ_cli(&fixed, &["dlq", "list", "--json"]));
    let mut left: Vec<String> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["source"].as_str().unwrap(),
                l["source_id"].as_str().unwrap()
            )
        })
        .collect();
    left.sort();
    let mut want = [misplaced.clone(), odd.clone()];
    want.sort();
    assert_eq!(left, want, "the letters that still fail stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_cache_and_replay_after_redis_data_loss() {
    let env = TestEnv::start("rebuild");
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &Overrides::default());
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..24i64 {
        s.write(&key(&format!("R{}", i % 8)), &doc! {"i": i})
            .await
            .unwrap();
    }
    daemon.stop().await;
    // Redis loses the cache.
    let mut r = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*:c:*", env.name))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(keys.len(), 8);
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut r)
        .await
        .unwrap();
    // One entry is newer in the cache than in MongoDB (a write in flight): the
    // rebuild must not overwrite it.
    let names = writ::protocol::Names::new(&config.namespace);
    let k0 = writ::protocol::Key::from_document(&key("R0"), config.collection("signal").unwrap())
        .unwrap();
    let k0_cache = names.cache(
        k0.partition("signal", config.partitions),
        "signal",
        &k0.canonical(),
    );
    let cache = writ::cache::Cache::new(
        writ::redis_conn::connect(&config, Duration::ZERO)
            .await
            .unwrap(),
    );
    let far = writ::protocol::Version {
        ms: u64::MAX / 2,
        seq: 0,
    };
    cache
        .put_if_newer(&k0_cache, far, Some(&doc! {"payload": {"i": 999}}))
        .await
        .unwrap();

    let sum = json(&writ_cli(&path, &["rebuild-cache"]));
    assert_eq!(sum["stored"], 7);
    assert_eq!(sum["kept"], 1);
    assert_eq!(cache.get(&k0_cache).await.unwrap().unwrap().version, far);
    let other = Writ::connect(config.clone())
        .await
        .unwrap()
        .collection("signal")
        .unwrap();
    for k in 1..8i64 {
        assert_eq!(
            other.read(&key(&format!("R{k}"))).await.unwrap(),
            Some(doc! {"i": 16 + k})
        );
    }
    // Replay of everything retained is idempotent: nothing is applied again.
    let before: Vec<Document> = env.all_docs("signal").await;
    let sum = json(&writ_cli(
        &path,
        &["replay", "--from", "0-0", "--collection", "signal"],
    ));
    assert_eq!(sum["read"], 24);
    assert_eq!(sum["trimmed"], serde_json::json!([]), "{sum}");
    assert_eq!(sum["outcomes"]["stale"], 24);
    assert!(sum["outcomes"].get("applied").is_none());
    let after: Vec<Document> = env.all_docs("signal").await;
    assert_eq!(before, after);
}

/// `rebuild-cache --since`, the step after a Redis crash that lost its last
/// second (`appendfsync everysec`), over a key hard-deleted in that window:
/// the key reads as deleted afterwards. A delete's tombstone has no
/// `updatedDate`; before, `--since` selected on `updatedDate` alone, left
/// the tombstone out, and every reader kept getting the deleted document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_cache_since_takes_a_hard_delete_in_its_window() {
    let env = TestEnv::start("rebuild_since_delete");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        collections: "[[collections]]\nname = \"session\"\nkey = [\"symbol\"]\ntimestamps = true\n",
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("session").unwrap();
    let gone = doc! {"symbol": "GONE"};
    s.write(&gone, &doc! {"i": 1}).await.unwrap();
    s.write(&doc! {"symbol": "KEPT"}, &doc! {"i": 1})
        .await
        .unwrap();
    let k =
        writ::protocol::Key::from_document(&gone, config.collection("session").unwrap()).unwrap();
    let entry = writ::protocol::Names::new(&config.namespace).cache(
        k.partition("session", config.partitions),
        "session",
        &k.canonical(),
    );
    let mut r = env.redis().await;
    let saved = support::SavedCacheEntry::save(&mut r, &entry).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    s.delete(&gone).await.unwrap();
    daemon.stop().await;
    // Redis lost the delete's cache update: the entry is back at the put.
    saved.restore(&mut r).await;
    let read = || async {
        let w = Writ::connect(config.clone()).await.unwrap();
        w.collection("session").unwrap().read(&gone).await.unwrap()
    };
    assert_eq!(read().await, Some(doc! {"i": 1}), "the lost cache update");
    let sum = json(&writ_cli(
        &path,
        &["rebuild-cache", "--since", &since.to_string()],
    ));
    assert_eq!(
        (&sum["read"], &sum["stored"]),
        (&1.into(), &1.into()),
        "the tombstone alone is in the window: {sum}"
    );
    assert_eq!(read().await, None, "the deleted key after the rebuild");
}

/// Switching back to writ after the official adapter wrote MongoDB: its
/// writes change documents without moving writ's version, so the cache
/// holds the old value at the same version until `rebuild-cache` replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_cache_takes_mongodbs_document_after_another_program_wrote_it() {
    let env = TestEnv::start("rebuild_refresh");
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &Overrides::default());
    let config = env.config();
    let signals = env.mongo_db().await.collection::<Document>("signal");
    // "O" was written by the other program before writ ran: no version.
    let mut official = key("O");
    official.insert("payload", doc! {"i": 0});
    signals.insert_one(official).await.unwrap();
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for k in ["A", "B"] {
        s.write(&key(k), &doc! {"i": 1}).await.unwrap();
    }
    assert_eq!(s.read(&key("O")).await.unwrap(), Some(doc! {"i": 0}));
    daemon.stop().await;

    // The other program changes A and O in MongoDB, as `findOneAndUpdate`
    // with `$set` does: A keeps writ's version, O still has none.
    for k in ["A", "O"] {
        signals
            .update_one(key(k), doc! {"$set": {"payload": {"i": 2}}})
            .await
            .unwrap();
    }
    let reader = || async {
        let w = Writ::connect(config.clone()).await.unwrap();
        let c = w.collection("signal").unwrap();
        let mut out = vec![];
        for k in ["A", "B", "O"] {
            out.push(
                c.read(&key(k))
                    .await
                    .unwrap()
                    .unwrap()
                    .get_i32("i")
                    .unwrap(),
            );
        }
        out
    };
    assert_eq!(
        reader().await,
        vec![1, 1, 0],
        "the cache still holds the old values"
    );

    let sum = json(&writ_cli(&path, &["rebuild-cache"]));
    assert_eq!(
        (&sum["read"], &sum["stored"], &sum["kept"]),
        (&3.into(), &3.into(), &0.into()),
        "{sum}"
    );
    assert_eq!(
        reader().await,
        vec![2, 1, 2],
        "MongoDB's documents after the rebuild"
    );

    // writ's next write to A still goes over it.
    let daemon = Daemon::start(config.clone());
    s.write(&key("A"), &doc! {"i": 3}).await.unwrap();
    assert_eq!(reader().await, vec![3, 1, 2]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_refuses_submits_over_the_backlog_bound() {
    let env = TestEnv::start("backpressure");
    let o = Overrides {
        client: "max_backlog = 5",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut tickets = Vec::new();
    for i in 0..5 {
        tickets.push(s.submit(&key("B"), &doc! {"i": i}).await.unwrap());
    }
    match s.submit(&key("B"), &doc! {"i": 5}).await {
        Err(Error::Backpressure {
            unapplied, limit, ..
        }) => assert_eq!((unapplied, limit), (5, 5)),
        other => panic!("expected backpressure, got {other:?}"),
    }
    // Nothing was evicted: once a daemon runs, all five apply and writes flow again.
    let daemon = Daemon::start(config.clone());
    for t in tickets {
        t.wait().await.unwrap();
    }
    // On Redis Cluster the acks and the XACK go to different nodes, acks
    // first (docs/protocol.md, "The backlog"): for a moment after its acks
    // the five may still count. Backpressure is retryable; within 5 s the
    // write must be admitted.
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match s.write(&key("B"), &doc! {"i": 6}).await {
            Ok(_) => break,
            Err(Error::Backpressure { .. }) if std::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the write after the drain failed: {e:?}"),
        }
    }
    assert_eq!(s.read(&key("B")).await.unwrap(), Some(doc! {"i": 6}));
    daemon.stop().await;
}

/// Sum of a counter's samples in a /metrics text.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn stream_lengths(
    r: &mut writ::redis_conn::Conn,
    names: &writ::protocol::Names,
    partitions: u32,
) -> Vec<u64> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let l: u64 = redis::cmd("XLEN")
            .arg(names.stream(p))
            .query_async(r)
            .await
            .unwrap();
        out.push(l);
    }
    out
}

/// Retention runs while entries are unapplied (MongoDB cut off) and trims
/// the committed entries, never an unapplied one; once MongoDB is back every
/// write is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_only_committed_entries() {
    let env = TestEnv::start("retention");
    let (proxy, proxied) = support::proxy::in_front_of_mongo(&env.mongo_uri).await;
    let port = support::listen_port();
    let daemon_lines = format!(
        "retention_max_entries = 5\nstats_interval_ms = 200\nmetrics_listen = \"127.0.0.1:{port}\""
    );
    let o = Overrides {
        daemon: &daemon_lines,
        mongo: "op_timeout_ms = 1000",
        mongo_uri: Some(proxied),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let _daemon = support::proc::DaemonProc::start(&path, dir.path(), "retention-d");
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    let trimmed = || async {
        let (_, body) = support::http_get(port, "/metrics")?;
        Some(counter_sum(&body, "writ_stream_trimmed_entries_total"))
    };
    // 30 committed writes: retention trims them to 5 per partition.
    for i in 0..30i64 {
        s.write(&key(&format!("T{}", i % 3)), &doc! {"i": i})
            .await
            .unwrap();
    }
    // Trimmed to 5 per partition, and the counter says so: every entry gone
    // is counted (so `t0` below holds no trim still to be counted).
    let t0 = eventually(
        Duration::from_secs(20),
        "committed entries trimmed to 5 per partition, and counted",
        || {
            let mut r = r.clone();
            let names = names.clone();
            async move {
                let ls = stream_lengths(&mut r, &names, 4).await;
                let t = trimmed().await?;
                let gone = 30.0 - ls.iter().sum::<u64>() as f64;
                (ls.iter().all(|l| *l <= 5) && t == gone).then_some(t)
            }
        },
    )
    .await;
    // MongoDB cut off: 40 writes stay unapplied (each key's stream grows).
    // Retention may trim the committed leftovers at any moment from here on,
    // so the unapplied entries are counted from the keys, not from the
    // streams' growth.
    proxy.cut();
    let coll = config.collection("signal").unwrap();
    let mut unapplied = [0u64; 4];
    let mut tickets = Vec::new();
    for i in 0..40i64 {
        let k = key(&format!("U{}", i % 4));
        let p = writ::protocol::Key::from_document(&k, coll)
            .unwrap()
            .partition("signal", config.partitions);
        unapplied[p as usize] += 1;
        tickets.push(s.submit(&k, &doc! {"i": i}).await.unwrap());
    }
    // Retention runs meanwhile: the committed entries left over are trimmed
    // (the counter moves), the unapplied ones are all still there.
    let t1 = eventually(
        Duration::from_secs(20),
        "retention to trim committed entries while 40 are unapplied",
        || async move {
            let t = trimmed().await?;
            (t > t0).then_some(t)
        },
    )
    .await;
    assert!(t1 > t0);
    let during = stream_lengths(&mut r, &names, 4).await;
    for p in 0..4 {
        assert!(
            during[p] >= unapplied[p],
            "partition {p}: {} entries left while {} were unapplied (trimmed an unapplied entry)",
            during[p],
            unapplied[p]
        );
    }
    // MongoDB back: every write applied, the last value of each key read back.
    proxy.heal();
    for t in tickets {
        t.wait().await.unwrap();
    }
    for k in 0..4i64 {
        assert_eq!(
            s.read(&key(&format!("U{k}"))).await.unwrap(),
            Some(doc! {"i": 36 + k})
        );
    }
    // A replay from the beginning says which partitions retention trimmed:
    // their first writes are gone from the streams and were not replayed.
    let out = writ_cli(&path, &["replay", "--from", "0-0"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a replay missing part of its range exits 3 (2 is a usage or config error): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the summary");
    let trimmed = sum["trimmed"].as_array().expect("trimmed").len();
    assert!(trimmed >= 1, "{sum}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retention trimmed them"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The count bound finds its point by reading the oldest entries, payloads
/// included: it reads them in pages, and stops at its pass budget, so a
/// stream of large documents is trimmed over several passes instead of being
/// read whole in one reply (src/retention.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_finds_the_count_point_in_pages_within_its_budget() {
    use writ::retention::{nth_id, Budget};
    let env = TestEnv::start("retention-pages");
    let mut r = env.redis().await;
    let stream = writ::protocol::Names::new(&env.name).stream(0);
    let mut ids = Vec::new();
    for i in 0..60 {
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("doc")
            .arg(vec![b'x'; 50_000])
            .arg("i")
            .arg(i)
            .query_async(&mut r)
            .await
            .unwrap();
        ids.push(id.parse::<writ::protocol::Version>().unwrap());
    }
    // Pages of about 2 entries (120 kB of 50 kB entries).
    let budget = Budget {
        page_bytes: 120_000,
        pass_bytes: 1_000_000,
    };
    for n in [1, 2, 9, 10] {
        let got = nth_id(&mut r, &stream, n, budget).await.unwrap();
        assert_eq!(got, Some(ids[n as usize - 1]), "entry {n}");
    }
    // The pass budget ends the search past 1 MB, at about the 20th entry:
    // a point short of the 50th, which the next pass goes on from.
    let got = nth_id(&mut r, &stream, 50, budget).await.unwrap().unwrap();
    let at = ids.iter().position(|v| *v == got).expect("an entry's id") + 1;
    assert!((20..=23).contains(&at), "stopped at entry {at}");
    // A budget that fits it all: the 50th; past the end: the newest.
    let all = Budget {
        page_bytes: 4 << 20,
        pass_bytes: 64 << 20,
    };
    assert_eq!(
        nth_id(&mut r, &stream, 50, all).await.unwrap(),
        Some(ids[49])
    );
    assert_eq!(
        nth_id(&mut r, &stream, 1000, all).await.unwrap(),
        Some(ids[59])
    );
    let empty = writ::protocol::Names::new(&env.name).stream(1);
    assert_eq!(nth_id(&mut r, &empty, 5, all).await.unwrap(), None);
}

/// Retention by age: committed entries older than `retention_max_age_secs`
/// go even when the count bound is far away (the entry at the committed
/// watermark stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_committed_entries_by_age() {
    let env = TestEnv::start("retention_age");
    let o = Overrides {
        daemon:
            "retention_max_age_secs = 5\nretention_max_entries = 1000000\nstats_interval_ms = 200",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    // The daemon's start (indexes, leases) is not counted in the entries'
    // age: the first write goes out once every partition is owned.
    // (An unowned partition is counted under "".)
    eventually(Duration::from_secs(30), "every partition owned", || async {
        let holders = support::lease_holders(&env, config.partitions).await;
        (!holders.contains_key("")).then_some(())
    })
    .await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..20i64 {
        s.write(&key(&format!("A{}", i % 5)), &doc! {"i": i})
            .await
            .unwrap();
    }
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    let full = stream_lengths(&mut r, &names, 4).await;
    assert_eq!(
        full.iter().sum::<u64>(),
        20,
        "nothing trimmed right after the writes"
    );
    eventually(
        Duration::from_secs(30),
        "entries older than 5 s trimmed",
        || {
            let mut r = r.clone();
            let names = names.clone();
            async move {
                let ls = stream_lengths(&mut r, &names, 4).await;
                ls.iter().all(|l| *l <= 1).then_some(())
            }
        },
    )
    .await;
    for k in 0..5i64 {
        assert_eq!(
            s.read(&key(&format!("A{k}"))).await.unwrap(),
            Some(doc! {"i": 15 + k})
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_edges_empty_dlq_retry_and_a_closed_pipe() {
    let env = TestEnv::start("cli_edges");
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &Overrides::default());
    // Retrying everything in an empty queue is not a failure.
    let out = writ_cli(&path, &["dlq", "retry", "--all"]);
    assert!(
        out.status.success(),
        "dlq retry --all on an empty queue: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A dead-letter id that is not there, and a collection the config does
    // not declare, fail with a line that says so.
    for args in [
        &["dlq", "retry", "1-1"][..],
        &["dlq", "drop", "1-1"],
        &["replay", "--from", "0-0", "--collection", "signa1"],
        &["rebuild-cache", "--collection", "signa1"],
    ] {
        let out = writ_cli(&path, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("no dead letter 1-1") || err.contains("\"signa1\" is not declared"),
            "{args:?}: {err}"
        );
        // A failure says only that: no "dropped 0" beside it.
        assert!(
            out.stdout.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Arguments that cannot be right are refused before Redis is asked, each
    // with one line saying what is wrong.
    for (args, says) in [
        (
            &["dlq", "show", "notanid"][..],
            "\"notanid\" is not a dead-letter id",
        ),
        (&["dlq", "drop", "zzz"], "\"zzz\" is not a dead-letter id"),
        // A bare ms: every letter of that millisecond to `show`, only
        // `ms-0` to `drop`.
        (
            &["dlq", "drop", "1796559839946"],
            "\"1796559839946\" is not a dead-letter id",
        ),
        (&["dlq", "retry", "1-1", "--all"], "cannot be used with"),
        (&["dlq", "retry"], "--all"),
        (&["replay", "--from", "1m", "--to", "2h"], "--to"),
        (
            &["replay", "--from", "999999999999999d"],
            "is not a stream id",
        ),
        (&["replay", "--from", "2026-11"], "is not a stream id"),
    ] {
        let out = writ_cli(&path, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("ResponseError"), "{args:?}: {err}");
        if args[0] == "dlq" {
            // Arguments that do not parse exit 2, as for every command.
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        }
    }
    // `--all` pages through the dead-letter stream (100 letters a page):
    // 250 letters of a collection the config does not declare all fail
    // again and stay, then all go.
    let mut r = env.redis().await;
    for i in 0..250 {
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:dlq", env.name))
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("coll")
            .arg("nowhere")
            .arg("op")
            .arg("put")
            .arg("enc")
            .arg("json")
            .arg("key")
            .arg(format!(r#"{{"k":"{i}"}}"#))
            .arg("doc")
            .arg("{}")
            .arg("dlq.reason")
            .arg("unknown_collection")
            .arg("dlq.stream")
            .arg(format!("{}:{{p0}}:in", env.name))
            .arg("dlq.id")
            .arg(format!("1-{i}"))
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let out = writ_cli(&path, &["dlq", "retry", "--all"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("still failing").count(), 250, "{stdout}");
    let out = writ_cli(&path, &["dlq", "drop", "--all"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dropped 250 dead letters"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let left: u64 = redis::cmd("XLEN")
        .arg(format!("{}:dlq", env.name))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // A reader that goes away (`writ status | head -0`) ends the command
    // quietly, without a panic.
    let mut child = std::process::Command::new(support::proc::writ_bin())
        .arg("--config")
        .arg(&path)
        .args(["status"])
        .env_remove("WRIT_REDIS_URL")
        .env_remove("WRIT_MONGODB_URI")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn a_refused_connection_is_said_once_with_the_url_redacted_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("down.toml");
    let refused = support::refused_port();
    let port = refused.port;
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"redis://:s3cret@127.0.0.1:{port}\"\n[mongodb]\n[[collections]]\nname = \"m\"\nkey = [\"k\"]\n"
        ),
    )
    .unwrap();
    let out = writ_cli(&path, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let line = lines[0];
    assert!(line.contains(&format!("***@127.0.0.1:{port}")), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
    assert!(line.contains("is redis-server running"), "{line}");
    assert_eq!(line.matches("refused").count(), 1, "the cause once: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_deleted_key_stays_deleted_through_replay() {
    let env = TestEnv::start("delete_replay");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides::default();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let put = s.write(&key("D"), &doc! {"v": 1}).await.unwrap();
    s.write(&key("E"), &doc! {"v": 1}).await.unwrap();
    s.delete(&key("D")).await.unwrap();
    // Re-apply a range that holds D's put but not its later delete.
    let to = put.to_stream_id();
    let out = writ_cli(&path, &["replay", "--from", "0-0", "--to", &to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // MongoDB does not hold D's payload again, and a cold cache agrees.
    let d = env.all_docs("signal").await;
    let back: Vec<&Document> = d
        .iter()
        .filter(|x| x.get_str("symbol") == Ok("D") && x.contains_key("payload"))
        .collect();
    assert!(back.is_empty(), "the deleted key came back: {back:?}");
    let mut r = env.redis().await;
    let pattern = format!("{}:*:c:signal:*", env.name);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut r)
        .await
        .unwrap();
    for k in keys {
        let _: () = redis::cmd("DEL").arg(k).query_async(&mut r).await.unwrap();
    }
    let cold = Writ::connect(config.clone()).await.unwrap();
    let c = cold.collection("signal").unwrap();
    assert_eq!(c.read(&key("D")).await.unwrap(), None);
    assert_eq!(c.count().await.unwrap(), 1);
    daemon.stop().await;
}

/// `replay` applies with the daemon's routine: through a MongoDB outage it
/// waits and retries instead of giving up on the first refused connection,
/// then applies every entry at its own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_waits_through_a_mongodb_outage() {
    let env = TestEnv::start("replay_outage");
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    let s = Writ::connect(config.clone())
        .await
        .unwrap()
        .collection("signal")
        .unwrap();
    for i in 0..6i64 {
        s.write(&key(&format!("O{i}")), &doc! {"i": i})
            .await
            .unwrap();
    }
    daemon.stop().await;
    // MongoDB comes back from an older backup: the documents are gone, the
    // stream still retains their writes.
    let signal = env.mongo_db().await.collection::<Document>("signal");
    signal.delete_many(doc! {}).await.unwrap();

    let (proxy, proxied) = support::proxy::in_front_of_mongo(&env.mongo_uri).await;
    let o = Overrides {
        mongo_uri: Some(proxied),
        daemon: "backoff_cap_ms = 500",
        ..Default::default()
    };
    let tools = writ::tools::Tools::connect(env.config_with(&o))
        .await
        .unwrap();
    proxy.cut();
    let replay = tokio::spawn(async move {
        let sum = tools
            .replay(writ::protocol::Version { ms: 0, seq: 0 }, None, None)
            .await;
        (tools, sum)
    });
    // Longer than the driver's 5 s server selection: a single attempt would
    // have failed by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !replay.is_finished(),
        "replay gave up during the outage: {:?}",
        replay.await.unwrap().1
    );
    proxy.heal();
    let (_tools, sum) = tokio::time::timeout(Duration::from_secs(60), replay)
        .await
        .expect("replay finishes once MongoDB is back")
        .unwrap();
    let sum = sum.unwrap();
    assert_eq!(sum.read, 6);
    assert_eq!(sum.outcomes.get("applied"), Some(&6), "{sum:?}");
    assert_eq!(signal.count_documents(doc! {}).await.unwrap(), 6);
    for i in 0..6i64 {
        assert_eq!(
            s.read(&key(&format!("O{i}"))).await.unwrap(),
            Some(doc! {"i": i})
        );
    }
}

/// `replay` and `dlq drop --all` read large entries a few at a time: one
/// `XRANGE` reply is built whole in Redis (which serves nobody else
/// meanwhile) and held whole by the tool, and entries and letters hold whole
/// documents. Before, replay asked for 500 entries a page and `--all` for
/// 100 letters, whatever their size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_dlq_all_read_large_entries_a_few_at_a_time() {
    const BIG: usize = 1 << 20;
    let env = TestEnv::start("tools_large_pages");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        partitions: Some(1),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let daemon = Daemon::start(config.clone());
    // 12 writes of 1 MiB to a collection the config does not declare: parked,
    // and kept in the partition stream by retention.
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    let doc = format!(r#"{{"s":"{}"}}"#, "x".repeat(BIG));
    for i in 0..12 {
        let key = format!(r#"{{"k":"big{i}"}}"#);
        support::raw_json_put(&mut r, &names.stream(0), "later", &key, &doc, &[]).await;
    }
    eventually(Duration::from_secs(60), "12 dead letters", || {
        let mut r = r.clone();
        let dlq = names.dead_letters();
        async move {
            let n: u64 = redis::cmd("XLEN").arg(dlq).query_async(&mut r).await.ok()?;
            (n == 12).then_some(())
        }
    })
    .await;
    daemon.stop().await;
    // Every XRANGE Redis runs from now on, on the nodes of the partition
    // stream and of the dead-letter stream (one node unless on a cluster).
    let mut nodes = vec![node_of(&env, &names.stream(0)).await];
    let dlq_node = node_of(&env, &names.dead_letters()).await;
    if dlq_node != nodes[0] {
        nodes.push(dlq_node);
    }
    let monitor = support::monitor::Monitor::start(&nodes, |l| l.contains("\"XRANGE\"")).await;
    let out = writ_cli(&path, &["replay", "--from", "0-0"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "12 rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each is named, with its reason.
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let named = sum["rejections"].as_array().unwrap();
    assert_eq!(named.len(), 12, "{sum}");
    assert!(
        named.iter().all(|r| r["partition"] == 0
            && r["id"].as_str().is_some_and(|id| id.contains('-'))
            && r["reason"].as_str().unwrap().contains("unknown_collection")),
        "{sum}"
    );
    let out = writ_cli(&path, &["dlq", "drop", "--all"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dropped 12"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every XRANGE the nodes ran until now (MONITOR shows them in order).
    let ns = format!("\"{}:", config.namespace);
    let lines: Vec<String> = monitor
        .finish()
        .await
        .into_iter()
        .filter(|l| l.contains(&ns))
        .collect();
    let count_of = |l: &str| -> u64 {
        let at = l.find("\"COUNT\" \"").map(|i| i + 9).unwrap_or(0);
        l[at..]
            .split('"')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    for (what, marker) in [("replay", ":in\""), ("dlq drop --all", ":dlq\"")] {
        let pages: Vec<u64> = lines
            .iter()
            .filter(|l| l.contains(marker) && l.contains("\"COUNT\""))
            .map(|l| count_of(l))
            .collect();
        assert!(pages.len() >= 3, "{what}: pages {pages:?}\n{lines:#?}");
        assert!(
            pages.iter().all(|&n| n <= 4),
            "{what} asked for more 1 MiB entries than fit in 4 MiB: {pages:?}"
        );
    }
}

/// The URL of the Redis node that serves `key`: the one server, or on a
/// cluster the master of its slot.
async fn node_of(env: &TestEnv, key: &str) -> String {
    let seed = env.redis_url.split(',').next().unwrap().trim().to_string();
    if !env.is_cluster() {
        return seed;
    }
    let mut c = redis::Client::open(seed.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .unwrap();
    for range in ranges {
        let redis::Value::Array(r) = range else {
            continue;
        };
        let (first, last): (u16, u16) = (
            redis::from_redis_value(r[0].clone()).unwrap(),
            redis::from_redis_value(r[1].clone()).unwrap(),
        );
        if (first..=last).contains(&slot) {
            let redis::Value::Array(master) = &r[2] else {
                break;
            };
            let host: String = redis::from_redis_value(master[0].clone()).unwrap();
            let port: u16 = redis::from_redis_value(master[1].clone()).unwrap();
            return format!("redis://{host}:{port}");
        }
    }
    panic!("no master serves the slot of {key}")
}

/// In the `fields` layout a put sets only the fields it sends, so a dead
/// letter found stale (a newer write of its key applied first) is not
/// redundant: `dlq retry` keeps it and says what to do, instead of removing
/// it with its fields never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_keeps_a_stale_fields_layout_letter() {
    let env = TestEnv::start("dlq_fields_stale");
    let dir = tempfile::tempdir().unwrap();
    let config = env.config();
    let daemon = Daemon::start(config.clone());
    // Two puts of one key to a collection not declared yet: both parked.
    let canonical = r#"["k1"]"#;
    let p = writ::protocol::partition_of("rows", canonical, config.partitions);
    let stream = format!("{}:{{p{p}}}:in", env.name);
    let mut r = env.redis().await;
    let older =
        support::raw_json_put(&mut r, &stream, "rows", r#"{"k":"k1"}"#, r#"{"a":1}"#, &[]).await;
    let newer =
        support::raw_json_put(&mut r, &stream, "rows", r#"{"k":"k1"}"#, r#"{"b":2}"#, &[]).await;
    let path = env.config_file_with(dir.path(), &Overrides::default());
    let letters = eventually(Duration::from_secs(30), "two dead letters", || async {
        let l = json(&writ_cli(&path, &["dlq", "list", "--json"]));
        (l.as_array().unwrap().len() == 2).then_some(l)
    })
    .await;
    daemon.stop().await;
    let letter_of = |source_id: &str| {
        letters
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source_id"].as_str() == Some(source_id))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let fixed = env.config_file_with(
        dir.path(),
        &Overrides {
            collections: "[[collections]]\nname = \"rows\"\nkey = [\"k\"]\nlayout = \"fields\"",
            ..Default::default()
        },
    );
    // The newer first: kept, since the older letter of its key waits (in
    // the `fields` layout their order matters).
    let out = writ_cli(&fixed, &["dlq", "retry", &letter_of(&newer)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success() && text.contains("parks an older write of the same key"),
        "{text}"
    );
    // The operator drops it and the writer sends it again: a daemon with the
    // collection declared applies it ahead of the older letter.
    let out = writ_cli(&fixed, &["dlq", "drop", &letter_of(&newer)]);
    assert!(out.status.success());
    let daemon = Daemon::start(env.config_with(&Overrides {
        collections: "[[collections]]\nname = \"rows\"\nkey = [\"k\"]\nlayout = \"fields\"",
        ..Default::default()
    }));
    support::raw_json_put(&mut r, &stream, "rows", r#"{"k":"k1"}"#, r#"{"b":2}"#, &[]).await;
    eventually(
        Duration::from_secs(30),
        "the resent write applied",
        || async {
            let docs: Vec<Document> = env.all_docs("rows").await;
            (docs.len() == 1).then_some(())
        },
    )
    .await;
    daemon.stop().await;
    // The older is stale, and its field `a` is not in the document: kept.
    let kept = letter_of(&older);
    let out = writ_cli(&fixed, &["dlq", "retry", &kept]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("kept") && text.contains("fields"), "{text}");
    let left = json(&writ_cli(&fixed, &["dlq", "list", "--json"]));
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [kept.as_str()]);
    let docs: Vec<Document> = env.all_docs("rows").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].get_i32("b").unwrap(), 2, "{docs:?}");
    assert!(!docs[0].contains_key("a"), "{docs:?}");
}

/// In `insert_once` the first value stands: a letter found stale because a
/// later write of its key inserted it first is not redundant (its value came
/// first), so `dlq retry` keeps it and says what to do. Before, it was
/// removed as stale: a write neither applied nor parked (helper-115).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_keeps_a_stale_insert_once_letter() {
    let env = TestEnv::start("dlq_once_stale");
    let dir = tempfile::tempdir().unwrap();
    let (letter, declared) = park_an_insert_once_put(&env).await;
    let mut r = env.redis().await;
    let daemon = Daemon::start(env.config_with(&declared));
    support::raw_json_put(
        &mut r,
        &once_stream(&env),
        "firsts",
        r#"{"k":"k1"}"#,
        r#"{"b":2}"#,
        &[],
    )
    .await;
    eventually(Duration::from_secs(30), "the later put applied", || async {
        (env.all_docs("firsts").await.len() == 1).then_some(())
    })
    .await;
    daemon.stop().await;
    let fixed = env.config_file_with(dir.path(), &declared);
    let out = writ_cli(&fixed, &["dlq", "retry", &letter]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("kept") && text.contains("insert_once"),
        "{text}"
    );
    // A soft `remove` would not do: a removed insert_once key ignores puts.
    assert!(
        text.contains("hard-delete the key (`delete`, not `remove`"),
        "{text}"
    );
    let left = json(&writ_cli(&fixed, &["dlq", "list", "--json"]));
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [letter.as_str()]);
}

/// The same parked insert_once put, but the later write is a hard delete:
/// in write order the key ends deleted, so the letter is superseded and
/// dropped, and the key stays deleted. Before, it was kept with advice to
/// write its value again, which would have revived the deleted key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_drops_a_letter_a_later_delete_superseded() {
    let env = TestEnv::start("dlq_once_deleted");
    let dir = tempfile::tempdir().unwrap();
    let (letter, declared) = park_an_insert_once_put(&env).await;
    let config = env.config_with(&declared);
    let daemon = Daemon::start(config.clone());
    let writ = writ::Writ::connect(config).await.unwrap();
    let key = doc! {"k": "k1"};
    writ.collection("firsts")
        .unwrap()
        .delete(&key)
        .await
        .unwrap();
    daemon.stop().await;
    let fixed = env.config_file_with(dir.path(), &declared);
    let out = writ_cli(&fixed, &["dlq", "retry", &letter]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("stale") && text.contains("removed"), "{text}");
    let left = json(&writ_cli(&fixed, &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 0, "{left}");
    assert_eq!(
        writ.collection("firsts").unwrap().read(&key).await.unwrap(),
        None
    );
}

/// The stream of key `k1` of collection `firsts`.
fn once_stream(env: &TestEnv) -> String {
    let p = writ::protocol::partition_of("firsts", r#"["k1"]"#, env.config().partitions);
    format!("{}:{{p{p}}}:in", env.name)
}

/// Parks a put of `firsts`/`k1` (`{"a":1}`) by writing it while the
/// collection is not declared; returns its letter's id and the overrides
/// that declare `firsts` as insert_once.
async fn park_an_insert_once_put(env: &TestEnv) -> (String, Overrides<'static>) {
    let parked = park_puts(env, "firsts", &[r#"{"a":1}"#]).await;
    let declared = Overrides {
        collections: "[[collections]]\nname = \"firsts\"\nkey = [\"k\"]\nmode = \"insert_once\"",
        ..Default::default()
    };
    (parked[0].1.clone(), declared)
}

/// `writ dlq drop --all` stops at a signal (it catches SIGINT, SIGTERM and
/// SIGHUP to stop cleanly): the letters it has not dropped yet stay, and it
/// exits 1. Here Redis is frozen (SIGSTOP) while the drop is under way, so
/// the SIGINT lands mid-drop whatever the machine's speed. Before, the drop
/// loop never looked at the stop: Ctrl-C was swallowed and every letter
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_drop_all_stops_at_a_signal() {
    // Enough pages (100 letters each) that the drop cannot finish between
    // the poll that sees it under way and the pause.
    const LETTERS: usize = 100_000;
    let env = TestEnv::start("dlq_drop_signal");
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        redis_url: Some(redis.url()),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let dlq = writ::protocol::Names::new(&config.namespace).dead_letters();
    let mut r = redis.connect().await;
    for _ in 0..LETTERS / 1000 {
        let mut pipe = redis::pipe();
        for _ in 0..1000 {
            pipe.cmd("XADD")
                .arg(&dlq)
                .arg("*")
                .arg("dlq.reason")
                .arg("payload")
                .ignore();
        }
        let _: () = pipe.query_async(&mut r).await.unwrap();
    }
    let len = |mut r: redis::aio::MultiplexedConnection, dlq: String| async move {
        redis::cmd("XLEN")
            .arg(dlq)
            .query_async::<usize>(&mut r)
            .await
            .unwrap()
    };
    let drop_all = std::process::Command::new(support::proc::writ_bin())
        .arg("--config")
        .arg(&path)
        .args(["dlq", "drop", "--all"])
        .env_remove("WRIT_REDIS_URL")
        .env_remove("WRIT_MONGODB_URI")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the drop under way", || {
        let (r, dlq) = (r.clone(), dlq.clone());
        async move { (len(r, dlq).await < LETTERS).then_some(()) }
    })
    .await;
    support::pause::pause(redis.pid());
    support::pause::signal(drop_all.id(), libc::SIGINT);
    support::pause::resume(redis.pid());
    let out = tokio::task::spawn_blocking(move || drop_all.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let left = len(r.clone(), dlq.clone()).await;
    assert!(
        left > 0,
        "every letter dropped after the signal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("stopped by a signal"), "{said}");
}

const ROWS_FIELDS: &str = "[[collections]]\nname = \"rows\"\nkey = [\"k\"]\nlayout = \"fields\"";

/// The overrides that declare [`ROWS_FIELDS`].
fn rows_declared() -> Overrides<'static> {
    Overrides {
        collections: ROWS_FIELDS,
        ..Default::default()
    }
}

/// Puts of `coll`/`k1` (raw JSON, one per document) written while `coll`
/// is not declared: each is parked. Their entry ids and letter ids.
async fn park_puts(env: &TestEnv, coll: &str, docs: &[&str]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let p = writ::protocol::partition_of(coll, r#"["k1"]"#, env.config().partitions);
    let stream = format!("{}:{{p{p}}}:in", env.name);
    let mut r = env.redis().await;
    let daemon = Daemon::start(env.config());
    let mut ids = Vec::new();
    for d in docs {
        ids.push(support::raw_json_put(&mut r, &stream, coll, r#"{"k":"k1"}"#, d, &[]).await);
    }
    let path = env.config_file_with(dir.path(), &Overrides::default());
    let letters = eventually(Duration::from_secs(30), "the dead letters", || async {
        let l = json(&writ_cli(&path, &["dlq", "list", "--json"]));
        (l.as_array().unwrap().len() == docs.len()).then_some(l)
    })
    .await;
    daemon.stop().await;
    ids.into_iter()
        .map(|id| {
            let letter = letters
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["source_id"].as_str() == Some(id.as_str()))
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            (id, letter)
        })
        .collect()
}

/// [`park_puts`] of `rows`.
async fn park_rows_puts(env: &TestEnv, docs: &[&str]) -> Vec<(String, String)> {
    park_puts(env, "rows", docs).await
}

/// `writ replay` of a parked fields-layout put that a newer put of its key
/// overtook: its fields were never written, so the replay is incomplete
/// (exit 3) and names the letter, which stays. Before, it counted the entry
/// `stale` ("MongoDB already held it") and exited 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_overtaken_parked_write_is_not_called_stale() {
    let env = TestEnv::start("replay_overtaken");
    let dir = tempfile::tempdir().unwrap();
    let parked = park_rows_puts(&env, &[r#"{"a":1}"#]).await;
    let (entry, letter) = &parked[0];
    let declared = rows_declared();
    let daemon = Daemon::start(env.config_with(&declared));
    let writ = Writ::connect(env.config_with(&declared)).await.unwrap();
    let rows = writ.collection("rows").unwrap();
    rows.write(&doc! {"k": "k1"}, &doc! {"b": 2}).await.unwrap();
    daemon.stop().await;
    let path = env.config_file_with(dir.path(), &declared);
    let out = writ_cli(&path, &["replay", "--from", entry]);
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{sum}");
    assert_eq!(sum["rejected"].as_u64(), Some(1), "{sum}");
    let reason = sum["rejections"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(letter.as_str()) && reason.contains("kept"),
        "{reason}"
    );
    let left = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
}

/// `writ replay` of parked writes it applies removes their letters, as
/// `dlq retry` would. Before, they stayed, and a later `dlq retry --all`
/// found the first stale behind the second and reported both as still
/// failing (exit 1) although both were applied in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_removes_the_letters_of_the_parked_writes_it_applies() {
    let env = TestEnv::start("replay_letters");
    let dir = tempfile::tempdir().unwrap();
    let parked = park_rows_puts(&env, &[r#"{"a":1}"#, r#"{"b":2}"#]).await;
    let path = env.config_file_with(dir.path(), &rows_declared());
    let sum = json(&writ_cli(&path, &["replay", "--from", &parked[0].0]));
    assert_eq!(sum["letters_dropped"].as_u64(), Some(2), "{sum}");
    assert_eq!(sum["outcomes"]["applied"].as_u64(), Some(2), "{sum}");
    let left = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 0, "{left}");
    let out = writ_cli(&path, &["dlq", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let docs = env.all_docs("rows").await;
    assert_eq!(docs.len(), 1);
    let payload = docs[0].clone();
    assert!(
        payload.get("a").is_some() && payload.get("b").is_some(),
        "{payload:?}"
    );
}

/// `writ replay` of a window holding the second of two parked puts of a
/// `fields`-layout key, the first parked before the window: as `dlq retry`
/// keeps such a letter, the replay does not apply the second (its write
/// would overtake the first, whose fields would then never be written), and
/// says to retry the older letter first (exit 3). Both letters stay, and
/// `dlq retry --all` then applies both in order. Before, the replay applied
/// the second and dropped its letter, leaving the first overtaken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_a_parked_write_an_older_letter_of_its_key_waits_for() {
    let env = TestEnv::start("replay_older_letter");
    let dir = tempfile::tempdir().unwrap();
    let parked = park_rows_puts(&env, &[r#"{"a":1}"#, r#"{"b":2}"#]).await;
    let path = env.config_file_with(dir.path(), &rows_declared());
    let out = writ_cli(&path, &["replay", "--from", &parked[1].0]);
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{sum}");
    assert_eq!(sum["rejected"].as_u64(), Some(1), "{sum}");
    let why = sum["rejections"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains(&parked[0].1) && why.contains("older write of the same key"),
        "{why}"
    );
    assert_eq!(sum["letters_dropped"].as_u64(), Some(0), "{sum}");
    assert!(env.all_docs("rows").await.is_empty(), "the replay wrote");
    let left = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 2, "{left}");
    let out = writ_cli(&path, &["dlq", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let docs = env.all_docs("rows").await;
    assert_eq!(docs.len(), 1);
    assert!(
        docs[0].get("a").is_some() && docs[0].get("b").is_some(),
        "{:?}",
        docs[0]
    );
}

/// Ctrl-C while `dlq retry` waits inside an apply (MongoDB does not answer;
/// here a proxy holds the write) says what state it leaves and what to do,
/// not only "shutting down"; the letter stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_stopped_inside_an_apply_says_what_to_do() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use support::mongo_proxy::{collection_of, Act, MongoProxy};
    let env = TestEnv::start("dlq_retry_signal");
    let dir = tempfile::tempdir().unwrap();
    let parked = park_rows_puts(&env, &[r#"{"a":1}"#]).await;
    let held = std::sync::Arc::new(AtomicUsize::new(0));
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let proxy = {
        let held = held.clone();
        MongoProxy::start(target, move |cmd: Document| {
            let hold = collection_of(&cmd) == Some("rows") && cmd.contains_key("findAndModify");
            let held = held.clone();
            async move {
                if hold {
                    held.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Act::Pass
            }
        })
        .await
    };
    let path = env.config_file_with(
        dir.path(),
        &Overrides {
            collections: ROWS_FIELDS,
            mongo_uri: Some(proxy.uri(&env.mongo_uri)),
            ..Default::default()
        },
    );
    let child = std::process::Command::new(support::proc::writ_bin())
        .arg("--config")
        .arg(&path)
        .args(["dlq", "retry", &parked[0].1])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the retry's write held",
        || async { (held.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    support::pause::signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stopped by a signal while retrying a letter")
            && err.contains("run the retry again"),
        "{err}"
    );
    let left = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
}

/// A parked fields-layout put whose key was written and then soft-removed
/// after it: in write order the key ends removed too, so `dlq retry` drops
/// the letter as stale, and the key stays removed. Before, the letter was
/// kept with advice to write its fields again, which would have revived the
/// removed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_drops_a_letter_of_a_key_removed_since() {
    let env = TestEnv::start("dlq_fields_removed");
    let dir = tempfile::tempdir().unwrap();
    let parked = park_rows_puts(&env, &[r#"{"a":1}"#]).await;
    let declared = rows_declared();
    let daemon = Daemon::start(env.config_with(&declared));
    let writ = Writ::connect(env.config_with(&declared)).await.unwrap();
    let rows = writ.collection("rows").unwrap();
    let key = doc! {"k": "k1"};
    rows.write(&key, &doc! {"b": 2}).await.unwrap();
    rows.remove(&key).await.unwrap();
    daemon.stop().await;
    let path = env.config_file_with(dir.path(), &declared);
    let out = writ_cli(&path, &["dlq", "retry", &parked[0].1]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("stale"), "{text}");
    let left = json(&writ_cli(&path, &["dlq", "list", "--json"]));
    assert_eq!(left.as_array().unwrap().len(), 0, "{left}");
    assert_eq!(rows.read(&key).await.unwrap(), None);
}

/// `writ replay` removes only the letters of the entry's own write: after a
/// failover a promoted replica may give a lost entry's id to another write.
/// Staged by hand: a write parked (its letter names the entry's id), then
/// the stream replaced by one holding another write at that id. Replaying
/// that other write must leave the parked one's letter. Before, letters
/// went by stream and id alone, and replay dropped it: the parked write
/// left no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_the_letter_of_another_write_at_the_same_id() {
    let env = TestEnv::start("replay_reused_id");
    let dir = tempfile::tempdir().unwrap();
    let p = writ::protocol::partition_of("rows", r#"["k1"]"#, env.config().partitions);
    let stream = format!("{}:{{p{p}}}:in", env.name);
    let mut r = env.redis().await;
    let daemon = Daemon::start(env.config());
    let id = support::raw_json_put(
        &mut r,
        &stream,
        "rows",
        r#"{"k":"k1"}"#,
        r#"{"a":1}"#,
        &[("client", "first"), ("req", "1")],
    )
    .await;
    let path = env.config_file_with(dir.path(), &Overrides::default());
    eventually(Duration::from_secs(30), "the dead letter", || async {
        let l = json(&writ_cli(&path, &["dlq", "list", "--json"]));
        (l.as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    daemon.stop().await;
    // The stream comes back from a replica that never had that entry, and
    // gives its id to another client's write.
    let _: u64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg(&id)
        .arg("v")
        .arg("1")
        .arg("coll")
        .arg("rows")
        .arg("op")
        .arg("put")
        .arg("enc")
        .arg("json")
        .arg("key")
        .arg(r#"{"k":"k1"}"#)
        .arg("doc")
        .arg(r#"{"b":2}"#)
        .arg("client")
        .arg("second")
        .arg("req")
        .arg("1")
        .query_async(&mut r)
        .await
        .unwrap();
    let fixed = env.config_file_with(dir.path(), &rows_declared());
    let sum = json(&writ_cli(&fixed, &["replay", "--from", &id]));
    assert_eq!(sum["outcomes"]["applied"].as_u64(), Some(1), "{sum}");
    assert_eq!(sum["letters_dropped"].as_u64(), Some(0), "{sum}");
    let left = json(&writ_cli(&fixed, &["dlq", "list", "--json"]));
    assert_eq!(
        left.as_array().unwrap().len(),
        1,
        "the parked write's letter: {left}"
    );
}
