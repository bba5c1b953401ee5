//! A daemon reads its partitions' groups as its `daemon.consumer_name`
//! (hostname-pid by default), and Redis keeps a consumer until it is
//! deleted: each restart or redeploy used to leave one more consumer in every
//! partition's group, for ever. The next owner of a partition removes the
//! consumers that hold no pending entry, once its claim is done; one that
//! still holds pending entries is never removed.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::{eventually, Daemon, Overrides, TestEnv};
use writ::Writ;

/// The consumer names of `stream`'s group `group`.
async fn consumers(
    r: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> Vec<(String, u64)> {
    let v: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(r)
        .await
        .unwrap();
    let mut out: Vec<(String, u64)> = v
        .iter()
        .map(|c| {
            (
                redis::from_redis_value::<String>(c["name"].clone()).unwrap(),
                redis::from_redis_value::<u64>(c["pending"].clone()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_owner_removes_earlier_daemons_consumers() {
    let env = TestEnv::start("consumers");
    let config_of = |name: &'static str| {
        env.config_with(&Overrides {
            daemon: name,
            ..Default::default()
        })
    };
    let old = config_of("consumer_name = \"olda\"");
    let new = config_of("consumer_name = \"newb\"");
    let names = writ::protocol::Names::new(&old.namespace);
    let mut r = env.redis().await;

    let daemon = Daemon::start(old.clone());
    let writ = Writ::connect(old.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..20 {
        let k = doc! {"symbol": format!("C{i}"), "strategyName": "c", "exchangeName": "x"};
        s.write(&k, &doc! {"i": i}).await.unwrap();
    }
    drop(writ);
    daemon.stop().await;
    for p in 0..old.partitions {
        let c = consumers(&mut r, &names.stream(p), &names.group()).await;
        assert_eq!(c, [("olda".to_string(), 0)], "partition {p}");
    }

    let daemon = Daemon::start(new.clone());
    for p in 0..new.partitions {
        let stream = names.stream(p);
        eventually(
            Duration::from_secs(30),
            &format!("partition {p}'s group to hold no consumer but the new daemon's"),
            || {
                let (mut r, stream) = (r.clone(), stream.clone());
                let group = names.group();
                async move {
                    let c = consumers(&mut r, &stream, &group).await;
                    // (Redis 7.0 makes a consumer at its first delivery.)
                    c.iter().all(|(n, _)| n == "newb").then_some(())
                }
            },
        )
        .await;
    }
    // Writes flow as before; the new daemon's consumer stays.
    let writ = Writ::connect(new.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..20 {
        let k = doc! {"symbol": format!("C{i}"), "strategyName": "c", "exchangeName": "x"};
        s.write(&k, &doc! {"i": i + 100}).await.unwrap();
        assert_eq!(s.read(&k).await.unwrap(), Some(doc! {"i": i + 100}));
    }
    daemon.stop().await;
    for p in 0..new.partitions {
        let c = consumers(&mut r, &names.stream(p), &names.group()).await;
        assert_eq!(c, [("newb".to_string(), 0)], "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_pending_entries_is_kept() {
    let env = TestEnv::start("consumers_pending");
    let mut r = env.redis().await;
    let (stream, group) = ("consumers_pending:s", "g");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut r)
        .await
        .unwrap();
    // "holder" reads the entry (pending on it); the others hold nothing.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("holder")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .unwrap();
    for c in ["e1", "e2", "e3", "me"] {
        let _: u64 = redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(stream)
            .arg(group)
            .arg(c)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let fence = "consumers_pending:fence";
    let _: () = redis::cmd("SET")
        .arg(fence)
        .arg(7)
        .query_async(&mut r)
        .await
        .unwrap();
    let script = redis::Script::new(writ::source::prune::PRUNE_LUA);
    let run = |most: u32, token: u64| {
        let mut r = r.clone();
        let script = script.clone();
        async move {
            let got: (u64, u64) = script
                .key(stream)
                .key(fence)
                .arg(group)
                .arg("me")
                .arg(most)
                .arg(token)
                .invoke_async(&mut r)
                .await
                .unwrap();
            got
        }
    };
    // A tenure that lost the partition (another token) removes nothing.
    assert_eq!(run(2, 6).await, (0, 0));
    // At most two a call: one empty consumer is left for the next.
    assert_eq!(run(2, 7).await, (2, 1));
    assert_eq!(run(2, 7).await, (1, 0));
    assert_eq!(
        consumers(&mut r, stream, group).await,
        [("holder".to_string(), 1), ("me".to_string(), 0)]
    );
}
