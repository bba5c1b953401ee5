//! Membership on Redis's clock: daemons on hosts whose clocks disagree still
//! share the partitions evenly, and a dead one's partitions move within the
//! lease TTL whichever way its clock was off.
//!
//! `WRIT_TEST_CLOCK_SKEW_MS` shifts a daemon's wall clock as membership sees
//! it. Before membership used Redis's `TIME`, a daemon 10 s behind was pruned
//! by the others at once and never got a partition, and one 10 s ahead was
//! still counted 10 s after a kill -9, its partitions left without an owner.

mod support;

use std::time::{Duration, Instant};

use support::proc::DaemonProc;
use support::{eventually, lease_holders, Overrides, TestEnv};

/// Five lease TTLs (the harness sets 2 s).
const SKEW_MS: i64 = 10_000;

async fn wait_split(env: &TestEnv, partitions: u32, want: &[(&str, u32)], what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        let o = lease_holders(env, partitions).await;
        want.iter()
            .all(|(name, n)| o.get(*name).copied().unwrap_or(0) == *n)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_clock_runs_behind_gets_its_share() {
    let env = TestEnv::start("skew-behind");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides::default();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let half = config.partitions / 2;
    let _a = DaemonProc::start(&path, dir.path(), "daemon-a");
    wait_split(
        &env,
        config.partitions,
        &[("daemon-a", config.partitions)],
        "daemon-a owns every partition",
    )
    .await;
    let behind = (-SKEW_MS).to_string();
    let _b = DaemonProc::start_with_env(
        &path,
        dir.path(),
        "daemon-b",
        &[("WRIT_TEST_CLOCK_SKEW_MS", behind.as_str())],
    );
    wait_split(
        &env,
        config.partitions,
        &[("daemon-a", half), ("daemon-b", half)],
        "daemon-b, its clock 10 s behind, owns half the partitions",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_daemon_whose_clock_ran_ahead_is_replaced_within_the_lease_ttl() {
    let env = TestEnv::start("skew-ahead");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides::default();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let half = config.partitions / 2;
    let _a = DaemonProc::start(&path, dir.path(), "daemon-a");
    let ahead = SKEW_MS.to_string();
    let mut b = DaemonProc::start_with_env(
        &path,
        dir.path(),
        "daemon-b",
        &[("WRIT_TEST_CLOCK_SKEW_MS", ahead.as_str())],
    );
    wait_split(
        &env,
        config.partitions,
        &[("daemon-a", half), ("daemon-b", half)],
        "the two daemons own half the partitions each",
    )
    .await;
    b.kill9();
    let killed = Instant::now();
    wait_split(
        &env,
        config.partitions,
        &[("daemon-a", config.partitions)],
        "daemon-a owns every partition after daemon-b's kill -9",
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took <= config.lease_ttl + Duration::from_secs(3),
        "the partitions of a daemon whose clock ran {SKEW_MS} ms ahead moved {took:?} after its kill -9 (lease TTL {:?})",
        config.lease_ttl
    );
}

/// A daemon that takes many partitions from a slow Redis keeps the first
/// ones meanwhile. It takes them one by one, and before session 25 it renewed
/// nothing until it had tried them all: with each acquisition slow (here
/// every request waits 100 ms at a proxy; in the field, a Redis fsyncing
/// large documents to its AOF), the first leases lapsed before the last was
/// taken, their partitions were aborted and taken again with a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_many_partitions_from_a_slow_redis_keeps_the_first_ones() {
    let env = TestEnv::start("slow_take");
    let (_proxy, proxied) =
        support::proxy::in_front_of_redis_with_latency(&env.redis_url, Duration::from_millis(100))
            .await;
    let partitions = 16;
    let o = Overrides {
        redis_url: Some(proxied),
        partitions: Some(partitions),
        daemon: "lease_ttl_ms = 1500",
        ..Default::default()
    };
    let config = env.config_with(&o);
    // The daemon's counters go to this process's recorder once it exists
    // (the other tests of this file run their daemons as child processes).
    writ::telemetry::recorder();
    let daemon = support::Daemon::start(config.clone());
    let me = config.consumer_name.clone();
    let started = Instant::now();
    wait_split(
        &env,
        partitions,
        &[(&me, partitions)],
        "every partition taken",
    )
    .await;
    let took = started.elapsed();
    // Two more lease TTLs: a lapsed lease is found at the next renewal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Each partition taken once (fencing tokens move by a random step, so
    // the count comes from the daemon, which runs in this process).
    let taken = support::own_counter("writ_lease_acquired_total", "");
    let lost = support::own_counter("writ_lease_lost_total", "");
    assert!(
        taken == partitions as f64 && lost == 0.0,
        "{taken} lease acquisitions and {lost} lapsed leases for {partitions} partitions: \
         leases lapsed and were taken again; taking all {partitions} took {took:?} against a \
         lease TTL of 1.5 s"
    );
    assert_eq!(
        lease_holders(&env, partitions).await.get(&me).copied(),
        Some(partitions)
    );
    daemon.stop().await;
}
