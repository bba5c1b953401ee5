//! The Redis Cluster harness itself (tests/support/cluster.rs): a 3×1 cluster
//! comes up with every slot served and every replica linked, and a killed
//! master's replica takes over with the data acknowledged by `WAIT`, the old
//! master coming back as its replica. The cluster tests of the daemon build on
//! these guarantees, so they are checked here first.

mod support;

use std::time::{Duration, Instant};

use support::cluster::RedisCluster;

fn conn(url: &str) -> redis::Connection {
    let c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

#[test]
fn three_masters_with_a_replica_each_serve_every_slot() {
    let begun = Instant::now();
    let cluster = RedisCluster::start(3, 1, false);
    println!("3x1 cluster started in {:?}", begun.elapsed());

    assert_eq!(cluster.len(), 6);
    assert_eq!(cluster.urls().len(), 6);
    assert_eq!(cluster.url_list().split(',').count(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");

    let key = "writ:harness:hello";
    let owner = cluster.master_of_key(key);
    assert!(masters.contains(&owner), "{owner} is not among {masters:?}");
    let mut c = conn(&cluster.node_url(owner));
    redis::cmd("SET")
        .arg(key)
        .arg("world")
        .query::<()>(&mut c)
        .expect("SET on the slot's master");
    let got: String = redis::cmd("GET").arg(key).query(&mut c).unwrap();
    assert_eq!(got, "world");
    // The other masters do not serve the slot: they redirect.
    for &m in masters.iter().filter(|&&m| m != owner) {
        let err = redis::cmd("GET")
            .arg(key)
            .query::<Option<String>>(&mut conn(&cluster.node_url(m)))
            .expect_err("another master serves the key");
        assert_eq!(err.code(), Some("MOVED"), "node {m}: {err}");
        let owner_addr = format!("127.0.0.1:{}", cluster.port(owner));
        assert_eq!(err.redirect_node().map(|r| r.0), Some(owner_addr.as_str()));
    }

    let mut replicas = Vec::new();
    for &m in &masters {
        let r = cluster.replica_of(m);
        assert_eq!(r.len(), 1, "replicas of {m}: {r:?}");
        let info = cluster.info(r[0], "replication");
        assert!(
            info.contains("master_link_status:up"),
            "replica {} of {m}:\n{info}",
            r[0]
        );
        replicas.extend(r);
    }
    replicas.extend(&masters);
    replicas.sort_unstable();
    assert_eq!(
        replicas,
        (0..6).collect::<Vec<_>>(),
        "every node has one place"
    );
}

#[test]
fn a_killed_masters_replica_takes_over_and_the_old_master_rejoins_as_replica() {
    let begun = Instant::now();
    let mut cluster = RedisCluster::start(3, 1, true);
    println!("3x1 cluster (aof) started in {:?}", begun.elapsed());

    let key = "writ:harness:survivor";
    let old = cluster.master_of_key(key);
    let replicas = cluster.replica_of(old);
    assert_eq!(replicas.len(), 1, "replicas of {old}: {replicas:?}");
    let mut c = conn(&cluster.node_url(old));
    redis::cmd("SET")
        .arg(key)
        .arg("kept")
        .query::<()>(&mut c)
        .unwrap();
    // A replica that has just finished a diskless full sync gets no stream
    // until the master sees its first REPLCONF ACK, which the replica sends
    // from its once-a-second cron: the first WAIT can take over a second on a
    // loaded machine (CI once saw 0 replicas within 1000 ms). WAIT returns as
    // soon as the replica acknowledges, so the long bound costs nothing.
    let waited = Instant::now();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(&mut c).unwrap();
    println!("WAIT 1: {acked} replica in {:?}", waited.elapsed());
    assert_eq!(acked, 1, "the replica acknowledged the write");

    cluster.kill9(old);
    assert!(!cluster.is_alive(old));
    let (new, took) = cluster.wait_promoted(old, Duration::from_secs(15));
    println!("replica {new} promoted {took:?} after kill -9 of master {old}");
    assert_eq!(new, replicas[0]);
    assert!(took < Duration::from_secs(15), "promotion took {took:?}");
    assert_eq!(cluster.master_of_key(key), new);
    assert!(cluster.masters().contains(&new));
    let got: Option<String> = redis::cmd("GET")
        .arg(key)
        .query(&mut conn(&cluster.node_url(new)))
        .unwrap();
    assert_eq!(got.as_deref(), Some("kept"));

    let restarted = Instant::now();
    cluster.restart(old);
    println!("old master {old} back in {:?}", restarted.elapsed());
    assert!(cluster.is_alive(old));
    let info = cluster.info(old, "replication");
    assert!(info.contains("role:slave"), "node {old}:\n{info}");
    assert_eq!(cluster.replica_of(new), vec![old]);
    assert_eq!(cluster.masters().len(), 3);
    assert!(!cluster.masters().contains(&old));
    assert_eq!(cluster.master_of_key(key), new);
}
