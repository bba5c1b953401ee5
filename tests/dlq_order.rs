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

/// One test's servers and config file, and one candle key of `symbol`
/// (timestamp 1): its partition, that partition's stream, and the key as a
/// raw JSON writer sends it.
struct Scene {
    env: TestEnv,
    _dir: tempfile::TempDir,
    config: writ::config::Config,
    path: std::path::PathBuf,
    names: writ::protocol::Names,
    p: u32,
    stream: String,
    key_json: String,
}

fn scene(test: &str, symbol: &str) -> Scene {
    let env = TestEnv::start(test);
    let dir = tempfile::tempdir().unwrap();
    let config = env.config();
    let path = env.config_file(dir.path(), "");
    let names = writ::protocol::Names::new(&config.namespace);
    let candle = config.collection("candle").unwrap();
    let key_doc = doc! {"symbol": symbol, "interval": "1m", "timestamp": 1};
    let key = writ::protocol::Key::from_document(&key_doc, candle).unwrap();
    let p = key.partition("candle", config.partitions);
    Scene {
        stream: names.stream(p),
        key_json: format!(r#"{{"symbol":"{symbol}","interval":"1m","timestamp":1}}"#),
        env,
        _dir: dir,
        config,
        path,
        names,
        p,
    }
}

/// Parks `id` of `stream` as a daemon parks a write refused at decode (a
/// candle put of `doc`), and returns the dead letter's id.
async fn park(
    r: &mut impl redis::aio::ConnectionLike,
    names: &writ::protocol::Names,
    stream: &str,
    id: &str,
    key_json: &str,
    doc: &str,
    partitions: u32,
) -> String {
    redis::cmd("XADD")
        .arg(names.dead_letters())
        .arg("*")
        .arg("dlq.reason")
        .arg("too_large")
        .arg("dlq.detail")
        .arg("the document is over client.max_document_bytes")
        .arg("dlq.stream")
        .arg(stream)
        .arg("dlq.id")
        .arg(id)
        .arg("dlq.attempts")
        .arg(0)
        .arg("dlq.at")
        .arg(0)
        .arg("dlq.partitions")
        .arg(partitions)
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
        .arg(doc)
        .query_async(r)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_waits_for_the_older_writes_of_its_partition() {
    let s = scene("dlq_order", "BTC");
    let (env, config, path, names, stream) = (&s.env, &s.config, &s.path, &s.names, &s.stream);
    let group = names.group();
    let key_json = s.key_json.as_str();
    let mut r = env.redis().await;
    // The first and the second write of the key; a daemon read both, parked
    // the second (as it parks an entry refused at decode) and stopped with
    // the first still pending.
    let first =
        support::raw_json_put(&mut r, stream, "candle", key_json, r#"{"close":1}"#, &[]).await;
    let second =
        support::raw_json_put(&mut r, stream, "candle", key_json, r#"{"close":2}"#, &[]).await;
    streams::create_group(&mut r, stream, &group, "0").await;
    streams::deliver_all(&mut r, stream, &group, "stopped-daemon").await;
    let letter = park(
        &mut r,
        names,
        stream,
        &second,
        key_json,
        r#"{"close":2}"#,
        config.partitions,
    )
    .await;
    streams::ack(&mut r, stream, &group, std::slice::from_ref(&second)).await;

    // The first write is still pending: the letter is kept, nothing applied.
    let out = writ_cli(path, &["dlq", "retry", &letter]);
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
    let out = writ_cli(path, &["dlq", "retry", &letter]);
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
    let s = scene("replay_order", "ETH");
    let (env, config, path, names, stream, p) =
        (&s.env, &s.config, &s.path, &s.names, &s.stream, s.p);
    let key_json = s.key_json.as_str();
    let mut r = env.redis().await;
    // A bad entry (a collection the config does not declare), then two
    // writes of the key, none delivered (the daemons are stopped under a
    // backlog); the operator replays from the second.
    let bad =
        support::raw_json_put(&mut r, stream, "nowhere", r#"{"k":"x"}"#, r#"{"n":1}"#, &[]).await;
    support::raw_json_put(&mut r, stream, "candle", key_json, r#"{"close":1}"#, &[]).await;
    let second =
        support::raw_json_put(&mut r, stream, "candle", key_json, r#"{"close":2}"#, &[]).await;
    streams::create_group(&mut r, stream, &names.group(), "0").await;

    let out = writ_cli(path, &["replay", "--from", &second]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let sum: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        sum["started_earlier"][p.to_string()].as_str(),
        Some(bad.as_str()),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("partition {p} was replayed from {bad}")),
        "{stderr}"
    );
    // The bad entry, before --from, is named but does not make the replay
    // incomplete (exit 0 above): the daemons park it.
    assert_eq!(sum["rejected"], 0, "{stdout}");
    assert_eq!(
        sum["rejected_before_range"][0]["id"].as_str(),
        Some(bad.as_str()),
        "{stdout}"
    );
    let docs = env.all_docs("candle").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(
        docs[0].get_document("payload").unwrap(),
        &doc! {"close": 1},
        "insert_once: the first write's value stands"
    );

    // The daemon then finds both applied, and parks the bad entry.
    let daemon = Daemon::start(config.clone());
    eventually(Duration::from_secs(30), "the backlog applied", || {
        let out = writ_cli(path, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let unapplied = v["partitions"][p as usize]["unapplied"].as_u64();
        async move { (unapplied == Some(0)).then_some(()) }
    })
    .await;
    daemon.stop().await;
    let docs = env.all_docs("candle").await;
    assert_eq!(docs[0].get_document("payload").unwrap(), &doc! {"close": 1});
    assert_eq!(streams::xlen(&mut r, &names.dead_letters()).await, 1);
}

/// Letters are parked in another order than their writes were made (one
/// refused at decode at once, an earlier write of its key only after its
/// attempts): retried in letter order, the newer write would stand and the
/// older one be skipped as stale. A single retry waits for the older
/// letter; `--all` retries in write order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_are_retried_in_the_order_of_their_writes() {
    let s = scene("dlq_letter_order", "SOL");
    let (env, config, path, names, stream) = (&s.env, &s.config, &s.path, &s.names, &s.stream);
    let candle = config.collection("candle").unwrap();
    let group = names.group();
    let key_json = s.key_json.as_str();
    // Another key of the same partition.
    let other_ts = (2i64..)
        .find(|ts| {
            let d = doc! {"symbol": "SOL", "interval": "1m", "timestamp": *ts};
            let k = writ::protocol::Key::from_document(&d, candle).unwrap();
            names.stream(k.partition("candle", config.partitions)) == *stream
        })
        .unwrap();
    let other_json = format!(r#"{{"symbol":"SOL","interval":"1m","timestamp":{other_ts}}}"#);
    let other_json = other_json.as_str();
    let mut r = env.redis().await;
    let first =
        support::raw_json_put(&mut r, stream, "candle", key_json, r#"{"close":1}"#, &[]).await;
    let second =
        support::raw_json_put(&mut r, stream, "candle", key_json, r#"{"close":2}"#, &[]).await;
    let other =
        support::raw_json_put(&mut r, stream, "candle", other_json, r#"{"close":3}"#, &[]).await;
    streams::create_group(&mut r, stream, &group, "0").await;
    streams::deliver_all(&mut r, stream, &group, "stopped-daemon").await;
    // The second write's letter first, then another key's, then the first's.
    let n = config.partitions;
    let second_letter = park(
        &mut r,
        names,
        stream,
        &second,
        key_json,
        r#"{"close":2}"#,
        n,
    )
    .await;
    let other_letter = park(
        &mut r,
        names,
        stream,
        &other,
        other_json,
        r#"{"close":3}"#,
        n,
    )
    .await;
    let first_letter = park(&mut r, names, stream, &first, key_json, r#"{"close":1}"#, n).await;
    streams::ack(
        &mut r,
        stream,
        &group,
        &[first.clone(), second.clone(), other.clone()],
    )
    .await;

    // Alone, the second write's letter waits for the first's; another key's
    // letter does not.
    let out = writ_cli(path, &["dlq", "retry", &second_letter]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("still failing")
            && stdout.contains(&format!("dead letter {first_letter} parks an older write")),
        "{stdout}"
    );
    assert!(env.all_docs("candle").await.is_empty());
    let out = writ_cli(path, &["dlq", "retry", &other_letter]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // --all: the first write's letter, then the second's (stale).
    let out = writ_cli(path, &["dlq", "retry", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let at = |id: &str| {
        stdout
            .find(id)
            .unwrap_or_else(|| panic!("{id} not retried: {stdout}"))
    };
    assert!(at(&first_letter) < at(&second_letter), "{stdout}");
    let docs = env.all_docs("candle").await;
    let value = |ts: i64| {
        docs.iter()
            .find(|d| {
                d.get("timestamp")
                    .and_then(|t| t.as_i64().or(t.as_i32().map(i64::from)))
                    == Some(ts)
            })
            .and_then(|d| d.get_document("payload").ok().cloned())
    };
    assert_eq!(
        value(1),
        Some(doc! {"close": 1}),
        "insert_once: the first write's value stands: {docs:?}"
    );
    assert_eq!(value(other_ts), Some(doc! {"close": 3}), "{docs:?}");
    assert_eq!(streams::xlen(&mut r, &names.dead_letters()).await, 0);
}
