//! A Redis failover's effects on the partition streams, by hand: the
//! consumer groups made past every entry, and every entry trimmed, as a
//! replica promoted without the entries (or retention) leaves them.

use super::TestEnv;

/// Creates the consumer group on every partition stream at `start` (`0`,
/// or `$`: past every entry, as a daemon that read them leaves it).
pub async fn create_groups(env: &TestEnv, config: &writ::Config, start: &str) {
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        let _: redis::Value = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(names.stream(p))
            .arg(names.group())
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut r)
            .await
            .unwrap();
    }
}

/// Retention's trim, by hand: every entry of every partition.
pub async fn trim_all(env: &TestEnv, config: &writ::Config) {
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        let _: u64 = redis::cmd("XTRIM")
            .arg(names.stream(p))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut r)
            .await
            .unwrap();
    }
}
