//! Lease acquisition sent twice (`src/lua/lease_acquire.lua`): redis-rs in
//! cluster mode sends a call again after a timeout or a dropped connection.
//! The second run of the call that took the lease returns its token, so the
//! partition is owned at once instead of staying unowned for a lease TTL;
//! any other call, also from a daemon with the same consumer name, is
//! refused while the lease is held.

mod support;

use redis::aio::MultiplexedConnection;

const LEASE: &str = "w:{p0}:lease";
const FENCE: &str = "w:{p0}:fence";
const ACQUIRED: &str = "w:{p0}:acquired";

/// The fence's step for every call here (the daemon draws one at random).
const STEP: u64 = 7;

/// The token taken, or minus the lease's remaining ms while it is held.
async fn acquire(conn: &mut MultiplexedConnection, me: &str, call: &str) -> i64 {
    redis::Script::new(include_str!("../src/lua/lease_acquire.lua"))
        .key(LEASE)
        .key(FENCE)
        .key(ACQUIRED)
        .arg(me)
        .arg(60_000)
        .arg(call)
        .arg(STEP)
        .invoke_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_acquisition_sent_twice_takes_the_lease_once() {
    let redis = support::RedisServer::start_with(true);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let fence = |mut c: MultiplexedConnection| async move {
        redis::cmd("GET")
            .arg(FENCE)
            .query_async::<u64>(&mut c)
            .await
            .unwrap()
    };

    assert_eq!(
        acquire(&mut conn, "d1", "a").await,
        STEP as i64,
        "a free lease"
    );
    let aof = support::aof_size(&mut conn).await;
    assert_eq!(
        acquire(&mut conn, "d1", "a").await,
        STEP as i64,
        "the same call again gets its token"
    );
    // The second run writes, so that a WAIT after it (min_replicas_acked)
    // covers the first run's fence write.
    assert!(
        support::aof_size(&mut conn).await > aof,
        "the second run propagated nothing"
    );
    assert_eq!(fence(conn.clone()).await, STEP, "one step for the two runs");
    let held = acquire(&mut conn, "d1", "b").await;
    assert!(
        (-60_000..0).contains(&held),
        "another call from a daemon of the same name is refused, told the lease's time left: {held}"
    );
    let held = acquire(&mut conn, "d2", "a").await;
    assert!((-60_000..0).contains(&held), "another daemon: {held}");

    // The lease expires and another daemon takes it: the old call's second
    // run must not hand out the old token.
    let _: () = redis::cmd("DEL")
        .arg(LEASE)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acquire(&mut conn, "d2", "c").await, 2 * STEP as i64);
    assert!(acquire(&mut conn, "d1", "a").await < 0);
    assert_eq!(fence(conn.clone()).await, 2 * STEP);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(ACQUIRED)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=60_000).contains(&ttl),
        "the record lives as long as the lease: {ttl}"
    );
}

/// A lease is released only by the tenure that holds it: its name and its
/// token. A process paused past its lease's TTL may find, once it runs
/// again and shuts down, that a replacement started under the same
/// `consumer_name` took the partition with a new token; its release must
/// leave that lease alone (before, the name alone matched, and the release
/// deleted the replacement's lease: a needless hand-over).
#[tokio::test]
async fn a_release_leaves_a_newer_tenure_of_the_same_name_alone() {
    let env = support::TestEnv::start("lease_release");
    let config = env.config();
    let conn = writ::redis_conn::connect(&config, std::time::Duration::ZERO)
        .await
        .unwrap();
    let ttl = std::time::Duration::from_secs(60);
    let old = writ::ownership::Leases::new(conn.clone(), &config.namespace, "d1", ttl);
    let first = old.try_acquire(0).await.unwrap().expect("a free lease");
    // The lease lapses (the old process paused), and a replacement of the
    // same name takes the partition.
    let names = writ::protocol::Names::new(&config.namespace);
    let mut c = env.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(names.lease(0))
        .query_async(&mut c)
        .await
        .unwrap();
    let new = writ::ownership::Leases::new(conn.clone(), &config.namespace, "d1", ttl);
    let second = new.try_acquire(0).await.unwrap().expect("a lapsed lease");
    assert!(second.token > first.token);
    let holder = |mut c: writ::redis_conn::Conn| {
        let key = names.lease(0);
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c)
                .await
                .unwrap()
        }
    };
    old.release(0, first.token).await.unwrap();
    assert_eq!(
        holder(conn.clone()).await.as_deref(),
        Some("d1"),
        "the old tenure's release took the new tenure's lease"
    );
    new.release(0, second.token).await.unwrap();
    assert_eq!(holder(conn.clone()).await, None, "the holder's release");
}

/// A fence beyond what Lua's numbers hold exactly (2^53) still moves
/// exactly (by one, Redis's own `INCR`), and is returned as it is stored.
#[tokio::test]
async fn a_fence_near_the_top_moves_exactly() {
    let redis = support::RedisServer::start_with(false);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let big: u64 = 900_719_925_474_099_123;
    let _: () = redis::cmd("SET")
        .arg(FENCE)
        .arg(big)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acquire(&mut conn, "d1", "a").await, big as i64 + 1);
    let stored: u64 = redis::cmd("GET")
        .arg(FENCE)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, big + 1);
    assert_eq!(
        acquire(&mut conn, "d1", "a").await,
        big as i64 + 1,
        "sent twice"
    );
}
