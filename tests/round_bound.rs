//! A round's bulk is several MongoDB commands: the `update`, then one `find`
//! reading back the documents of keys that existed. Each command is bounded
//! by `maxTimeMS` plus a grace. One bound for the whole round gave up on a
//! round whose commands each finished well in time, and sent its writes the
//! single way (one `findAndModify` each) while its last command still ran.
//!
//! A proxy in front of MongoDB delays every command naming the test's
//! collection by 4 s: with `op_timeout_ms = 2000` one command's bound is
//! 7 s, and the round's two commands take 8 s together.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::mongo_proxy::{collection_of, Act, MongoProxy};
use support::{Daemon, Overrides, TestEnv};
use writ::Writ;

const COLLECTION: &str = "slowround";
const DELAY: Duration = Duration::from_secs(4);

/// Counts of what the proxy held back.
#[derive(Default)]
struct Held {
    armed: AtomicBool,
    /// Commands on the collection held for [`DELAY`].
    delayed: AtomicUsize,
    /// `findAndModify`s among them (writes applied one by one).
    single: AtomicUsize,
}

/// Forwards to MongoDB; once armed, holds each command on [`COLLECTION`]
/// for [`DELAY`].
async fn delay_proxy(target: std::net::SocketAddr, held: Arc<Held>) -> MongoProxy {
    MongoProxy::start(target, move |cmd: Document| {
        let held = held.clone();
        async move {
            if held.armed.load(Ordering::SeqCst) && collection_of(&cmd) == Some(COLLECTION) {
                held.delayed.fetch_add(1, Ordering::SeqCst);
                if cmd.contains_key("findAndModify") {
                    held.single.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(DELAY).await;
            }
            Act::Pass
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_commands_each_finish_in_time_is_not_given_up() {
    let env = TestEnv::start("round_bound");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let held = Arc::new(Held::default());
    let proxy = delay_proxy(target, held.clone()).await;
    let o = Overrides {
        mongo: "op_timeout_ms = 2000",
        mongo_uri: Some(proxy.uri(&env.mongo_uri)),
        collections: "[[collections]]\nname = \"slowround\"\nkey = [\"k\"]\n",
        // One partition: the six keys go into one round.
        partitions: Some(1),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let c = writ.collection("slowround").unwrap();
    let keys: Vec<_> = (0..6).map(|i| doc! {"k": format!("k{i}")}).collect();

    // The keys exist, so the round's upserts insert nothing and their
    // documents are read back with a `find`.
    let first = Daemon::start(config.clone());
    for k in &keys {
        c.write(k, &doc! {"v": 0}).await.unwrap();
    }
    first.stop().await;

    // Six writes wait in the stream; the next daemon reads them in one read.
    let mut tickets = Vec::new();
    for k in &keys {
        tickets.push(c.submit(k, &doc! {"v": 1}).await.unwrap());
    }
    held.armed.store(true, Ordering::SeqCst);
    let second = Daemon::start(config.clone());
    for t in tickets {
        // Before the fix, the round was given up at 7 s and retried smaller,
        // each write on its own, at 4 s a command: past this wait.
        t.wait_for(Duration::from_secs(120))
            .await
            .expect("a write not acknowledged within 120 s: its round given up and retried?");
    }
    for k in &keys {
        assert_eq!(c.read(k).await.unwrap(), Some(doc! {"v": 1}));
    }
    assert!(
        held.delayed.load(Ordering::SeqCst) >= 2,
        "the round's update and find were not both delayed: the test staged nothing"
    );
    assert_eq!(
        held.single.load(Ordering::SeqCst),
        0,
        "the round was given up and its writes applied one by one, though each of its \
         commands finished within its own bound"
    );
    second.stop().await;
}

/// A server's own `MaxTimeMSExpired` (code 50) on one write of a round is
/// that write's trouble, not the server's: only that write goes the single
/// way, and the others are settled by the round (poison isolation). Only no
/// answer within writ's local bound fails a whole round. A single node
/// never answers code 50 on cue, so the proxy answers it for one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_time_limit_on_one_write_touches_only_that_write() {
    const COLL: &str = "limit50";
    let env = TestEnv::start("round_code50");
    let target = support::proxy::mongo_target(&env.mongo_uri).await;
    let armed = Arc::new(AtomicBool::new(false));
    // findAndModify calls per key while armed.
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Default::default();
    let proxy = {
        let (armed, sent) = (armed.clone(), sent.clone());
        MongoProxy::start(target, move |cmd: Document| {
            let key = (armed.load(Ordering::SeqCst)
                && collection_of(&cmd) == Some(COLL)
                && cmd.contains_key("findAndModify"))
            .then(|| {
                cmd.get_document("query")
                    .ok()?
                    .get_str("k")
                    .ok()
                    .map(String::from)
            })
            .flatten();
            if let Some(k) = &key {
                *sent.lock().unwrap().entry(k.clone()).or_default() += 1;
            }
            async move {
                match key.as_deref() {
                    Some("poison") => Act::Answer(doc! {
                        "ok": 0.0,
                        "errmsg": "operation exceeded time limit (staged by the test's proxy)",
                        "code": 50,
                        "codeName": "MaxTimeMSExpired",
                    }),
                    _ => Act::Pass,
                }
            }
        })
        .await
    };
    let o = Overrides {
        mongo_uri: Some(proxy.uri(&env.mongo_uri)),
        collections: &format!("[[collections]]\nname = \"{COLL}\"\nkey = [\"k\"]\n"),
        // Retried until the test lets it through, never parked for its
        // timeouts.
        daemon: "max_timeouts = 0",
        // One partition: the three writes form one round (fewer than four:
        // one findAndModify each, side by side).
        partitions: Some(1),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let c = writ.collection(COLL).unwrap();
    let (a, b, poison) = (doc! {"k": "a"}, doc! {"k": "b"}, doc! {"k": "poison"});
    let ta = c.submit(&a, &doc! {"v": 1}).await.unwrap();
    let tb = c.submit(&b, &doc! {"v": 1}).await.unwrap();
    let tp = c.submit(&poison, &doc! {"v": 1}).await.unwrap();
    armed.store(true, Ordering::SeqCst);
    let daemon = Daemon::start(config.clone());
    ta.wait_for(Duration::from_secs(60)).await.expect("a acked");
    tb.wait_for(Duration::from_secs(60)).await.expect("b acked");
    {
        let sent = sent.lock().unwrap();
        assert!(
            sent.get("poison").copied().unwrap_or(0) >= 1,
            "the poison write never reached the proxy: the test staged nothing ({sent:?})"
        );
        assert_eq!(
            (sent.get("a").copied(), sent.get("b").copied()),
            (Some(1), Some(1)),
            "the round's other writes were sent again: one write's MaxTimeMSExpired failed its whole round"
        );
    }
    armed.store(false, Ordering::SeqCst);
    tp.wait_for(Duration::from_secs(60))
        .await
        .expect("the poison write applied once the server let it through");
    for k in [&a, &b, &poison] {
        assert_eq!(c.read(k).await.unwrap(), Some(doc! {"v": 1}));
    }
    daemon.stop().await;
}
