//! TLS to Redis (`rediss://`): each test starts its own TLS-only redis-server
//! (no plaintext port) with a test CA made by the harness, whatever
//! `WRIT_TEST_REDIS_URL` says; MongoDB is the usual one.

mod support;

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use support::proc::writ_cli;
use support::{Daemon, Overrides, RedisServer, TestCa, TestEnv};
use writ::{Error, Writ};

fn sig(symbol: &str) -> Document {
    doc! {"symbol": symbol, "strategyName": "tls", "exchangeName": "x"}
}

/// `[redis]` lines for the TLS files, as TOML.
fn tls_lines(ca: Option<&std::path::Path>, client: Option<&TestCa>) -> String {
    let mut s = String::new();
    if let Some(ca) = ca {
        s += &format!("tls_ca_file = {:?}\n", ca.display().to_string());
    }
    if let Some(c) = client {
        s += &format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
            c.client_cert.display().to_string(),
            c.client_key.display().to_string()
        );
    }
    s
}

/// One line on stderr, the URL redacted, the password nowhere, and the hint.
fn one_clear_line(stderr: &[u8], url_shown: &str, hint: &str) -> String {
    let err = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let line = lines[0].to_string();
    assert!(line.contains(url_shown), "{line}");
    assert!(line.contains(hint), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_client_and_cli_work_over_rediss_with_a_private_ca() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca, "optional");
    let env = TestEnv::start("tls_roundtrip");
    let lines = tls_lines(Some(&ca.ca), None);
    let o = Overrides {
        redis_url: Some(redis.url()),
        redis: &lines,
        ..Default::default()
    };
    let config = env.config_with(&o);
    assert!(config.redis_url.starts_with("rediss://"));
    let daemon = Daemon::start(config.clone());
    let writ = Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let v = s
        .write(&sig("BTCUSDT"), &doc! {"price": 1, "side": "long"})
        .await
        .unwrap();
    // Read back through the cache the daemon filled over TLS...
    let rec = s.read_record(&sig("BTCUSDT")).await.unwrap().unwrap();
    assert_eq!(rec.version, v);
    assert_eq!(rec.payload, Some(doc! {"price": 1, "side": "long"}));
    // ...and from MongoDB.
    let docs = env.all_docs("signal").await;
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0].get_document("payload").unwrap(),
        &doc! {"price": 1, "side": "long"}
    );
    // The CLI (the real binary) over TLS too.
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let out = writ_cli(&path, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unapplied: u64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["unapplied"].as_u64().unwrap())
        .sum();
    assert_eq!(unapplied, 0, "{status}");
    drop(writ);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_without_the_right_ca_fails_fast_with_one_clear_error() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = RedisServer::start_tls(&ca, "no");
    let env = TestEnv::start("tls_no_ca");
    let url = format!("rediss://:s3cret@127.0.0.1:{}", redis.port);
    let shown = format!("rediss://***@127.0.0.1:{}", redis.port);
    // No CA configured: only the public roots are trusted.
    let config = env.config_with(&Overrides {
        redis_url: Some(url.clone()),
        ..Default::default()
    });
    let start = Instant::now();
    let err = match Writ::connect(config).await {
        Err(e) => e,
        Ok(_) => panic!("connected to a server signed by an untrusted CA"),
    };
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&shown), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(msg.contains("set redis.tls_ca_file"), "{msg}");
    // Another CA configured: the CLI says so in one line and exits non-zero.
    let dir = tempfile::tempdir().unwrap();
    let lines = tls_lines(Some(&other.ca), None);
    let path = env.config_file_with(
        dir.path(),
        &Overrides {
            redis_url: Some(url),
            redis: &lines,
            ..Default::default()
        },
    );
    let start = Instant::now();
    let out = writ_cli(&path, &["status"]);
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
    one_clear_line(&out.stderr, &shown, "does redis.tls_ca_file hold the CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_sends_the_configured_client_certificate() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca, "yes");
    let env = TestEnv::start("tls_mutual");
    let dir = tempfile::tempdir().unwrap();
    let with_cert = tls_lines(Some(&ca.ca), Some(&ca));
    let o = Overrides {
        redis_url: Some(redis.url()),
        redis: &with_cert,
        ..Default::default()
    };
    let out = writ_cli(&env.config_file_with(dir.path(), &o), &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client library, too, and without the certificate it is refused.
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    drop(writ);
    let without = tls_lines(Some(&ca.ca), None);
    let config = env.config_with(&Overrides {
        redis_url: Some(redis.url()),
        redis: &without,
        ..Default::default()
    });
    match Writ::connect(config).await {
        Err(Error::Connect { .. }) => {}
        Err(e) => panic!("expected a connect error, got {e:?}"),
        Ok(_) => panic!("connected without the client certificate the server requires"),
    }
}
