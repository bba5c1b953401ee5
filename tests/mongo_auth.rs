//! MongoDB with SCRAM-SHA-256 authentication: a user with `readWrite` on
//! writ's database is all the daemon and the clients need; a wrong password
//! is one clear, non-retried error that never prints the password.
//!
//! On SecantusDB the harness creates the user, then restarts the server
//! with `--auth`. Against a real MongoDB (`WRIT_TEST_MONGODB_URI`) the user
//! is created through that URI; a server without authorization enabled
//! still checks the credentials a driver presents, so the first test holds
//! there too. The second (a role revoked while running) needs a server that
//! enforces authorization, and says so on one that does not.

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
            let _ = child.wait();
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

/// Privileges taken away while the daemon runs (a revoked role; on MongoDB a
/// rotated password looks the same to new connections) are an outage, not
/// the writes' fault: the daemon retries them with backoff instead of
/// counting them towards `daemon.max_attempts`, so no write is
/// dead-lettered, and once the role is back every write applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_revoked_while_running_holds_writes_back_instead_of_dead_lettering_them() {
    const ADMIN: &str = "writ-admin";
    const ADMIN_PASSWORD: &str = "adm1n-Pw-7730";
    let mut env = TestEnv::start("mongo_auth_revoked");
    let setup = mongodb::Client::with_uri_str(&env.mongo_uri).await.unwrap();
    let roles = |role: &str| vec![doc! {"role": role, "db": &env.name}];
    setup
        .database(&env.name)
        .run_command(doc! {"createUser": USER, "pwd": PASSWORD, "roles": roles("readWrite")})
        .await
        .expect("createUser");
    // On SecantusDB the server restarts with --auth, so a user that may
    // change roles is needed; a real MongoDB's URI already is one.
    let admin_uri = if env.mongo.is_some() {
        setup
            .database("admin")
            .run_command(doc! {"createUser": ADMIN, "pwd": ADMIN_PASSWORD, "roles": ["root"]})
            .await
            .expect("createUser admin");
        with_credentials(&env.mongo_uri, ADMIN, ADMIN_PASSWORD, "admin")
    } else {
        env.mongo_uri.clone()
    };
    drop(setup);
    // SecantusDB applies a role change to other connections when they next
    // authenticate (MongoDB at once), so there the server restarts after
    // each change and the daemon's connections authenticate again.
    let restart = |env: &mut TestEnv| {
        if let Some(m) = env.mongo.as_mut() {
            m.shut_down();
            m.resume_with_auth();
        }
    };
    restart(&mut env);
    let set_role = |role: &'static str, admin_uri: String, db: String| async move {
        let admin = mongodb::Client::with_uri_str(&admin_uri).await.unwrap();
        admin
            .database(&db)
            .run_command(doc! {"updateUser": USER, "roles": [{"role": role, "db": &db}]})
            .await
            .expect("updateUser");
    };

    let uri = with_credentials(&env.mongo_uri, USER, PASSWORD, &env.name);
    // A revoked role changes nothing on a server that does not enforce
    // authorization: say so, instead of timing out below.
    let user = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let elsewhere = user
        .database(&format!("{}_norole", env.name))
        .collection::<mongodb::bson::Document>("x")
        .find_one(doc! {})
        .await;
    assert!(
        elsewhere.is_err(),
        "this test needs a MongoDB that enforces authorization (mongod --auth, or \
         security.authorization: enabled): a user with readWrite on {} only read another \
         database through WRIT_TEST_MONGODB_URI",
        env.name
    );
    drop(user);
    let o = Overrides {
        mongo_uri: Some(uri),
        daemon: "max_attempts = 2\nbackoff_cap_ms = 200",
        ..Default::default()
    };
    let config = env.config_with(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let daemon = DaemonProc::start(&path, dir.path(), "revoked-daemon");
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signals = writ.collection("signal").unwrap();
    let key =
        |i: u32| doc! {"symbol": format!("R{i}"), "strategyName": "revoked", "exchangeName": "x"};
    tokio::time::timeout(
        Duration::from_secs(60),
        signals.write(&key(0), &doc! {"n": 0}),
    )
    .await
    .expect("acked within 60 s")
    .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", daemon.log_text()));

    set_role("read", admin_uri.clone(), env.name.clone()).await;
    restart(&mut env);
    let mut tickets = Vec::new();
    for i in 1..=5 {
        tickets.push(signals.submit(&key(i), &doc! {"n": i}).await.unwrap());
    }
    // Each write is refused far more often than `max_attempts` (2) allows
    // for a refusal of the write itself.
    let retries = |log: &str| {
        log.lines()
            .filter(|l| l.contains("apply failed; retrying"))
            .count()
    };
    support::eventually(Duration::from_secs(60), "15 refused attempts", || {
        let n = retries(&daemon.log_text());
        async move { (n >= 15).then_some(()) }
    })
    .await;
    let mut redis = env.redis().await;
    let dlq = writ::protocol::Names::new(&config.namespace).dead_letters();
    let letters: u64 = redis::cmd("XLEN")
        .arg(&dlq)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        letters,
        0,
        "no write is dead-lettered for a revoked role:\n{}",
        daemon.log_text()
    );

    set_role("readWrite", admin_uri, env.name.clone()).await;
    restart(&mut env);
    for t in tickets {
        t.wait_for(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", daemon.log_text()));
    }
    let letters: u64 = redis::cmd("XLEN")
        .arg(&dlq)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(letters, 0);
    let log = daemon.log_text();
    assert!(
        log.contains("Unauthorized") || log.contains("not authorized"),
        "the log names the cause:\n{log}"
    );
}
