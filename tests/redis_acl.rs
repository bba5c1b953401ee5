//! Redis ACL users: the two `ACL SETUSER` lines of docs/operations.md
//! ("Redis ACL users"), read from the doc so the two cannot drift, are enough
//! for the daemon, the CLI and a client, and keep the writer away from what
//! is not its business. Always a harness-owned redis-server (the test creates
//! users); MongoDB is the usual one.

mod support;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use support::cluster::RedisCluster;
use support::proc::{writ_cli, DaemonProc};
use support::{Daemon, Overrides, RedisServer, TestEnv};
use writ::{Error, Writ};

const DOC: &str = include_str!("../docs/operations.md");

fn sig(symbol: &str) -> Document {
    doc! {"symbol": symbol, "strategyName": "acl", "exchangeName": "x"}
}

/// The documented `ACL SETUSER` lines for namespace `ns` with the given
/// passwords, as argument lists (without `ACL SETUSER`).
fn documented_users(ns: &str, daemon_pw: &str, writer_pw: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = DOC
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER "))
        .collect();
    assert_eq!(lines.len(), 2, "docs/operations.md documents two users");
    assert!(
        lines[0].starts_with("ACL SETUSER writ-daemon "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("ACL SETUSER writ-writer "),
        "{}",
        lines[1]
    );
    lines
        .iter()
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .map(|w| {
                    w.replace("writ:", &format!("{ns}:"))
                        .replace("DAEMON_PASSWORD", daemon_pw)
                        .replace("WRITER_PASSWORD", writer_pw)
                })
                .collect()
        })
        .collect()
}

/// Creates `users` (`ACL SETUSER` argument lists), then empties `ACL LOG`.
async fn set_users(admin: &mut redis::aio::MultiplexedConnection, users: Vec<Vec<String>>) {
    for user in users {
        let ok: String = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .query_async(admin)
            .await
            .unwrap_or_else(|e| panic!("ACL SETUSER {user:?}: {e}"));
        assert_eq!(ok, "OK");
    }
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(admin)
        .await
        .unwrap();
}

/// A harness Redis with the documented users, the daemon's rules changed by
/// `edit` (given the namespace), for the test `test`; and the daemon user's
/// URL.
async fn with_daemon_user(
    test: &str,
    edit: impl FnOnce(&str, &mut Vec<String>),
) -> (RedisServer, TestEnv, String) {
    let redis = RedisServer::start();
    let env = TestEnv::start(test);
    let (daemon_pw, writer_pw) = ("d4emon-pw-5e1b", "wr1ter-pw-0c77");
    let mut users = documented_users(&env.name, daemon_pw, writer_pw);
    edit(&env.name, &mut users[0]);
    set_users(&mut conn(&redis.url()).await, users).await;
    let url = format!("redis://writ-daemon:{daemon_pw}@127.0.0.1:{}", redis.port);
    (redis, env, url)
}

/// `rules` without `rule`, which the documented line has.
fn without(rules: &mut Vec<String>, rule: &str) {
    let before = rules.len();
    rules.retain(|r| r != rule);
    assert_eq!(rules.len(), before - 1, "the documented user has {rule}");
}

/// Waits (30 s at most) until each daemon of `shares` holds its number of
/// the `partitions` leases of namespace `ns`.
async fn wait_shares(
    admin: &redis::aio::MultiplexedConnection,
    ns: &str,
    partitions: u32,
    shares: &[(&str, u32)],
    what: &str,
) {
    support::eventually(Duration::from_secs(30), what, || {
        let mut admin = admin.clone();
        async move {
            let o = support::lease_holders_on(&mut admin, ns, partitions).await;
            shares
                .iter()
                .all(|(name, n)| o.get(*name) == Some(n))
                .then_some(())
        }
    })
    .await;
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Runs `args`; asserts Redis refuses it with NOPERM.
async fn refused(c: &mut redis::aio::MultiplexedConnection, who: &str, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(c).await {
        Err(e) if e.code() == Some("NOPERM") => {}
        other => panic!("{who} may run {args:?}: {other:?}"),
    }
}

/// `ACL LOG` entries (each a field map), leaving out refusals of
/// `CLIENT SETINFO` (sent by redis-rs on connect, ignored; docs say so).
async fn acl_log(admin: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let log: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(admin)
        .await
        .unwrap();
    log.into_iter()
        .map(|e| format!("{e:?}"))
        .filter(|e| !e.contains("client|setinfo"))
        .collect()
}

fn cli_ok(out: &std::process::Output, secrets: &[&str]) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for s in secrets {
        assert!(!stdout.contains(s) && !stderr.contains(s), "password shown");
    }
    stdout.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_users_run_writ_and_nothing_more() {
    let redis = RedisServer::start();
    let env = TestEnv::start("acl_users");
    let ns = env.name.clone();
    let (daemon_pw, writer_pw) = ("d4emon-pw-7f3a", "wr1ter-pw-91c2");
    let mut admin = conn(&redis.url()).await;
    set_users(&mut admin, documented_users(&ns, daemon_pw, writer_pw)).await;
    let daemon_url = format!("redis://writ-daemon:{daemon_pw}@127.0.0.1:{}", redis.port);
    let writer_url = format!("redis://writ-writer:{writer_pw}@127.0.0.1:{}", redis.port);
    let secrets = [daemon_pw, writer_pw];

    // The daemon (the real binary) as writ-daemon; retention keeps one
    // committed entry per partition, so trimming runs too.
    let dir = tempfile::tempdir().unwrap();
    let daemon_o = Overrides {
        redis_url: Some(daemon_url.clone()),
        daemon: "retention_max_entries = 1",
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &daemon_o);
    let mut daemon = DaemonProc::start(&path, dir.path(), "acl-d1");

    // A client as writ-writer: writes acked, read back, read-many, sync.
    let writer_config = env.config_with(&Overrides {
        redis_url: Some(writer_url.clone()),
        ..Default::default()
    });
    let writ = Writ::connect(writer_config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..6 {
        s.write(&sig(&format!("S{i}")), &doc! {"v": i})
            .await
            .unwrap();
    }
    // A second daemon under the same user: the first hands partitions over,
    // and each takes a lease the other held (the acquire script's `PTTL`).
    let mut daemon2 = DaemonProc::start(&path, dir.path(), "acl-d2");
    support::eventually(
        Duration::from_secs(30),
        "both daemons to own partitions",
        || {
            let out = writ_cli(&path, &["status", "--json"]);
            async move {
                let st: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let owners: Vec<&str> = st["partitions"]
                    .as_array()?
                    .iter()
                    .map(|p| p["owner"].as_str())
                    .collect::<Option<_>>()?;
                (owners.contains(&"acl-d1") && owners.contains(&"acl-d2")).then_some(())
            }
        },
    )
    .await;
    s.write(&sig("S0"), &doc! {"v": 10}).await.unwrap();
    s.delete(&sig("S5")).await.unwrap();
    assert_eq!(s.read(&sig("S0")).await.unwrap(), Some(doc! {"v": 10}));
    assert_eq!(
        s.read_many(&[sig("S1"), sig("S5"), sig("S9")])
            .await
            .unwrap(),
        vec![Some(doc! {"v": 1}), None, None]
    );
    writ.sync(Duration::from_secs(20)).await.unwrap();
    // A cold cache with no scripts loaded: the writer refills an entry from
    // MongoDB through the compare-and-set script (NOSCRIPT, SCRIPT LOAD).
    let cache_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*:c:signal:*\"S2\"*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(cache_keys.len(), 1, "{cache_keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&cache_keys[0])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let cold = Writ::connect(writer_config).await.unwrap();
    let c = cold.collection("signal").unwrap();
    assert_eq!(c.read(&sig("S2")).await.unwrap(), Some(doc! {"v": 2}));
    let refilled: bool = redis::cmd("EXISTS")
        .arg(&cache_keys[0])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(refilled, "the writer refilled the cache entry");
    c.write(&sig("S6"), &doc! {"v": 6}).await.unwrap();

    // The CLI as writ-daemon.
    let status = cli_ok(&writ_cli(&path, &["status", "--json"]), &secrets);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["dead_letters"], 0, "{status}");
    let dlq = cli_ok(&writ_cli(&path, &["dlq", "list", "--json"]), &secrets);
    assert!(dlq.trim_start().starts_with('['), "{dlq}");
    // Exit 3: retention (the harness keeps few entries) trimmed part of the range.
    let replay = writ_cli(&path, &["replay", "--from", "0-0"]);
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(matches!(replay.status.code(), Some(0 | 3)), "{said}");
    assert!(said.contains("\"read\""), "{said}");
    assert!(secrets.iter().all(|s| !said.contains(s)), "password shown");
    cli_ok(&writ_cli(&path, &["rebuild-cache"]), &secrets);
    let counted = cli_ok(&writ_cli(&path, &["partitions"]), &secrets);
    assert!(counted.contains("as this config"), "{counted}");
    let set = cli_ok(&writ_cli(&path, &["partitions", "--set"]), &secrets);
    assert!(set.contains("already records"), "{set}");
    // Retention ran under the daemon's user: at most one entry per partition
    // is left once it trimmed.
    support::eventually(Duration::from_secs(20), "retention to trim", || {
        let mut a = admin.clone();
        let ns = ns.clone();
        async move {
            let mut total = 0u64;
            for p in 0..4 {
                let n: u64 = redis::cmd("XLEN")
                    .arg(format!("{ns}:{{p{p}}}:in"))
                    .query_async(&mut a)
                    .await
                    .ok()?;
                total += n;
            }
            (total <= 4).then_some(())
        }
    })
    .await;
    drop((writ, cold));
    assert_eq!(daemon2.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(daemon.terminate(Duration::from_secs(30)), Some(0));

    // Nothing was refused on the way (a refusal the code retries or only
    // logs would not fail the steps above).
    let refusals = acl_log(&mut admin).await;
    assert!(refusals.is_empty(), "ACL LOG: {refusals:#?}");

    // The passwords are in no log; the URL is, redacted.
    let log = daemon.log_text() + &daemon2.log_text();
    assert!(
        log.contains(&format!("redis://***@127.0.0.1:{}", redis.port)),
        "{log}"
    );
    for s in secrets {
        assert!(!log.contains(s), "password in the daemon log");
    }

    // The writer cannot touch the group, leases or fences, nor write dead
    // letters, nor the server; the daemon cannot wipe the server or leave
    // its namespace. The writer may read the dead-letter stream (the Node
    // client's lost-ack sweep, docs/protocol.md).
    let mut w = conn(&writer_url).await;
    let letters: redis::Value = redis::cmd("XRANGE")
        .arg(format!("{ns}:dlq"))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut w)
        .await
        .expect("the writer may read the dead-letter stream");
    assert!(matches!(letters, redis::Value::Array(_)), "{letters:?}");
    let stream = format!("{ns}:{{p0}}:in");
    for args in [
        vec!["FLUSHALL"],
        vec!["XGROUP", "DESTROY", &stream, &ns],
        vec!["XTRIM", &stream, "MAXLEN", "0"],
        vec!["XACK", &stream, &ns, "0-1"],
        vec!["SET", &format!("{ns}:{{p0}}:lease"), "intruder"],
        vec!["HSET", &format!("{ns}:{{p0}}:fence"), "f", "1"],
        vec!["XADD", &format!("{ns}:dlq"), "*", "f", "1"],
        vec!["XADD", &format!("{ns}:ack:c1"), "*", "f", "1"],
        vec!["XADD", "other:{p0}:in", "*", "f", "1"],
        vec!["KEYS", "*"],
    ] {
        refused(&mut w, "writ-writer", &args).await;
    }
    let mut d = conn(&daemon_url).await;
    for args in [
        vec!["FLUSHALL"],
        vec!["CONFIG", "SET", "appendonly", "no"],
        vec!["XGROUP", "DESTROY", &stream, &ns],
        vec!["GET", "other:key"],
    ] {
        refused(&mut d, "writ-daemon", &args).await;
    }
    // A wrong password: one line naming the user check, no password.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = env.config_file_with(
        bad_dir.path(),
        &Overrides {
            redis_url: Some(format!(
                "redis://writ-daemon:wrong-{daemon_pw}@127.0.0.1:{}",
                redis.port
            )),
            ..Default::default()
        },
    );
    let out = writ_cli(&bad, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check the user and password"), "{err}");
    assert!(!err.contains(daemon_pw), "{err}");
}

/// The commands docs/operations.md adds to both users for replica
/// confirmation (`min_replicas_acked` ≥ 1) and for Redis Cluster.
const CLUSTER_AND_REPLICA_ADDITIONS: [&str; 2] = ["+wait +client|id", "+cluster|slots"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_with_replica_acks_the_documented_additions_are_enough() {
    for a in CLUSTER_AND_REPLICA_ADDITIONS {
        assert!(
            DOC.contains(&format!("`{a}`")),
            "docs/operations.md names `{a}`"
        );
    }
    let refusals = writes_on_a_cluster("acl_cluster", |_| {}).await;
    for (node, refusals) in refusals.iter().enumerate() {
        assert!(refusals.is_empty(), "node {node}: ACL LOG: {refusals:#?}");
    }
}

/// A daemon user set up before session 47 (no `+eval`) on a cluster: a node
/// that lacks a script refuses the `EVAL` that would load it on that node
/// alone, and the daemon loads it with `SCRIPT LOAD` instead, as before.
/// Every write still applies; the refusals are `EVAL`s only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_daemon_user_without_eval_still_applies() {
    let refusals =
        writes_on_a_cluster("acl_cluster_no_eval", |daemon| without(daemon, "+eval")).await;
    let all: Vec<&std::collections::HashMap<String, String>> = refusals.iter().flatten().collect();
    let field = |e: &std::collections::HashMap<String, String>, f: &str| e.get(f).cloned();
    assert!(
        !all.is_empty()
            && all.iter().all(|e| {
                field(e, "reason").as_deref() == Some("command")
                    && field(e, "object").as_deref() == Some("eval")
                    && field(e, "username").as_deref() == Some("writ-daemon")
            }),
        "ACL LOG: {all:#?}"
    );
}

/// Both documented users (plus the cluster and replica additions, and
/// `edit` applied to the daemon's rules) on every node of a 3×1 cluster;
/// a daemon and a writer with `min_replicas_acked = 1` apply writes to
/// every partition. Returns each node's `ACL LOG` refusals (their fields).
async fn writes_on_a_cluster(
    test: &str,
    edit: impl Fn(&mut Vec<String>),
) -> Vec<Vec<std::collections::HashMap<String, String>>> {
    let env = TestEnv::start(test);
    let cluster = RedisCluster::start(3, 1, false);
    let ns = env.name.clone();
    let (daemon_pw, writer_pw) = ("cl-d4emon-pw-5e1b", "cl-wr1ter-pw-0d7c");
    // ACL users are per node: every master and replica gets both.
    let mut admins = Vec::new();
    for node in 0..cluster.len() {
        let mut admin = conn(&cluster.node_url(node)).await;
        let mut users = documented_users(&ns, daemon_pw, writer_pw);
        for user in &mut users {
            user.extend(
                CLUSTER_AND_REPLICA_ADDITIONS
                    .iter()
                    .flat_map(|a| a.split_whitespace().map(String::from)),
            );
        }
        edit(&mut users[0]);
        set_users(&mut admin, users).await;
        admins.push(admin);
    }
    let seeds = |user: &str, pw: &str| {
        cluster
            .urls()
            .iter()
            .map(|u| u.replacen("redis://", &format!("redis://{user}:{pw}@"), 1))
            .collect::<Vec<_>>()
            .join(",")
    };
    let redis = "cluster = true\nmin_replicas_acked = 1\nreplica_ack_timeout_ms = 5000";
    let daemon = Daemon::start(env.config_with(&Overrides {
        redis_url: Some(seeds("writ-daemon", daemon_pw)),
        redis,
        ..Default::default()
    }));
    let writ = Writ::connect(env.config_with(&Overrides {
        redis_url: Some(seeds("writ-writer", writer_pw)),
        redis,
        ..Default::default()
    }))
    .await
    .unwrap();
    let s = writ.collection("signal").unwrap();
    // Enough keys to reach every partition, so every master and replica.
    for i in 0..12 {
        s.write(&sig(&format!("C{i}")), &doc! {"v": i})
            .await
            .unwrap();
    }
    assert_eq!(s.read(&sig("C3")).await.unwrap(), Some(doc! {"v": 3}));
    writ.sync(Duration::from_secs(20)).await.unwrap();
    drop(writ);
    daemon.stop().await;
    let mut refusals = Vec::new();
    for admin in admins.iter_mut() {
        refusals.push(acl_entries(admin).await);
    }
    refusals
}

/// `ACL LOG`'s entries, each field as text, but `CLIENT SETINFO` refusals
/// (as [`acl_log`]).
async fn acl_entries(
    admin: &mut redis::aio::MultiplexedConnection,
) -> Vec<std::collections::HashMap<String, String>> {
    let log: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(admin)
        .await
        .unwrap();
    log.into_iter()
        .map(|e| {
            e.into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                        redis::Value::SimpleString(t) => t,
                        redis::Value::Int(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (k, text)
                })
                .collect::<std::collections::HashMap<String, String>>()
        })
        .filter(|e| e.get("object").map(String::as_str) != Some("client|setinfo"))
        .collect()
}

/// A daemon user set up before `+time` was documented: the heartbeat script
/// is refused, and the daemons say so once each and heartbeat on their hosts'
/// clocks; they still share the partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_user_without_time_heartbeats_on_the_hosts_clock() {
    let (redis, env, daemon_url) =
        with_daemon_user("acl_no_time", |_, rules| without(rules, "+time")).await;
    let ns = env.name.clone();
    let admin = conn(&redis.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        redis_url: Some(daemon_url),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let mut d1 = DaemonProc::start(&path, dir.path(), "old-acl-d1");
    let mut d2 = DaemonProc::start(&path, dir.path(), "old-acl-d2");
    let half = config.partitions / 2;
    wait_shares(
        &admin,
        &ns,
        config.partitions,
        &[("old-acl-d1", half), ("old-acl-d2", half)],
        "the two daemons to own half the partitions each",
    )
    .await;
    for d in [&mut d1, &mut d2] {
        let said = d.log_text().matches("Redis refuses TIME").count();
        assert_eq!(said, 1, "{}: said {said} times\n{}", d.name, d.log_text());
        assert_eq!(d.terminate(Duration::from_secs(20)), Some(0));
    }
}

/// A daemon whose user cannot count the members (no `+zcount`: an ACL cut
/// short) takes no partition; counted by the other daemon it would keep that
/// one's share at half the partitions, and the other half would have no
/// owner. After two lease TTLs of failing counts it leaves the member set,
/// and the other daemon takes every partition. Once it can count again, it
/// steps back in and takes its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_count_the_members_steps_out_of_their_shares() {
    let (redis, env, good_url) = with_daemon_user("acl_no_zcount", |_, _| {}).await;
    let ns = env.name.clone();
    let mut admin = conn(&redis.url()).await;
    let mut broken = documented_users(&ns, "d4emon-pw-5e1b", "unused")[0].clone();
    broken[0] = "writ-daemon-b".into();
    without(&mut broken, "+zcount");
    let ok: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&broken)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let broken_url = good_url.replacen("writ-daemon:", "writ-daemon-b:", 1);
    let config_of = |url: &str, dir: &std::path::Path| {
        let o = Overrides {
            redis_url: Some(url.to_string()),
            ..Default::default()
        };
        (env.config_file_with(dir, &o), env.config_with(&o))
    };
    let (dir_b, dir_a) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (path_b, _) = config_of(&broken_url, dir_b.path());
    let (path_a, config) = config_of(&good_url, dir_a.path());
    let mut b = DaemonProc::start(&path_b, dir_b.path(), "no-zcount-b");
    let mut a = DaemonProc::start(&path_a, dir_a.path(), "counting-a");
    // First the step out: before it, `a` may own every partition for a
    // moment (its first poll can come before `b`'s first heartbeat), which
    // the wait below would take for the outcome.
    support::eventually(
        Duration::from_secs(30),
        "the daemon that cannot count to leave the member set",
        || {
            let said = b.log_text().contains("it leaves the member set");
            async move { said.then_some(()) }
        },
    )
    .await;
    wait_shares(
        &admin,
        &ns,
        config.partitions,
        &[("counting-a", config.partitions)],
        "the counting daemon to own every partition",
    )
    .await;
    let said = b.log_text().matches("it leaves the member set").count();
    assert_eq!(said, 1, "{}", b.log_text());
    // The operator grants `+zcount`: `b` counts again, steps back in after a
    // lease TTL of working counts, and the two share the partitions.
    let ok: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("writ-daemon-b")
        .arg("+zcount")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let half = config.partitions / 2;
    wait_shares(
        &admin,
        &ns,
        config.partitions,
        &[("no-zcount-b", half), ("counting-a", half)],
        "the daemon that counts again to own its share",
    )
    .await;
    let said = b
        .log_text()
        .matches("this daemon is a member again")
        .count();
    assert_eq!(said, 1, "{}", b.log_text());
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
}

/// A writer user set up before admission deadlines (no `+time`): the
/// client's clock sample is refused, and it admits without deadlines
/// (docs/protocol.md §2a) instead of failing every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_user_without_time_writes_without_deadlines() {
    let redis = RedisServer::start();
    let env = TestEnv::start("acl_writer_no_time");
    let (daemon_pw, writer_pw) = ("d4emon-pw-91c2", "wr1ter-pw-5d08");
    let mut admin = conn(&redis.url()).await;
    let mut users = documented_users(&env.name, daemon_pw, writer_pw);
    without(&mut users[1], "+time");
    set_users(&mut admin, users).await;
    let o = Overrides {
        redis_url: Some(format!(
            "redis://writ-writer:{writer_pw}@127.0.0.1:{}",
            redis.port
        )),
        ..Default::default()
    };
    let writ = Writ::connect(env.config_with(&o)).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..3 {
        s.submit(&sig("NOTIME"), &doc! {"i": i})
            .await
            .expect("a writer without +time could not write");
    }
    let refusals = acl_log(&mut admin).await;
    assert!(
        refusals.iter().any(|r| r.contains("time")),
        "the clock sample was not refused, so the fallback was not taken: {refusals:#?}"
    );
    writ.close().await;
}

/// With `min_replicas_acked` ≥ 1, a writer whose user lacks `+client|id` or
/// `+wait` (the additions docs/operations.md lists for it) is refused at
/// connect, naming the rule. Before, it connected, and every write was added
/// to its stream and then reported failed (`NOPERM` from the confirmation
/// after the `XADD`), so callers sent again writes Redis held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_may_not_confirm_is_refused_at_connect() {
    let redis = RedisServer::start();
    let env = TestEnv::start("acl_no_confirm");
    let ns = env.name.clone();
    let (daemon_pw, writer_pw) = ("d4emon-pw-77a1", "wr1ter-pw-3f90");
    let mut admin = conn(&redis.url()).await;
    for (granted, missing) in [("+wait", "+client|id"), ("+client|id", "+wait")] {
        let mut users = documented_users(&ns, daemon_pw, writer_pw);
        users[1].push(granted.to_string());
        set_users(&mut admin, users).await;
        let o = Overrides {
            redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 500",
            redis_url: Some(format!(
                "redis://writ-writer:{writer_pw}@127.0.0.1:{}",
                redis.port
            )),
            ..Default::default()
        };
        match Writ::connect(env.config_with(&o)).await {
            Err(Error::Config(m)) => assert!(m.contains(missing), "{m}"),
            Err(e) => panic!("without {missing}: {e:?}"),
            Ok(_) => panic!(
                "connected without {missing}: its writes would be added, then reported failed"
            ),
        }
    }
    // `writ serve` as the documented daemon user, without the additions.
    set_users(&mut admin, documented_users(&ns, daemon_pw, writer_pw)).await;
    let o = Overrides {
        redis: "min_replicas_acked = 1\nreplica_ack_timeout_ms = 500",
        redis_url: Some(format!(
            "redis://writ-daemon:{daemon_pw}@127.0.0.1:{}",
            redis.port
        )),
        ..Default::default()
    };
    let served = tokio::time::timeout(
        Duration::from_secs(30),
        writ::serve::serve(
            env.config_with(&o),
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("writ serve without +wait +client|id kept running");
    match served {
        Err(Error::Config(m)) => assert!(m.contains("+client|id +wait"), "{m}"),
        other => panic!("writ serve without +wait +client|id: {other:?}"),
    }
}

/// A partition whose lease this daemon cannot take (here its user may only
/// read partition 0's lease key; in production its cluster node failing
/// over, or no replica to confirm its lease) does not keep the partitions
/// after it unowned. Before, the first such error ended the daemon's try,
/// so partitions 1 to 3 were never taken and their writes never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_lease_is_refused_does_not_keep_the_others_unowned() {
    let (redis, env, daemon_url) = with_daemon_user("acl_one_lease", |ns, rules| {
        let all = format!("~{ns}:*");
        let at = rules
            .iter()
            .position(|r| *r == all)
            .expect("the daemon's key pattern");
        // Every key but partition 0's lease, which it may only read.
        rules.splice(
            at..=at,
            [
                format!("~{ns}:[^{{]*"),
                format!("~{ns}:{{p[^0]}}:*"),
                format!("~{ns}:{{p0}}:[^l]*"),
                format!("%R~{ns}:{{p0}}:lease"),
            ],
        );
    })
    .await;
    let ns = env.name.clone();
    let admin = conn(&redis.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        redis_url: Some(daemon_url),
        partitions: Some(4),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let mut daemon = DaemonProc::start(&path, dir.path(), "one-lease-refused");
    wait_shares(
        &admin,
        &ns,
        4,
        &[("one-lease-refused", 3)],
        "the daemon to own partitions 1 to 3",
    )
    .await;
    // The log is written beside the leases: it may trail what Redis shows.
    let said = |log: &str| {
        log.contains("cannot take these partitions' leases")
            && log.to_ascii_lowercase().contains("noperm")
    };
    let log = support::eventually(Duration::from_secs(10), "the refusal in the log", || {
        let log = daemon.log_text();
        async move { said(&log).then_some(log) }
    })
    .await;
    assert!(said(&log), "the refusal is said:\n{log}");
    assert_eq!(daemon.terminate(Duration::from_secs(20)), Some(0));
}

/// A daemon whose status pass cannot read one partition (here its user may
/// not run `XLEN` on partition 0's keys; in production that partition's
/// cluster node down, with `cluster-require-full-coverage no`) still
/// publishes the other partitions' gauges and trims their streams. Before,
/// the one partition's error failed the whole pass, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_status_cannot_be_read_leaves_the_others_gauges_going() {
    let (redis, env, daemon_url) = with_daemon_user("acl_one_status", |ns, rules| {
        without(rules, "+xlen");
        rules.push(format!("(%R~{ns}:[^{{]* %R~{ns}:{{p[^0]}}:* +xlen)"));
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::listen_port();
    let o = Overrides {
        redis_url: Some(daemon_url),
        daemon: &format!("metrics_listen = \"127.0.0.1:{port}\""),
        partitions: Some(4),
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let daemon = DaemonProc::start(&path, dir.path(), "one-status-refused");
    // A write to a partition other than 0, as the default user.
    let writer = Overrides {
        redis_url: Some(redis.url()),
        partitions: Some(4),
        ..Default::default()
    };
    let config = env.config_with(&writer);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let signals = writ.collection("signal").unwrap();
    let name = (0..)
        .map(|i| format!("ST{i}"))
        .find(|n| {
            writ::protocol::Key::from_document(&sig(n), config.collection("signal").unwrap())
                .unwrap()
                .partition("signal", 4)
                != 0
        })
        .unwrap();
    let p = writ::protocol::Key::from_document(&sig(&name), config.collection("signal").unwrap())
        .unwrap()
        .partition("signal", 4);
    tokio::time::timeout(
        Duration::from_secs(60),
        signals.write(&sig(&name), &doc! {"n": 1}),
    )
    .await
    .expect("acked within 60 s")
    .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", daemon.log_text()));
    let gauge = format!("writ_partition_committed_watermark_seconds{{partition=\"{p}\"}}");
    support::eventually(
        Duration::from_secs(30),
        "partition's watermark gauge",
        || {
            let text = support::http_get(port, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            let value = text
                .lines()
                .find(|l| l.starts_with(&gauge))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            async move { (value > 0.0).then_some(()) }
        },
    )
    .await;
    let log = daemon.log_text();
    assert!(
        log.matches("cannot read these partitions' status").count() == 1
            && log.contains("partitions=[0]"),
        "partition 0's refusal is said:\n{log}"
    );
}
