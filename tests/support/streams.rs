//! The partition streams' state set by hand: consumer groups made where a
//! test wants them, entries delivered and acked as a daemon would, and the
//! effects of a Redis failover (groups past every entry, every entry
//! trimmed, as a replica promoted without the entries, or retention, leaves
//! them).

use super::TestEnv;

/// Creates the consumer group on every partition stream at `start` (`0`,
/// or `$`: past every entry, as a daemon that read them leaves it).
pub async fn create_groups(env: &TestEnv, config: &writ::Config, start: &str) {
    let names = writ::protocol::Names::new(&config.namespace);
    let mut r = env.redis().await;
    for p in 0..config.partitions {
        create_group(&mut r, &names.stream(p), &names.group(), start).await;
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

/// Creates `group` on `stream` at `start` (the stream made if missing).
pub async fn create_group<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
    start: &str,
) {
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

/// Delivers every new entry of `stream` to `consumer` of `group`: they are
/// pending, as under a daemon that read them and has not acked them.
pub async fn deliver_all<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

/// Acks `ids` in `group`, as a daemon does once it is done with them.
pub async fn ack<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
    ids: &[String],
) {
    let _: u64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(conn)
        .await
        .unwrap();
}

/// The entries `stream` holds, oldest first.
pub async fn entries<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
) -> Vec<writ::stream::Entry> {
    let all: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    writ::stream::parse_entries(&all)
}

/// The ids of the entries `stream` holds, oldest first.
pub async fn ids<C: redis::aio::ConnectionLike>(conn: &mut C, stream: &str) -> Vec<String> {
    entries(conn, stream)
        .await
        .iter()
        .map(|e| e.id.to_stream_id())
        .collect()
}

/// How many entries `stream` holds.
pub async fn xlen<C: redis::aio::ConnectionLike>(conn: &mut C, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}
