//! A daemon below its share asks for the leases others hold by their time
//! to live once nothing changes, not at every poll (src/ownership/tries.rs).
//! With 8 partitions and 3 daemons the share is 3, so one daemon holds 2 for
//! good and used to ask for the other 6 leases ten times a second, for
//! nothing: 2,730 script calls every 100 ms at 4,096 partitions.
//!
//! Counted in Redis: each refused try runs `PTTL` twice (the script's
//! expiry check and the time it reports), and nothing else of writ runs
//! `PTTL`. The test has a Redis of its own, so no other test's calls count.

mod support;

use std::time::Duration;

use support::{eventually, lease_holders, Daemon, Overrides, TestEnv};

async fn pttl_calls(r: &mut writ::redis_conn::Conn) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(r)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_pttl:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_leases_are_asked_for_by_their_ttl_once_ownership_is_quiet() {
    let env = TestEnv::start_own_redis("lease_polling");
    let daemons: Vec<Daemon> = ["pa", "pb", "pc"]
        .iter()
        .map(|name| {
            // The shortest deadline: asked at every poll for 2.6 s after a
            // change (the deadline, the tenures' 2 s grace, 5 polls).
            let line = format!("consumer_name = \"{name}\"\nshutdown_deadline_ms = 100");
            Daemon::start(env.config_with(&Overrides {
                daemon: &line,
                partitions: Some(8),
                ..Default::default()
            }))
        })
        .collect();
    let settled = || async {
        let h = lease_holders(&env, 8).await;
        let mut n: Vec<u32> = ["pa", "pb", "pc"]
            .iter()
            .map(|d| h.get(*d).copied().unwrap_or(0))
            .collect();
        n.sort();
        (n == [2, 3, 3]).then_some(h)
    };
    let before = eventually(Duration::from_secs(30), "3, 3 and 2 leases held", settled).await;
    // Ten polls with nothing taken and the same members, and 2.6 s after the
    // last change: quiet from here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut r = env.redis().await;
    let start = pttl_calls(&mut r).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tries = (pttl_calls(&mut r).await - start) / 2;
    assert_eq!(
        settled().await,
        Some(before),
        "ownership moved during the count"
    );
    // 6 leases for 4 s: 240 tries at every poll; by their 2 s TTL, about 15.
    assert!(
        tries <= 60,
        "{tries} tries for 6 held leases in 4 s: asked at every poll"
    );
    for d in daemons {
        d.stop().await;
    }
}
