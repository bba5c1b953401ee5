//! The fence across a Redis failover (issue: a fencing counter that goes
//! backwards after a failover must not let two owners write).
//!
//! Two properties carry it, each tested here:
//! - with `redis.min_replicas_acked = 1`, a new lease's token is used only
//!   once a replica confirmed it; while the partition's replica does not
//!   answer, taking the lease fails, the lease is released, and the token is
//!   never used — so a promoted replica's counter is never behind a token in
//!   use;
//! - the fence check is for equality, so even a counter that does go back
//!   (`min_replicas_acked = 0`, a failover that lost the last fence write) admits
//!   exactly one of the tokens at any moment. A `>=` check would admit both.

mod support;

use std::time::Duration;

use support::cluster::RedisCluster;
use support::{Overrides, TestEnv};
use writ::cache::{Cache, CasOutcome, Fence};
use writ::ownership::{Lease, Leases};
use writ::protocol::{Names, Version};
use writ::redis_conn::Replication;
use writ::Error;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_token_no_replica_confirmed_is_never_used() {
    let env = TestEnv::start("fencewait");
    let cluster = RedisCluster::start(3, 1, false);
    let o = Overrides {
        redis_url: Some(cluster.url_list()),
        redis: "cluster = true\nmin_replicas_acked = 1\nreplica_ack_timeout_ms = 300",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let names = Names::new(&config.namespace);
    let conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let p = 0;
    let master = cluster.master_of_key(&names.fence(p));
    let replica = cluster.replica_of(master)[0];
    let leases = Leases::new(
        conn.clone(),
        &config.namespace,
        "owner",
        Duration::from_secs(30),
    )
    .with_replication(Replication::of(&config));
    let fence = |mut c: writ::redis_conn::Conn| {
        let key = names.fence(p);
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<u64>>(&mut c)
                .await
                .unwrap()
        }
    };

    cluster.pause(replica);
    match leases.try_acquire(p).await {
        Err(e @ Error::NotReplicated { .. }) => {
            assert!(e.to_string().contains("a partition lease"), "{e}");
            assert_eq!(e.retry_class(), writ::RetryClass::Transient);
        }
        other => panic!("a lease no replica confirmed must not be taken, got {other:?}"),
    }
    let held: Option<String> = redis::cmd("GET")
        .arg(names.lease(p))
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(held, None, "the unconfirmed lease was released");
    let unused = fence(conn.clone())
        .await
        .expect("the fence moved on the master");
    cluster.resume(replica);

    // Once the replica has caught up, the lease is taken (attempts that are
    // still not confirmed release it again, like the first).
    let lease = support::eventually(
        Duration::from_secs(15),
        "a lease confirmed by the resumed replica",
        || {
            let leases = leases.clone();
            async move {
                match leases.try_acquire(p).await {
                    Ok(Some(lease)) => Some(lease),
                    Ok(None) => panic!("nobody else holds the lease"),
                    Err(Error::NotReplicated { .. }) => None,
                    Err(e) => panic!("{e}"),
                }
            }
        },
    )
    .await;
    assert!(
        lease.token > unused,
        "the unconfirmed token {unused} is never handed out again here"
    );
    assert_eq!(fence(conn.clone()).await, Some(lease.token));
    // And the replica holds it: the token in use survives a failover.
    let on_replica: Option<u64> = {
        let client = redis::Client::open(cluster.node_url(replica)).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("READONLY").exec(&mut c).unwrap();
        redis::cmd("GET").arg(names.fence(p)).query(&mut c).unwrap()
    };
    assert_eq!(
        on_replica,
        Some(lease.token),
        "the replica has the token in use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_that_goes_back_admits_one_token_at_a_time() {
    let env = TestEnv::start("fenceback");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let p = 1;
    let a = take(&conn, &config.namespace, "a", p).await;
    // A's lease lapses; B takes the partition with the next token.
    lapse(&mut conn, &names, p).await;
    let b = take(&conn, &config.namespace, "b", p).await;
    assert!(b.token > a.token);
    let cache = Cache::new(conn.clone());
    let key = names.cache(p, "signal", "fenceback");
    let fence_of = |token| Fence {
        partition: p,
        key: names.fence(p),
        token,
    };
    let mut v = 0;
    let mut admitted = |fence: Fence| {
        v += 1;
        let (cache, key) = (cache.clone(), key.clone());
        let version = Version {
            ms: 1000 + v,
            seq: 0,
        };
        async move {
            let body = mongodb::bson::doc! {"v": version.ms as i64};
            cache
                .put_fenced(&key, version, Some(&body), Some(&fence))
                .await
                .unwrap()
                == CasOutcome::Stored
        }
    };
    // Before: only B, the current owner.
    assert!(
        !admitted(fence_of(a.token)).await,
        "the old token is fenced"
    );
    assert!(
        admitted(fence_of(b.token)).await,
        "the current token writes"
    );
    // A failover that lost B's acquisition: the counter goes back to A's token.
    let _: () = redis::cmd("SET")
        .arg(names.fence(p))
        .arg(a.token)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (old_in, new_in) = (
        admitted(fence_of(a.token)).await,
        admitted(fence_of(b.token)).await,
    );
    assert!(
        !(old_in && new_in),
        "after the counter went back both tokens wrote: two owners"
    );
    assert!(old_in ^ new_in, "exactly one token is current");
}

/// A failover that lost A's acquisition (`min_replicas_acked = 0`): the
/// promoted replica's fence is back where it was before A took the
/// partition, and A, which does not know, still holds its token until its
/// next renewal. The next acquisition must not hand B that same token, or
/// both would pass every fence check. With a step of one it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_after_a_lost_one_does_not_repeat_its_token() {
    let env = TestEnv::start("fencerepeat");
    let config = env.config();
    let names = Names::new(&config.namespace);
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let p = 2;
    // An earlier owner's tenure, so that the fence has a value to go back to.
    let first = take(&conn, &config.namespace, "first", p).await;
    lapse(&mut conn, &names, p).await;
    let a = take(&conn, &config.namespace, "a", p).await;
    assert!(a.token > first.token);
    // The failover: A's acquisition is gone (the fence and the lease as
    // before it); A does not know yet.
    let _: () = redis::cmd("SET")
        .arg(names.fence(p))
        .arg(first.token)
        .query_async(&mut conn)
        .await
        .unwrap();
    lapse(&mut conn, &names, p).await;
    let b = take(&conn, &config.namespace, "b", p).await;
    assert_ne!(
        a.token, b.token,
        "B was handed the token A still holds: two owners pass the fence"
    );
    // And the fence admits B's token only.
    let cache = Cache::new(conn.clone());
    let key = names.cache(p, "signal", "fencerepeat");
    let fence_of = |token| Fence {
        partition: p,
        key: names.fence(p),
        token,
    };
    let version = Version { ms: 1000, seq: 0 };
    let body = mongodb::bson::doc! {"v": 1};
    assert_eq!(
        cache
            .put_fenced(&key, version, Some(&body), Some(&fence_of(a.token)))
            .await
            .unwrap(),
        CasOutcome::Fenced,
        "A's token still writes"
    );
    assert_eq!(
        cache
            .put_fenced(&key, version, Some(&body), Some(&fence_of(b.token)))
            .await
            .unwrap(),
        CasOutcome::Stored,
        "B's token, the current one, is refused"
    );
}

/// Takes partition `p`'s free lease as daemon `who` (a 30 s lease).
async fn take(conn: &writ::redis_conn::Conn, ns: &str, who: &str, p: u32) -> Lease {
    Leases::new(conn.clone(), ns, who, Duration::from_secs(30))
        .try_acquire(p)
        .await
        .unwrap()
        .expect("a free lease")
}

/// Partition `p`'s lease lapses (its holder does not know yet).
async fn lapse(conn: &mut writ::redis_conn::Conn, names: &Names, p: u32) {
    let _: () = redis::cmd("DEL")
        .arg(names.lease(p))
        .query_async(conn)
        .await
        .unwrap();
}
