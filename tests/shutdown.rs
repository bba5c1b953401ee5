//! Shutdown: a SIGTERM while MongoDB is unreachable, with writes in flight,
//! ends the daemon within `daemon.shutdown_deadline_ms` and loses nothing:
//! what it could not apply stays pending, and the next daemon applies it.

mod support;

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use support::proc::DaemonProc;
use support::{eventually, Overrides, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_mongodb_is_down_ends_within_the_deadline_and_loses_nothing() {
    let env = TestEnv::start("shutdown_mongo_down");
    let (proxy, proxied) = support::proxy::in_front_of_mongo(&env.mongo_uri).await;
    let o = Overrides {
        daemon: "shutdown_deadline_ms = 3000",
        mongo: "op_timeout_ms = 1000",
        client: "write_timeout_ms = 60000",
        mongo_uri: Some(proxied),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let mut first = DaemonProc::start(&path, dir.path(), "shutdown-1");
    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key =
        |i: i64| doc! {"symbol": format!("S{i}"), "strategyName": "down", "exchangeName": "x"};
    // Running and owning partitions: a write is acked.
    s.write(&key(0), &doc! {"i": 0}).await.unwrap();

    // MongoDB unreachable; 20 writes accepted, and the daemon takes them up.
    proxy.cut();
    let mut tickets = Vec::new();
    for i in 1..=20 {
        tickets.push(s.submit(&key(i), &doc! {"i": i}).await.unwrap());
    }
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    let parts = config.partitions;
    eventually(
        Duration::from_secs(20),
        "the daemon to take up the writes",
        || {
            let (mut r, names, group) = (r.clone(), names.clone(), names.group());
            async move {
                let mut pending = 0i64;
                for p in 0..parts {
                    let v: redis::Value = redis::cmd("XPENDING")
                        .arg(names.stream(p))
                        .arg(&group)
                        .query_async(&mut r)
                        .await
                        .ok()?;
                    if let redis::Value::Array(a) = v {
                        pending += redis::from_redis_value::<i64>(a[0].clone()).unwrap_or(0);
                    }
                }
                (pending > 0).then_some(())
            }
        },
    )
    .await;

    let t = Instant::now();
    let code = first.terminate(Duration::from_secs(20));
    let took = t.elapsed();
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        first.log_text()
    );
    assert!(
        took < Duration::from_millis(3000 + 2500),
        "SIGTERM with MongoDB down took {took:?}, deadline 3 s"
    );
    eprintln!(
        "SIGTERM with MongoDB down and 20 writes in flight: exited in {took:?} (deadline 3 s)"
    );

    // MongoDB back, a new daemon: every accepted write is applied and acked.
    proxy.heal();
    let mut second = DaemonProc::start(&path, dir.path(), "shutdown-2");
    all_applied(tickets, &s, (1..=20).map(|i| (key(i), i))).await;
    let _: () = redis::cmd("PING").query_async(&mut r).await.unwrap();
    assert_eq!(second.terminate(Duration::from_secs(20)), Some(0));
}

/// SIGHUP (the terminal `writ serve` ran in went away, or the kernel's
/// SIGHUP to a stopped daemon in an orphaned process group) drains and exits
/// as SIGTERM does, instead of ending the process mid-round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_and_exits_like_sigterm() {
    let env = TestEnv::start("shutdown_hup");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides::default();
    let path = env.config_file_with(dir.path(), &o);
    let mut first = DaemonProc::start(&path, dir.path(), "hup-1");
    let writ = writ::Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |i: i64| doc! {"symbol": format!("H{i}"), "strategyName": "hup", "exchangeName": "x"};
    s.write(&key(0), &doc! {"i": 0_i64}).await.unwrap();
    let mut tickets = Vec::new();
    for i in 1..=30 {
        tickets.push(s.submit(&key(i), &doc! {"i": i}).await.unwrap());
    }
    let code = first.stop_with(libc::SIGHUP, Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGHUP (None: the signal ended the process); log:\n{}",
        first.log_text()
    );
    assert!(first.log_text().contains("SIGHUP received"));

    // What the first daemon did not apply, the next one does.
    let mut second = DaemonProc::start(&path, dir.path(), "hup-2");
    all_applied(tickets, &s, (0..=30).map(|i| (key(i), i))).await;
    // Started (its signal handlers in place) before it is stopped: the
    // first daemon may have applied every write as it drained.
    eventually(Duration::from_secs(20), "the second daemon to run", || {
        let log = second.log_text();
        async move { log.contains("writ serve is running").then_some(()) }
    })
    .await;
    assert_eq!(second.terminate(Duration::from_secs(20)), Some(0));
}

/// Waits for every ticket's ack, then reads each key back: `{"i": i}`.
async fn all_applied(
    tickets: Vec<writ::Ticket>,
    s: &writ::Collection,
    keys: impl Iterator<Item = (mongodb::bson::Document, i64)>,
) {
    for t in tickets {
        t.wait_for(Duration::from_secs(60)).await.unwrap();
    }
    for (key, i) in keys {
        assert_eq!(
            s.read(&key).await.unwrap(),
            Some(doc! {"i": i}),
            "write {i}"
        );
    }
}

/// SIGTERM while Redis stops answering (a blackholed link: no reset, no
/// replies) ends the daemon within its deadline and graces, not after its
/// drain's renewals and releases, and its housekeeping pass, have waited out
/// a reply timeout per call. Before session 44 `serve`
/// waited for that pass, which the shutdown could not interrupt
/// (helper-100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_redis_stops_answering_does_not_wait_for_housekeeping() {
    let env = TestEnv::start("shutdown_redis_silent");
    let (proxy, via) = support::proxy::in_front_of_redis_pausable(&env.redis_url).await;
    let o = Overrides {
        daemon: "shutdown_deadline_ms = 1000\nstats_interval_ms = 100",
        redis_url: Some(via),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let mut d = DaemonProc::start(&path, dir.path(), "silent-1");
    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(
        &doc! {"symbol": "R", "strategyName": "silent", "exchangeName": "x"},
        &doc! {"i": 0},
    )
    .await
    .unwrap();
    // Redis stops answering; a housekeeping pass (every 100 ms) is caught
    // in it within the second.
    proxy.pause();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let code = d.terminate(Duration::from_secs(120));
    let took = t.elapsed();
    proxy.go_on();
    eprintln!("SIGTERM with Redis silent: exited in {took:?}");
    let log = d.log_text();
    assert_eq!(code, Some(0), "{log}");
    // The ownership's drain costs reply timeouts of its own (a renewal, the
    // releases: documented); what must not follow it is a wait for the
    // housekeeping pass. So: the daemon stops within a second of the
    // ownership's last line.
    let at = |needle: &str| -> f64 {
        let Some(line) = log.lines().rev().find(|l| l.contains(needle)) else {
            return 0.0;
        };
        // 2026-12-07T12:05:19.476985Z: seconds of the day.
        let time = &line[11..26];
        let (h, m, sec) = (&time[0..2], &time[3..5], &time[6..]);
        h.parse::<f64>().unwrap() * 3600.0
            + m.parse::<f64>().unwrap() * 60.0
            + sec.parse::<f64>().unwrap()
    };
    // No Redis call of the shutdown waits past the deadline (1 s): the
    // deadline, the tenures' 2 s grace and the releases' 1 s, and the rest.
    // Before session 45 the drain's renewal and releases each waited out a
    // reply timeout: 19 s.
    assert!(
        took < Duration::from_secs(9),
        "SIGTERM with Redis silent took {took:?} (deadline 1 s); log:\n{log}"
    );
    // (Tenures cut at the deadline end without their own line.)
    let owned_end = at("partition tenure ended").max(at("writ::ownership"));
    assert!(
        owned_end > 0.0,
        "no line of the ownership in the log:\n{log}"
    );
    let stopped = at("writ serve stopped");
    assert!(
        stopped - owned_end < 1.0,
        "the daemon stopped {:.1} s after its partitions' leases were done with (took {took:?}); log:\n{log}",
        stopped - owned_end
    );
}
