//! A Redis that is slow, or one Redis Cluster master that stops answering,
//! costs only the leases it cannot renew in time. Before session 47 the
//! ownership loop renewed every lease together, then counted the members,
//! released and acquired, one call after another, each up to the 5 s reply
//! timeout: while one master did not answer no lease was renewed, and every
//! partition changed hands. Now each lease has a renewal task of its own
//! (src/ownership/renewal.rs), whose calls wait as long as the lease is
//! still surely the daemon's; and a cluster node without a script gets it by
//! `EVAL` on that node alone (src/redis_conn/scripts.rs), not by redis-rs's
//! `SCRIPT LOAD` to every node, which waited for the stopped master too.

mod support;

use std::time::Duration;

use support::cluster::RedisCluster;
use support::{Daemon, Overrides, TestEnv};
use writ::protocol::Names;

/// Every partition's fencing token (its fence key), read on each one's master.
async fn fences(
    conn: &writ::redis_conn::Conn,
    names: &Names,
    partitions: &[u32],
) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for p in partitions {
        let v: Option<u64> = redis::cmd("GET")
            .arg(names.fence(*p))
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        out.push(v);
    }
    out
}

/// Returns once the TTL of `key` went back up (a renewal).
async fn renewed(conn: &writ::redis_conn::Conn, key: &str) {
    let pttl = || {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let limit = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = pttl().await;
    loop {
        assert!(tokio::time::Instant::now() < limit, "no renewal of {key}");
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = pttl().await;
        if now > last + 100 {
            return;
        }
        last = now;
    }
}

/// Waits (60 s at most) until every partition of `all` has its lease taken.
async fn wait_owned(conn: &writ::redis_conn::Conn, names: &Names, all: &[u32], what: &str) {
    support::eventually(Duration::from_secs(60), what, || async {
        for p in all {
            let holder: Option<String> = redis::cmd("GET")
                .arg(names.lease(*p))
                .query_async(&mut conn.clone())
                .await
                .ok()?;
            holder?;
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_master_costs_only_the_partitions_whose_leases_it_holds() {
    let env = TestEnv::start("lease_stall");
    let cluster = RedisCluster::start(3, 0, false);
    // The other masters keep serving their slots while one is down, as
    // docs/operations.md recommends for writ.
    for m in cluster.masters() {
        let mut c = redis::Client::open(cluster.node_url(m))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .exec(&mut c)
            .unwrap();
    }
    let o = Overrides {
        redis_url: Some(cluster.url_list()),
        redis: "cluster = true",
        partitions: Some(8),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let names = Names::new(&config.namespace);
    let conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let all: Vec<u32> = (0..config.partitions).collect();
    let daemon = Daemon::start(config.clone());
    wait_owned(&conn, &names, &all, "every partition owned").await;
    let stalled = cluster.master_of_key(&names.lease(0));
    let healthy: Vec<u32> = all
        .iter()
        .copied()
        .filter(|p| cluster.master_of_key(&names.lease(*p)) != stalled)
        .collect();
    assert!(!healthy.is_empty(), "every lease on one master");
    let before = fences(&conn, &names, &healthy).await;
    let healthy_masters: Vec<String> = cluster
        .masters()
        .into_iter()
        .filter(|m| *m != stalled)
        .map(|m| cluster.node_url(m))
        .collect();
    cluster.pause(stalled);
    // Meanwhile the other masters keep losing their scripts (as a restarted
    // node or a promoted replica has none): every renewal there must get
    // its script again while one master does not answer.
    let flushing = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<redis::Connection> = healthy_masters
            .iter()
            .map(|u| {
                let c = redis::Client::open(u.as_str())
                    .unwrap()
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c
            })
            .collect();
        // Longer than a lease TTL (2 s) and the 5 s reply timeout.
        let until = std::time::Instant::now() + Duration::from_secs(7);
        while std::time::Instant::now() < until {
            for c in &mut conns {
                redis::cmd("SCRIPT").arg("FLUSH").exec(c).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    flushing.await.unwrap();
    let mut held = Vec::new();
    for p in &healthy {
        let holder: Option<String> = redis::cmd("GET")
            .arg(names.lease(*p))
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        held.push(holder.is_some());
    }
    cluster.resume(stalled);
    assert!(
        held.iter().all(|h| *h),
        "leases of partitions {healthy:?} on the masters that kept answering lapsed: {held:?}"
    );
    wait_owned(&conn, &names, &all, "every partition owned again").await;
    assert_eq!(
        fences(&conn, &names, &healthy).await,
        before,
        "partitions {healthy:?}, whose leases live on the masters that kept answering, changed hands (a new tenure moves the fence)"
    );
    daemon.stop().await;
}

/// A Redis that still answers, only slowly (every call 700 ms late, more
/// than a quarter of the 2 s lease TTL), keeps every lease: a renewal waits
/// as long as its lease is still surely this daemon's, and one answered
/// late extends it from when it was sent. (A first version of the change
/// above gave each renewal a quarter of the TTL, and every lease lapsed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_that_answers_keeps_every_lease() {
    use support::delay_proxy::DelayProxy;
    let env = TestEnv::start("lease_slow");
    let proxy = DelayProxy::start(&env.redis_url).await;
    let o = Overrides {
        redis_url: Some(proxy.url.clone()),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let names = Names::new(&config.namespace);
    let direct = writ::redis_conn::connect(&env.config(), Duration::ZERO)
        .await
        .unwrap();
    let all: Vec<u32> = (0..config.partitions).collect();
    let daemon = Daemon::start(config.clone());
    wait_owned(&direct, &names, &all, "every partition owned").await;
    // Each lease renewed once (its TTL in Redis went back up): the renewal
    // script is loaded, as on a daemon that has run for a while (the first
    // call of a script costs two more round trips).
    for p in &all {
        renewed(&direct, &names.lease(*p)).await;
    }
    let before = fences(&direct, &names, &all).await;
    proxy.set_delay(Duration::from_millis(700));
    // Several renewal rounds, and past a TTL after the first late one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_delay(Duration::ZERO);
    // A tenure that ended meanwhile released its lease; its next one moves
    // the fence once it is taken again.
    wait_owned(&direct, &names, &all, "every partition owned again").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_owned(&direct, &names, &all, "every partition owned again").await;
    assert_eq!(
        fences(&direct, &names, &all).await,
        before,
        "partitions changed hands while Redis answered slowly (a new tenure moves the fence)"
    );
    daemon.stop().await;
}
