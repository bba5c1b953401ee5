//! Every daemon records its MongoDB database in the namespace's meta hash
//! (`src/database_record.rs`), and a client or tool configured with another
//! database is refused when it connects: its read-throughs would read a
//! database the daemons do not write (after a switch from the official
//! package, the default `writ` against the daemon's `backtest-kit`), and a
//! tool would apply to it.

mod support;

use support::proc::writ_cli;
use support::{Daemon, TestEnv};
use writ::{Error, Writ};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_or_tool_on_another_database_than_the_daemons_is_refused() {
    let env = TestEnv::start("database_record");
    let config = env.config();
    let mut other = config.clone();
    other.database = format!("{}_other", config.database);

    // Before any daemon ran, nothing is recorded and nothing refused.
    Writ::connect(other.clone()).await.unwrap().close().await;

    let daemon = Daemon::start(config.clone());
    support::eventually(
        std::time::Duration::from_secs(30),
        "the daemon's record",
        || async {
            let mut r = env.redis().await;
            let names = writ::protocol::Names::new(&config.namespace);
            let db: Option<String> = redis::cmd("HGET")
                .arg(names.meta(0))
                .arg("database")
                .query_async(&mut r)
                .await
                .unwrap();
            (db.as_deref() == Some(config.database.as_str())).then_some(())
        },
    )
    .await;
    Writ::connect(config.clone()).await.unwrap().close().await;
    let e = match Writ::connect(other.clone()).await {
        Ok(_) => panic!("a client on another database connected"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "configured with MongoDB database {:?}",
            other.database
        )) && text.contains(&format!("write to {:?}", config.database)),
        "{text}"
    );

    // A tool too: a replay would apply to the other database.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.toml");
    let text = env.config_text("").replace(
        &format!("database = \"{}\"", config.database),
        &format!("database = \"{}\"", other.database),
    );
    std::fs::write(&path, text).unwrap();
    let out = writ_cli(&path, &["replay", "--from", "0-0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("its reads would miss every write"),
        "{stderr}"
    );
    daemon.stop().await;
}
