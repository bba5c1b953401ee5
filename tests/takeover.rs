//! How long partitions go without an owner, with the default ownership
//! settings (`lease_ttl_ms = 2000`, `block_ms = 500`): a daemon joining, a
//! daemon stopping on SIGTERM, and a daemon killed with kill -9.
//!
//! One probe writer per partition writes and waits for each ack, over and
//! over. A partition's stall is the longest gap between two of its acks
//! around the event. The figures are printed (speed is not asserted in
//! tests; see the note and docs/performance.md). What is asserted: each
//! event ends balanced, no probe write is lost, and the cache equals MongoDB.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use support::proc::DaemonProc;
use support::{eventually, Overrides, TestEnv};
use tokio_util::sync::CancellationToken;
use writ::config::Config;
use writ::Writ;

const DEFAULTS: &str =
    "lease_ttl_ms = 2000\nblock_ms = 500\nbackoff_cap_ms = 5000\nshutdown_deadline_ms = 10000";

fn key(name: &str) -> Document {
    doc! {"symbol": name, "strategyName": "takeover", "exchangeName": "x"}
}

/// One key name per partition.
fn probe_keys(config: &Config) -> Vec<String> {
    let coll = config.collection("signal").unwrap();
    let mut found: Vec<Option<String>> = vec![None; config.partitions as usize];
    for i in 0.. {
        let name = format!("P{i}");
        let p = writ::protocol::Key::from_document(&key(&name), coll)
            .unwrap()
            .partition("signal", config.partitions) as usize;
        found[p].get_or_insert(name);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// Ack instants per partition, and the last value acked.
#[derive(Default)]
struct Acks {
    at: Vec<Vec<Instant>>,
    last: Vec<i64>,
}

struct Probes {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    acks: Arc<Mutex<Acks>>,
    keys: Vec<String>,
}

impl Probes {
    async fn start(config: &Config) -> Probes {
        let keys = probe_keys(config);
        let acks = Arc::new(Mutex::new(Acks {
            at: vec![Vec::new(); keys.len()],
            last: vec![0; keys.len()],
        }));
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let writ = Writ::connect(config.clone()).await.unwrap();
        for (p, name) in keys.iter().enumerate() {
            let (writ, acks, stop, name) = (writ.clone(), acks.clone(), stop.clone(), name.clone());
            tasks.spawn(async move {
                let c = writ.collection("signal").unwrap();
                let mut n = 0i64;
                while !stop.is_cancelled() {
                    n += 1;
                    match c.write(&key(&name), &doc! {"n": n}).await {
                        Ok(_) => {
                            let mut a = acks.lock().unwrap();
                            a.at[p].push(Instant::now());
                            a.last[p] = n;
                        }
                        Err(e) => panic!("probe write of partition {p} failed: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        Probes {
            stop,
            tasks,
            acks,
            keys,
        }
    }

    /// Per partition, the longest gap between acks from `from` until now
    /// (counting from the last ack before `from`).
    fn stalls(&self, from: Instant) -> Vec<Duration> {
        let a = self.acks.lock().unwrap();
        a.at.iter()
            .map(|times| {
                let start = times
                    .iter()
                    .rev()
                    .find(|t| **t <= from)
                    .copied()
                    .unwrap_or(from);
                let mut prev = start;
                let mut worst = Duration::ZERO;
                for t in times.iter().filter(|t| **t > start) {
                    worst = worst.max(*t - prev);
                    prev = *t;
                }
                worst.max(Instant::now() - prev)
            })
            .collect()
    }

    /// Waits until every partition acked at least `n` more writes.
    async fn all_ack_again(&self, n: usize) {
        let base: Vec<usize> = self.acks.lock().unwrap().at.iter().map(Vec::len).collect();
        eventually(
            Duration::from_secs(60),
            "every partition acks again",
            || async {
                let a = self.acks.lock().unwrap();
                a.at.iter()
                    .zip(&base)
                    .all(|(t, b)| t.len() >= b + n)
                    .then_some(())
            },
        )
        .await;
    }

    async fn stop(mut self) -> (Vec<String>, Vec<i64>) {
        self.stop.cancel();
        while let Some(r) = self.tasks.join_next().await {
            r.unwrap();
        }
        let a = self.acks.lock().unwrap();
        (self.keys.clone(), a.last.clone())
    }
}

async fn wait_owned(env: &TestEnv, config: &Config, want: &[(&str, u32)], what: &str) -> Duration {
    let started = Instant::now();
    eventually(Duration::from_secs(60), what, || async {
        let o = support::lease_holders(env, config.partitions).await;
        want.iter()
            .all(|(name, n)| o.get(*name).copied().unwrap_or(0) == *n)
            .then_some(())
    })
    .await;
    started.elapsed()
}

fn worst(stalls: &[Duration]) -> Duration {
    stalls.iter().copied().max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_graceful_stop_and_kill_move_partitions_quickly() {
    let env = TestEnv::start("takeover_times");
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        daemon: DEFAULTS,
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let n = config.partitions;
    let mut a = DaemonProc::start(&path, dir.path(), "tk-a");
    wait_owned(&env, &config, &[("tk-a", n)], "tk-a owns every partition").await;
    let probes = Probes::start(&config).await;
    probes.all_ack_again(5).await;

    // 1. A second daemon joins: half the partitions move to it.
    let joined = Instant::now();
    let mut b = DaemonProc::start(&path, dir.path(), "tk-b");
    let balance = wait_owned(
        &env,
        &config,
        &[("tk-a", n / 2), ("tk-b", n / 2)],
        "balanced after the join",
    )
    .await;
    probes.all_ack_again(5).await;
    let join_stalls = probes.stalls(joined);

    // 2. Graceful stop of tk-a: its partitions move to tk-b.
    let stopping = Instant::now();
    let code = tokio::task::block_in_place(|| a.terminate(Duration::from_secs(20)));
    assert_eq!(code, Some(0), "tk-a exits cleanly on SIGTERM");
    let graceful = wait_owned(
        &env,
        &config,
        &[("tk-b", n)],
        "tk-b owns all after tk-a stopped",
    )
    .await;
    probes.all_ack_again(5).await;
    let graceful_stalls = probes.stalls(stopping);

    // 3. kill -9 of tk-b, with tk-c running beside it.
    let c = DaemonProc::start(&path, dir.path(), "tk-c");
    wait_owned(
        &env,
        &config,
        &[("tk-b", n / 2), ("tk-c", n / 2)],
        "balanced after tk-c joined",
    )
    .await;
    probes.all_ack_again(5).await;
    let killed = Instant::now();
    b.kill9();
    wait_owned(
        &env,
        &config,
        &[("tk-c", n)],
        "tk-c owns all after the kill",
    )
    .await;
    probes.all_ack_again(5).await;
    let kill_stalls = probes.stalls(killed);

    let (keys, last) = probes.stop().await;
    let db = env.mongo_db().await;
    for (name, n) in keys.iter().zip(&last) {
        let d = db
            .collection::<Document>("signal")
            .find_one(key(name))
            .await
            .unwrap()
            .expect("probe key in MongoDB");
        assert_eq!(
            d.get_document("payload").unwrap().get_i64("n").unwrap(),
            *n,
            "{name}: MongoDB holds the last acked write"
        );
        let cached = support::cached(&config, "signal", &key(name)).await;
        assert_eq!(
            cached.and_then(|c| c.doc).map(|d| d
                .get_document("payload")
                .unwrap()
                .get_i64("n")
                .unwrap()),
            Some(*n),
            "{name}: the cache equals MongoDB"
        );
    }
    eprintln!(
        "ownership timing (lease 2 s, {n} partitions): join -> balanced {balance:?}, worst ack gap {:?} (per partition {join_stalls:?}); \
         SIGTERM -> all moved {graceful:?} after exit, worst ack gap {:?} ({graceful_stalls:?}); \
         kill -9 -> worst ack gap {:?} ({kill_stalls:?})",
        worst(&join_stalls),
        worst(&graceful_stalls),
        worst(&kill_stalls),
    );
    drop(c);
}
