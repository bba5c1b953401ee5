//! `writ serve` started before its servers waits for them: a host's boot
//! that starts writ before redis-server, or a restart during an outage,
//! must not leave the partitions unowned until someone restarts the daemon.
//! It says so once (and again each minute), `/health/ready` answers 503,
//! and it starts once the server answers. (MongoDB is waited for the same
//! way: `tests/observability.rs`.) A refusal by a Redis that answers (an old
//! version, an evicting policy, a missing ACL rule) still stops it at once
//! (`tests/redis_memory.rs`, `tests/redis_acl.rs`).

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::proc::DaemonProc;
use support::{eventually, http_get, listen_port, Overrides, RedisServer, TestEnv};
use writ::Writ;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_before_redis_waits_for_it() {
    let env = TestEnv::start("startup_redis");
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port until the test starts redis-server there.
    let port = listen_port();
    let metrics = listen_port();
    let o = Overrides {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        daemon: &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
        partitions: Some(2),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let mut serve = DaemonProc::start(&path, dir.path(), "early");
    eventually(
        Duration::from_secs(30),
        "the daemon to say it waits",
        || {
            let log = serve.log_text();
            async move { log.contains("Redis is not reachable yet").then_some(()) }
        },
    )
    .await;
    assert!(
        serve
            .log_text()
            .contains("check redis.url / WRIT_REDIS_URL"),
        "{}",
        serve.log_text()
    );
    assert!(!serve.exited(), "the daemon gave up: {}", serve.log_text());
    // The probes answer meanwhile: alive, not ready.
    let ready = eventually(Duration::from_secs(10), "the health probes", || async {
        http_get(metrics, "/health/ready")
    })
    .await;
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(http_get(metrics, "/health/live").unwrap().0, 200);
    // And `writ_up` says which, for WritRedisDown (before session 42 it had
    // no series until both servers answered, so only WritPartitionUnowned
    // fired, with the wrong runbook).
    let body = http_get(metrics, "/metrics").unwrap().1;
    for want in [
        "writ_up{dependency=\"redis\"} 0",
        "writ_up{dependency=\"mongodb\"} 1",
    ] {
        assert!(body.contains(want), "no {want} in:\n{body}");
    }

    let redis = RedisServer::start_on_ports(vec![port]);
    assert_eq!(redis.port, port, "another process took the port");
    let config = env.config_with(&o);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "EARLY", "strategyName": "s", "exchangeName": "x"};
    s.write(&key, &doc! {"n": 1}).await.unwrap();
    assert_eq!(s.read(&key).await.unwrap(), Some(doc! {"n": 1}));
    assert!(serve.log_text().contains("Redis is reachable; starting"));
    let body = http_get(metrics, "/metrics").unwrap().1;
    assert!(body.contains("writ_up{dependency=\"redis\"} 1"), "{body}");
    assert_eq!(serve.terminate(Duration::from_secs(30)), Some(0));
}

/// A tool that cannot reach MongoDB says so in one line, naming what to
/// check, without the driver's topology dump (before session 41 it printed
/// the driver's whole text twice: `writ: mongodb: Server selection timeout:
/// ... Topology: { ... }: Kind: Server selection timeout: ...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_cannot_reach_mongodb_says_what_to_check_once() {
    let env = TestEnv::start("startup_mongo_down");
    let dir = tempfile::tempdir().unwrap();
    let refused = support::refused_port();
    let port = refused.port;
    let path = env.config_file_with(
        dir.path(),
        &Overrides {
            mongo_uri: Some(format!(
                "mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300"
            )),
            ..Default::default()
        },
    );
    let out = support::proc::writ_cli(&path, &["rebuild-cache"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let line = lines[0];
    assert!(line.contains("cannot reach a MongoDB server"), "{line}");
    assert!(line.contains("mongodb.uri / WRIT_MONGODB_URI"), "{line}");
    assert!(!line.contains("Topology"), "the driver's dump: {line}");
    assert!(
        line.contains(&format!("127.0.0.1:{port}: I/O error")) && line.contains("refused"),
        "what the server failed with: {line}"
    );
    assert_eq!(line.matches("Server selection").count(), 1, "{line}");
}
