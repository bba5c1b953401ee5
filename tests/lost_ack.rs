//! A lost ack must not wedge a handle: `keys`, `values` and `count` settle a
//! pending write by the cache version, as `read` does, and forget it.

mod support;

use mongodb::bson::doc;
use support::hook_proxy::HookProxy;
use support::streams::{self, create_groups, trim_all};
use support::{Daemon, Overrides, TestEnv};
use writ::Writ;

/// Sets this handle's ack stream key to a string: the daemon cannot ack the
/// handle (it logs and skips the acks), but applies and caches its writes.
async fn block_acks(env: &TestEnv, writ: &Writ) {
    let mut r = env.redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:ack:{}", env.name, writ.client_id()))
        .arg("not a stream")
        .query_async(&mut r)
        .await
        .unwrap();
}

/// Makes the dead-letter stream unwritable but readable: a stream whose
/// last id is the last possible one, so the daemon's `XADD *` fails (its
/// refused entries wait, pending, to be parked) while a look's `XRANGE`
/// reads it. `DEL` it to let the letters in.
async fn unwritable_dead_letters(r: &mut writ::redis_conn::Conn, names: &writ::protocol::Names) {
    let _: String = redis::cmd("XADD")
        .arg(names.dead_letters())
        .arg("18446744073709551615-18446744073709551615")
        .arg("placeholder")
        .arg("1")
        .query_async(r)
        .await
        .unwrap();
}

/// Waits until another handle reads `want` at `signal` key `key` (the
/// daemon applied and cached it, whatever became of its ack).
async fn read_by_another(
    config: &writ::Config,
    key: &mongodb::bson::Document,
    want: mongodb::bson::Document,
) {
    support::eventually(
        std::time::Duration::from_secs(30),
        "the write to be cached",
        || {
            let (config, key, want) = (config.clone(), key.clone(), want.clone());
            async move {
                let r = writ::Writ::connect(config).await.ok()?;
                let got = r.collection("signal").ok()?.read(&key).await.ok()?;
                (got == Some(want)).then_some(())
            }
        },
    )
    .await;
}

/// The cache entry of a `signal` key.
fn cache_entry(config: &writ::Config, key: &mongodb::bson::Document) -> String {
    let k = writ::protocol::Key::from_document(key, config.collection("signal").unwrap()).unwrap();
    writ::protocol::Names::new(&config.namespace).cache(
        k.partition("signal", config.partitions),
        "signal",
        &k.canonical(),
    )
}

/// The stored document of `key` with payload `{v}` at version `at`.
fn stored(
    key: &mongodb::bson::Document,
    v: i32,
    at: writ::protocol::Version,
) -> mongodb::bson::Document {
    let mut d = key.clone();
    d.insert("payload", doc! {"v": v});
    d.insert("_writ", doc! {"v": at.to_sortable()});
    d
}

/// Adds the daemon's `applied` ack of `request` at `version` by hand.
async fn send_applied_ack(
    env: &TestEnv,
    writ: &Writ,
    request: &str,
    version: writ::protocol::Version,
) {
    use writ::ack::{Ack, Outcome};
    let ack = Ack {
        request: request.into(),
        outcome: Outcome::Applied,
        version,
        entry: version,
        reason: None,
    };
    let mut conn = env.redis().await;
    for call in Ack::commands([(writ.client_id(), &ack)], |c| {
        format!("{}:ack:{c}", env.name)
    }) {
        let _: redis::Value = call.invocation().invoke_async(&mut conn).await.unwrap();
    }
}

/// A `signal` key of the dead-letter tests.
fn dl_signal(symbol: &str) -> mongodb::bson::Document {
    doc! {"symbol": symbol, "strategyName": "dl", "exchangeName": "x"}
}

/// With `writ`'s acks blocked, per key of `keys`: a write the daemon applies
/// (`{v: 1}`), then one it dead-letters for good (a payload `u` of "taken"
/// collides on a second unique index). Starts a daemon, and returns it once
/// every poison write is dead-lettered and no entry is pending in the group.
async fn applied_then_dead_lettered(
    env: &TestEnv,
    config: &writ::Config,
    writ: &Writ,
    keys: &[&str],
) -> Daemon {
    env.poison_payload_u("signal", dl_signal("HOLDER"), "taken")
        .await;
    block_acks(env, writ).await;
    let s = writ.collection("signal").unwrap();
    for k in keys {
        drop(s.submit(&dl_signal(k), &doc! {"v": 1}).await.unwrap());
        drop(s.submit(&dl_signal(k), &doc! {"u": "taken"}).await.unwrap());
    }
    assert_eq!(writ.unacked(), 2 * keys.len());
    let daemon = Daemon::start(config.clone());
    let names = writ::protocol::Names::new(&config.namespace);
    let streams: Vec<String> = (0..config.partitions).map(|p| names.stream(p)).collect();
    let r = env.redis().await;
    support::eventually(
        std::time::Duration::from_secs(60),
        "every poison write to be dead-lettered and nothing pending",
        || {
            let (mut r, dlq, streams) = (r.clone(), names.dead_letters(), streams.clone());
            let group = names.group();
            async move {
                let n: usize = redis::cmd("XLEN")
                    .arg(&dlq)
                    .query_async(&mut r)
                    .await
                    .ok()?;
                for stream in &streams {
                    let p: redis::Value = redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(&group)
                        .query_async(&mut r)
                        .await
                        .ok()?;
                    let redis::Value::Array(summary) = p else {
                        return None;
                    };
                    (summary.first() == Some(&redis::Value::Int(0))).then_some(())?;
                }
                (n >= keys.len()).then_some(())
            }
        },
    )
    .await;
    daemon
}

/// A test env, its config with `client` lines added to `[client]`, and a
/// handle on it.
async fn handle_with(name: &str, client: &str) -> (TestEnv, writ::Config, Writ) {
    handle_on(TestEnv::start(name), client).await
}

/// The same on a given env.
async fn handle_on(env: TestEnv, client: &str) -> (TestEnv, writ::Config, Writ) {
    let config = env.config_with(&Overrides {
        client,
        ..Default::default()
    });
    let writ = Writ::connect(config.clone()).await.unwrap();
    (env, config, writ)
}

/// The partition stream of a `signal` key.
fn signal_stream(config: &writ::Config, key: &mongodb::bson::Document) -> String {
    let k = writ::protocol::Key::from_document(key, config.collection("signal").unwrap()).unwrap();
    writ::protocol::Names::new(&config.namespace).stream(k.partition("signal", config.partitions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_does_not_wedge_lists() {
    let env = TestEnv::start("lost_ack");
    let o = Overrides {
        client: "read_timeout_ms = 3000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    // The ack stream's key holds something else: the daemon cannot ack this
    // handle (it logs and skips the acks), but applies and caches its writes.
    block_acks(&env, &writ).await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "LOST", "strategyName": "ack", "exchangeName": "x"};
    // Two writes whose tickets are dropped (nobody waits for their acks),
    // and one whose ticket is kept.
    let key2 = doc! {"symbol": "LOST2", "strategyName": "ack", "exchangeName": "x"};
    drop(s.submit(&key2, &doc! {"v": 2}).await.unwrap());
    let key3 = doc! {"symbol": "LOST3", "strategyName": "ack", "exchangeName": "x"};
    drop(s.submit(&key3, &doc! {"v": 3}).await.unwrap());
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    assert_eq!(writ.unacked(), 3);
    let daemon = Daemon::start(config.clone());
    // The write is applied and cached although its ack never arrives.
    support::eventually(
        std::time::Duration::from_secs(30),
        "the writes to be cached",
        || {
            let (config, keys) = (config.clone(), [key.clone(), key2.clone(), key3.clone()]);
            async move {
                for k in &keys {
                    support::cached(&config, "signal", k).await?;
                }
                Some(())
            }
        },
    )
    .await;
    // Settled from the cache, a write nobody waits for (its ticket dropped)
    // is forgotten: by a read, then by a list. The one whose ticket is kept
    // still waits for its ack. Before, every lost ack stayed for the life of
    // the handle.
    assert_eq!(s.read(&key2).await.unwrap(), Some(doc! {"v": 2}));
    assert_eq!(writ.unacked(), 2, "the read forgot its settled write");
    assert_eq!(
        s.count().await.unwrap(),
        3,
        "count settles by the cache version"
    );
    assert_eq!(writ.unacked(), 1, "only the kept ticket's write is unacked");
    assert_eq!(s.keys().await.unwrap().len(), 3);
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 1}));
    assert_eq!(writ.unacked(), 1);
    // Its ticket dropped later, it goes too.
    drop(ticket);
    assert_eq!(writ.unacked(), 0);
    daemon.stop().await;
}

/// The daemon writes the cache before it sends the ack. A read in between
/// settles the pending write for reads, and the ticket must still get its
/// ack (it used to end with `Shutdown`: the read dropped the ack's sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_between_the_cache_write_and_the_ack_leaves_the_ticket_its_ack() {
    let env = TestEnv::start("read_before_ack");
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "RACE", "strategyName": "ack", "exchangeName": "x"};
    // No daemon: play its two steps by hand.
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let v = ticket.version();
    let entry = cache_entry(&config, &key);
    let cache = writ::cache::Cache::new(env.redis().await);
    assert!(cache
        .put_if_newer(&entry, v, Some(&stored(&key, 1, v)))
        .await
        .unwrap());
    let r = s.read_record(&key).await.unwrap().unwrap();
    assert_eq!(r.version, v);
    // The first request id of a handle is "1".
    send_applied_ack(&env, &writ, "1", v).await;
    let got = ticket
        .wait_for(std::time::Duration::from_secs(10))
        .await
        .expect("the ticket gets its ack");
    assert_eq!(got, v);
}

/// A dead-lettered write whose ack was lost (here the ack stream's key holds
/// another type, so the daemon skips every ack of this handle) must not
/// wedge reads of its key, nor lists of its collection, for the life of the
/// handle: the cache never reaches its version, so only the streams can say
/// what became of it (docs/protocol.md §5). After one wait of
/// `client.read_timeout_ms`, the handle settles it from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_of_a_dead_lettered_write_is_settled_from_the_streams() {
    let env = TestEnv::start("lost_dl_ack");
    let o = Overrides {
        client: "read_timeout_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let daemon = applied_then_dead_lettered(&env, &config, &writ, &["READ", "LIST"]).await;
    let s = writ.collection("signal").unwrap();
    // A read: its key reads as the write that was applied; a list: its
    // collection lists. Without the look at the streams both time out, and
    // go on timing out.
    assert_eq!(
        s.read(&dl_signal("READ")).await.unwrap(),
        Some(doc! {"v": 1})
    );
    let keys = s.keys().await.unwrap();
    assert!(keys.contains(&dl_signal("LIST")), "{keys:?}");
    assert_eq!(
        s.read(&dl_signal("LIST")).await.unwrap(),
        Some(doc! {"v": 1})
    );
    assert_eq!(writ.unacked(), 0, "every write settled");
    daemon.stop().await;
}

/// Two writes of one `signal` key, by a handle whose read timeout is a
/// minute, with no daemon (its steps by hand, in env `name`): the older is
/// applied and cached and its ack is lost; 200 ms after `call` (given the
/// collection and the key) starts, the newer is applied (in MongoDB and the
/// cache) and acked. Returns what `call` returned; fails if it took 20 s,
/// having waited for the older write's lost ack.
async fn with_an_older_lost_ack<T, F, Fut>(name: &str, call: F) -> T
where
    F: FnOnce(writ::Collection, mongodb::bson::Document) -> Fut,
    Fut: std::future::Future<Output = writ::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let env = TestEnv::start(name);
    let o = Overrides {
        client: "read_timeout_ms = 60000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "NEWEST", "strategyName": "ack", "exchangeName": "x"};
    // Requests "1" and "2".
    let older = s.submit(&key, &doc! {"v": 1}).await.unwrap().version();
    let newer = s.submit(&key, &doc! {"v": 2}).await.unwrap().version();
    let entry = cache_entry(&config, &key);
    let cache = writ::cache::Cache::new(env.redis().await);
    assert!(cache
        .put_if_newer(&entry, older, Some(&stored(&key, 1, older)))
        .await
        .unwrap());
    let call = tokio::spawn(call(s, key.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    env.mongo_db()
        .await
        .collection::<mongodb::bson::Document>("signal")
        .insert_one(stored(&key, 2, newer))
        .await
        .unwrap();
    assert!(cache
        .put_if_newer(&entry, newer, Some(&stored(&key, 2, newer)))
        .await
        .unwrap());
    send_applied_ack(&env, &writ, "2", newer).await;
    tokio::time::timeout(std::time::Duration::from_secs(20), call)
        .await
        .expect("the call waited for the older write's lost ack")
        .unwrap()
        .unwrap()
}

/// A read waits for its key's pending writes newest first: once the newest
/// is acked committed, the cache holds it, and an older write whose ack was
/// lost is not waited for (before, the read waited out
/// `client.read_timeout_ms` on the older one, here a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_does_not_wait_for_an_older_lost_ack_once_a_newer_write_is_acked() {
    let got =
        with_an_older_lost_ack("newest_first", |s, key| async move { s.read(&key).await }).await;
    assert_eq!(got, Some(doc! {"v": 2}));
}

/// A list waits for each key's pending writes newest first, as a read does
/// (before, it waited for them oldest first, and so waited out
/// `client.read_timeout_ms` on the older one's lost ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_does_not_wait_for_an_older_lost_ack_once_a_newer_write_is_acked() {
    let got =
        with_an_older_lost_ack("newest_first_list", |s, _| async move { s.values().await }).await;
    let payloads: Vec<_> = got.into_iter().map(|(_, payload)| payload).collect();
    assert_eq!(payloads, vec![doc! {"v": 2}]);
}

/// `read_many` reads its keys that have writes of this handle pending all at
/// once: each waits at most `client.read_timeout_ms` before it looks at the
/// streams, and so does the call (before, it read them one after another:
/// here five keys whose acks were lost, five waits of 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_many_waits_for_its_pending_keys_together() {
    let env = TestEnv::start("read_many_pending");
    let timeout = std::time::Duration::from_millis(4000);
    let o = Overrides {
        client: "read_timeout_ms = 4000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let names = ["RM0", "RM1", "RM2", "RM3", "RM4"];
    let daemon = applied_then_dead_lettered(&env, &config, &writ, &names).await;
    let s = writ.collection("signal").unwrap();
    let keys: Vec<_> = names.iter().map(|n| dl_signal(n)).collect();
    let start = std::time::Instant::now();
    let got = s.read_many(&keys).await.unwrap();
    let took = start.elapsed();
    assert_eq!(got, vec![Some(doc! {"v": 1}); names.len()]);
    assert_eq!(writ.unacked(), 0, "every write settled");
    assert!(
        took < timeout * 3,
        "read_many took {took:?} for {} keys with a {timeout:?} read timeout each",
        names.len()
    );
    daemon.stop().await;
}

/// A read whose wait for its key's pending writes timed out looks at the
/// streams in id order, and stops at the first write the daemon is not done
/// with: it cannot be done with any later one either. With no daemon, a key
/// with 100 pending writes costs one look, not 100 (each a few round trips,
/// one after another, on every read of the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overdue_look_stops_at_the_first_write_the_daemon_is_not_done_with() {
    let env = TestEnv::start("overdue_stop");
    let o = Overrides {
        client: "read_timeout_ms = 300",
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "S", "strategyName": "stop", "exchangeName": "x"};
    let writes = 100;
    for v in 0..writes {
        drop(s.submit(&key, &doc! {"v": v}).await.unwrap());
    }
    let looks = || async {
        let mut conn = env.redis().await;
        support::command_calls(&support::commandstats(&mut conn).await, "xrevrange")
    };
    let before = looks().await;
    let err = s.read(&key).await.unwrap_err();
    assert!(matches!(err, writ::Error::Timeout { .. }), "{err}");
    let looked = looks().await - before;
    assert!(
        (1..=2).contains(&looked),
        "the read looked up {looked} entries for its {writes} pending writes (one expected)"
    );
    assert_eq!(writ.unacked(), writes as usize, "nothing settled");
}

/// A list whose wait for the handle's pending writes timed out settles
/// overdue acks key by key only until one key is found not done: the call
/// fails then anyway. With no daemon and 20 keys pending, one key is looked
/// at, not 20 (each a few round trips, one after another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_stops_settling_at_the_first_key_not_done() {
    let env = TestEnv::start("list_settle_stop");
    let o = Overrides {
        client: "read_timeout_ms = 300",
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let keys = 20;
    for k in 0..keys {
        let key = doc! {"symbol": format!("L{k}"), "strategyName": "list", "exchangeName": "x"};
        drop(s.submit(&key, &doc! {"v": k}).await.unwrap());
    }
    let looks = || async {
        let mut conn = env.redis().await;
        support::command_calls(&support::commandstats(&mut conn).await, "xrevrange")
    };
    let before = looks().await;
    let err = s.list(&doc! {}).await.unwrap_err();
    assert!(matches!(err, writ::Error::Timeout { .. }), "{err}");
    let looked = looks().await - before;
    assert!(
        (1..=2).contains(&looked),
        "the list looked up {looked} entries for its {keys} pending keys (one expected)"
    );
}

/// The same after retention trimmed the entry before any read looked: the
/// handle knows its write was added (its admission returned the id), and with
/// no entry at or before it left, the stream was trimmed from the front, as
/// retention trims, below what the group passed. Before, a gone entry stayed
/// unknown, and every read of its key timed out for the life of the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_of_a_dead_lettered_write_is_settled_after_its_entry_was_trimmed() {
    let env = TestEnv::start("lost_dl_trim");
    let o = Overrides {
        client: "read_timeout_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let daemon = applied_then_dead_lettered(&env, &config, &writ, &["TRIM"]).await;
    trim_all(&env, &config).await;
    let s = writ.collection("signal").unwrap();
    assert_eq!(
        s.read(&dl_signal("TRIM")).await.unwrap(),
        Some(doc! {"v": 1})
    );
    assert_eq!(writ.unacked(), 0, "both writes settled");
    daemon.stop().await;
}

/// A write whose entry is gone without a letter, and that MongoDB does not
/// hold, is not settled as applied, even when nothing older is left and the
/// group is past its id: a failover that lost the entry looks the same as
/// retention's trim (the new master goes on with later entries). Here by
/// hand: the entry trimmed, the group moved past it, no daemon ever applied
/// it. The first look only notes it (a daemon that read the entry before it
/// went may still be applying it); a look `client.lost_write_after_ms` later
/// settles it lost: its ticket fails with `Error::Lost`, and reads of its key
/// answer from MongoDB again. Before, every read of the key failed with the
/// timeout for the life of the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_entry_is_gone_without_a_letter_is_settled_lost_not_applied() {
    let (env, config, writ) = handle_with(
        "lost_no_letter",
        "read_timeout_ms = 300\nlost_write_after_ms = 1",
    )
    .await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "LOST", "strategyName": "dl", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    create_groups(&env, &config, "$").await;
    trim_all(&env, &config).await;
    let err = s.read(&key).await.unwrap_err();
    assert!(matches!(err, writ::Error::Timeout { .. }), "{err}");
    assert_eq!(writ.unacked(), 1, "the first look does not settle it");
    assert_eq!(s.read(&key).await.unwrap(), None, "MongoDB holds nothing");
    assert_eq!(writ.unacked(), 0, "settled lost");
    let err = ticket.wait().await.unwrap_err();
    assert!(matches!(err, writ::Error::Lost { .. }), "{err}");
    assert_eq!(
        err.retry_class(),
        writ::RetryClass::Transient,
        "writing it again is safe"
    );
}

/// A ticket that times out while its write's entry is gone from the stream
/// (a failover lost it), before `client.lost_write_after_ms` settles it, says
/// the write may or may not be held (`Unknown`): "held" would tell its caller
/// never to send again a write Redis most likely lost. Before, every ticket
/// timeout said held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_timing_out_over_a_gone_entry_says_unknown() {
    let (env, config, writ) = handle_with("lost_unknown", "read_timeout_ms = 300").await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "UNKNOWN", "strategyName": "dl", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    create_groups(&env, &config, "$").await;
    trim_all(&env, &config).await;
    let err = ticket
        .wait_for(std::time::Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            writ::Error::Timeout {
                accepted: Some(writ::Accepted::Unknown),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(writ.unacked(), 1, "not settled yet");
}

/// A write whose ack is lost, whose entry is then trimmed and whose cache
/// entry is gone too (a failover that lost both, or an evicted entry) was
/// applied: MongoDB holds its version, so a read settles it applied and
/// answers from MongoDB. Before, without a letter, it stayed unknown and
/// every read of the key timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_entry_and_cache_entry_are_gone_is_settled_applied_from_mongodb() {
    let (env, config, writ) = handle_with("lost_from_mongo", "read_timeout_ms = 300").await;
    block_acks(&env, &writ).await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "APPLIED", "strategyName": "dl", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let daemon = Daemon::start(config.clone());
    support::eventually(
        std::time::Duration::from_secs(30),
        "the write to be cached",
        || {
            let (config, key) = (config.clone(), key.clone());
            async move { support::cached(&config, "signal", &key).await }
        },
    )
    .await;
    daemon.stop().await;
    trim_all(&env, &config).await;
    let mut r = env.redis().await;
    let _: u64 = redis::cmd("DEL")
        .arg(cache_entry(&config, &key))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 1}));
    assert_eq!(writ.unacked(), 0);
    let v = ticket.version();
    assert_eq!(
        ticket.wait().await.unwrap(),
        v,
        "settled applied at its version"
    );
}

/// A handle whose second write of `key` (`{v: 1}`, its ticket returned)
/// was applied and cached, and whose ack and entry were then lost while the
/// cache went back to the first write (`{v: 0}`): a failover that lost
/// everything from the write's entry on, the daemon's cache update with it.
/// No daemon runs afterwards.
async fn lost_back_to_an_older_cache(
    env: TestEnv,
    key: &mongodb::bson::Document,
) -> (TestEnv, writ::Config, Writ, writ::Ticket) {
    let (env, config, writ) = handle_on(env, "read_timeout_ms = 300").await;
    let s = writ.collection("signal").unwrap();
    let daemon = Daemon::start(config.clone());
    let first = s.write(key, &doc! {"v": 0}).await.unwrap();
    let entry = cache_entry(&config, key);
    let mut r = env.redis().await;
    // The cache entry of version `first`, as the daemon wrote it.
    let saved = support::SavedCacheEntry::save(&mut r, &entry).await;
    assert_eq!(
        writ::protocol::Version::from_sortable(&saved.version),
        Some(first)
    );
    block_acks(&env, &writ).await;
    let ticket = s.submit(key, &doc! {"v": 1}).await.unwrap();
    read_by_another(&config, key, doc! {"v": 1}).await;
    daemon.stop().await;
    trim_all(&env, &config).await;
    saved.restore(&mut r).await;
    (env, config, writ, ticket)
}

/// A write whose ack and entry are lost while the cache holds an older
/// version of its key was applied: MongoDB holds its version. The read that
/// settles it applied from MongoDB also caches MongoDB's document, so
/// neither it nor a later read by anyone answers the older value. Before,
/// the read settled the write applied and then answered the cache's older
/// value, as every reader did until the key was written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_settled_applied_from_mongodb_is_not_read_older_from_the_cache() {
    let key = doc! {"symbol": "OLDER", "strategyName": "dl", "exchangeName": "x"};
    let env = TestEnv::start("lost_older_cache");
    let (_env, config, writ, ticket) = lost_back_to_an_older_cache(env, &key).await;
    let s = writ.collection("signal").unwrap();
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 1}));
    let v = ticket.version();
    assert_eq!(ticket.wait().await.unwrap(), v, "settled applied");
    assert_eq!(
        support::read_by_a_new_handle(&config, "signal", &key).await,
        Some(doc! {"v": 1}),
        "another reader"
    );
}

/// The same, while Redis refuses the fill of MongoDB's document (at its
/// `maxmemory`): the write stays unsettled, and neither its ticket nor a read
/// says it is committed while the cache still answers the older value. Once
/// Redis takes writes again, a look settles it and the cache holds it.
/// Before, the look settled the write applied whatever the fill did: its
/// ticket said `Ok`, and every reader got `{v: 0}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_not_settled_applied_while_its_cache_fill_is_refused() {
    let key = doc! {"symbol": "NOFILL", "strategyName": "dl", "exchangeName": "x"};
    // A redis-server of its own: `maxmemory` is server-wide, and a shared
    // server (`WRIT_TEST_REDIS_URL`) would refuse every other client too.
    let env = TestEnv::start_own_redis("lost_no_fill");
    let (env, config, writ, ticket) = lost_back_to_an_older_cache(env, &key).await;
    let s = writ.collection("signal").unwrap();
    let r = env.redis().await;
    let set_maxmemory = |bytes: &'static str| {
        let mut r = r.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(bytes)
                .query_async(&mut r)
                .await
                .unwrap();
        }
    };
    set_maxmemory("1").await;
    let read = s.read(&key).await;
    assert!(
        matches!(read, Err(writ::Error::Timeout { accepted: None, .. })),
        "a read while the fill is refused: {read:?}"
    );
    let waited = ticket.wait_for(std::time::Duration::from_millis(200)).await;
    set_maxmemory("0").await;
    // Its entry is gone: the ticket cannot tell held from lost.
    assert!(
        matches!(
            waited,
            Err(writ::Error::Timeout {
                accepted: Some(writ::Accepted::Unknown),
                ..
            })
        ),
        "the ticket while the fill is refused: {waited:?}"
    );
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 1}));
    assert_eq!(writ.unacked(), 0, "settled by the read's look");
    assert_eq!(
        support::read_by_a_new_handle(&config, "signal", &key).await,
        Some(doc! {"v": 1}),
        "another reader"
    );
}

/// A `submit` of `{v: 1}` at `key`, its entry read for the group by another
/// consumer ("held-by-test"), then deleted: a write a daemon read and that
/// is gone since. Returns its ticket, stream, entry id and a connection.
async fn submitted_held_deleted(
    env: &TestEnv,
    config: &writ::Config,
    s: &writ::Collection,
    key: &mongodb::bson::Document,
) -> (writ::Ticket, String, String, writ::redis_conn::Conn) {
    let names = writ::protocol::Names::new(&config.namespace);
    create_groups(env, config, "0").await;
    let ticket = s.submit(key, &doc! {"v": 1}).await.unwrap();
    let id = ticket.version().to_stream_id();
    let stream = signal_stream(config, key);
    let mut r = env.redis().await;
    streams::deliver_all(&mut r, &stream, &names.group(), "held-by-test").await;
    let deleted: u64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&id)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    (ticket, stream, id, r)
}

/// A write whose entry is gone while the group still holds it pending was
/// read by a daemon that may be applying it now: no look settles it lost
/// until the group lets it go (acked, or dropped by a claim that finds it
/// deleted). Here by hand, with no daemon: the entry read for the group by
/// another consumer, then deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_write_the_group_holds_pending_is_not_settled_lost() {
    let (env, config, writ) = handle_with(
        "lost_pending",
        "read_timeout_ms = 300\nlost_write_after_ms = 1",
    )
    .await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "HELD", "strategyName": "dl", "exchangeName": "x"};
    let names = writ::protocol::Names::new(&config.namespace);
    let (ticket, stream, id, mut r) = submitted_held_deleted(&env, &config, &s, &key).await;
    for _ in 0..3 {
        let err = s.read(&key).await.unwrap_err();
        assert!(matches!(err, writ::Error::Timeout { .. }), "{err}");
    }
    assert_eq!(writ.unacked(), 1, "a daemon may still apply it");
    streams::ack(&mut r, &stream, &names.group(), std::slice::from_ref(&id)).await;
    // The first look after that notes it; the next settles it lost.
    assert!(s.read(&key).await.is_err());
    assert_eq!(s.read(&key).await.unwrap(), None);
    let err = ticket.wait().await.unwrap_err();
    assert!(matches!(err, writ::Error::Lost { .. }), "{err}");
}

/// An entry at a write's id that another write added is not that write's:
/// after a failover that lost the entry, a promoted replica whose clock is
/// behind can give out the same id again. Here by hand, with no daemon: the
/// stream replaced by one holding another client's entry at that id, which
/// the group has passed, and that write's dead letter. The write is not
/// settled applied on that entry's account, nor dead-lettered on that
/// letter's; MongoDB does not hold it, so it is settled lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_another_write_added_at_a_writes_id_does_not_settle_it() {
    let (env, config, writ) = handle_with(
        "lost_same_id",
        "read_timeout_ms = 300\nlost_write_after_ms = 1",
    )
    .await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "SAMEID", "strategyName": "dl", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let id = ticket.version().to_stream_id();
    let names = writ::protocol::Names::new(&config.namespace);
    let stream = signal_stream(&config, &key);
    let mut r = env.redis().await;
    // This write's request id, as its entry carries it.
    let own: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(&id)
        .arg(&id)
        .query_async(&mut r)
        .await
        .unwrap();
    let req = own[0].1.iter().find(|(f, _)| f == "req").unwrap().1.clone();
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
        .arg("client")
        .arg("another-client")
        .arg("req")
        .arg("1")
        .query_async(&mut r)
        .await
        .unwrap();
    // And another client's write at that id was parked; its request id is
    // even this write's (they are unique per client only). Its letter is not
    // this write's either.
    let _: String = redis::cmd("XADD")
        .arg(names.dead_letters())
        .arg("*")
        .arg("dlq.stream")
        .arg(&stream)
        .arg("dlq.id")
        .arg(&id)
        .arg("dlq.reason")
        .arg("malformed")
        .arg("client")
        .arg("another-client")
        .arg("req")
        .arg(&req)
        .query_async(&mut r)
        .await
        .unwrap();
    streams::create_group(&mut r, &stream, &names.group(), "$").await;
    let err = s.read(&key).await.unwrap_err();
    assert!(
        matches!(err, writ::Error::Timeout { .. }),
        "not settled applied on another write's entry: {err}"
    );
    assert_eq!(s.read(&key).await.unwrap(), None);
    let err = ticket.wait().await.unwrap_err();
    assert!(matches!(err, writ::Error::Lost { .. }), "{err}");
}

/// A read sees the cache at the write's version and forgets the write (its
/// ticket keeps its waiter); then the ack is lost. The ticket, not waited on
/// by any read any more, settles the write from the streams once its wait
/// runs out, as a read would. Before, it ended in `Timeout` ("may still
/// commit") for a write its own handle had read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_whose_ack_is_lost_after_a_read_forgot_its_write_is_settled() {
    let (env, config, writ) = handle_with(
        "ticket_forgot_lost",
        "read_timeout_ms = 1000\nwrite_timeout_ms = 5000",
    )
    .await;
    block_acks(&env, &writ).await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "FORGOT", "strategyName": "ack", "exchangeName": "x"};
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let v = ticket.version();
    let _daemon = Daemon::start(config.clone());
    let entry = cache_entry(&config, &key);
    let cache = writ::cache::Cache::new(env.redis().await);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the write cached",
        || {
            let (cache, entry) = (cache.clone(), entry.clone());
            async move {
                cache
                    .get(&entry)
                    .await
                    .ok()
                    .flatten()
                    .filter(|c| c.version >= v)
            }
        },
    )
    .await;
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 1}));
    let got = ticket
        .wait()
        .await
        .expect("the ticket of a write its handle read back timed out");
    assert_eq!(got, v);
}

/// A ticket awaited after every clone of its handle was dropped still gets
/// its write's outcome: it keeps the handle's ack listener running. Before,
/// it failed at once with `Shutdown` for a write that was then applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_outliving_its_handle_gets_its_ack() {
    let env = TestEnv::start("ticket_outlives");
    let config = env.config();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let key = doc! {"symbol": "ORPHAN", "strategyName": "ack", "exchangeName": "x"};
    let ticket = writ
        .collection("signal")
        .unwrap()
        .submit(&key, &doc! {"v": 1})
        .await
        .unwrap();
    let v = ticket.version();
    drop(writ);
    let _daemon = Daemon::start(config.clone());
    let got = ticket
        .wait_for(std::time::Duration::from_secs(20))
        .await
        .expect("the ticket of a dropped handle got no outcome");
    assert_eq!(got, v);
}

/// A write the daemon refuses at decode waits, pending in the group, to be
/// parked while the dead-letter stream cannot be written (here a stream at
/// the last possible id: `XADD` fails, reads work), and later writes of its
/// key are applied meanwhile (the daemon allows a bigger document than this
/// handle: `client.max_document_bytes` differs between the two). The cache
/// past its version does not make it committed: its ticket times out, and
/// once the letter can be written the write is parked. Before, the overdue
/// look settled it applied from the cache version alone, and `write`
/// returned `Ok` for a write then dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_to_be_parked_is_not_settled_by_a_newer_cached_version() {
    let (env, config, writ) = handle_with("lost_refused", "read_timeout_ms = 300").await;
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    unwritable_dead_letters(&mut r, &names).await;
    let mut daemon_config = config.clone();
    daemon_config.max_document_bytes = 1024;
    let daemon = Daemon::start(daemon_config);
    let s = writ.collection("signal").unwrap();
    let key = dl_signal("PARKING");
    let big = doc! {"v": "x".repeat(4096)};
    let refused = s.submit(&key, &big).await.unwrap();
    let newer = s.write(&key, &doc! {"v": 2}).await.unwrap();
    assert!(newer > refused.version());
    let waited = refused
        .wait_for(std::time::Duration::from_millis(300))
        .await;
    assert!(
        matches!(
            waited,
            Err(writ::Error::Timeout {
                accepted: Some(writ::Accepted::Yes),
                ..
            })
        ),
        "a write still waiting to be parked (its entry there): {waited:?}"
    );
    let _: u64 = redis::cmd("DEL")
        .arg(names.dead_letters())
        .query_async(&mut r)
        .await
        .unwrap();
    support::eventually(
        std::time::Duration::from_secs(30),
        "the refused write parked",
        || {
            let mut r = r.clone();
            let dlq = names.dead_letters();
            async move {
                let n: u64 = redis::cmd("XLEN").arg(dlq).query_async(&mut r).await.ok()?;
                (n == 1).then_some(())
            }
        },
    )
    .await;
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 2}));
    daemon.stop().await;
}

/// A write whose ack is lost is settled once the daemon is done with its own
/// entry, though an earlier entry of its partition is still pending (here
/// one refused at decode, waiting to be parked while the dead-letter stream
/// cannot be written; in production a poison write retrying). Before, the
/// look asked that no entry up to the write's be pending, so the ticket
/// timed out for as long as the other entry waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_is_settled_past_another_entry_still_pending() {
    let (env, config, writ) = handle_with("lost_past_pending", "read_timeout_ms = 300").await;
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    unwritable_dead_letters(&mut r, &names).await;
    let daemon = Daemon::start(config.clone());
    let s = writ.collection("signal").unwrap();
    let key = dl_signal("PAST");
    s.write(&key, &doc! {"v": 0}).await.unwrap();
    let stream = signal_stream(&config, &key);
    // An entry of an undeclared collection: refused, and held pending.
    support::raw_json_put(&mut r, &stream, "no-such", r#"{"k":"v"}"#, "{}", &[]).await;
    block_acks(&env, &writ).await;
    let ticket = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    let v = ticket.version();
    read_by_another(&config, &key, doc! {"v": 1}).await;
    // On a cluster the `XACK` follows the writer's ack in a call of its own.
    support::eventually(
        std::time::Duration::from_secs(10),
        "only the refused entry pending",
        || {
            let (mut r, stream, group) = (r.clone(), stream.clone(), names.group());
            async move { (support::pending_count(&mut r, &stream, &group).await == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        ticket
            .wait_for(std::time::Duration::from_millis(200))
            .await
            .unwrap(),
        v
    );
    daemon.stop().await;
}

/// The look that settles an overdue write asks whether the group delivered
/// its entry before it asks whether the entry is pending. Asked the other
/// way round, a delivery between the two reads (a daemon catching up after
/// an outage) made an entry neither applied nor acked look done: the write
/// was reported applied before the daemon touched it, and a read by another
/// handle then missed it (helper-86). The proxy delivers the entry to
/// another consumer just before the look's group read reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_during_the_overdue_look_does_not_make_the_write_look_done() {
    if std::env::var_os("WRIT_TEST_REDIS_CLUSTER").is_some() {
        return; // one redis:// server behind the proxy; runs in the first pass
    }
    let env = TestEnv::start("overdue_delivery");
    let direct = env.config();
    let names = writ::protocol::Names::new(&direct.namespace);
    let (url, partitions) = (env.redis_url.clone(), direct.partitions);
    let proxy = HookProxy::start(&env.redis_url, b"XINFO", move || {
        let (url, names) = (url.clone(), names.clone());
        async move {
            let mut r = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for p in 0..partitions {
                streams::deliver_all(&mut r, &names.stream(p), &names.group(), "other").await;
            }
        }
    })
    .await;
    let config = env.config_with(&Overrides {
        redis_url: Some(proxy.url.clone()),
        client: "read_timeout_ms = 2000",
        ..Default::default()
    });
    // The group exists (a daemon ran once) and has not delivered the write.
    create_groups(&env, &config, "0").await;
    let writ = Writ::connect(config.clone()).await.unwrap();
    let key = doc! {"symbol": "DELIVERED", "strategyName": "look", "exchangeName": "x"};
    let ticket = writ
        .collection("signal")
        .unwrap()
        .submit(&key, &doc! {"v": 1})
        .await
        .unwrap();
    proxy.arm();
    let res = ticket.wait_for(std::time::Duration::from_millis(200)).await;
    assert!(
        proxy.fired.load(std::sync::atomic::Ordering::SeqCst),
        "the look never read the group"
    );
    assert!(
        matches!(
            res,
            Err(writ::Error::Timeout {
                accepted: Some(writ::Accepted::Yes),
                ..
            })
        ),
        "delivered but not applied: the write is not done, got {res:?}"
    );
    assert_eq!(
        support::read_by_a_new_handle(&direct, "signal", &key).await,
        None,
        "nothing applied it"
    );
}

/// A submitted write that is dead-lettered after its ticket was dropped is
/// counted ([`Writ::unheard_refusals`]) and logged: a process that submits
/// without waiting has no other way to learn of it. One whose ticket is
/// still held is told through the ticket and not counted. Here the handle
/// declares a collection the daemon does not, so the daemon parks its
/// writes (`unknown_collection`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_nobody_waits_for_is_counted() {
    let env = TestEnv::start("unheard_refusal");
    let daemon = Daemon::start(env.config());
    let writer = Writ::connect(env.config_with(&Overrides {
        collections: "[[collections]]\nname = \"undeclared\"\nkey = [\"k\"]\n",
        ..Default::default()
    }))
    .await
    .unwrap();
    let c = writer.collection("undeclared").unwrap();
    let held = c.submit(&doc! {"k": "held"}, &doc! {"v": 1}).await.unwrap();
    let err = held
        .wait_for(std::time::Duration::from_secs(30))
        .await
        .expect_err("the daemon parks a write of a collection it does not declare");
    assert!(matches!(err, writ::Error::DeadLettered { .. }), "{err:?}");
    assert_eq!(writer.unheard_refusals(), 0, "a held ticket was told");
    drop(
        c.submit(&doc! {"k": "dropped"}, &doc! {"v": 1})
            .await
            .unwrap(),
    );
    support::eventually(
        std::time::Duration::from_secs(30),
        "the dropped ticket's refusal counted",
        || async { (writer.unheard_refusals() == 1).then_some(()) },
    )
    .await;
    daemon.stop().await;
}

/// A write whose ack is lost and whose dead letter comes after more letters
/// than one look reads (2,000) is still settled: each look goes on after
/// the letters the one before read. Before, every look read the same first
/// 2,000 again, and the write never settled (its ticket timed out, and so
/// did every read of its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_behind_a_burst_of_letters_is_found() {
    use writ::deadletter::field;
    let env = TestEnv::start("letters_resume");
    let daemon = Daemon::start(env.config());
    let writer = Writ::connect(env.config_with(&Overrides {
        collections: "[[collections]]\nname = \"undeclared\"\nkey = [\"k\"]\n",
        client: "write_timeout_ms = 1000\nread_timeout_ms = 1000",
        ..Default::default()
    }))
    .await
    .unwrap();
    block_acks(&env, &writer).await;
    // Letters of other writes, in the minute before the handle's write.
    let dlq = writ::protocol::Names::new(&env.name).dead_letters();
    let mut r = env.redis().await;
    for _ in 0..3 {
        let mut pipe = redis::pipe();
        for _ in 0..700 {
            pipe.cmd("XADD")
                .arg(&dlq)
                .arg("*")
                .arg(field::SOURCE)
                .arg("another:{p0}:in")
                .arg(field::ID)
                .arg("1-0")
                .arg(field::REASON)
                .arg("malformed")
                .ignore();
        }
        let () = pipe.query_async(&mut r).await.unwrap();
    }
    let c = writer.collection("undeclared").unwrap();
    let ticket = c.submit(&doc! {"k": "x"}, &doc! {"v": 1}).await.unwrap();
    // Meanwhile more writes of the key, their acks lost too, keep joining
    // its looks, each with its own window reaching back over the burst:
    // they must not send the look back to the start each time.
    let feeder = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 2..i64::MAX {
                drop(c.submit(&doc! {"k": "x"}, &doc! {"v": i}).await);
                // Slow enough that a look's 256 writes are not all old ones
                // within the test's bound (which would let it go on too).
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    // Settled by the handle's sweep (every 5 s), not by the ticket's own
    // look once its wait runs out (that look has the write alone).
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        ticket.wait_for(std::time::Duration::from_secs(600)),
    )
    .await
    .expect("not settled by the sweep within 30 s: it never got past the burst")
    .expect_err("the daemon parks a write of a collection it does not declare");
    feeder.abort();
    // The feeder's writes, parked and settled from the streams like it,
    // had their tickets dropped: each refusal is counted.
    support::eventually(
        std::time::Duration::from_secs(15),
        "refusals settled from the streams for dropped tickets counted",
        || async { (writer.unheard_refusals() > 0).then_some(()) },
    )
    .await;
    assert!(
        matches!(err, writ::Error::DeadLettered { .. }),
        "the write was not settled from its dead letter behind 2,100 others: {err:?}"
    );
    daemon.stop().await;
}

/// Two writes of one key by one handle at the same entry id, as after a
/// failover that lost the first's entry and a promoted replica whose clock
/// is behind: here by hand, with no daemon, the stream's last id set an hour
/// ahead, the first entry deleted, and the stream made again with its last
/// id where it was before the first (`XSETID` below a deleted id is refused
/// since Redis 7.2), so the next entry gets the first's id.
async fn two_writes_at_one_id(
    env: &TestEnv,
    config: &writ::Config,
    s: &writ::Collection,
    key: &mongodb::bson::Document,
) -> (writ::Ticket, writ::Ticket) {
    let stream = signal_stream(config, key);
    let mut r = env.redis().await;
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    let base = format!("{ahead}-0");
    let placeholder = |r: &mut writ::redis_conn::Conn| {
        let (stream, base) = (stream.clone(), base.clone());
        let mut r = r.clone();
        async move {
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg(&base)
                .arg("placeholder")
                .arg("1")
                .query_async(&mut r)
                .await
                .unwrap();
            let _: u64 = redis::cmd("XDEL")
                .arg(&stream)
                .arg(&base)
                .query_async(&mut r)
                .await
                .unwrap();
        }
    };
    placeholder(&mut r).await;
    let first = s.submit(key, &doc! {"v": 1}).await.unwrap();
    assert_eq!(first.version().to_stream_id(), format!("{ahead}-1"));
    let _: u64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .unwrap();
    placeholder(&mut r).await;
    let second = s.submit(key, &doc! {"v": 2}).await.unwrap();
    assert_eq!(
        second.version(),
        first.version(),
        "Redis gave the id out again"
    );
    (first, second)
}

/// A write whose entry id Redis gives out again to a later write of the same
/// handle ([`two_writes_at_one_id`]) is not overwritten in the handle's
/// pending map: the sweep settles it as a read's look would, here lost
/// (MongoDB never held it), and its dropped ticket's refusal is told. Before,
/// the later write took its place, its waiter stayed for the handle's life
/// and nobody heard of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_id_redis_gives_out_again_is_still_settled() {
    let (env, config, writ) = handle_with(
        "lost_reused",
        "read_timeout_ms = 300\nlost_write_after_ms = 1",
    )
    .await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "REUSED", "strategyName": "dl", "exchangeName": "x"};
    let (first, second) = two_writes_at_one_id(&env, &config, &s, &key).await;
    drop(first);
    assert_eq!(writ.unacked(), 2);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the first write's refusal to be told",
        || async { (writ.unheard_refusals() == 1).then_some(()) },
    )
    .await;
    assert_eq!(writ.unacked(), 1, "only the second write is left");
    // Settling the first did not take the second's place either: a read
    // still waits for it (no daemon applies it yet).
    let read = s.read(&key).await;
    assert!(
        matches!(read, Err(writ::Error::Timeout { .. })),
        "a read before the second write is applied: {read:?}"
    );
    let daemon = Daemon::start(config.clone());
    second.wait().await.unwrap();
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 2}));
    assert_eq!(writ.unacked(), 0);
    daemon.stop().await;
}

/// The same, with the later write at that id applied first: MongoDB and
/// the cache then hold exactly that id's version, but it is the later
/// write's, so the first is still settled lost, not applied (before, a look
/// took that version for its own), nor dead-lettered by a letter at that id
/// that names no write. A fields-layout put settled applied so would have
/// had its fields never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_id_a_later_applied_write_holds_is_settled_lost() {
    let (env, config, writ) = handle_with(
        "lost_reused_applied",
        "read_timeout_ms = 300\nlost_write_after_ms = 3000",
    )
    .await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "REUSEDAPPLIED", "strategyName": "dl", "exchangeName": "x"};
    let (first, second) = two_writes_at_one_id(&env, &config, &s, &key).await;
    // A letter at that id that names no write is the later write's too (its
    // entry holds the id), not the first's. (Its own id after the entry's,
    // as a daemon's would be: the entries' ids are an hour ahead.)
    let mut r = env.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(writ::protocol::Names::new(&config.namespace).dead_letters())
        .arg(format!("{}-0", first.version().ms + 1))
        .arg("dlq.reason")
        .arg("malformed")
        .arg("dlq.stream")
        .arg(signal_stream(&config, &key))
        .arg("dlq.id")
        .arg(first.version().to_stream_id())
        .query_async(&mut r)
        .await
        .unwrap();
    let daemon = Daemon::start(config.clone());
    assert_eq!(second.wait().await.unwrap(), first.version());
    // Settled by the sweep (every 5 s), well within this bound.
    let err = first
        .wait_for(std::time::Duration::from_secs(40))
        .await
        .unwrap_err();
    assert!(matches!(err, writ::Error::Lost { .. }), "{err}");
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"v": 2}));
    assert_eq!(writ.unacked(), 0);
    daemon.stop().await;
}

/// A letter that carries only its `dlq.*` fields (a daemon parks an entry
/// whose fields it could not read so, an entry deleted while pending on a
/// Redis that claims it without them) is this write's by stream and id:
/// the write is settled dead-lettered with its reason, not lost. Here by
/// hand, with no daemon: the entry read for the group by another consumer,
/// deleted, its letter added, then acked, as a daemon parks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_without_its_entrys_fields_settles_the_write_by_stream_and_id() {
    let (env, config, writ) = handle_with(
        "lost_fieldless",
        "read_timeout_ms = 300\nlost_write_after_ms = 1",
    )
    .await;
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "FIELDLESS", "strategyName": "dl", "exchangeName": "x"};
    let names = writ::protocol::Names::new(&config.namespace);
    let (ticket, stream, id, mut r) = submitted_held_deleted(&env, &config, &s, &key).await;
    let _: String = redis::cmd("XADD")
        .arg(names.dead_letters())
        .arg("*")
        .arg("dlq.reason")
        .arg("malformed")
        .arg("dlq.detail")
        .arg("the entry's fields could not be read")
        .arg("dlq.stream")
        .arg(&stream)
        .arg("dlq.id")
        .arg(&id)
        .query_async(&mut r)
        .await
        .unwrap();
    streams::ack(&mut r, &stream, &names.group(), std::slice::from_ref(&id)).await;
    // The read's look settles it at once (a lost write would wait out
    // `client.lost_write_after_ms` from this first look).
    assert_eq!(s.read(&key).await.unwrap(), None);
    let err = ticket.wait().await.unwrap_err();
    assert!(
        matches!(&err, writ::Error::DeadLettered { reason, .. } if reason.contains("could not be read")),
        "{err}"
    );
}
