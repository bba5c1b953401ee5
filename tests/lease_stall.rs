//! One Redis Cluster master that stops answering costs only the partitions
//! whose leases it holds. Before session 47 the ownership loop awaited every
//! renewal together, then the member count, the releases and each
//! acquisition in turn, each up to the 5 s reply timeout: no lease was
//! renewed meanwhile, so the tenures on the healthy masters lapsed too
//! (trusted for 0.9 of the 2 s TTL), and every partition changed hands.
//! Now each of those calls waits a quarter of the TTL at most, and an
//! acquisition renews the leases held while it waits.

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

/// `Some` when every partition of `all` has its lease taken.
async fn owned_all(conn: &writ::redis_conn::Conn, names: &Names, all: &[u32]) -> Option<()> {
    for p in all {
        let holder: Option<String> = redis::cmd("GET")
            .arg(names.lease(*p))
            .query_async(&mut conn.clone())
            .await
            .ok()?;
        holder?;
    }
    Some(())
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
    support::eventually(Duration::from_secs(60), "every partition owned", || {
        owned_all(&conn, &names, &all)
    })
    .await;
    let stalled = cluster.master_of_key(&names.lease(0));
    let healthy: Vec<u32> = all
        .iter()
        .copied()
        .filter(|p| cluster.master_of_key(&names.lease(*p)) != stalled)
        .collect();
    assert!(!healthy.is_empty(), "every lease on one master");
    let before = fences(&conn, &names, &healthy).await;
    cluster.pause(stalled);
    // Longer than a lease TTL (2 s) and the 5 s reply timeout.
    tokio::time::sleep(Duration::from_secs(7)).await;
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
    support::eventually(
        Duration::from_secs(60),
        "every partition owned again",
        || owned_all(&conn, &names, &all),
    )
    .await;
    assert_eq!(
        fences(&conn, &names, &healthy).await,
        before,
        "partitions {healthy:?}, whose leases live on the masters that kept answering, changed hands (a new tenure moves the fence)"
    );
    daemon.stop().await;
}
