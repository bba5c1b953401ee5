//! A live resharding of Redis Cluster with the Rust client
//! (docs/operations.md, "Moving a partition's slot"): a slot moves to another
//! master, key by key, as `redis-cli --cluster reshard` moves it, while Rust
//! clients write to a partition (one with `min_replicas_acked = 1`, one
//! without, and two that connect half-way) and a `writ serve` process applies
//! them. The slot is the partition's (twice, in two orders), then the slot of
//! a client's ack stream.
//!
//! Every write is accepted and acked, lands in the stream once, keeps its
//! key's order, and is applied; the daemon logs no error. The move takes
//! about 3 s, longer than redis-rs's own retries of a refused command
//! (`TRYAGAIN` while a command's keys are split between the two masters).
//! The Node client's counterpart is `clients/node/test/reshard.test.ts`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use redis::aio::MultiplexedConnection;
use redis::cluster_routing::Slot;
use support::cluster::RedisCluster;
use support::load::key;
use support::proc::DaemonProc;
use support::{Overrides, TestEnv};
use tokio::sync::oneshot;
use writ::config::Config;
use writ::protocol::{Key, Names};
use writ::Writ;

/// Writes per key, one after another.
const WRITES: i64 = 30;

async fn conn(port: u16) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn node_id(c: &mut MultiplexedConnection) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(c)
        .await
        .unwrap()
}

async fn keyslot(c: &mut MultiplexedConnection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(c)
        .await
        .unwrap()
}

fn setslot(slot: u16, state: &str, id: &str) -> redis::Cmd {
    let mut c = redis::cmd("CLUSTER");
    c.arg("SETSLOT").arg(slot).arg(state).arg(id);
    c
}

/// Starts moving `slot` from `from` to `to` (IMPORTING on the target,
/// MIGRATING on the source); returns the target's node id.
async fn begin_move(
    slot: u16,
    from: &mut MultiplexedConnection,
    to: &mut MultiplexedConnection,
) -> String {
    let (from_id, to_id) = (node_id(from).await, node_id(to).await);
    let _: () = setslot(slot, "IMPORTING", &from_id)
        .query_async(to)
        .await
        .unwrap();
    let _: () = setslot(slot, "MIGRATING", &to_id)
        .query_async(from)
        .await
        .unwrap();
    to_id
}

/// Ends a move: `SETSLOT NODE` on the target, then the source, then the
/// other masters (`masters`: every master's port).
async fn end_move(slot: u16, to_id: &str, from: u16, to: u16, masters: &[u16]) {
    let others = masters.iter().copied().filter(|&p| p != from && p != to);
    for port in [to, from].into_iter().chain(others) {
        let _: () = setslot(slot, "NODE", to_id)
            .query_async(&mut conn(port).await)
            .await
            .unwrap();
    }
}

/// How a slot moves.
struct Move {
    from: u16,
    to: u16,
    /// Every master's port (each is told the slot's new owner).
    masters: Vec<u16>,
    /// Keys moved first, in this order, before the rest.
    first: Vec<String>,
    /// Told once half of the slot's keys moved.
    midway: Option<oneshot::Sender<()>>,
}

/// Moves `slot` as `redis-cli --cluster reshard` does: IMPORTING on the
/// target, MIGRATING on the source, `MIGRATE` 10 keys at a time with 150 ms
/// between batches (keys written meanwhile are found by the next
/// `GETKEYSINSLOT`), then `SETSLOT NODE` on every master. Returns the keys
/// moved.
async fn move_slot(slot: u16, mut m: Move) -> usize {
    let mut from = conn(m.from).await;
    let mut to = conn(m.to).await;
    let to_id = begin_move(slot, &mut from, &mut to).await;
    let in_slot = |c: &mut MultiplexedConnection| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("GETKEYSINSLOT").arg(slot).arg(1_000_000);
        let mut c = c.clone();
        async move { cmd.query_async::<Vec<String>>(&mut c).await.unwrap() }
    };
    let total = in_slot(&mut from).await.len();
    let mut moved = 0;
    loop {
        let left = in_slot(&mut from).await;
        let mut batch: Vec<String> = m
            .first
            .iter()
            .filter(|k| left.contains(k))
            .cloned()
            .collect();
        batch.extend(left.into_iter().filter(|k| !m.first.contains(k)));
        batch.truncate(10);
        if batch.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(m.to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&batch)
            .query_async(&mut from)
            .await
            .unwrap();
        moved += batch.len();
        if moved * 2 >= total {
            if let Some(tx) = m.midway.take() {
                let _ = tx.send(());
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    end_move(slot, &to_id, m.from, m.to, &m.masters).await;
    moved
}

fn partition_of(config: &Config, k: &Document) -> u32 {
    let coll = config.collection("signal").unwrap();
    Key::from_document(k, coll)
        .unwrap()
        .partition("signal", config.partitions)
}

/// Writes `WRITES` values to `k`, one after another: waiting for each ack
/// and reading the key back (`sync`), or waiting for each admission only (the
/// tickets are waited for at the end). Errors are collected, not raised.
async fn chain(client: Writ, name: String, sync: bool, errors: Arc<Mutex<Vec<String>>>) {
    let coll = client.collection("signal").unwrap();
    let k = key(&name);
    let mut tickets = Vec::new();
    for n in 1..=WRITES {
        let r = match coll.submit(&k, &doc! {"value": n}).await {
            // Acked, then read back: the contract holds through the move.
            Ok(t) if sync => match t.wait().await {
                Ok(_) => coll.read(&k).await.map(|d| {
                    let got = d.and_then(|d| d.get_i64("value").ok());
                    if got.is_none_or(|v| v < n) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{name} write {n}: read {got:?}"));
                    }
                }),
                Err(e) => Err(e),
            },
            Ok(t) => {
                tickets.push(t);
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            errors
                .lock()
                .unwrap()
                .push(format!("{name} write {n}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tickets {
        if let Err(e) = t.wait().await {
            errors.lock().unwrap().push(format!("{name}: ack: {e}"));
        }
    }
}

/// Which slot moves while partition `p`'s keys are written, and how.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Order {
    /// Partition `p`'s slot, its 200 cache entries written before first:
    /// the keys the writes touch (their cache entries, the stream, meta,
    /// lease and fence) stay on the old master, `MIGRATING`, until the end.
    ColdFirst,
    /// Partition `p`'s slot, its stream first: every admission and every
    /// read of the daemon is refused (`TRYAGAIN`) until the move is done.
    StreamFirst,
    /// The slot of the ack stream of the client that waits for its acks
    /// (`<ns>:ack:<client id>`, in any slot): the daemon's acks and the
    /// client's blocking reads of them meet the move.
    AckStream,
}

/// Moves a slot (`order`) while ten keys of partition `p` are written.
async fn reshard(
    cluster: &RedisCluster,
    configs: &(Config, Config),
    daemon: &DaemonProc,
    p: u32,
    order: Order,
) {
    let (plain_cfg, replicated_cfg) = configs;
    let tag = format!("{order:?}");
    let names: Vec<String> = (0..)
        .map(|i| format!("rs{tag}{i}"))
        .filter(|n| partition_of(plain_cfg, &key(n)) == p)
        .take(210)
        .collect();
    let plain = Writ::connect(plain_cfg.clone()).await.unwrap();
    let replicated = Writ::connect(replicated_cfg.clone()).await.unwrap();
    // 200 cache entries in the slot, written before the move.
    let settled = &names[10..];
    let coll = plain.collection("signal").unwrap();
    let mut tickets = Vec::new();
    for n in settled {
        tickets.push(coll.submit(&key(n), &doc! {"value": 0i64}).await.unwrap());
    }
    for t in tickets {
        t.wait().await.unwrap();
    }
    let ns = Names::new(&plain_cfg.namespace);
    let stream = ns.stream(p);
    let signal = plain_cfg.collection("signal").unwrap();
    let cold: Vec<String> = settled
        .iter()
        .map(|n| {
            ns.cache(
                p,
                "signal",
                &Key::from_document(&key(n), signal).unwrap().canonical(),
            )
        })
        .collect();
    let (moving, first) = match order {
        Order::ColdFirst => (stream.clone(), cold),
        Order::StreamFirst => (stream.clone(), [vec![stream.clone()], cold].concat()),
        Order::AckStream => {
            // The ack stream first, then 200 other keys of its slot, so that
            // the move takes as long as the others.
            let acks = ns.acks(replicated.client_id());
            let at = Slot::for_key(acks.as_bytes());
            let fill: Vec<String> = (0..)
                .map(|i| format!("{}:fill{i}", plain_cfg.namespace))
                .filter(|k| Slot::for_key(k.as_bytes()) == at)
                .take(200)
                .collect();
            let mut c = writ::redis_conn::connect(plain_cfg, Duration::ZERO)
                .await
                .unwrap();
            for k in &fill {
                let _: () = redis::cmd("SET")
                    .arg(k)
                    .arg(1)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
            (acks.clone(), [vec![acks], fill].concat())
        }
    };
    let from = cluster.master_of_key(&moving);
    let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
    let slot = keyslot(&mut conn(cluster.port(from)).await, &moving).await;

    // Ten keys: three written with acks awaited by the replicated client,
    // three submitted by the plain one, and from half-way through the move
    // two each by two new clients (whose admission records do not exist yet),
    // one waiting for acks and one not.
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut chains = tokio::task::JoinSet::new();
    for (i, name) in names[..6].iter().enumerate() {
        let client = if i < 3 {
            replicated.clone()
        } else {
            plain.clone()
        };
        chains.spawn(chain(client, name.clone(), i < 3, errors.clone()));
    }
    let (tx, rx) = oneshot::channel();
    let late = {
        let (late_names, errors) = (names[6..10].to_vec(), errors.clone());
        let cfgs = configs.clone();
        tokio::spawn(async move {
            if rx.await.is_err() {
                return Vec::new();
            }
            let a = Writ::connect(cfgs.1.clone()).await.unwrap();
            let b = Writ::connect(cfgs.0.clone()).await.unwrap();
            let mut set = tokio::task::JoinSet::new();
            for (i, name) in late_names.into_iter().enumerate() {
                let client = if i < 2 { a.clone() } else { b.clone() };
                set.spawn(chain(client, name, i < 2, errors.clone()));
            }
            set.join_all().await
        })
    };
    if order == Order::AckStream {
        // The ack stream exists (the client's first write was acked).
        let c = conn(cluster.port(from)).await;
        support::eventually(Duration::from_secs(10), "the first ack", || {
            let cmd = redis::cmd("EXISTS").arg(&moving).clone();
            let mut c = c.clone();
            async move { (cmd.query_async::<i64>(&mut c).await.unwrap() == 1).then_some(()) }
        })
        .await;
    }
    let masters = cluster
        .masters()
        .into_iter()
        .map(|m| cluster.port(m))
        .collect();
    let moved = move_slot(
        slot,
        Move {
            from: cluster.port(from),
            to: cluster.port(to),
            masters,
            first,
            midway: Some(tx),
        },
    )
    .await;
    chains.join_all().await;
    assert_eq!(late.await.unwrap().len(), 4, "the late clients wrote");
    eprintln!("reshard ({order:?}): {moved} keys moved from node {from} to node {to}");
    assert_eq!(
        *errors.lock().unwrap(),
        Vec::<String>::new(),
        "no write failed"
    );
    assert_eq!(cluster.master_of_key(&moving), to, "the slot moved");
    // Once each: the stream holds one entry per write (none trimmed yet).
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn(cluster.port(cluster.master_of_key(&stream))).await)
        .await
        .unwrap();
    assert_eq!(
        len,
        settled.len() + 10 * WRITES as usize,
        "one entry per write"
    );
    // Applied, each key's last write last: a new process reads them.
    let reader = Writ::connect(plain_cfg.clone()).await.unwrap();
    reader.sync(Duration::from_secs(30)).await.unwrap();
    let coll = reader.collection("signal").unwrap();
    for n in names[..10].iter().chain(&settled[..20]) {
        let want = if names[..10].contains(n) { WRITES } else { 0 };
        let got = coll.read(&key(n)).await.unwrap();
        assert_eq!(got.and_then(|d| d.get_i64("value").ok()), Some(want), "{n}");
    }
    let log = daemon.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "the daemon logged errors:\n{}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_slot_moves_while_rust_clients_write() {
    let env = TestEnv::start("reshard");
    let cluster = RedisCluster::start(3, 1, false);
    let dir = tempfile::tempdir().unwrap();
    let with = |replicas: u32| Overrides {
        redis_url: Some(cluster.url_list()),
        redis: if replicas == 0 {
            "cluster = true"
        } else {
            "cluster = true\nmin_replicas_acked = 1\nreplica_ack_timeout_ms = 2000"
        },
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &with(0));
    let daemon = DaemonProc::start(&path, dir.path(), "r0");
    let configs = (env.config_with(&with(0)), env.config_with(&with(1)));
    reshard(&cluster, &configs, &daemon, 0, Order::ColdFirst).await;
    reshard(&cluster, &configs, &daemon, 1, Order::StreamFirst).await;
    reshard(&cluster, &configs, &daemon, 2, Order::AckStream).await;
}

/// The `WAIT` that confirms a write with `min_replicas_acked` goes to the
/// node the write went to, also once a resharding moved the write's key away
/// and before the slot is handed over: it names no key, so the source does not
/// answer it with `ASK`. (It used to carry an `EXISTS` of the key for its
/// routing: the source answered `ASK`, the target `MOVED`, and the write
/// failed with that error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_confirmed_on_its_node_while_its_key_moves_away() {
    let env = TestEnv::start("reshardwait");
    let cluster = RedisCluster::start(3, 1, false);
    let config = env.config_with(&Overrides {
        redis_url: Some(cluster.url_list()),
        redis: "cluster = true\nmin_replicas_acked = 1\nreplica_ack_timeout_ms = 2000",
        ..Default::default()
    });
    let writes = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let other_conn = writ::redis_conn::connect(&config, Duration::ZERO)
        .await
        .unwrap();
    let key = Names::new(&config.namespace).stream(0);
    let mut pipe = writ::redis_conn::Confirmer::write_pipeline();
    pipe.cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("f")
        .arg("v")
        .ignore();
    let (client,): (u64,) = pipe.query_async(&mut writes.clone()).await.unwrap();

    let from = cluster.master_of_key(&key);
    let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
    let (mut src, mut dst) = (conn(cluster.port(from)).await, conn(cluster.port(to)).await);
    let slot = keyslot(&mut src, &key).await;
    begin_move(slot, &mut src, &mut dst).await;
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(cluster.port(to))
        .arg(&key)
        .arg(0)
        .arg(5000)
        .query_async(&mut src)
        .await
        .unwrap();
    // The slot is still the source's; the key is on the target now.
    let exists: redis::RedisResult<i64> =
        redis::cmd("EXISTS").arg(&key).query_async(&mut src).await;
    assert_eq!(
        exists.unwrap_err().kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Ask)
    );

    let confirmer = writ::redis_conn::Confirmer::new(
        writes.clone(),
        writ::redis_conn::Replication::of(&config),
    );
    confirmer.confirm(&key, client, "the write").await.unwrap();
    writ::redis_conn::Replication::of(&config)
        .confirm_on(&writes, &key, client, "the write")
        .await
        .unwrap();
    // Another connection's writes are not confirmed by this one's WAIT.
    let other = confirmer
        .confirm(&key, client + 1_000_000, "the write")
        .await
        .unwrap_err();
    assert!(
        matches!(other, writ::Error::NotReplicated { confirmed: 0, .. }),
        "{other}"
    );

    // The move ends. A write that followed the `MOVED` to the new node (as
    // redis-rs sends it, by address, at once) is confirmed there, although
    // the connections' slot maps still name the old node.
    let to_id = node_id(&mut dst).await;
    let masters: Vec<u16> = cluster
        .masters()
        .into_iter()
        .map(|m| cluster.port(m))
        .collect();
    end_move(slot, &to_id, cluster.port(from), cluster.port(to), &masters).await;
    let on_new_node = |c: &writ::redis_conn::Conn| {
        let writ::redis_conn::Conn::Cluster(mut c, _) = c.clone() else {
            panic!("a cluster connection")
        };
        let mut pipe = writ::redis_conn::Confirmer::write_pipeline();
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("f")
            .arg("w")
            .ignore();
        let to = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
            host: "127.0.0.1".into(),
            port: cluster.port(to),
        };
        async move {
            let replies = c.route_pipeline(pipe, 0, 2, to).await.unwrap();
            redis::from_redis_value::<u64>(replies[0].clone()).unwrap()
        }
    };
    let client = on_new_node(&writes).await;
    confirmer.confirm(&key, client, "the write").await.unwrap();
    let client = on_new_node(&other_conn).await;
    writ::redis_conn::Replication::of(&config)
        .confirm_on(&other_conn, &key, client, "the write")
        .await
        .unwrap();
}
