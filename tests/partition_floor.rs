//! A write's version is the id its partition's stream gave it. `writ
//! partitions --set` moves keys to other streams, whose ids come from their
//! own node's clock on a Redis Cluster (or from a clock that stepped back):
//! a moved key's next write must still get a version above the one MongoDB
//! holds, or it is taken for an older write, acknowledged stale, and the key
//! reads the value before it. The change records an id floor in the new
//! count's partitions, and the admission script's first entry after it gets
//! an id above it.
//!
//! One server has one clock, so the clock that runs ahead is staged: the
//! key's old stream is moved an hour ahead with `XSETID` before the write
//! that gives the key its version, as a node whose clock is an hour ahead of
//! the new stream's would.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Document};
use support::{eventually, Daemon, Overrides, TestEnv};
use writ::config::Config;
use writ::protocol::Version;
use writ::Writ;

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "floor", "exchangeName": "x"}
}

fn with_partitions(env: &TestEnv, n: u32) -> Config {
    env.config_with(&Overrides {
        partitions: Some(n),
        ..Default::default()
    })
}

fn partition_of(config: &Config, name: &str) -> u32 {
    let coll = config.collection("signal").unwrap();
    writ::protocol::Key::from_document(&key(name), coll)
        .unwrap()
        .partition("signal", config.partitions)
}

/// Writes `name` under `config` through a daemon, with `stream` (the key's
/// stream there) an hour ahead of the clock, as a node whose clock runs an
/// hour ahead would give it; stops the daemon. The write's version.
async fn write_an_hour_ahead(env: &TestEnv, config: &Config, stream: &str, name: &str) -> Version {
    let mut r = env.redis().await;
    let daemon = Daemon::start(config.clone());
    eventually(
        Duration::from_secs(30),
        "the daemon made its streams",
        || {
            let mut r = r.clone();
            async move {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(stream)
                    .query_async(&mut r)
                    .await
                    .ok()?;
                (n == 1).then_some(())
            }
        },
    )
    .await;
    let ahead = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let _: () = redis::cmd("XSETID")
        .arg(stream)
        .arg(format!("{ahead}-0"))
        .query_async(&mut r)
        .await
        .unwrap();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let first = s.write(&key(name), &doc! {"v": "before"}).await.unwrap();
    assert!(
        first.ms >= ahead,
        "the staged clock gave the version: {first:?}"
    );
    drop(writ);
    daemon.stop().await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_moved_by_a_count_change_gets_versions_above_its_stored_one() {
    let env = TestEnv::start("partition_floor");
    let two = with_partitions(&env, 2);
    let three = with_partitions(&env, 3);
    // A key that three partitions put in partition 2, whose stream two never used.
    let name = (0..)
        .map(|i| format!("F{i}"))
        .find(|n| partition_of(&three, n) == 2)
        .unwrap();
    let names = writ::protocol::Names::new(&two.namespace);
    let old = names.stream(partition_of(&two, &name));
    let mut r = env.redis().await;
    let first = write_an_hour_ahead(&env, &two, &old, &name).await;

    let mut conn = writ::redis_conn::connect(&three, Duration::ZERO)
        .await
        .unwrap();
    writ::partition_count::change(&mut conn, &three)
        .await
        .unwrap();
    let daemon = Daemon::start(three.clone());
    let writ = Writ::connect(three.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let next = s.write(&key(&name), &doc! {"v": "after"}).await.unwrap();
    assert!(
        next > first,
        "the moved key's write got version {next:?}, not above its stored {first:?}: taken for an older write"
    );
    assert_eq!(
        s.read(&key(&name)).await.unwrap(),
        Some(doc! {"v": "after"}),
        "the newest write of the moved key is not what it reads"
    );
    // The floor was used once and cleared; later ids come from the clock
    // again, above the entry that used it.
    let floor: Option<String> = redis::cmd("HGET")
        .arg(names.meta(2))
        .arg("floor")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(floor.as_deref(), Some(""));
    let again = s.write(&key(&name), &doc! {"v": "again"}).await.unwrap();
    assert!(again > next);
    assert_eq!(
        s.read(&key(&name)).await.unwrap(),
        Some(doc! {"v": "again"})
    );
    // A key that stayed in its stream (partition 0 under both counts) is
    // written as before.
    let stay = (0..)
        .map(|i| format!("S{i}"))
        .find(|n| partition_of(&two, n) == 0 && partition_of(&three, n) == 0)
        .unwrap();
    s.write(&key(&stay), &doc! {"v": 1}).await.unwrap();
    assert_eq!(s.read(&key(&stay)).await.unwrap(), Some(doc! {"v": 1}));
    drop(writ);
    daemon.stop().await;
}

/// Streams deleted after a change (as operations.md allows for the
/// partitions a smaller count left) no longer say what ids they gave out:
/// the next change still stays above them, by partition 0's high-water mark
/// of the floors recorded before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stays_above_the_ids_of_streams_deleted_since_the_last_one() {
    let env = TestEnv::start("partition_floor_high");
    let three = with_partitions(&env, 3);
    let two = with_partitions(&env, 2);
    let name = (0..)
        .map(|i| format!("H{i}"))
        .find(|n| partition_of(&three, n) == 2)
        .unwrap();
    let names = writ::protocol::Names::new(&three.namespace);
    let mut r = env.redis().await;
    let first = write_an_hour_ahead(&env, &three, &names.stream(2), &name).await;

    let change = |config: Config| async move {
        let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
            .await
            .unwrap();
        writ::partition_count::change(&mut conn, &config)
            .await
            .unwrap();
    };
    change(two.clone()).await;
    // Every stream and every unused floor gone: only the mark is left.
    for p in 0..3 {
        let _: () = redis::cmd("DEL")
            .arg(names.stream(p))
            .query_async(&mut r)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(names.meta(p))
            .arg("floor")
            .arg("")
            .query_async(&mut r)
            .await
            .unwrap();
    }
    change(three.clone()).await;
    let daemon = Daemon::start(three.clone());
    let writ = Writ::connect(three.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let next = s.write(&key(&name), &doc! {"v": "after"}).await.unwrap();
    assert!(next > first, "{next:?} is not above {first:?}");
    assert_eq!(
        s.read(&key(&name)).await.unwrap(),
        Some(doc! {"v": "after"})
    );
    drop(writ);
    daemon.stop().await;
}
