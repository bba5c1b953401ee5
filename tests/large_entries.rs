//! Large entries are read a few at a time. A partition's reader holds no
//! more entry bytes (read, not yet acked) than `daemon.max_in_flight_bytes`
//! plus one entry: the read script takes entries in steps sized by the
//! largest it has seen, and returns no more than fits even when entries grew
//! within a step (the rest stay pending, claimed next). Before, a backlog of
//! 4 MiB documents was read 128 at a time: each read script held Redis for
//! about a second, the leases of every partition lapsed meanwhile, and
//! nothing was applied (docs/operations.md, "Failure modes").
//!
//! `writ rebuild-cache` likewise holds no more than that of documents.
//!
//! In its own test binary: it reads the daemon's gauges from this process's
//! recorder, which no other daemon may share. (Not in the Redis Cluster
//! pass: the rebuild's test holds Redis with a proxy in front of one
//! server.)

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{eventually, own_counter, Daemon, Overrides, TestEnv};
use writ::Writ;

const BOUND: usize = 2 * 1024 * 1024;
const BIG: usize = 512 * 1024;

fn key(kind: &str, i: usize) -> Document {
    doc! {"bucket": kind, "entryKey": format!("k{i}")}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_are_read_within_the_byte_bound() {
    let env = TestEnv::start("large_entries");
    let (proxy, uri) = support::proxy::in_front_of_mongo_pausable(&env.mongo_uri).await;
    let o = Overrides {
        mongo_uri: Some(uri),
        partitions: Some(1),
        daemon: &format!("max_in_flight_bytes = {BOUND}\nblock_ms = 60000"),
        mongo: "op_timeout_ms = 30000",
        client: "max_document_bytes = 1048576",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();

    // The daemon's gauges go to this process's recorder once it exists.
    writ::telemetry::recorder();
    let daemon = Daemon::start(config.clone());
    // The reader is past its start-up claim, and its last read was small.
    measure
        .write(&key("warm", 0), &doc! {"i": -1})
        .await
        .unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let conn = env.redis().await;

    // MongoDB holds the next round, so nothing more is acked: what the
    // reader takes stays in flight. Then 8 small writes and 12 of 512 KiB.
    proxy.pause();
    let pad = "x".repeat(BIG);
    let mut tickets = Vec::new();
    for i in 0..8 {
        let t = measure
            .submit(&key("small", i), &doc! {"i": i as i64})
            .await;
        tickets.push(t.unwrap());
    }
    // Submitted at once, the large ones share the client's admission calls,
    // so they land in the stream together.
    let keys: Vec<Document> = (0..12).map(|i| key("big", i)).collect();
    let bodies: Vec<Document> = (0..12).map(|i| doc! {"i": i as i64, "pad": &pad}).collect();
    let big = keys.iter().zip(&bodies).map(|(k, b)| measure.submit(k, b));
    for t in futures::future::join_all(big).await {
        tickets.push(t.unwrap());
    }
    let label = "partition=\"0\"";
    eventually(
        Duration::from_secs(20),
        "the reader took large entries",
        || {
            let (mut conn, stream, group) = (conn.clone(), stream.clone(), group.clone());
            async move {
                let delivered = support::pending_count(&mut conn, &stream, &group).await;
                (delivered >= 12 && own_counter("writ_inflight_bytes", label) > BIG as f64)
                    .then_some(())
            }
        },
    )
    .await;
    // A negative check needs a window: a reader without the bound takes
    // every entry within milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (entries, bytes) = (
        own_counter("writ_inflight_entries", label),
        own_counter("writ_inflight_bytes", label),
    );
    assert!(
        bytes <= (BOUND + BIG + 1024) as f64,
        "the daemon holds {bytes} bytes of {entries} entries read and not acked, \
         over the bound of {BOUND} plus one entry"
    );
    assert!(
        (9.0..=13.0).contains(&entries),
        "the daemon holds {entries} entries ({bytes} bytes): \
         expected the 8 small ones and 1 to 5 of 512 KiB (fewer: the held \
         MongoDB let a round through, and the bound was not tested)"
    );

    // Once MongoDB answers, everything is applied, in full, in order.
    proxy.go_on();
    for t in tickets {
        t.wait().await.unwrap();
    }
    let docs = env.all_docs("measure").await;
    for (kind, n) in [("small", 8), ("big", 12)] {
        for i in 0..n {
            let k = format!("k{i}");
            let d = docs
                .iter()
                .find(|d| d.get_str("bucket") == Ok(kind) && d.get_str("entryKey") == Ok(&k))
                .unwrap_or_else(|| panic!("{kind} {k} is not in MongoDB"));
            let payload = d.get_document("payload").unwrap();
            assert_eq!(payload.get_i64("i"), Ok(i as i64), "{kind} {k}");
            if kind == "big" {
                assert_eq!(payload.get_str("pad").map(str::len), Ok(BIG), "{kind} {k}");
            }
        }
    }
    eventually(Duration::from_secs(10), "every entry XACKed", || {
        let (mut conn, stream, group) = (conn.clone(), stream.clone(), group.clone());
        async move { (support::pending_count(&mut conn, &stream, &group).await == 0).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(10), "nothing in flight", || async {
        (own_counter("writ_inflight_bytes", label) == 0.0).then_some(())
    })
    .await;
    daemon.stop().await;
}

/// The read script itself: a read or claim returns entries while those
/// before came to less than its bytes (so at least one), leaves the rest
/// pending on the reader, and says where its next claim starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_script_returns_no_more_than_fits() {
    let env = TestEnv::start("large_read_script");
    let o = Overrides {
        partitions: Some(1),
        client: "max_document_bytes = 1048576",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let mut conn = env.redis().await;
    writ::source::ensure_group(&mut conn, &stream, &group)
        .await
        .unwrap();
    // Eight entries of 512 KiB, and no daemon: nothing else reads them.
    let writ = Writ::connect(config.clone()).await.unwrap();
    let measure = writ.collection("measure").unwrap();
    let pad = "x".repeat(BIG);
    let mut ids = Vec::new();
    for i in 0..8 {
        let t = measure
            .submit(&key("script", i), &doc! {"i": i as i64, "pad": &pad})
            .await
            .unwrap();
        ids.push(t.version().to_stream_id());
    }
    let lease = writ::ownership::Leases::new(
        conn.clone(),
        &config.namespace,
        "reader",
        Duration::from_secs(30),
    )
    .try_acquire(0)
    .await
    .unwrap()
    .expect("a free lease");
    let reader = writ::source::FencedReader::new(&names, 0, "reader", lease.token);
    let mib = 1024 * 1024;

    // Asked for 10 within 1 MiB: the script takes a first step of 4, which
    // uses up the bytes, and takes no more; of those, the second entry
    // starts under the bound, the third does not. The four are pending on
    // this reader.
    let r = reader.read(&mut conn, 10, mib).await.unwrap();
    let got: Vec<String> = r.entries.iter().map(|e| e.id.to_stream_id()).collect();
    assert_eq!(got, ids[..2], "a read returns what fits");
    assert_eq!(
        r.more.as_deref(),
        Some(ids[2].as_str()),
        "and says what it kept back"
    );
    assert!(r.full);
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        4,
        "a read takes entries in steps, and stops once their bytes are used"
    );

    // A claim from there returns the rest of them, within the same bound.
    let c = reader.claim(&mut conn, &ids[2], 10, mib).await.unwrap();
    let got: Vec<String> = c.entries.iter().map(|e| e.id.to_stream_id()).collect();
    assert_eq!(got, ids[2..4], "a claim returns what fits");
    assert_eq!(c.next, "0-0");
    assert_eq!(c.delivered.as_deref(), Some(ids[3].as_str()));

    // With one byte, a claim still returns one entry, and goes on after it.
    let c = reader.claim(&mut conn, "0-0", 10, 1).await.unwrap();
    let got: Vec<String> = c.entries.iter().map(|e| e.id.to_stream_id()).collect();
    assert_eq!(got, ids[..1], "at least one entry");
    assert_eq!(
        c.next, ids[1],
        "the next claim starts at the first kept back"
    );
    assert_eq!(c.delivered, None, "the pending list is not done");

    // The reader's calls are sized by the largest entry they saw (512 KiB):
    // within 600 KiB a read takes one, then one more, which crosses the
    // bound. Both are returned, nothing is kept back, and the read says
    // that the bytes, not the stream, ran out: the reader reads on instead
    // of waiting for new entries.
    let r = reader.read(&mut conn, 10, 600 * 1024).await.unwrap();
    let got: Vec<String> = r.entries.iter().map(|e| e.id.to_stream_id()).collect();
    assert_eq!(got, ids[4..6]);
    assert_eq!(r.more, None);
    assert!(r.full, "a read stopped by its bytes says so");
    assert_eq!(support::pending_count(&mut conn, &stream, &group).await, 6);

    // With room for all, a read returns all there is, and is not full.
    let r = reader.read(&mut conn, 10, 64 * mib).await.unwrap();
    let got: Vec<String> = r.entries.iter().map(|e| e.id.to_stream_id()).collect();
    assert_eq!(got, ids[6..], "a read with room returns all there is");
    assert_eq!(r.more, None);
    assert!(!r.full);
}

/// `writ rebuild-cache` holds at most `daemon.max_in_flight_bytes` of
/// documents at once, not 64 of them whatever their size: while Redis is
/// slow (here: held by a proxy for 3 s) the documents it reads from MongoDB
/// pile up in the process. 32 documents of 4 MiB with a 10 MiB budget:
/// before, its peak RSS was 506 MiB (every document read, and its cache
/// entry queued, at once); now about 130 MiB (the driver's batches of up to
/// 16 MiB, the budget, and each document's copies on its way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_cache_holds_at_most_its_byte_budget_of_documents() {
    const DOCS: usize = 32;
    let env = TestEnv::start("rebuild_bytes");
    let dir = tempfile::tempdir().unwrap();
    let (proxy, via) = support::proxy::in_front_of_redis_pausable(&env.redis_url).await;
    let o = Overrides {
        redis_url: Some(via),
        client: "max_document_bytes = 5242880",
        daemon: "max_in_flight_bytes = 10485760",
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let signals = env.mongo_db().await.collection::<Document>("signal");
    let blob = "x".repeat(4 << 20);
    for i in 0..DOCS {
        let mut d =
            doc! {"symbol": format!("B{i}"), "strategyName": "rebuild", "exchangeName": "x"};
        d.insert("payload", doc! {"blob": &blob});
        signals.insert_one(d).await.unwrap();
    }
    let mut child = std::process::Command::new(support::proc::writ_bin())
        .arg("--config")
        .arg(&path)
        .arg("rebuild-cache")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut r = env.redis().await;
    let pattern = format!("{}:*:c:*", env.name);
    let cached = |mut r: writ::redis_conn::Conn| {
        let pattern = pattern.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut r)
                .await
                .unwrap();
            keys.len()
        }
    };
    // Held once the rebuild has begun writing the cache.
    let mut peak_kib = 0;
    while cached(r.clone()).await == 0 {
        peak_kib = peak_kib.max(peak_rss_kib(child.id()));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the rebuild ended before it cached anything"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.pause();
    let held_at = cached(r.clone()).await;
    for _ in 0..150 {
        peak_kib = peak_kib.max(peak_rss_kib(child.id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.go_on();
    assert!(
        held_at < DOCS,
        "the rebuild was done before Redis was held: the test staged nothing"
    );
    while child.try_wait().unwrap().is_none() {
        peak_kib = peak_kib.max(peak_rss_kib(child.id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let sum = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    assert_eq!(sum["stored"].as_u64(), Some(DOCS as u64), "{sum}");
    assert_eq!(cached(r.clone()).await, DOCS);
    assert!(
        peak_kib < 256 * 1024,
        "rebuild-cache peaked at {} MiB with a 10 MiB budget of documents in flight",
        peak_kib / 1024
    );
    let _ = &mut r;
}

/// The peak resident size of process `pid` so far (`VmHWM`), in KiB; 0 once
/// it is gone.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
