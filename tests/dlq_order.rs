//! `writ dlq retry` keeps a letter while an older write of its partition is
//! neither applied nor parked, and `writ replay` starts a partition at such
//! a write when it is older than `--from`.
//!
//! An entry refused at decode (too large, say) is parked at once, while an
//! earlier write of its key may still wait: in a round, through a MongoDB
//! outage, or pending under a daemon that stopped. Retried first, the letter
//! would be applied at its version, and the earlier write would then meet
//! the sequence guard and be skipped as stale: in `insert_once` the letter's
//! value would stand instead of the first one, in the `fields` layout the
//! earlier write's fields would be lost.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::proc::writ_cli;
use support::streams;
use support::{eventually, Daemon, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_waits_for_the_older_writes_of_its_partition() {
    let env = TestEnv::start("dlq_order");
    let dir = tempfile::tempdir().unwrap();
    let config = env.config();
    let path = env.config_file(dir.path(), "");
    let names = writ::protocol::Names::new(&config.namespace);
    let candle = config.collection("candle").unwrap();
    let key_doc = doc! {"symbol": "BTC", "interval": "1m", "timestamp": 1};
    let key = writ::protocol::Key::from_document(&key_doc, candle).unwrap();
    let stream = names.stream(key.partition("candle", config.partitions));
    let group = names.group();
    let key_json = r#"{"symbol":"BTC","interval":"1m","timestamp":1}"#;
    let mut r = env.redis().await;
    // The first and the second write of the key; a daemon read both, parked
    // the second (as it parks an entry refused at decode) and stopped with
    // the first still pending.
    let first =
        support::raw_json_put(&mut r, &stream, "candle", key_json, r#"{"close":1}"#, &[]).await;
    let second =
        support::raw_json_put(&mut r, &stream, "candle", key_json, r#"{"close":2}"#, &[]).await;
    streams::create_group(&mut r, &stream, &group, "0").await;
    streams::deliver_all(&mut r, &stream, &group, "stopped-daemon").await;
    let letter: String = redis::cmd("XADD")
        .arg(names.dead_letters())
        .arg("*")
        .arg("dlq.reason")
        .arg("too_large")
        .arg("dlq.detail")
        .arg("the document is over client.max_document_bytes")
        .arg("dlq.stream")
        .arg(&stream)
        .arg("dlq.id")
        .arg(&second)
        .arg("dlq.attempts")
        .arg(0)
        .arg("dlq.at")
        .arg(0)
        .arg("dlq.partitions")
        .arg(config.partitions)
        .arg("v")
        .arg("1")
        .arg("coll")
        .arg("candle")
        .arg("op")
        .arg("put")
        .arg("enc")
        .arg("json")
        .arg("key")
        .arg(key_json)
        .arg("doc")
        .arg(r#"{"close":2}"#)
        .query_async(&mut r)
        .await
        .unwrap();
    streams::ack(&mut r, &stream, &group, std::slice::from_ref(&second)).await;

    // The first write is still pending: the letter is kept, nothing applied.
    let out = writ_cli(&path, &["dlq", "retry", &letter]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the letter went ahead: {stdout}");
    assert!(
        stdout.contains("unapplied write") && stdout.contains(&first),
        "{stdout}"
    );
    assert!(env.all_docs("candle").await.is_empty());

    // A daemon applies the first write; then the letter is retried.
    let daemon = Daemon::start(config.clone());
    eventually(
        Duration::from_secs(30),
        "the first write applied",
        || async { (env.all_docs("candle").await.len() == 1).then_some(()) },
    )
    .await;
    daemon.stop().await;
    let out = writ_cli(&path, &["dlq", "retry", &letter]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = env.all_docs("candle").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(
        docs[0].get_document("payload").unwrap(),
        &doc! {"close": 1},
        "insert_once: the first write's value stands"
    );
    assert_eq!(
        streams::xlen(&mut r, &names.dead_letters()).await,
        0,
        "the retried letter is removed"
    );
}

/// A replay from a write whose key has an older write no daemon applied yet
/// starts at that older write: applied alone, the newer one would make the
/// older one stale when a daemon reached it (in `insert_once`, the second
/// value would stand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_starts_at_the_oldest_unapplied_write_of_its_partition() {
    let env = TestEnv::start("replay_order");
    let dir = tempfile::tempdir().unwrap();
    let config = env.config();
    let path = env.config_file(dir.path(), "");
    let names = writ::protocol::Names::new(&config.namespace);
    let candle = config.collection("candle").unwrap();
    let key_doc = doc! {"symbol": "ETH", "interval": "1m", "timestamp": 1};
    let key = writ::protocol::Key::from_document(&key_doc, candle).unwrap();
    let p = key.partition("candle", config.partitions);
    let stream = names.stream(p);
    let key_json = r#"{"symbol":"ETH","interval":"1m","timestamp":1}"#;
    let mut r = env.redis().await;
    // Two writes of the key, neither delivered (the daemons are stopped
    // under a backlog); the operator replays from the second.
    let first =
        support::raw_json_put(&mut r, &stream, "candle", key_json, r#"{"close":1}"#, &[]).await;
    let second =
        support::raw_json_put(&mut r, &stream, "candle", key_json, r#"{"close":2}"#, &[]).await;
    streams::create_group(&mut r, &stream, &names.group(), "0").await;

    let out = writ_cli(&path, &["replay", "--from", &second]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let sum: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        sum["started_earlier"][p.to_string()].as_str(),
        Some(first.as_str()),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("partition {p} was replayed from {first}")),
        "{stderr}"
    );
    let docs = env.all_docs("candle").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(
        docs[0].get_document("payload").unwrap(),
        &doc! {"close": 1},
        "insert_once: the first write's value stands"
    );

    // The daemon then finds both applied, and nothing is parked.
    let daemon = Daemon::start(config.clone());
    eventually(Duration::from_secs(30), "the backlog applied", || {
        let out = writ_cli(&path, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let unapplied = v["partitions"][p as usize]["unapplied"].as_u64();
        async move { (unapplied == Some(0)).then_some(()) }
    })
    .await;
    daemon.stop().await;
    let docs = env.all_docs("candle").await;
    assert_eq!(docs[0].get_document("payload").unwrap(), &doc! {"close": 1});
    assert_eq!(streams::xlen(&mut r, &names.dead_letters()).await, 0);
}
