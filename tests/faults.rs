//! Never lose, never reorder: ownership hand-over, kill -9, pauses, MongoDB
//! outages and Redis restarts, on real servers and the real binary. Each test
//! records a history and checks at quiescence that every accepted write was
//! applied, the cache equals MongoDB, and no client read went backwards.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use support::load::Load;
use support::proc::DaemonProc;
use support::{eventually, Overrides, TestEnv};

async fn owners(env: &TestEnv, partitions: u32) -> Vec<Option<String>> {
    let mut r = env.redis().await;
    let mut out = Vec::new();
    for p in 0..partitions {
        let o: Option<String> = redis::cmd("GET")
            .arg(format!("{}:{{p{p}}}:lease", env.name))
            .query_async(&mut r)
            .await
            .unwrap();
        out.push(o);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_share_partitions_and_take_over_a_killed_one() {
    let env = TestEnv::start("takeover");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides::default();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let mut a = DaemonProc::start(&path, dir.path(), "daemon-a");
    let b = DaemonProc::start(&path, dir.path(), "daemon-b");
    // Both own a share.
    eventually(
        Duration::from_secs(30),
        "both daemons own partitions",
        || async {
            let o = owners(&env, config.partitions).await;
            let a_n = o
                .iter()
                .filter(|x| x.as_deref() == Some("daemon-a"))
                .count();
            let b_n = o
                .iter()
                .filter(|x| x.as_deref() == Some("daemon-b"))
                .count();
            (a_n == 2 && b_n == 2).then_some(())
        },
    )
    .await;
    let load = Load::start(
        &config,
        4,
        12,
        Duration::from_millis(5),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.kill9();
    let killed = Instant::now();
    let took = eventually(
        Duration::from_secs(30),
        "daemon-b owns every partition",
        || async {
            let o = owners(&env, config.partitions).await;
            o.iter()
                .all(|x| x.as_deref() == Some("daemon-b"))
                .then(|| killed.elapsed())
        },
    )
    .await;
    assert!(
        took <= config.lease_ttl + Duration::from_secs(3),
        "takeover took {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = load.stop().await;
    let drained = load
        .verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(60))
        .await;
    eprintln!(
        "takeover: {} accepted, {} acked, takeover {:?} (lease ttl {:?}), drained {:?} after load stop",
        load.accepted_count(), load.acked_count(), took, config.lease_ttl, drained
    );
    drop(b);
}

/// Unapplied entries (pending + undelivered) per owner, from `writ status`'s
/// own routine.
async fn in_flight_by_owner(env: &TestEnv, config: &writ::config::Config) -> HashMap<String, u64> {
    let mut conn = writ::redis_conn::connect(config, Duration::ZERO)
        .await
        .unwrap();
    let st = writ::status::status_of(&mut conn, &config.namespace, config.partitions, None)
        .await
        .unwrap();
    let _ = env;
    let mut out = HashMap::new();
    for p in st.partitions {
        *out.entry(p.owner.unwrap_or_default()).or_default() += p.unapplied;
    }
    out
}

const KILLS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_kills_with_hundreds_of_submits_in_flight_lose_nothing() {
    let env = TestEnv::start("kill9");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        daemon: "lease_ttl_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    // The daemons reach MongoDB through a proxy that holds each request
    // 100 ms, so that hundreds of entries are in flight at every kill
    // whatever the daemon's own speed (it coalesces this load's 40 keys).
    let (_slow, slow_uri) =
        support::proxy::in_front_of_mongo_with_latency(&env.mongo_uri, Duration::from_millis(100))
            .await;
    let path = env.config_file_with(
        dir.path(),
        &Overrides {
            mongo_uri: Some(slow_uri),
            ..o
        },
    );
    // Two daemons at all times: each kill lands on one that owns partitions,
    // and a successor starts at once.
    let mut alive: Vec<DaemonProc> = (0..2)
        .map(|i| DaemonProc::start(&path, dir.path(), &format!("k{i}")))
        .collect();
    let load = Load::start_submit(
        &config,
        4,
        40,
        Duration::from_millis(4),
        2000,
        Duration::from_secs(180),
    )
    .await;
    let mut rng = rand::rng();
    let mut in_flight_at_kill = Vec::new();
    for kill in 0..KILLS {
        // Wait until the daemon to kill owns partitions with hundreds of
        // entries in flight on them.
        let (victim, n) = eventually(
            Duration::from_secs(30),
            "a daemon owning partitions with hundreds of entries in flight",
            || async {
                let by_owner = in_flight_by_owner(&env, &config).await;
                alive
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| by_owner.get(&d.name).map(|n| (i, *n)))
                    .filter(|(_, n)| *n >= 100)
                    .max_by_key(|(_, n)| *n)
            },
        )
        .await;
        let owned = owners(&env, config.partitions).await;
        assert!(
            owned
                .iter()
                .any(|o| o.as_deref() == Some(alive[victim].name.as_str())),
            "kill {kill}: {} owns no partition",
            alive[victim].name
        );
        alive[victim].kill9();
        in_flight_at_kill.push(n);
        alive.remove(victim);
        alive.push(DaemonProc::start(
            &path,
            dir.path(),
            &format!("k{}", kill + 2),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
    }
    let load = load.stop().await;
    let drained = load
        .verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(120))
        .await;
    for mut d in alive {
        assert_eq!(
            d.terminate(Duration::from_secs(20)),
            Some(0),
            "clean exit on SIGTERM"
        );
    }
    let c = &load.counters;
    eprintln!(
        "kill -9: {KILLS} kills, entries in flight on the killed daemon's partitions at each kill: min {} median {} max {}; \
         {} accepted, {} acked, {} ack timeouts, {} submit errors, drained {:?} after load stop",
        in_flight_at_kill.iter().min().unwrap(),
        { let mut v = in_flight_at_kill.clone(); v.sort(); v[v.len() / 2] },
        in_flight_at_kill.iter().max().unwrap(),
        load.accepted_count(),
        load.acked_count(),
        c.ack_timeouts.load(std::sync::atomic::Ordering::Relaxed),
        c.submit_errors.load(std::sync::atomic::Ordering::Relaxed),
        drained
    );
    assert_eq!(
        load.acked_count(),
        load.accepted_count(),
        "every accepted write is acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_daemon_cannot_overwrite_newer_state() {
    let env = TestEnv::start("paused");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        daemon: "lease_ttl_ms = 1000",
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let a = DaemonProc::start(&path, dir.path(), "paused-a");
    eventually(Duration::from_secs(20), "daemon-a owns all", || async {
        owners(&env, config.partitions)
            .await
            .iter()
            .all(|x| x.as_deref() == Some("paused-a"))
            .then_some(())
    })
    .await;
    let b = DaemonProc::start(&path, dir.path(), "paused-b");
    let load = Load::start(
        &config,
        4,
        8,
        Duration::from_millis(5),
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.pause();
    eventually(
        Duration::from_secs(20),
        "daemon-b took over the paused daemon's partitions",
        || async {
            owners(&env, config.partitions)
                .await
                .iter()
                .all(|x| x.as_deref() == Some("paused-b"))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let slept = a.log_text().len();
    // It wakes with in-flight work and stale tokens.
    a.resume();
    // It did wake holding partitions, and ended those tenures (else the
    // check below would pass on a daemon that held nothing when it woke).
    eventually(
        Duration::from_secs(20),
        "the resumed daemon to end the tenures it held",
        || {
            let log = a.log_text();
            async move {
                log.get(slept..)?
                    .contains("partition tenure ended")
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = load.stop().await;
    load.verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(60))
        .await;
    drop((a, b));
}

/// How long MongoDB is unreachable in the outage test.
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_outage_writers_keep_going_and_everything_commits_in_order() {
    let env = TestEnv::start("outage");
    let (proxy, proxied) = support::proxy::in_front_of_mongo(&env.mongo_uri).await;
    let o = Overrides {
        mongo_uri: Some(proxied),
        client: "write_timeout_ms = 3000\nread_timeout_ms = 1000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = support::Daemon::start(config.clone());
    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(
        &support::load::key("blocked"),
        &mongodb::bson::doc! {"value": 0_i64},
    )
    .await
    .unwrap();
    let load = Load::start(
        &config,
        4,
        10,
        Duration::from_millis(20),
        Duration::from_millis(200),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = load.accepted_count();
    proxy.cut();
    let cut = Instant::now();
    // A writer blocked in `write` times out; its write still commits later.
    let t = Instant::now();
    match s
        .write(
            &support::load::key("blocked"),
            &mongodb::bson::doc! {"value": 1_i64},
        )
        .await
    {
        Err(writ::Error::Timeout { .. }) => assert!(t.elapsed() >= Duration::from_millis(2900)),
        other => panic!("expected a timeout during the outage, got {other:?}"),
    }
    // The outage itself: MongoDB unreachable for 60 s.
    tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
    let during = load.accepted_count() - before;
    assert!(
        during > 100,
        "writers kept getting acceptances during the outage ({during})"
    );
    proxy.heal();
    let healed = Instant::now();
    let load = load.stop().await;
    let drained = load
        .verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(120))
        .await;
    eventually(
        Duration::from_secs(60),
        "the timed-out write commits",
        || async {
            let r = s
                .read(&support::load::key("blocked"))
                .await
                .ok()
                .flatten()?;
            (r.get_i64("value").ok()? == 1).then_some(())
        },
    )
    .await;
    eprintln!(
        "outage: {:?} cut; {} accepted ({} during the outage), {} acked; drained {:?} after heal ({:?} after load stop)",
        OUTAGE, load.accepted_count(), during, load.acked_count(), healed.elapsed(), drained
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_always_loses_no_acknowledged_write() {
    // Always a harness-owned redis-server: the test restarts it.
    let mut redis = support::RedisServer::start_with(true);
    let env = TestEnv::start("redis_restart");
    let o = Overrides {
        redis_url: Some(redis.url()),
        client: "write_timeout_ms = 20000\nread_timeout_ms = 2000",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let daemon = support::Daemon::start(config.clone());
    let load = Load::start(
        &config,
        4,
        10,
        Duration::from_millis(5),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_before = load.acked_count();
    redis.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load = load.stop().await;
    assert!(
        load.acked_count() > acked_before,
        "writes were acked again after the restart"
    );
    let drained = load
        .verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(60))
        .await;
    eprintln!(
        "redis restart: {} accepted, {} acked, {} submit errors; drained {:?}",
        load.accepted_count(),
        load.acked_count(),
        load.counters
            .submit_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        drained
    );
    daemon.stop().await;
}
