//! MongoDB with SCRAM-SHA-256 authentication: a user with `readWrite` on
//! writ's database is all the daemon and the clients need; a wrong password
//! is one clear, non-retried error that never prints the password.
//!
//! On SecantusDB the harness creates the user, then restarts the server
//! with `--auth`. Against a real MongoDB (`WRIT_TEST_MONGODB_URI`) the user
//! is created through that URI; a server without authorization enabled
//! still checks the credentials a driver presents, so both halves hold.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::proc::{writ_bin, DaemonProc};
use support::{Overrides, TestEnv};
use writ::Writ;

const USER: &str = "writ-scram";
const PASSWORD: &str = "s3cret-Pw-0451";

/// `uri` with `user:password@` (replacing any credentials) and
/// `authSource=db`.
fn with_credentials(uri: &str, user: &str, password: &str, db: &str) -> String {
    let (scheme, rest) = uri.split_once("://").expect("a mongodb:// URI");
    let rest = match rest.split_once('@') {
        Some((_, host)) if !rest[..rest.find('/').unwrap_or(rest.len())].is_empty() => {
            host.to_string()
        }
        _ => rest.to_string(),
    };
    let sep = if rest.contains('?') { '&' } else { '?' };
    let rest = if rest.contains('/') {
        rest
    } else {
        format!("{rest}/")
    };
    format!("{scheme}://{user}:{password}@{rest}{sep}authSource={db}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_user_with_read_write_runs_writ_and_a_wrong_password_is_one_clear_error() {
    let mut env = TestEnv::start("mongo_auth");
    let admin = mongodb::Client::with_uri_str(&env.mongo_uri).await.unwrap();
    admin
        .database(&env.name)
        .run_command(doc! {
            "createUser": USER,
            "pwd": PASSWORD,
            "roles": [{"role": "readWrite", "db": &env.name}],
        })
        .await
        .expect("createUser");
    drop(admin);
    if let Some(m) = env.mongo.as_mut() {
        m.shut_down(); // SIGTERM: the new user must survive the restart
        m.resume_with_auth();
    }

    // Without credentials: refused (SecantusDB with --auth).
    if env.mongo.is_some() {
        let anon = mongodb::Client::with_uri_str(&env.mongo_uri).await.unwrap();
        let refused = anon
            .database(&env.name)
            .collection::<mongodb::bson::Document>("signal")
            .find_one(doc! {})
            .await;
        assert!(refused.is_err(), "the server requires authentication");
    }

    // The user runs the daemon and a client: a write is acked and read back.
    let uri = with_credentials(&env.mongo_uri, USER, PASSWORD, &env.name);
    let o = Overrides {
        mongo_uri: Some(uri.clone()),
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let daemon = DaemonProc::start(&path, dir.path(), "scram-daemon");
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signals = writ.collection("signal").unwrap();
    let key = doc! {"symbol": "AUTH", "strategyName": "scram", "exchangeName": "x"};
    let version =
        tokio::time::timeout(Duration::from_secs(60), signals.write(&key, &doc! {"n": 1}))
            .await
            .expect("acked within 60 s")
            .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", daemon.log_text()));
    let read = writ
        .collection("signal")
        .unwrap()
        .read_record(&key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, version);
    let user = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let stored = user
        .database(&env.name)
        .collection::<mongodb::bson::Document>("signal")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 1, "the authenticated daemon wrote to MongoDB");
    drop(daemon);

    // A wrong password: `writ serve` exits at once with one clear error that
    // names authentication and never prints the password.
    let wrong = "wr0ng-Pw-9137";
    let bad = Overrides {
        mongo_uri: Some(with_credentials(&env.mongo_uri, USER, wrong, &env.name)),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &bad);
    let mut cmd = std::process::Command::new(writ_bin());
    cmd.args(["--config"])
        .arg(&path)
        .arg("serve")
        .env_remove("WRIT_REDIS_URL")
        .env_remove("WRIT_MONGODB_URI")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = support::reap::spawn(cmd).unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("writ serve kept retrying a wrong MongoDB password for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "a wrong password is fatal: {text}");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("writ:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    for part in ["authentication failed", "mongodb.uri", "authSource", "***@"] {
        assert!(errors[0].contains(part), "the error says {part:?}: {text}");
    }
    assert!(
        !text.contains(wrong),
        "the password is never printed: {text}"
    );
    assert!(!text.contains(PASSWORD));
    eprintln!("wrong password, as the operator sees it:\n{text}");
}
