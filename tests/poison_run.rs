//! A coalesced run whose last write MongoDB refuses for good: the writes
//! before it still apply (as a run of their own), the refused one is
//! dead-lettered once, and it is not tried `max_attempts` times a second
//! time; the writes before it get one attempt each. Alone in its file: it
//! counts this process's MongoDB errors.

mod support;

use std::collections::HashMap;

use mongodb::bson::{doc, Document};
use support::{Daemon, Overrides, TestEnv};
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "poison-run", "exchangeName": "x"}
}

/// `writ_mongodb_errors_total{error_class="permanent"}` of this process.
fn permanent_errors() -> f64 {
    support::own_counter("writ_mongodb_errors_total", "error_class=\"permanent\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_last_write_is_poison_applies_the_rest_and_parks_it_once() {
    let env = TestEnv::start("poison_run");
    let o = Overrides {
        daemon: "max_attempts = 3\nbackoff_cap_ms = 50",
        collections: r#"
[[collections]]
name = "once"
key = ["symbol", "strategyName", "exchangeName"]
mode = "insert_once"
"#,
        ..Default::default()
    };
    let config = env.config_with(&o);
    // A second unique index: a payload `u` another key holds collides for good.
    env.poison_payload_u("signal", key("HOLDER"), "taken").await;

    // Written before any daemon runs, so one read takes all of them: one run.
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let mut tickets = Vec::new();
    for (kind, d) in [
        ("first", doc! {"c": 1}),
        ("second", doc! {"c": 2}),
        ("poison", doc! {"u": "taken"}),
    ] {
        tickets.push((kind, s.submit(&key("K"), &d).await.unwrap()));
    }
    let before = permanent_errors();
    let daemon = Daemon::start(config.clone());
    let mut results = HashMap::new();
    for (kind, t) in tickets {
        let id = t.version();
        results.insert(kind, (id, t.wait().await));
    }
    let Err(Error::DeadLettered { reason }) = &results["poison"].1 else {
        panic!("{:?}", results["poison"])
    };
    // The reason is readable: the server's message, not its raw reply bytes.
    assert!(reason.contains("E11000"), "{reason}");
    assert!(!reason.contains("RawDocumentBuf"), "{reason}");
    assert!(reason.len() < 600, "{} bytes: {reason}", reason.len());
    // The write before the poison was applied, and the first was coalesced
    // into it: both acks carry the second's version.
    let second = results["second"].0;
    assert_eq!(results["second"].1.as_ref().unwrap(), &second);
    assert_eq!(results["first"].1.as_ref().unwrap(), &second);
    assert_eq!(s.read(&key("K")).await.unwrap(), Some(doc! {"c": 2}));
    // The poison was tried max_attempts times in all: once as the run's last
    // write; its verdict was reused when its turn came alone.
    let tried = permanent_errors() - before;
    assert_eq!(tried, 3.0, "permanent MongoDB errors");
    // Acks in stream order: coalesced, applied, dead-lettered.
    let outcomes: Vec<String> = support::acks::of_client(&env, writ.client_id())
        .await
        .into_iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["coalesced", "applied", "dead_lettered"]);
    daemon.stop().await;

    // A key whose every write is refused: the last takes its max_attempts,
    // each write before it one attempt, and all are dead-lettered in order.
    let mut tickets = Vec::new();
    for i in 0..3 {
        let d = doc! {"u": "taken", "i": i};
        tickets.push(s.submit(&key("P"), &d).await.unwrap());
    }
    let before = permanent_errors();
    let daemon = Daemon::start(config.clone());
    for t in tickets {
        let res = t.wait().await;
        assert!(matches!(res, Err(Error::DeadLettered { .. })), "{res:?}");
    }
    assert_eq!(
        permanent_errors() - before,
        3.0 + 1.0 + 1.0,
        "permanent MongoDB errors"
    );
    daemon.stop().await;

    // The same for writes that never coalesce (insert-once puts; removes),
    // each of which reaches its key's worker alone: after a refused one,
    // the key's next queued write gets one attempt. Otherwise each would
    // take its max_attempts with backoff, and a writer that keeps sending
    // such writes would fill the partition's in-flight slots and stall its
    // other keys.
    env.poison_payload_u("once", key("HOLDER"), "taken").await;
    let once = writ.collection("once").unwrap();
    let mut tickets = Vec::new();
    for i in 0..4 {
        let d = doc! {"u": "taken", "i": i};
        tickets.push(once.submit(&key("Q"), &d).await.unwrap());
    }
    let before = permanent_errors();
    let daemon = Daemon::start(config.clone());
    for t in tickets {
        let res = t.wait().await;
        assert!(matches!(res, Err(Error::DeadLettered { .. })), "{res:?}");
    }
    assert_eq!(
        permanent_errors() - before,
        3.0 + 1.0 + 1.0 + 1.0,
        "permanent MongoDB errors"
    );
    // A later good write of the key gets its full attempts again: applied.
    once.write(&key("Q"), &doc! {"u": "free"}).await.unwrap();
    daemon.stop().await;

    // A write that applies in between (here a remove, in a round) ends that:
    // the next refused write of the key gets its max_attempts again.
    let tickets = vec![
        s.submit(&key("R"), &doc! {"u": "taken", "i": 1})
            .await
            .unwrap(),
        s.submit_op(&key("R"), writ::protocol::Op::Remove, None)
            .await
            .unwrap(),
        s.submit(&key("R"), &doc! {"u": "taken", "i": 2})
            .await
            .unwrap(),
    ];
    let before = permanent_errors();
    let daemon = Daemon::start(config.clone());
    let results: Vec<_> = futures::future::join_all(tickets.into_iter().map(|t| t.wait())).await;
    assert!(
        matches!(results[0], Err(Error::DeadLettered { .. })),
        "{results:?}"
    );
    assert!(results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(Error::DeadLettered { .. })),
        "{results:?}"
    );
    assert_eq!(
        permanent_errors() - before,
        3.0 + 3.0,
        "permanent MongoDB errors"
    );
    daemon.stop().await;
}
