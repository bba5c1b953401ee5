//! Daemons, clients and tools agree on `redis.partitions`. A key's stream
//! is its hash modulo the count, so a writer with another count writes to
//! streams no daemon reads, or splits one key's writes between two streams.
//! The first process to connect, daemon or client, records its count in
//! Redis; any process with another count is refused when it starts, naming
//! both. An operator changes the count (`partition_count::change`, the CLI's
//! `writ partitions --set`) only with no daemon running and the recorded
//! count's partitions drained; a running daemon that finds another daemon's
//! count recorded stops. The count is copied into every partition, where
//! admission refuses a writer left running on another count; a change that
//! a writer races, or that stops midway, strands no write and is finished
//! by running it again.

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::proc::writ_cli;
use support::{eventually, forget_partition_count, Daemon, Overrides, TestEnv};
use writ::config::Config;
use writ::{Error, Writ};

fn key(s: &str) -> Document {
    doc! {"symbol": s, "strategyName": "count", "exchangeName": "x"}
}

fn with_partitions(env: &TestEnv, n: u32) -> Config {
    env.config_with(&Overrides {
        partitions: Some(n),
        ..Default::default()
    })
}

/// A field of partition 0's meta hash, read directly.
async fn meta_field(config: &Config, field: &str) -> Option<String> {
    let mut conn = writ::redis_conn::connect(config, Duration::ZERO)
        .await
        .unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(field)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The count recorded in Redis.
async fn recorded(config: &Config) -> Option<String> {
    meta_field(config, writ::partition_count::FIELD).await
}

/// Who recorded the count.
async fn recorded_by(config: &Config) -> Option<String> {
    meta_field(config, writ::partition_count::BY_FIELD).await
}

/// `Writ::connect`'s refusal, which must name both counts.
async fn refused_client(config: Config, configured: u32, recorded: u32) {
    let e = match Writ::connect(config).await {
        Ok(_) => {
            panic!("a client with {configured} partitions connected to a namespace of {recorded}")
        }
        Err(e) => e,
    };
    assert_names_both(e, configured, recorded);
}

fn assert_names_both(e: Error, configured: u32, recorded: u32) {
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("redis.partitions = {configured}"))
            && text.contains(&format!("records {recorded} partitions"))
            && text.contains(&format!("Set redis.partitions = {recorded}")),
        "{text}"
    );
}

/// A config file with `n` partitions, for the CLI (in a directory that
/// lives as long as the first value).
fn config_file(env: &TestEnv, n: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = env.config_file_with(
        dir.path(),
        &Overrides {
            partitions: Some(n),
            ..Default::default()
        },
    );
    (dir, file)
}

/// Records 4 partitions over a running daemon with 8, with the record's
/// epoch raised to `epoch` (a change of the count), and checks that the
/// daemon stops, naming both counts.
async fn stops_when_the_count_changes(
    daemon: Daemon,
    conn: &mut writ::redis_conn::Conn,
    meta: &str,
    epoch: u64,
) {
    use writ::partition_count::{BY_FIELD, EPOCH_FIELD, FIELD};
    let _: () = redis::cmd("HSET")
        .arg(meta)
        .arg(FIELD)
        .arg(4)
        .arg(BY_FIELD)
        .arg("daemon")
        .arg(EPOCH_FIELD)
        .arg(epoch)
        .query_async(conn)
        .await
        .unwrap();
    let e = daemon
        .stopped_within(Duration::from_secs(30))
        .await
        .expect_err("the daemon went on after the count changed");
    assert_names_both(e, 8, 4);
}

/// The stdout of a CLI run that succeeded.
fn cli_ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The stdout of a CLI run that exited 1 (a state to mend).
fn cli_exit_1(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `serve`'s result within 30 s (it must not keep running).
async fn serve_refused(config: Config) -> Error {
    tokio::time::timeout(
        Duration::from_secs(30),
        writ::serve::serve(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("a daemon with another count kept running")
    .expect_err("a daemon with another count ran")
}

async fn change(config: &Config) -> writ::Result<writ::partition_count::Changed> {
    let mut conn = writ::redis_conn::connect(config, Duration::ZERO)
        .await
        .unwrap();
    writ::partition_count::change(&mut conn, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_daemons_with_another_partition_count_are_refused() {
    use writ::partition_count::Changed;
    let env = TestEnv::start("partition_count");
    let four = with_partitions(&env, 4);
    let eight = with_partitions(&env, 8);

    // The first process to connect, here a client, records its count;
    // other clients are held to it.
    assert_eq!(recorded(&four).await, None);
    let writ = Writ::connect(four.clone()).await.unwrap();
    assert_eq!(recorded(&four).await.as_deref(), Some("4"));
    refused_client(eight.clone(), 8, 4).await;
    // A daemon with the same count takes it over as the daemons' count;
    // then a daemon with another count is refused too.
    let daemon = Daemon::start(four.clone());
    eventually(Duration::from_secs(30), "the daemon's record", || async {
        (recorded_by(&four).await.as_deref() == Some("daemon")).then_some(())
    })
    .await;
    daemon.stop().await;
    assert_names_both(serve_refused(eight.clone()).await, 8, 4);

    // Writes accepted while no daemon runs stay unapplied in the 4 streams:
    // the count cannot be changed then.
    let s = writ.collection("signal").unwrap();
    for i in 0..10 {
        s.submit(&key(&format!("k{i}")), &doc! {"n": i})
            .await
            .unwrap();
    }
    let e = change(&eight)
        .await
        .expect_err("changed over unapplied writes");
    assert!(
        matches!(&e, Error::Refused(t) if t.contains("records 4 partitions") && t.contains("unapplied")),
        "{e:?}"
    );
    // Nor while a daemon runs, even with everything applied.
    let daemon = Daemon::start(four.clone());
    writ.sync(Duration::from_secs(60)).await.unwrap();
    let e = change(&eight)
        .await
        .expect_err("changed under a running daemon");
    assert!(
        matches!(&e, Error::Refused(t) if t.contains("daemon(s)") && t.contains("running")),
        "{e:?}"
    );
    daemon.stop().await;
    drop(writ);
    assert_eq!(recorded(&four).await.as_deref(), Some("4"));

    // Drained and stopped: the count changes (here with the CLI), the
    // daemon with 8 runs, and processes with 4 are refused from now on.
    let (_dir, file) = config_file(&env, 8);
    let shown = cli_exit_1(writ_cli(&file, &["partitions"]));
    assert!(
        shown.contains("records 4 partitions; this config says 8"),
        "{shown}"
    );
    let set = cli_ok(writ_cli(&file, &["partitions", "--set"]));
    assert!(
        set.contains("now records 8 partitions (before: 4)"),
        "{set}"
    );
    assert_eq!(change(&eight).await.unwrap(), Changed::Already);
    let daemon = Daemon::start(eight.clone());
    let writ = Writ::connect(eight.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("k3"), &doc! {"n": 33}).await.unwrap();
    refused_client(four.clone(), 4, 8).await;
    // A running daemon records the count again if Redis loses it.
    let mut conn = writ::redis_conn::connect(&eight, Duration::ZERO)
        .await
        .unwrap();
    let meta = writ::protocol::Names::new(&eight.namespace).meta(0);
    forget_partition_count(&mut conn, &eight).await;
    eventually(
        Duration::from_secs(30),
        "the count recorded again",
        || async { (recorded(&eight).await.as_deref() == Some("8")).then_some(()) },
    )
    .await;
    // Nothing written under the old count was lost.
    assert_eq!(s.read(&key("k9")).await.unwrap(), Some(doc! {"n": 9}));
    assert_eq!(s.read(&key("k3")).await.unwrap(), Some(doc! {"n": 33}));
    // Another daemon's count appearing under a running daemon with a raised
    // epoch (a change of the count that raced its start; a hand edit here)
    // stops it, saying why.
    stops_when_the_count_changes(daemon, &mut conn, &meta, 1000).await;
    drop(writ);

    // A misconfigured client that connects before any daemon does not lock
    // the daemons out: a daemon replaces a count only a client recorded.
    forget_partition_count(&mut conn, &eight).await;
    drop(Writ::connect(four.clone()).await.unwrap());
    assert_eq!(recorded(&four).await.as_deref(), Some("4"));
    let daemon = Daemon::start(eight.clone());
    eventually(Duration::from_secs(30), "the daemon's count", || async {
        (recorded(&eight).await.as_deref() == Some("8")).then_some(())
    })
    .await;
    refused_client(four.clone(), 4, 8).await;
    daemon.stop().await;
}

/// The partition of key `name` of `signal` under `config`'s count.
fn partition_of(config: &Config, name: &str) -> u32 {
    let coll = config.collection("signal").unwrap();
    writ::protocol::Key::from_document(&key(name), coll)
        .unwrap()
        .partition("signal", config.partitions)
}

/// The count copied into partition `p`'s meta hash, and the entries of its
/// stream.
async fn copy_and_xlen(config: &Config, p: u32) -> (Option<String>, u64) {
    let mut conn = writ::redis_conn::connect(config, Duration::ZERO)
        .await
        .unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let copy: Option<String> = redis::cmd("HGET")
        .arg(names.meta(p))
        .arg(writ::partition_count::FIELD)
        .query_async(&mut conn)
        .await
        .unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg(names.stream(p))
        .query_async(&mut conn)
        .await
        .unwrap();
    (copy, len)
}

/// A call refused for its count ([`Error::Config`]): `says` (what was
/// refused), both counts named, and what to do.
fn assert_count_refused(
    r: writ::Result<impl std::fmt::Debug>,
    says: &str,
    recorded: u32,
    configured: u32,
) {
    let e = r.expect_err("a call with another partition count was answered");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(says)
            && text.contains(&format!("records {recorded} partitions"))
            && text.contains(&format!("redis.partitions = {configured}"))
            && text.contains(&format!("restart it with redis.partitions = {recorded}")),
        "{text}"
    );
}

/// A write refused at admission for its count: nothing accepted.
fn assert_write_refused(r: writ::Result<impl std::fmt::Debug>, recorded: u32, configured: u32) {
    assert_count_refused(r, "NOT accepted", recorded, configured);
}

/// Processes check the recorded count when they start; one that keeps
/// running on another count (the count changed under it, or the record was
/// lost when it started) is refused by its next admission, which adds
/// nothing: each daemon tenure and each change copy the count into every
/// partition's meta hash, where the admission script checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_left_on_another_count_is_refused_at_its_next_write() {
    use writ::partition_count::{By, Changed};
    let env = TestEnv::start("partition_count_running");
    let four = with_partitions(&env, 4);
    let two = with_partitions(&env, 2);
    let mut conn = writ::redis_conn::connect(&four, Duration::ZERO)
        .await
        .unwrap();

    // One key in each of four partitions, written and acked.
    let daemon = Daemon::start(four.clone());
    let old = Writ::connect(four.clone()).await.unwrap();
    let s = old.collection("signal").unwrap();
    let mut names = Vec::new();
    for p in 0..4 {
        let name = (0..)
            .map(|i| format!("K{i}"))
            .find(|n| partition_of(&four, n) == p)
            .unwrap();
        s.write(&key(&name), &doc! {"n": p as i64}).await.unwrap();
        names.push(name);
    }
    daemon.stop().await;
    for p in 1..4 {
        assert_eq!(
            copy_and_xlen(&four, p).await,
            (Some("4".into()), 1),
            "partition {p}: its tenure copied the count"
        );
    }

    // The record lost (a hand HDEL here): a client with 2 partitions connects
    // and records its count, but the tenures' copies refuse its writes
    // outside partition 0.
    forget_partition_count(&mut conn, &four).await;
    let wrong = Writ::connect(two.clone()).await.unwrap();
    let p1 = names
        .iter()
        .find(|n| partition_of(&two, n) == 1)
        .unwrap()
        .clone();
    let w = wrong.collection("signal").unwrap();
    assert_write_refused(w.submit(&key(&p1), &doc! {"n": -1}).await, 4, 2);
    assert_eq!(copy_and_xlen(&two, 1).await.1, 1, "nothing added");
    drop(wrong);
    forget_partition_count(&mut conn, &four).await;
    writ::partition_count::claim(&mut conn, &four, By::Daemon)
        .await
        .unwrap();

    // The count changes from 4 to 2 while `old` still runs: each of its
    // writes is refused from then on, in every partition, and adds nothing.
    assert_eq!(change(&two).await.unwrap(), Changed::From(Some(4)));
    for (p, name) in names.iter().enumerate() {
        assert_write_refused(s.submit(&key(name), &doc! {"n": -1}).await, 2, 4);
        assert_eq!(
            copy_and_xlen(&four, p as u32).await,
            (Some("2".into()), 1),
            "partition {p}"
        );
    }
    assert_write_refused(s.write(&key(&names[3]), &doc! {"n": -1}).await, 2, 4);
    drop(old);

    // Processes with the new count write, and nothing written before is lost.
    let daemon = Daemon::start(two.clone());
    let new = Writ::connect(two.clone()).await.unwrap();
    let s = new.collection("signal").unwrap();
    s.write(&key("fresh"), &doc! {"n": 9}).await.unwrap();
    for (p, name) in names.iter().enumerate() {
        assert_eq!(
            s.read(&key(name)).await.unwrap(),
            Some(doc! {"n": p as i64})
        );
    }
    daemon.stop().await;
}

/// A read refused for its count: nothing answered.
fn assert_read_refused(r: writ::Result<impl std::fmt::Debug>, recorded: u32, configured: u32) {
    assert_count_refused(r, "read was refused", recorded, configured);
}

/// A process that only reads, left running on the old count after a change
/// of the count: cache entries are named by partition, so it would read the
/// old count's entry of a key, which no daemon updates any more, and answer
/// a value older than an acknowledged write. Its next read is refused
/// instead, naming both counts, as a writer's next write is: each read
/// checks the count its keys' partitions record, in the same round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_left_on_another_count_is_refused_at_its_next_read() {
    use writ::partition_count::Changed;
    let env = TestEnv::start("partition_count_reader");
    let four = with_partitions(&env, 4);
    let two = with_partitions(&env, 2);
    // Keys in partitions 3 and 0 under four; under two, 1 and 0.
    let moved = (0..)
        .map(|i| format!("M{i}"))
        .find(|n| partition_of(&four, n) == 3)
        .unwrap();
    let kept = name_in(&four, 0);

    let daemon = Daemon::start(four.clone());
    let writer = Writ::connect(four.clone()).await.unwrap();
    let w = writer.collection("signal").unwrap();
    w.write(&key(&moved), &doc! {"n": 1}).await.unwrap();
    w.write(&key(&kept), &doc! {"n": 1}).await.unwrap();
    daemon.stop().await;
    drop(writer);
    let reader = Writ::connect(four.clone()).await.unwrap();
    let r = reader.collection("signal").unwrap();
    assert_eq!(r.read(&key(&moved)).await.unwrap(), Some(doc! {"n": 1}));

    // The count changes from 4 to 2 while `reader` runs, and a writer on the
    // new count overwrites both keys, acknowledged.
    assert_eq!(change(&two).await.unwrap(), Changed::From(Some(4)));
    let daemon = Daemon::start(two.clone());
    let new = Writ::connect(two.clone()).await.unwrap();
    let s = new.collection("signal").unwrap();
    s.write(&key(&moved), &doc! {"n": 2}).await.unwrap();
    s.write(&key(&kept), &doc! {"n": 2}).await.unwrap();

    // Every read of the old-count reader is refused, in any partition; none
    // answers the old value.
    assert_read_refused(r.read(&key(&moved)).await, 2, 4);
    assert_read_refused(r.read(&key(&kept)).await, 2, 4);
    assert_read_refused(r.read_many(&[key(&kept), key(&moved)]).await, 2, 4);
    assert_read_refused(r.has(&key(&moved)).await, 2, 4);
    // Processes on the new count read the acknowledged values.
    for name in [&moved, &kept] {
        assert_eq!(s.read(&key(name)).await.unwrap(), Some(doc! {"n": 2}));
    }
    daemon.stop().await;
}

/// A key of `signal` in partition `p` under `config`'s count.
fn name_in(config: &Config, p: u32) -> String {
    (0..)
        .map(|i| format!("R{i}"))
        .find(|n| partition_of(config, n) == p)
        .unwrap()
}

/// `change` to 2 partitions through a Redis slowed by 800 ms a command,
/// returned once it has written partition 1's copy (its other copies and
/// its swap still to come), with the proxy that slows it.
async fn slow_change_to_two(
    env: &TestEnv,
    four: &Config,
) -> (
    support::proxy::Proxy,
    tokio::task::JoinHandle<writ::Result<writ::partition_count::Changed>>,
) {
    let (proxy, slow_url) =
        support::proxy::in_front_of_redis_with_latency(&env.redis_url, Duration::from_millis(800))
            .await;
    let slow_two = env.config_with(&Overrides {
        partitions: Some(2),
        redis_url: Some(slow_url),
        ..Default::default()
    });
    let changing = tokio::spawn(async move { change(&slow_two).await });
    eventually(
        Duration::from_secs(30),
        "partition 1's copy of 2",
        || async { (copy_and_xlen(four, 1).await.0.as_deref() == Some("2")).then_some(()) },
    )
    .await;
    (proxy, changing)
}

/// `writ partitions --set` while a writer still runs on the old count (the
/// procedure says to stop writers first): a write admitted to a partition
/// before the new count's copy reached it is found after the copies, and
/// the change is refused and undone, naming the partition, so no write is
/// left in a partition the new count leaves out. Redis is slowed for the
/// changing command only, so that the write lands between two of its
/// copies. Also: a daemon's tenure never writes an old count back over a
/// change's copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_races_a_change_of_the_count_undoes_it() {
    let env = TestEnv::start("partition_count_race");
    let four = with_partitions(&env, 4);
    let two = with_partitions(&env, 2);
    let names = writ::protocol::Names::new(&four.namespace);
    let mut conn = writ::redis_conn::connect(&four, Duration::ZERO)
        .await
        .unwrap();
    let old = Writ::connect(four.clone()).await.unwrap();
    let s = old.collection("signal").unwrap();
    let (_proxy, changing) = slow_change_to_two(&env, &four).await;
    let raced = name_in(&four, 3);
    s.submit(&key(&raced), &doc! {"n": 3})
        .await
        .expect("partition 3's copy is still 4");
    let e = changing
        .await
        .unwrap()
        .expect_err("the count changed over a write that raced it");
    let text = e.to_string();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
    assert!(
        text.contains("partition(s) 3 ") && text.contains("the count stays 4"),
        "{text}"
    );
    // Nothing changed: the record and every copy say 4, the writer goes on.
    assert_eq!(recorded(&four).await.as_deref(), Some("4"));
    for p in 1..4 {
        assert_eq!(
            copy_and_xlen(&four, p).await.0.as_deref(),
            Some("4"),
            "partition {p}"
        );
    }
    s.submit(&key(&name_in(&four, 1)), &doc! {"n": 1})
        .await
        .expect("the old count is the namespace's again");
    let daemon = Daemon::start(four.clone());
    eventually(
        Duration::from_secs(30),
        "the raced write applied",
        || async { (s.read(&key(&raced)).await.unwrap() == Some(doc! {"n": 3})).then_some(()) },
    )
    .await;
    daemon.stop().await;
    drop(old);

    // Drained, the change goes through; a daemon that read the old count
    // before it (it starts a tenure afterwards) does not write 4 back, nor
    // over a copy of a later epoch.
    eventually(Duration::from_secs(30), "the change", || async {
        change(&two).await.ok()
    })
    .await;
    writ::partition_count::copy(&mut conn, &names, 1, 4).await;
    assert_eq!(copy_and_xlen(&four, 1).await.0.as_deref(), Some("2"));
    let _: () = redis::cmd("HSET")
        .arg(names.meta(1))
        .arg(writ::partition_count::FIELD)
        .arg("3")
        .arg(writ::partition_count::EPOCH_FIELD)
        .arg(99)
        .query_async(&mut conn)
        .await
        .unwrap();
    writ::partition_count::copy(&mut conn, &names, 1, 2).await;
    assert_eq!(
        copy_and_xlen(&four, 1).await.0.as_deref(),
        Some("3"),
        "epoch 99 is later"
    );
}

/// Two `writ partitions --set` at once (the procedure's "run it again, with
/// either count" while the first still runs): a run that finds the count
/// already recorded takes a later epoch and writes its copies over the
/// changing run's. The changing run must then not swap the record: before,
/// both said they succeeded, and the record said 2 while every copy said 4,
/// so a writer on 4 was admitted to partition 3, which no daemon on 2 reads.
/// Also: a copy carrying an epoch past partition 0's counter (its node lost
/// its data, on a cluster) is not skipped by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_changes_at_once_never_leave_the_record_and_its_copies_apart() {
    use writ::partition_count::Changed;
    let env = TestEnv::start("partition_count_two_runs");
    let four = with_partitions(&env, 4);
    let two = with_partitions(&env, 2);
    change(&four).await.unwrap();
    let (_proxy, changing) = slow_change_to_two(&env, &four).await;
    assert_eq!(change(&four).await.unwrap(), Changed::Already);
    let slow = changing.await.unwrap();
    let record = recorded(&four).await;
    let mut copies = Vec::new();
    for p in 1..4 {
        copies.push(copy_and_xlen(&four, p).await.0);
    }
    assert!(
        copies.iter().all(|c| *c == record),
        "the slow run returned {slow:?}, and left the record at {record:?} with the copies at {copies:?}"
    );
    let e = slow.expect_err("the slow run swapped after a later run wrote its copies");
    assert!(
        e.to_string().contains("changed while this command ran"),
        "{e}"
    );
    assert_eq!(record.as_deref(), Some("4"));

    // Partition 0's counter behind a copy's epoch: the next run still
    // writes every copy.
    let names = writ::protocol::Names::new(&four.namespace);
    let mut conn = writ::redis_conn::connect(&four, Duration::ZERO)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(names.meta(2))
        .arg(writ::partition_count::EPOCH_FIELD)
        .arg(99)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(change(&two).await.unwrap(), Changed::From(Some(4)));
    assert_eq!(recorded(&four).await.as_deref(), Some("2"));
    for p in 1..4 {
        assert_eq!(
            copy_and_xlen(&four, p).await.0.as_deref(),
            Some("2"),
            "partition {p}"
        );
    }
}

/// A daemon that outlived a change of the partition count reads a write of
/// a writer on the new count. Here `writ partitions --set` does not hear the
/// daemon (its heartbeat is taken out of the members set, as a stall past
/// its leases, or a `--set` configured with a much shorter lease TTL, would
/// leave it), and the daemon's own recheck is minutes away. Before, the
/// daemon parked the write as `wrong_partition` under its old count, and
/// `writ dlq retry` refused it for good. Now it asks the recheck at once,
/// stops, and leaves the write pending for a daemon on the new count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_outlived_a_change_stops_instead_of_parking_a_write_of_the_new_count() {
    use writ::partition_count::Changed;
    let env = TestEnv::start("partition_count_outlived");
    let slow_check = "lease_ttl_ms = 300000\nstats_interval_ms = 300000";
    let four = env.config_with(&Overrides {
        partitions: Some(4),
        daemon: slow_check,
        ..Default::default()
    });
    let two = with_partitions(&env, 2);
    let names = writ::protocol::Names::new(&four.namespace);
    let daemon = Daemon::start(four.clone());
    let old = Writ::connect(four.clone()).await.unwrap();
    // Acked: the daemon runs, and holds partition 1 under 4.
    old.collection("signal")
        .unwrap()
        .write(&key(&name_in(&four, 1)), &doc! {"n": 0})
        .await
        .unwrap();
    drop(old);
    let mut conn = writ::redis_conn::connect(&four, Duration::ZERO)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg(names.members())
        .arg(&four.consumer_name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(change(&two).await.unwrap(), Changed::From(Some(4)));
    // In partition 1 under 2, in another under 4: the old daemon reads it
    // from a stream it owns, where its count says it does not belong.
    let name = (0..)
        .map(|i| format!("N{i}"))
        .find(|n| partition_of(&two, n) == 1 && partition_of(&four, n) != 1)
        .unwrap();
    let new = Writ::connect(two.clone()).await.unwrap();
    let signal = new.collection("signal").unwrap();
    signal.submit(&key(&name), &doc! {"n": 2}).await.unwrap();
    let stopped = daemon.stopped_within(Duration::from_secs(60)).await;
    let e = stopped.expect_err("the old daemon stopped with the count's error");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let parked: u64 = redis::cmd("XLEN")
        .arg(names.dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(parked, 0, "the new count's write was dead-lettered");
    let daemon = Daemon::start(two.clone());
    eventually(
        Duration::from_secs(30),
        "the write applied by a daemon on the new count",
        || async { (signal.read(&key(&name)).await.unwrap() == Some(doc! {"n": 2})).then_some(()) },
    )
    .await;
    daemon.stop().await;
}

/// One command, given as words, on `conn`.
async fn run<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    words: &[&str],
) -> T {
    let mut c = redis::cmd(words[0]);
    for w in &words[1..] {
        c.arg(*w);
    }
    c.query_async(conn).await.unwrap()
}

/// The change's last step, on its own: partition 0's record is swapped only
/// over the count the command read, only while no later run took an epoch,
/// and only while partition 0 holds no unapplied write (none undelivered,
/// none pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_swapped_only_over_a_drained_partition_0() {
    let redis = support::RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let c = &mut client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(writ::partition_count::CHANGE_LUA);
    let (meta, stream) = ("w:{p0}:meta", "w:{p0}:in");
    let swap = |read: &'static str| {
        let mut inv = script.key(meta);
        inv.key(stream).arg(read).arg(2).arg(7).arg(4);
        inv.arg("w").arg("1").arg("daemon");
        inv
    };
    // The run's epoch, 7, is the last one taken.
    let _: () = run(
        c,
        &["HSET", meta, "partitions", "4", "partitions_epochs", "7"],
    )
    .await;
    let _: String = run(c, &["XADD", stream, "*", "f", "v"]).await;
    assert_eq!(
        swap("4").invoke_async::<i64>(c).await.unwrap(),
        2,
        "no group yet"
    );
    let _: () = run(c, &["XGROUP", "CREATE", stream, "w", "0"]).await;
    assert_eq!(
        swap("4").invoke_async::<i64>(c).await.unwrap(),
        2,
        "undelivered"
    );
    let read: redis::Value = run(
        c,
        &["XREADGROUP", "GROUP", "w", "c", "STREAMS", stream, ">"],
    )
    .await;
    assert_ne!(read, redis::Value::Nil);
    assert_eq!(
        swap("4").invoke_async::<i64>(c).await.unwrap(),
        2,
        "pending"
    );
    let ids: Vec<(String, Vec<(String, String)>)> = run(c, &["XRANGE", stream, "-", "+"]).await;
    let _: i64 = run(c, &["XACK", stream, "w", &ids[0].0]).await;
    // An entry added after the last delivered one and deleted before it was
    // read leaves nothing to apply.
    let gone: String = run(c, &["XADD", stream, "*", "f", "v"]).await;
    assert_eq!(
        swap("4").invoke_async::<i64>(c).await.unwrap(),
        2,
        "undelivered again"
    );
    let _: i64 = run(c, &["XDEL", stream, &gone]).await;
    assert_eq!(
        swap("8").invoke_async::<i64>(c).await.unwrap(),
        1,
        "not the count read"
    );
    let _: () = run(c, &["HSET", meta, "partitions_epochs", "8"]).await;
    assert_eq!(
        swap("4").invoke_async::<i64>(c).await.unwrap(),
        1,
        "a later run took an epoch"
    );
    let _: () = run(c, &["HSET", meta, "partitions_epochs", "7"]).await;
    assert_eq!(
        swap("4").invoke_async::<i64>(c).await.unwrap(),
        0,
        "drained"
    );
    let fields: Vec<Option<String>> = run(
        c,
        &[
            "HMGET",
            meta,
            "partitions",
            "partitions_by",
            "partitions_epoch",
            "partitions_upto",
            "partitions_since",
        ],
    )
    .await;
    let want = ["2", "daemon", "7", "4", "0"].map(|v| Some(v.to_string()));
    assert_eq!(fields, want);
}

/// A `writ partitions --set` that stopped midway (its copies written, the
/// record not swapped) refuses writers on the recorded count in those
/// partitions, and daemons leave its copies alone (they cannot tell it from
/// a run in progress); running the command again finishes it. The copy
/// script on its own: a run writes only over copies of earlier runs, and a
/// failed run puts back only the copies it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_change_is_finished_by_running_it_again() {
    use writ::partition_count::{Changed, EPOCHS_FIELD, EPOCH_FIELD, FIELD};
    let env = TestEnv::start("partition_count_unfinished");
    let two = with_partitions(&env, 2);
    let four = with_partitions(&env, 4);
    let names = writ::protocol::Names::new(&two.namespace);
    let mut conn = writ::redis_conn::connect(&two, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(change(&four).await.unwrap(), Changed::From(None));
    let copy_script = redis::Script::new(writ::partition_count::copies::COPY_LUA);
    // The copy script on partition `p`: `mode` and its three arguments.
    let copy_call = |p: u32, mode: &'static str, args: [u64; 3]| {
        let mut inv = copy_script.key(names.meta(p));
        inv.arg(mode).arg(&args[..]);
        inv
    };
    // A run to 2 that stopped after its copies: epoch taken, copies written.
    let epoch: u64 = redis::cmd("HINCRBY")
        .arg(names.meta(0))
        .arg(EPOCHS_FIELD)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    for p in 1..4 {
        let r: Vec<redis::Value> = copy_call(p, "write", [2, epoch, epoch - 1])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(r, vec![redis::Value::Int(1)], "over an earlier run's copy");
    }
    let writ = Writ::connect(four.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let p1 = name_in(&four, 1);
    assert_write_refused(s.submit(&key(&p1), &doc! {"n": 1}).await, 2, 4);
    // A daemon's tenure leaves the unfinished run's copy alone.
    writ::partition_count::copy(&mut conn, &names, 1, 4).await;
    assert_eq!(copy_and_xlen(&four, 1).await.0.as_deref(), Some("2"));
    // `writ partitions` says so, and what to do.
    let (_dir, file) = config_file(&env, 4);
    let shown = cli_exit_1(writ_cli(&file, &["partitions"]));
    assert!(
        shown.contains("partition(s) 1, 2, 3 hold a copy of another count")
            && shown.contains("Run `writ partitions --set` again"),
        "{shown}"
    );
    // Running the command again (with the recorded count) finishes it, and
    // leaves the record's epoch, which running daemons started under.
    let epoch_before = meta_field(&four, EPOCH_FIELD).await;
    assert_eq!(change(&four).await.unwrap(), Changed::Already);
    assert_eq!(meta_field(&four, EPOCH_FIELD).await, epoch_before);
    let shown = cli_ok(writ_cli(&file, &["partitions"]));
    assert!(!shown.contains("partition(s)"), "{shown}");
    for p in 1..4 {
        assert_eq!(
            copy_and_xlen(&four, p).await.0.as_deref(),
            Some("4"),
            "partition {p}"
        );
    }
    s.submit(&key(&p1), &doc! {"n": 1}).await.unwrap();

    // The script: a run never writes over a later run's copy, and putting
    // back touches only the copies of the run that failed.
    let field = |p: u32, f: &'static str| redis::cmd("HGET").arg(names.meta(p)).arg(f).clone();
    let later: Vec<redis::Value> = copy_call(2, "write", [8, 100, 99])
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(later[0], redis::Value::Int(1));
    let earlier: Vec<redis::Value> = copy_call(2, "write", [3, 50, 49])
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(earlier[0], redis::Value::Int(0));
    for (p, run, want) in [(2, 50, "8"), (2, 100, "4")] {
        let _: Vec<redis::Value> = copy_call(p, "back", [run, 4, 0])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let now: String = field(p, FIELD).query_async(&mut conn).await.unwrap();
        assert_eq!(now, want, "put back after run {run}");
    }
    let e: String = field(2, EPOCH_FIELD).query_async(&mut conn).await.unwrap();
    assert_eq!(e, "0");
}

/// Redis lost the record, and a daemon configured with another count that
/// started meanwhile recorded its own (before the running daemons recorded
/// theirs again): the daemon that started first keeps its count and goes on,
/// and the later one stops at its next check, naming both counts. Only a
/// change of the count (its epoch raised) stops a daemon that started first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_daemon_cannot_stop_a_running_fleet() {
    use writ::partition_count::{recheck, Standing, BY_FIELD, EPOCH_FIELD, FIELD, SINCE_FIELD};
    let env = TestEnv::start("partition_count_fleet");
    let eight = with_partitions(&env, 8);
    let four = with_partitions(&env, 4);
    let meta = writ::protocol::Names::new(&eight.namespace).meta(0);
    let mut conn = writ::redis_conn::connect(&eight, Duration::ZERO)
        .await
        .unwrap();
    let daemon = Daemon::start(eight.clone());
    let writ = Writ::connect(eight.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    s.write(&key("f1"), &doc! {"n": 1}).await.unwrap();
    let since: u64 = meta_field(&eight, SINCE_FIELD)
        .await
        .expect("the daemon records when it started")
        .parse()
        .unwrap();
    // The later daemon's record, as its start writes it where none is.
    let later = since + 1000;
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg(FIELD)
        .arg(4)
        .arg(BY_FIELD)
        .arg("daemon")
        .arg(SINCE_FIELD)
        .arg(later)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the running daemon's count recorded again",
        || async { (recorded(&eight).await.as_deref() == Some("8")).then_some(()) },
    )
    .await;
    assert_eq!(
        meta_field(&eight, SINCE_FIELD).await,
        Some(since.to_string())
    );
    s.write(&key("f2"), &doc! {"n": 2}).await.unwrap();
    let e = recheck(
        &mut conn,
        &four,
        &Standing {
            since: later,
            epoch: 0,
        },
    )
    .await
    .expect("the daemon that started later goes on");
    assert_names_both(e, 4, 8);
    assert_eq!(recorded(&eight).await.as_deref(), Some("8"));
    // A change of the count stops it.
    stops_when_the_count_changes(daemon, &mut conn, &meta, 9).await;

    // Each rule on its own, for a daemon with 8 that started at `since`
    // under epoch 0, against a record of 4 by a daemon.
    let me = Standing { since, epoch: 0 };
    let cases: [(Option<u64>, u64, bool, &str); 4] = [
        (
            Some(later),
            0,
            false,
            "a later daemon's record is taken back",
        ),
        (
            None,
            0,
            false,
            "a record without a start (a hand edit) is taken back",
        ),
        (Some(0), 0, true, "a record `--set` made (start 0) stops it"),
        (Some(later), 1, true, "a raised epoch (a change) stops it"),
    ];
    for (their_since, epoch, stops, what) in cases {
        let _: () = redis::cmd("HDEL")
            .arg(&meta)
            .arg(SINCE_FIELD)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut put = redis::cmd("HSET");
        put.arg(&meta)
            .arg(FIELD)
            .arg(4)
            .arg(BY_FIELD)
            .arg("daemon")
            .arg(EPOCH_FIELD)
            .arg(epoch);
        if let Some(t) = their_since {
            put.arg(SINCE_FIELD).arg(t);
        }
        let _: () = put.query_async(&mut conn).await.unwrap();
        let r = recheck(&mut conn, &eight, &me).await;
        assert_eq!(r.is_some(), stops, "{what}: {r:?}");
        let want = if stops { "4" } else { "8" };
        assert_eq!(recorded(&eight).await.as_deref(), Some(want), "{what}");
    }
}

/// N → M → N: the cache entries a key had under N are still there when the
/// namespace comes back to N, older than what was acknowledged under M. The
/// documented order (docs/operations.md, step 4: `writ rebuild-cache`
/// before any process starts on the count) leaves no reader a stale entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_changed_back_is_rebuilt_before_anyone_reads() {
    use writ::partition_count::Changed;
    let env = TestEnv::start("partition_count_back");
    let four = with_partitions(&env, 4);
    let two = with_partitions(&env, 2);
    // A key whose partition differs between the counts: 3 under four.
    let moved = (0..)
        .map(|i| format!("B{i}"))
        .find(|n| partition_of(&four, n) == 3)
        .unwrap();
    let (_dir, four_file) = config_file(&env, 4);

    let daemon = Daemon::start(four.clone());
    let w = Writ::connect(four.clone()).await.unwrap();
    w.collection("signal")
        .unwrap()
        .write(&key(&moved), &doc! {"n": 1})
        .await
        .unwrap();
    daemon.stop().await;
    drop(w);

    assert_eq!(change(&two).await.unwrap(), Changed::From(Some(4)));
    let daemon = Daemon::start(two.clone());
    let w = Writ::connect(two.clone()).await.unwrap();
    w.collection("signal")
        .unwrap()
        .write(&key(&moved), &doc! {"n": 2})
        .await
        .unwrap();
    daemon.stop().await;
    drop(w);

    assert_eq!(change(&four).await.unwrap(), Changed::From(Some(2)));
    // The hazard: the entry from the first time on four is still there.
    let names = writ::protocol::Names::new(&four.namespace);
    let canonical =
        writ::protocol::Key::from_document(&key(&moved), four.collection("signal").unwrap())
            .unwrap()
            .canonical();
    let entry = names.cache(3, "signal", &canonical);
    let mut conn = env.redis().await;
    let stale: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&entry)
        .arg("doc")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(stale.is_some(), "no entry left from the first time on four");
    // Step 4: rebuild before anyone starts on four.
    cli_ok(writ_cli(&four_file, &["rebuild-cache"]));
    let reader = Writ::connect(four.clone()).await.unwrap();
    assert_eq!(
        reader
            .collection("signal")
            .unwrap()
            .read(&key(&moved))
            .await
            .unwrap(),
        Some(doc! {"n": 2}),
        "a reader on the count changed back answered the entry from the first time on it"
    );
}

/// A write parked before the count changed (here: its collection was not
/// declared yet) can be retried after: `dlq retry` checks its partition
/// against the count it was parked under. Before, its key hashed elsewhere
/// under the new count, and every retry said "wrong partition", leaving
/// only `dlq drop`: an accepted write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_parked_before_a_count_change_can_be_retried_after() {
    use writ::partition_count::Changed;
    let env = TestEnv::start("partition_count_dlq");
    let four = with_partitions(&env, 4);
    let eight = with_partitions(&env, 8);
    let canonical = (0..)
        .map(|i| format!(r#"["L{i}"]"#))
        .find(|c| {
            writ::protocol::partition_of("later", c, 4)
                != writ::protocol::partition_of("later", c, 8)
        })
        .unwrap();
    let k = canonical
        .trim_start_matches("[\"")
        .trim_end_matches("\"]")
        .to_string();
    let daemon = Daemon::start(four.clone());
    let names = writ::protocol::Names::new(&four.namespace);
    let mut r = env.redis().await;
    let stream = names.stream(writ::protocol::partition_of("later", &canonical, 4));
    let key = format!(r#"{{"k":"{k}"}}"#);
    support::raw_json_put(&mut r, &stream, "later", &key, r#"{"n":1}"#, &[]).await;
    eventually(Duration::from_secs(30), "the write parked", || {
        let mut r = r.clone();
        let dlq = names.dead_letters();
        async move {
            let n: u64 = redis::cmd("XLEN").arg(dlq).query_async(&mut r).await.ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    daemon.stop().await;
    assert_eq!(change(&eight).await.unwrap(), Changed::From(Some(4)));
    // The operator declares the collection and retries, on the new count.
    let dir = tempfile::tempdir().unwrap();
    let fixed = env.config_file_with(
        dir.path(),
        &Overrides {
            partitions: Some(8),
            collections: "[[collections]]\nname = \"later\"\nkey = [\"k\"]",
            ..Default::default()
        },
    );
    let out = writ_cli(&fixed, &["dlq", "retry", "--all"]);
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.contains("applied"), "{said}");
    let docs = env.all_docs("later").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].get_str("k").unwrap(), k);
}

/// `writ status` with a config whose partition count is not the recorded
/// one shows the recorded count's partitions (where the streams are) and
/// exits 1, saying both counts. Before, it showed the config's count, left
/// the others out, and exited 0, so the "0 unapplied everywhere" check
/// passed over a backlog in a partition it did not look at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_another_count_shows_the_recorded_partitions_and_fails() {
    let env = TestEnv::start("count_status");
    let eight = with_partitions(&env, 8);
    let writ = Writ::connect(eight.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let high = (0..)
        .map(|i| format!("H{i}"))
        .find(|k| partition_of(&eight, k) >= 4)
        .unwrap();
    s.submit(&key(&high), &doc! {"i": 1}).await.unwrap();
    let (_dir, four) = config_file(&env, 4);
    let out = support::proc::writ_cli(&four, &["status", "--json"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("records redis.partitions = 8") && said.contains("this config says 4"),
        "{said}"
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = st["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 8, "{st}");
    let unapplied: u64 = parts.iter().map(|p| p["unapplied"].as_u64().unwrap()).sum();
    assert_eq!(
        unapplied,
        1,
        "the write in partition {}: {st}",
        partition_of(&eight, &high)
    );
    // A count written by hand beyond what writ allows is refused, not walked.
    let mut conn = writ::redis_conn::connect(&eight, Duration::ZERO)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(writ::protocol::Names::new(&eight.namespace).meta(0))
        .arg(writ::partition_count::FIELD)
        .arg(u32::MAX)
        .query_async(&mut conn)
        .await
        .unwrap();
    let out = support::proc::writ_cli(&four, &["status"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("more than writ allows (4096)"), "{said}");
}

/// A client on a larger count that connected first (so it was not refused)
/// and keeps running after a daemon replaced its record: its writes to
/// partitions past the daemon's count, which no daemon reads, are refused,
/// not accepted into streams nothing applies. Before session 42 only the
/// daemon's own partitions got a copy of its count, so they were accepted
/// there and never applied (helper-87).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_client_on_a_larger_count_is_refused_past_the_daemons_count() {
    let env = TestEnv::start("count_larger_client");
    let (four, eight) = (with_partitions(&env, 4), with_partitions(&env, 8));
    let early = Writ::connect(eight.clone()).await.unwrap();
    assert_eq!(recorded(&eight).await.as_deref(), Some("8"));
    let daemon = Daemon::start(four.clone());
    eventually(Duration::from_secs(30), "the daemon's count", || async {
        (recorded(&four).await.as_deref() == Some("4")).then_some(())
    })
    .await;
    // The daemon runs on its count (it recorded it before taking partitions).
    let ok = (0..)
        .map(|i| format!("lo{i}"))
        .find(|n| partition_of(&eight, n) < 4 && partition_of(&four, n) < 4)
        .unwrap();
    Writ::connect(four.clone())
        .await
        .unwrap()
        .collection("signal")
        .unwrap()
        .write(&key(&ok), &doc! {"n": 0})
        .await
        .unwrap();
    assert_eq!(recorded_by(&four).await.as_deref(), Some("daemon"));
    let past = (0..)
        .map(|i| format!("hi{i}"))
        .find(|n| partition_of(&eight, n) >= 4)
        .unwrap();
    let p = partition_of(&eight, &past);
    let got = early
        .collection("signal")
        .unwrap()
        .submit(&key(&past), &doc! {"n": 1})
        .await;
    match got {
        Err(e) => {
            let text = e.to_string();
            assert!(
                matches!(e, Error::Config(_))
                    && text.contains("NOT accepted")
                    && text.contains("records 4 partitions")
                    && text.contains("redis.partitions = 8"),
                "{text}"
            );
        }
        Ok(_) => panic!(
            "a write to partition {p}, past the daemon's 4, was accepted; \
             no daemon reads it (entries there: {})",
            copy_and_xlen(&four, p).await.1
        ),
    }
    assert_eq!(copy_and_xlen(&four, p).await.1, 0, "nothing added");
    daemon.stop().await;
}

/// A tenure whose copy of the partition count fails at its start (here the
/// meta hash's key holds a string, as `WRONGTYPE` stands for any refusal: a
/// failover's `LOADING`, `maxmemory`) goes on trying in the background, and
/// the copy is written once Redis takes it. Before, it was left until the
/// partition's next tenure, which may be weeks away, and writers on another
/// count were not refused in that partition meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenure_retries_a_copy_of_the_count_that_failed_at_its_start() {
    let env = TestEnv::start("pc_copy_retry");
    let config = env.config();
    let names = writ::protocol::Names::new(&config.namespace);
    let p = 1;
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(names.meta(p))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let daemon = Daemon::start(config.clone());
    // The tenure has started (its lease is taken); its copy goes right after.
    // (Its reader cannot be waited for: it reads the meta hash too.)
    eventually(Duration::from_secs(30), "partition 1 owned", || {
        let mut conn = conn.clone();
        let lease = names.lease(p);
        async move {
            let holder: Option<String> = redis::cmd("GET")
                .arg(lease)
                .query_async(&mut conn)
                .await
                .ok()?;
            holder.map(|_| ())
        }
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(names.meta(p))
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the copy written", || async {
        let (copy, _) = copy_and_xlen(&config, p).await;
        (copy == Some(config.partitions.to_string())).then_some(())
    })
    .await;
    daemon.stop().await;
}
