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

async fn acquire(conn: &mut MultiplexedConnection, me: &str, call: &str) -> u64 {
    redis::Script::new(include_str!("../src/lua/lease_acquire.lua"))
        .key(LEASE)
        .key(FENCE)
        .key(ACQUIRED)
        .arg(me)
        .arg(60_000)
        .arg(call)
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

    assert_eq!(acquire(&mut conn, "d1", "a").await, 1, "a free lease");
    let aof = support::aof_size(&mut conn).await;
    assert_eq!(
        acquire(&mut conn, "d1", "a").await,
        1,
        "the same call again gets its token"
    );
    // The second run writes, so that a WAIT after it (min_replicas_acked)
    // covers the first run's INCR.
    assert!(
        support::aof_size(&mut conn).await > aof,
        "the second run propagated nothing"
    );
    assert_eq!(fence(conn.clone()).await, 1, "one INCR for the two runs");
    assert_eq!(
        acquire(&mut conn, "d1", "b").await,
        0,
        "another call from a daemon of the same name is refused"
    );
    assert_eq!(acquire(&mut conn, "d2", "a").await, 0, "another daemon");

    // The lease expires and another daemon takes it: the old call's second
    // run must not hand out the old token.
    let _: () = redis::cmd("DEL")
        .arg(LEASE)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acquire(&mut conn, "d2", "c").await, 2);
    assert_eq!(acquire(&mut conn, "d1", "a").await, 0);
    assert_eq!(fence(conn.clone()).await, 2);
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
