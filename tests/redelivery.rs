//! The consumer group going back (`XGROUP SETID`, a failover to a replica
//! whose group state is behind, an AOF that lost its tail) while a daemon
//! holds entries of a key delivers those entries again, after newer entries
//! of the key the daemon already queued. A key's queue is in id order
//! whatever order its entries arrive in: coalescing takes the last queued
//! write as the newest, and acks the others with its version.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::doc;
use support::proxy::in_front_of_mongo_pausable;
use support::{eventually, pending_count, Daemon, Overrides, TestEnv};
use writ::Writ;

/// The group's last-delivered id. (A redelivered entry's delivery count is
/// reset to 1, so it cannot tell a redelivery.)
async fn last_delivered(conn: &mut writ::redis_conn::Conn, stream: &str, group: &str) -> String {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
    let g = groups
        .into_iter()
        .find(|g| g.get("name") == Some(&redis::Value::BulkString(group.as_bytes().to_vec())))
        .expect("the group");
    redis::from_redis_value(g["last-delivered-id"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_delivered_again_after_newer_ones_do_not_ack_those_with_an_older_version() {
    let env = TestEnv::start("redelivery");
    let (proxy, uri) = in_front_of_mongo_pausable(&env.mongo_uri).await;
    // Four entries in flight at most: with three held, a read takes two, so
    // the group going back delivers the key's oldest entries again, not all.
    let o = Overrides {
        mongo_uri: Some(uri),
        partitions: Some(1),
        daemon: "max_in_flight = 4\nbatch_size = 4\nblock_ms = 200",
        mongo: "op_timeout_ms = 30000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let daemon = Daemon::start(config.clone());
    let key = doc! {"symbol": "BACK", "strategyName": "r", "exchangeName": "x"};
    let warm = s.write(&key, &doc! {"v": 0}).await.unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let (stream, group) = (names.stream(0), names.group());
    let mut conn = env.redis().await;

    // MongoDB holds the round of write 1; writes 2 and 3 wait behind it in
    // the key's queue.
    proxy.pause();
    let delivered = |n: u64| {
        let (conn, stream, group) = (conn.clone(), stream.clone(), group.clone());
        move || {
            let (mut conn, stream, group) = (conn.clone(), stream.clone(), group.clone());
            async move { (pending_count(&mut conn, &stream, &group).await >= n).then_some(()) }
        }
    };
    // Write 1 alone in its round (read before writes 2 and 3 are sent), so
    // they queue behind it rather than join it.
    let t1 = s.submit(&key, &doc! {"v": 1}).await.unwrap();
    eventually(Duration::from_secs(20), "write 1 delivered", delivered(1)).await;
    let t2 = s.submit(&key, &doc! {"v": 2}).await.unwrap();
    let t3 = s.submit(&key, &doc! {"v": 3}).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "writes 1-3 delivered",
        delivered(3),
    )
    .await;

    // The group goes back to just after write 0: writes 1 and 2 are
    // delivered again, after write 3 was queued.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(&group)
        .arg(warm.to_stream_id())
        .query_async(&mut conn)
        .await
        .unwrap();
    let first = t1.version();
    eventually(Duration::from_secs(20), "write 1 delivered again", || {
        let (mut conn, stream, group) = (conn.clone(), stream.clone(), group.clone());
        async move {
            let at: writ::protocol::Version = last_delivered(&mut conn, &stream, &group)
                .await
                .parse()
                .ok()?;
            (at >= first).then_some(())
        }
    })
    .await;

    proxy.go_on();
    let v3 = t3.version();
    let acked = t3.wait().await.unwrap();
    assert!(
        acked >= v3,
        "write 3 was acked with version {acked}, older than its own {v3}: \
         a write delivered again was taken for the newest"
    );
    assert_eq!(
        support::read_by_a_new_handle(&config, "signal", &key).await,
        Some(doc! {"v": 3}),
        "the read after write 3's ack"
    );
    t1.wait().await.unwrap();
    t2.wait().await.unwrap();
    daemon.stop().await;
}
