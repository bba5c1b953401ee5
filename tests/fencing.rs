//! Fencing, probed: a daemon that lost its partition's lease but still
//! trusts it (paused between its lease check and its next call, or cut off
//! while its clock said the lease held) actually attempts a group read, a
//! claim, a cache compare-and-set and a dead letter with its old token. Each one is refused
//! by Redis, changes nothing, and is counted in `writ_fenced_total{op}`; the
//! new owner's same calls succeed.
//!
//! The daemon's own components are driven in-process (the fenced reader of
//! `source` and the cache), so each attempt happens for certain instead of
//! racing the daemon's local lease check.

mod support;

use std::time::Duration;

use mongodb::bson::doc;
use support::TestEnv;
use writ::cache::{Cache, CasOutcome, Fence};
use writ::ownership::Leases;
use writ::protocol::{Names, Version};
use writ::source::FencedReader;
use writ::{Error, Writ};

/// Held by each test that makes `writ_fenced_total` move: the counter is
/// the process's, and the tests of this file run side by side, so one
/// test's exact count would see the other's refusals.
static FENCED_COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fenced_count(op: &str) -> f64 {
    support::own_counter("writ_fenced_total", &format!("op=\"{op}\""))
}

/// `writ_acks_skipped_total` of this process.
fn acks_skipped() -> f64 {
    support::own_counter("writ_acks_skipped_total", "")
}

/// Partition `p`'s lease lapses (as after a pause longer than its TTL) and
/// "new-owner" takes it: the fencing counter moves on.
async fn lease_moves(
    conn: &mut writ::redis_conn::Conn,
    ns: &str,
    p: u32,
    ttl: Duration,
) -> writ::ownership::Lease {
    let _: () = redis::cmd("DEL")
        .arg(Names::new(ns).lease(p))
        .query_async(conn)
        .await
        .unwrap();
    Leases::new(conn.clone(), ns, "new-owner", ttl)
        .try_acquire(p)
        .await
        .unwrap()
        .expect("lapsed lease is free")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_lost_its_lease_is_refused_read_claim_and_cache() {
    writ::telemetry::recorder();
    let _counter = FENCED_COUNTER.lock().await;
    let env = TestEnv::start("fencing");
    let config = env.config();
    let ns = config.namespace.clone();
    let names = Names::new(&ns);
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    // Six writes in one partition (no daemon runs: nothing else reads them).
    let key = |s: &str| doc! {"symbol": s, "strategyName": "fence", "exchangeName": "x"};
    let keys = support::same_partition(&config, "signal", key, "F-anchor", "F", 6);
    let p =
        writ::protocol::Key::from_document(&key(&keys[0]), config.collection("signal").unwrap())
            .unwrap()
            .partition("signal", config.partitions);
    let stream = names.stream(p);
    let group = names.group();
    writ::source::ensure_group(&mut conn, &stream, &group)
        .await
        .unwrap();
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signals = writ.collection("signal").unwrap();
    for (i, k) in keys.iter().enumerate() {
        signals
            .submit(&key(k), &doc! {"i": i as i64})
            .await
            .unwrap();
    }

    // The old owner takes the lease and reads two entries while it is current.
    let ttl = Duration::from_secs(30);
    let old = Leases::new(conn.clone(), &ns, "old-owner", ttl)
        .try_acquire(p)
        .await
        .unwrap()
        .expect("free lease");
    let old_reader = FencedReader::new(&names, p, "old-owner", old.token);
    let first = old_reader.read(&mut conn, 2, usize::MAX).await.unwrap();
    assert_eq!(first.entries.len(), 2, "a current owner reads");
    assert_eq!(support::pending_count(&mut conn, &stream, &group).await, 2);

    // The lease lapses (as after a pause longer than its TTL) and a new owner
    // takes it: the fencing counter moves on.
    let new = lease_moves(&mut conn, &ns, p, ttl).await;
    assert!(new.token > old.token);
    assert!(
        old.valid(),
        "the old owner's own clock still trusts its lease"
    );

    // 1. Group read with the old token: refused, nothing delivered.
    let before = fenced_count("read");
    match old_reader.read(&mut conn, 10, usize::MAX).await {
        Err(Error::Fenced { partition, op }) => assert_eq!((partition, op), (p, "read")),
        other => panic!("a fenced read must be refused, got {other:?}"),
    }
    assert_eq!(
        fenced_count("read") - before,
        1.0,
        "writ_fenced_total{{op=\"read\"}}"
    );
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        2,
        "the refused read delivered nothing"
    );

    // 2. Claim with the old token: refused; the two pending entries stay with
    //    the old consumer until the new owner claims them.
    let before = fenced_count("claim");
    match old_reader.claim(&mut conn, "0-0", 10, usize::MAX).await {
        Err(Error::Fenced { partition, op }) => assert_eq!((partition, op), (p, "claim")),
        other => panic!("a fenced claim must be refused, got {other:?}"),
    }
    assert_eq!(
        fenced_count("claim") - before,
        1.0,
        "writ_fenced_total{{op=\"claim\"}}"
    );
    let new_reader = FencedReader::new(&names, p, "new-owner", new.token);
    let claimed = new_reader
        .claim(&mut conn, "0-0", 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        claimed.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        first.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        "the new owner claims the old owner's pending entries, in order"
    );
    let rest = new_reader.read(&mut conn, 10, usize::MAX).await.unwrap();
    assert_eq!(rest.entries.len(), 4, "the new owner reads the rest");

    // 3. Cache compare-and-set with the old token: refused, the cache keeps
    //    nothing; the new owner's same write is stored.
    let cache = Cache::new(conn.clone());
    let cache_key = names.cache(p, "signal", "probe");
    let v = Version { ms: 42, seq: 0 };
    let stale = Fence {
        partition: p,
        key: names.fence(p),
        token: old.token,
    };
    let before = fenced_count("cache");
    let body = doc! {"probe": 1};
    assert_eq!(
        cache
            .put_fenced(&cache_key, v, Some(&body), Some(&stale))
            .await
            .unwrap(),
        CasOutcome::Fenced
    );
    assert_eq!(
        cache
            .put_many_fenced(&[(cache_key.clone(), v, Some(&body))], &stale)
            .await
            .unwrap(),
        vec![CasOutcome::Fenced]
    );
    assert_eq!(
        fenced_count("cache") - before,
        2.0,
        "writ_fenced_total{{op=\"cache\"}}"
    );
    assert_eq!(cache.get(&cache_key).await.unwrap(), None, "nothing cached");
    let current = Fence {
        token: new.token,
        ..stale.clone()
    };
    assert_eq!(
        cache
            .put_fenced(&cache_key, v, Some(&body), Some(&current))
            .await
            .unwrap(),
        CasOutcome::Stored
    );

    // 4. A round's cache step (one script call for many keys) keeps the
    //    single compare-and-set's rule per entry: only a strictly newer
    //    version is stored, a hard delete leaves a tombstone, and under a
    //    stale token nothing at all is written.
    let k = |name: &str| names.cache(p, "signal", name);
    let (older, newer) = (Version { ms: 41, seq: 9 }, Version { ms: 42, seq: 1 });
    let (b_old, b_new) = (doc! {"probe": "old"}, doc! {"probe": "new"});
    for (key, version, doc) in [(k("ahead"), newer, &b_new), (k("behind"), older, &b_old)] {
        cache
            .put_fenced(&key, version, Some(doc), Some(&current))
            .await
            .unwrap();
    }
    let before = fenced_count("cache");
    assert_eq!(
        cache
            .put_many_fenced(
                &[
                    (k("fresh-stale"), v, Some(&body)),
                    (k("behind"), v, Some(&body))
                ],
                &stale
            )
            .await
            .unwrap(),
        vec![CasOutcome::Fenced, CasOutcome::Fenced]
    );
    assert_eq!(fenced_count("cache") - before, 1.0, "one refusal per call");
    assert_eq!(cache.get(&k("fresh-stale")).await.unwrap(), None);
    assert_eq!(
        cache.get(&k("behind")).await.unwrap().unwrap().version,
        older
    );
    let round = [
        (cache_key.clone(), v, Some(&body)), // the same version again
        (k("fresh"), v, Some(&body)),
        (k("deleted"), v, None),
        (k("ahead"), v, Some(&body)),  // the cache holds a newer one
        (k("behind"), v, Some(&body)), // the cache holds an older one
    ];
    assert_eq!(
        cache.put_many_fenced(&round, &current).await.unwrap(),
        vec![
            CasOutcome::NotNewer,
            CasOutcome::Stored,
            CasOutcome::Stored,
            CasOutcome::NotNewer,
            CasOutcome::Stored
        ]
    );
    let got = |c: Option<writ::cache::Cached>| c.map(|c| (c.version, c.doc));
    assert_eq!(
        got(cache.get(&cache_key).await.unwrap()),
        Some((v, Some(body.clone())))
    );
    assert_eq!(
        got(cache.get(&k("fresh")).await.unwrap()),
        Some((v, Some(body.clone())))
    );
    assert_eq!(
        got(cache.get(&k("deleted")).await.unwrap()),
        Some((v, None))
    );
    assert_eq!(
        got(cache.get(&k("ahead")).await.unwrap()),
        Some((newer, Some(b_new)))
    );
    assert_eq!(
        got(cache.get(&k("behind")).await.unwrap()),
        Some((v, Some(body.clone())))
    );

    // 5. Dead-lettering with the old token (its write's last attempt ran
    //    while the lease moved): refused before anything is written, so no
    //    letter, no ack and no XACK of an entry the new owner now holds; the
    //    new owner's is parked.
    let acker = writ::ack::Acker::new(
        conn.clone(),
        names.clone(),
        stream.clone(),
        config.partitions,
        tokio_util::sync::CancellationToken::new(),
        writ::redis_conn::Replication::of(&config),
    );
    let reject = writ::protocol::Reject::new(writ::protocol::RejectReason::MongoRejected, "probe");
    let entry = rest.entries[0].id;
    let letter = || writ::deadletter::Parking {
        collection: Some("signal"),
        id: entry,
        fields: None,
        reject: &reject,
        attempts: 1,
        reply: None,
    };
    let letters = |mut c: writ::redis_conn::Conn| {
        let dlq = names.dead_letters();
        async move {
            redis::cmd("XLEN")
                .arg(dlq)
                .query_async::<u64>(&mut c)
                .await
                .unwrap()
        }
    };
    let pending = support::pending_count(&mut conn, &stream, &group).await;
    let before = fenced_count("dead_letter");
    assert_eq!(
        writ::deadletter::park(&acker, &stale, letter()).await,
        writ::deadletter::Parked::Fenced
    );
    assert_eq!(
        fenced_count("dead_letter") - before,
        1.0,
        "writ_fenced_total{{op=\"dead_letter\"}}"
    );
    assert_eq!(letters(conn.clone()).await, 0, "no dead letter");
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        pending,
        "the entry stays pending for the new owner"
    );
    assert_eq!(
        writ::deadletter::park(&acker, &current, letter()).await,
        writ::deadletter::Parked::Yes
    );
    assert_eq!(letters(conn.clone()).await, 1);
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        pending - 1
    );

    // 6. A round's cache step with its acks in the same script call (one
    //    server, no replicas to confirm): under the old token neither the
    //    entries nor the acks nor the XACK are written; under the current one
    //    all are, and an ack whose stream key holds another type is skipped
    //    without stopping the others or the XACK.
    if env.is_cluster() {
        return; // the acks ride along on one server only
    }
    assert!(cache.acks_ride_along());
    let _: () = redis::cmd("SET")
        .arg(names.acks("bad-client"))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids = [claimed.entries[0].id, claimed.entries[1].id];
    let ack = |req: &str, id: Version| writ::ack::Ack {
        request: req.to_string(),
        outcome: writ::ack::Outcome::Applied,
        version: v,
        entry: id,
        reason: None,
    };
    let outgoing = vec![
        (
            Some("good-client".to_string()),
            Some(ack("r1", ids[0])),
            ids[0],
        ),
        (
            Some("bad-client".to_string()),
            Some(ack("r2", ids[1])),
            ids[1],
        ),
        (
            Some("good-client".to_string()),
            Some(ack("r3", ids[1])),
            ids[1],
        ),
    ];
    let batch = acker.batch(outgoing);
    let acked_entry = [(k("acked"), v, Some(&body))];
    let acks_of = |mut c: writ::redis_conn::Conn| {
        let stream = names.acks("good-client");
        async move {
            let v: redis::Value = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .query_async(&mut c)
                .await
                .unwrap();
            writ::stream::parse_entries(&v)
                .into_iter()
                .map(|e| {
                    writ::ack::Ack::parse(&e.fields.expect("fields"))
                        .expect("an ack")
                        .request
                })
                .collect::<Vec<_>>()
        }
    };
    let pending = support::pending_count(&mut conn, &stream, &group).await;
    assert_eq!(
        cache
            .put_many_fenced_acking(&acked_entry, &stale, &batch)
            .await
            .unwrap(),
        vec![CasOutcome::Fenced]
    );
    assert_eq!(cache.get(&k("acked")).await.unwrap(), None);
    assert!(
        acks_of(conn.clone()).await.is_empty(),
        "no ack under the old token"
    );
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        pending
    );
    let skipped_before = acks_skipped();
    assert_eq!(
        cache
            .put_many_fenced_acking(&acked_entry, &current, &batch)
            .await
            .unwrap(),
        vec![CasOutcome::Stored]
    );
    assert_eq!(
        got(cache.get(&k("acked")).await.unwrap()),
        Some((v, Some(body.clone())))
    );
    assert_eq!(acks_of(conn.clone()).await, ["r1", "r3"]);
    assert_eq!(
        acks_skipped() - skipped_before,
        1.0,
        "the skipped ack is counted in writ_acks_skipped_total"
    );
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        pending - 2
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(names.acks("good-client"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the ack stream expires (TTL {ttl})");
    // A round of many entries XACKs them all (Lua's unpack takes < 8000).
    let many = writ::ack::Batch {
        ids: (0..9000).map(|i| Version { ms: 1, seq: i }).collect(),
        acks: Vec::new(),
        ..acker.batch(Vec::new())
    };
    assert_eq!(
        cache
            .put_many_fenced_acking(&acked_entry, &current, &many)
            .await
            .unwrap(),
        vec![CasOutcome::NotNewer]
    );
}

/// A dead letter that waits for its stream (another program's value at its
/// key) checks the fence again before each retry: a tenure that lost its
/// partition meanwhile (paused past its lease, its renewals cut off) must not
/// park, ack or XACK an entry the partition's new owner now decides on.
/// Before session 42 only the first attempt was fenced (helper-87).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_after_the_lease_moved_is_fenced() {
    writ::telemetry::recorder();
    let _counter = FENCED_COUNTER.lock().await;
    let env = TestEnv::start("fencing_dlq_retry");
    let config = env.config();
    let ns = config.namespace.clone();
    let names = Names::new(&ns);
    let mut conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let p = 0;
    let (stream, group) = (names.stream(p), names.group());
    writ::source::ensure_group(&mut conn, &stream, &group)
        .await
        .unwrap();
    let entry: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("v")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let old = Leases::new(conn.clone(), &ns, "old-owner", ttl)
        .try_acquire(p)
        .await
        .unwrap()
        .expect("free lease");
    let reader = FencedReader::new(&names, p, "old-owner", old.token);
    assert_eq!(
        reader
            .read(&mut conn, 1, usize::MAX)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    // The dead-letter stream cannot be written: the old owner's letter waits.
    support::foreign_string(&mut conn, &names.dead_letters()).await;
    let acker = writ::ack::Acker::new(
        conn.clone(),
        names.clone(),
        stream.clone(),
        config.partitions,
        tokio_util::sync::CancellationToken::new(),
        writ::redis_conn::Replication::of(&config),
    );
    let retries = || support::own_counter("writ_retries_total", "error_class=\"permanent\"");
    let tried = retries();
    let parking = tokio::spawn({
        let fence = Fence {
            partition: p,
            key: names.fence(p),
            token: old.token,
        };
        let id: Version = entry.parse().unwrap();
        async move {
            let reject =
                writ::protocol::Reject::new(writ::protocol::RejectReason::MongoRejected, "probe");
            writ::deadletter::park(
                &acker,
                &fence,
                writ::deadletter::Parking {
                    collection: Some("signal"),
                    id,
                    fields: None,
                    reject: &reject,
                    attempts: 1,
                    reply: None,
                },
            )
            .await
        }
    });
    support::eventually(
        Duration::from_secs(10),
        "the letter's first attempt to fail",
        || async { (retries() > tried).then_some(()) },
    )
    .await;
    // The lease lapses and a new owner takes it; then the stream can be written.
    let new = lease_moves(&mut conn, &ns, p, ttl).await;
    assert!(new.token > old.token);
    let _: () = redis::cmd("DEL")
        .arg(names.dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(10), parking)
        .await
        .expect("the park ends once its stream can be written")
        .unwrap();
    assert_eq!(parked, writ::deadletter::Parked::Fenced);
    let letters: u64 = redis::cmd("XLEN")
        .arg(names.dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        letters, 0,
        "no letter from the tenure that lost the partition"
    );
    assert_eq!(
        support::pending_count(&mut conn, &stream, &group).await,
        1,
        "the entry stays pending for the new owner"
    );
}
