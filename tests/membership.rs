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
