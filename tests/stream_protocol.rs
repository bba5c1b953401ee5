//! Raw stream entries: a plain `XADD` that follows docs/protocol.md is applied,
//! and every kind of bad entry is dead-lettered with its reason and original
//! fields while the good writes of the same partition keep committing.
//! These tests use no writ client code to write.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::{eventually, Daemon, TestEnv};

/// docs/protocol.md, written out again: FNV-1a 64 over
/// `collection ++ 0x00 ++ canonical key`, modulo the partition count.
fn partition(collection: &str, canonical: &str, partitions: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in collection.bytes().chain([0u8]).chain(canonical.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h % partitions
}

/// A BSON document nested `levels` deep, `{"a": {"a": ... {}}}`, written
/// out byte by byte (no encoder would build it).
fn nested_bson(levels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + 8 * levels);
    for k in (1..=levels).rev() {
        out.extend_from_slice(&((5 + 8 * k) as i32).to_le_bytes());
        out.extend_from_slice(&[0x03, b'a', 0]);
    }
    out.extend_from_slice(&[5, 0, 0, 0, 0]);
    out.extend(std::iter::repeat_n(0u8, levels));
    out
}

/// Raw entry fields, in order.
type RawEntry = Vec<(String, Vec<u8>)>;

fn fields_of(v: &redis::Value) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let redis::Value::Array(kv) = v {
        for c in kv.chunks(2) {
            let k: String = redis::from_redis_value(c[0].clone()).unwrap();
            let v: Vec<u8> = redis::from_redis_value(c[1].clone()).unwrap();
            out.push((k, v));
        }
    }
    out
}

/// XRANGE as (id, fields).
async fn xrange(
    r: &mut writ::redis_conn::Conn,
    stream: &str,
) -> Vec<(String, HashMap<String, Vec<u8>>)> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(r)
        .await
        .unwrap();
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let redis::Value::Array(parts) = e else {
                panic!()
            };
            let id: String = redis::from_redis_value(parts[0].clone()).unwrap();
            (id, fields_of(&parts[1]).into_iter().collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_xadd_following_the_protocol_is_applied_and_acked() {
    let env = TestEnv::start("raw_xadd");
    let daemon = Daemon::start(env.config());
    let ns = &env.name;
    let mut r = env.redis().await;
    let canonical = r#"["SOLUSDT","grid","okx"]"#;
    let p = partition("signal", canonical, 4);
    let stream = format!("{ns}:{{p{p}}}:in");
    let id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("coll")
        .arg("signal")
        .arg("op")
        .arg("put")
        .arg("enc")
        .arg("json")
        .arg("key")
        .arg(r#"{"symbol":"SOLUSDT","strategyName":"grid","exchangeName":"okx"}"#)
        .arg("doc")
        .arg(r#"{"price": 42.5, "note": "raw"}"#)
        .arg("client")
        .arg("script-1")
        .arg("req")
        .arg("r1")
        .query_async(&mut r)
        .await
        .unwrap();
    // The ack arrives on the client's ack stream.
    let acks = format!("{ns}:ack:script-1");
    let ack = eventually(Duration::from_secs(30), "the ack", || {
        let mut r = r.clone();
        let acks = acks.clone();
        async move { xrange(&mut r, &acks).await.into_iter().next() }
    })
    .await
    .1;
    assert_eq!(ack["req"], b"r1");
    assert_eq!(ack["outcome"], b"applied");
    assert_eq!(ack["v"], id.as_bytes());
    // The cache holds the committed document (BSON) at that version.
    let cache_key = format!("{ns}:{{p{p}}}:c:signal:{canonical}");
    let (v, bytes): (String, Vec<u8>) = redis::cmd("HMGET")
        .arg(&cache_key)
        .arg("v")
        .arg("doc")
        .query_async(&mut r)
        .await
        .unwrap();
    let (ms, seq) = id.split_once('-').unwrap();
    assert_eq!(
        v,
        format!(
            "{:020}-{:020}",
            ms.parse::<u64>().unwrap(),
            seq.parse::<u64>().unwrap()
        )
    );
    let cached = Document::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(
        cached.get_document("payload").unwrap(),
        &doc! {"price": 42.5, "note": "raw"}
    );
    // MongoDB holds it too.
    let d = env
        .mongo_db()
        .await
        .collection::<Document>("signal")
        .find_one(doc! {"symbol": "SOLUSDT", "strategyName": "grid", "exchangeName": "okx"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.get_document("payload").unwrap(),
        &doc! {"price": 42.5, "note": "raw"}
    );
    assert!(!d.get_bool("removed").unwrap());
    // And the Rust client reads it back.
    let writ = writ::Writ::connect(env.config()).await.unwrap();
    let got = writ
        .collection("signal")
        .unwrap()
        .read(&doc! {"symbol": "SOLUSDT", "strategyName": "grid", "exchangeName": "okx"})
        .await
        .unwrap();
    assert_eq!(got, Some(doc! {"price": 42.5, "note": "raw"}));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_dead_lettered_while_good_ones_commit() {
    let env = TestEnv::start("bad_input");
    let daemon = Daemon::start(env.config());
    let ns = env.name.clone();
    let mut r = env.redis().await;
    // One partition for everything: pick good keys that hash to partition 0.
    let good: Vec<String> = (0..200)
        .map(|i| format!("G{i}"))
        .filter(|s| partition("measure", &format!(r#"["b","{s}"]"#), 4) == 0)
        .take(6)
        .collect();
    let stream = format!("{ns}:{{p0}}:in");
    let good_entry = |s: &str, n: i32| -> Vec<(String, Vec<u8>)> {
        vec![
            ("v".into(), b"1".to_vec()),
            ("coll".into(), b"measure".to_vec()),
            ("op".into(), b"put".to_vec()),
            ("enc".into(), b"json".to_vec()),
            (
                "key".into(),
                format!(r#"{{"bucket":"b","entryKey":"{s}"}}"#).into_bytes(),
            ),
            ("doc".into(), format!(r#"{{"n":{n}}}"#).into_bytes()),
        ]
    };
    let base = good_entry(&good[0], 0);
    let with = |name: &str, value: &[u8]| -> Vec<(String, Vec<u8>)> {
        let mut e: Vec<(String, Vec<u8>)> =
            base.iter().filter(|(k, _)| k != name).cloned().collect();
        e.push((name.to_string(), value.to_vec()));
        e
    };
    let bson_doc = mongodb::bson::to_vec(&doc! {"n": 1}).unwrap();
    let bad: Vec<(&str, RawEntry)> = vec![
        ("bad_version", with("v", b"9")),
        ("unknown_collection", with("coll", b"nope")),
        ("key_field", with("key", br#"{"bucket":"b"}"#)),
        (
            "key_field",
            with(
                "key",
                format!(r#"{{"bucket":"b","entryKey":"{}","x":1}}"#, good[0]).as_bytes(),
            ),
        ),
        ("payload", with("doc", b"{not json")),
        ("payload", with("doc", &bson_doc)),
        ("payload", {
            let mut e = with("enc", b"bson");
            e.retain(|(k, _)| k != "key");
            e.push((
                "key".into(),
                mongodb::bson::to_vec(&doc! {"bucket": "b", "entryKey": &good[0]}).unwrap(),
            ));
            e.retain(|(k, _)| k != "doc");
            e.push(("doc".into(), br#"{"n":1}"#.to_vec()));
            e
        }),
        ("malformed", with("surprise", b"1")),
        ("malformed", {
            let mut e = base.clone();
            e.push(("op".into(), b"put".to_vec()));
            e
        }),
        ("payload", with("doc", b"[1,2]")),
        // Nested past MongoDB's 100 levels: as JSON, and as BSON deep enough
        // to overflow a decoder that recurses without a limit (the daemon
        // runs in this process: a crash would end the test).
        (
            "payload",
            with(
                "doc",
                format!("{}{{}}{}", r#"{"a":"#.repeat(101), "}".repeat(101)).as_bytes(),
            ),
        ),
        ("payload", {
            let mut e = with("enc", b"bson");
            e.retain(|(k, _)| k != "key" && k != "doc");
            e.push((
                "key".into(),
                mongodb::bson::to_vec(&doc! {"bucket": "b", "entryKey": &good[0]}).unwrap(),
            ));
            e.push(("doc".into(), nested_bson(50_000)));
            e
        }),
    ];
    let mut n = 0;
    let mut bad_ids = Vec::new();
    // The last value written to each good key.
    let mut last: std::collections::BTreeMap<String, i32> = Default::default();
    for (i, (reason, fields)) in bad.iter().enumerate() {
        let g = &good[(i % (good.len() - 1)) + 1];
        n += 1;
        last.insert(g.clone(), n);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in good_entry(g, n) {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut r).await.unwrap();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v.as_slice());
        }
        let id: String = cmd.query_async(&mut r).await.unwrap();
        bad_ids.push((id, *reason, fields.clone()));
    }
    // A key hashed elsewhere but written to partition 0.
    let misplaced = (0..200)
        .map(|i| format!("M{i}"))
        .find(|s| partition("measure", &format!(r#"["b","{s}"]"#), 4) != 0)
        .unwrap();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&stream).arg("*");
    let misplaced_fields = good_entry(&misplaced, 99);
    for (k, v) in &misplaced_fields {
        cmd.arg(k).arg(v.as_slice());
    }
    let id: String = cmd.query_async(&mut r).await.unwrap();
    bad_ids.push((id, "wrong_partition", misplaced_fields));

    let dlq = format!("{ns}:dlq");
    let parked = eventually(
        Duration::from_secs(60),
        "every bad entry dead-lettered",
        || {
            let (mut r, dlq, want) = (r.clone(), dlq.clone(), bad_ids.len());
            async move {
                let e = xrange(&mut r, &dlq).await;
                (e.len() >= want).then_some(e)
            }
        },
    )
    .await;
    assert_eq!(parked.len(), bad_ids.len());
    for (id, reason, fields) in &bad_ids {
        let (_, entry) = parked
            .iter()
            .find(|(_, f)| f["dlq.id"] == id.as_bytes())
            .unwrap_or_else(|| panic!("{id} ({reason}) not in the dead-letter stream"));
        assert_eq!(
            std::str::from_utf8(&entry["dlq.reason"]).unwrap(),
            *reason,
            "reason of {id}: {}",
            String::from_utf8_lossy(&entry["dlq.detail"])
        );
        assert!(!entry["dlq.detail"].is_empty());
        assert_eq!(entry["dlq.stream"], stream.as_bytes());
        for (k, v) in fields {
            assert_eq!(entry.get(k), Some(v), "original field {k} of {id} kept");
        }
    }
    // Every good write committed, with its last value.
    let coll = env.mongo_db().await.collection::<Document>("measure");
    assert!(last.len() >= 2, "the good writes cover several keys");
    for (g, want) in &last {
        eventually(
            Duration::from_secs(30),
            "the last good write of each key",
            || {
                let coll = coll.clone();
                let g = g.clone();
                async move {
                    let d = coll
                        .find_one(doc! {"bucket": "b", "entryKey": g})
                        .await
                        .unwrap()?;
                    (d.get_document("payload").ok()?.get_i32("n").ok()? == *want).then_some(())
                }
            },
        )
        .await;
    }
    // Nothing stays pending: every entry, good or bad, is acked.
    eventually(Duration::from_secs(30), "no pending entries", || {
        let (mut r, stream, ns) = (r.clone(), stream.clone(), ns.clone());
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&ns)
                .query_async(&mut r)
                .await
                .unwrap();
            let redis::Value::Array(p) = pending else {
                panic!()
            };
            (redis::from_redis_value::<i64>(p[0].clone()).unwrap() == 0).then_some(())
        }
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_the_size_limit_is_dead_lettered_and_the_next_write_applies() {
    let env = TestEnv::start("key_limit");
    let daemon = Daemon::start(env.config());
    let ns = env.name.clone();
    let mut r = env.redis().await;
    // An `entryKey` of `len` bytes whose key of "measure" hashes to partition 0;
    // its canonical key `["b","<entryKey>"]` is `len + 8` bytes.
    let entry_key = |tag: &str, len: usize| -> String {
        (0..1000)
            .map(|i| {
                let head = format!("{tag}{i}-");
                format!("{head}{}", "k".repeat(len - head.len()))
            })
            .find(|s| partition("measure", &format!(r#"["b","{s}"]"#), 4) == 0)
            .unwrap()
    };
    let over = entry_key("over", 1024 - 8 + 1);
    let at_limit = entry_key("at", 1024 - 8);
    let next = entry_key("next", 8);
    let stream = format!("{ns}:{{p0}}:in");
    let mut ids = Vec::new();
    for (req, s) in [("r-over", &over), ("r-at", &at_limit), ("r-next", &next)] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        cmd.arg("v").arg("1").arg("coll").arg("measure");
        cmd.arg("op").arg("put").arg("enc").arg("json");
        cmd.arg("key")
            .arg(format!(r#"{{"bucket":"b","entryKey":"{s}"}}"#));
        cmd.arg("doc").arg(format!(r#"{{"req":"{req}"}}"#));
        cmd.arg("client").arg("limit-1").arg("req").arg(req);
        let id: String = cmd.query_async(&mut r).await.unwrap();
        ids.push(id);
    }
    // Every write is acked: the oversized one as dead-lettered, the others applied.
    let acks = format!("{ns}:ack:limit-1");
    let acks = eventually(Duration::from_secs(60), "three acks", || {
        let (mut r, acks) = (r.clone(), acks.clone());
        async move {
            let a = xrange(&mut r, &acks).await;
            (a.len() >= 3).then_some(a)
        }
    })
    .await;
    let outcome = |req: &str| -> String {
        let (_, a) = acks
            .iter()
            .find(|(_, a)| a["req"] == req.as_bytes())
            .unwrap();
        String::from_utf8(a["outcome"].clone()).unwrap()
    };
    assert_eq!(outcome("r-over"), "dead_lettered");
    assert_eq!(outcome("r-at"), "applied");
    assert_eq!(outcome("r-next"), "applied");
    // The dead letter says why, with the size and the limit.
    let parked = xrange(&mut r, &format!("{ns}:dlq")).await;
    assert_eq!(parked.len(), 1);
    let letter = &parked[0].1;
    assert_eq!(letter["dlq.id"], ids[0].as_bytes());
    assert_eq!(letter["dlq.reason"], b"key_field");
    let detail = String::from_utf8_lossy(&letter["dlq.detail"]).to_string();
    assert!(detail.contains("1025 bytes"), "{detail}");
    assert!(detail.contains("limit of 1024 bytes"), "{detail}");
    // MongoDB holds the two good writes and not the oversized one.
    let coll = env.mongo_db().await.collection::<Document>("measure");
    for (s, want) in [(&at_limit, true), (&next, true), (&over, false)] {
        let d = coll
            .find_one(doc! {"bucket": "b", "entryKey": s})
            .await
            .unwrap();
        assert_eq!(d.is_some(), want, "{}...", &s[..6]);
    }
    daemon.stop().await;
}
