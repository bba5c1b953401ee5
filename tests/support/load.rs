//! A steady write load with a recorded history, and the checks at quiescence:
//! every accepted write is applied (MongoDB holds the newest accepted version
//! of every key), the cache equals MongoDB, and no client read went backwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use tokio_util::sync::CancellationToken;
use writ::apply::doc_version;
use writ::config::Config;
use writ::protocol::Version;
use writ::Writ;

use super::history::{Event, History};

pub fn key(name: &str) -> Document {
    doc! {"symbol": name, "strategyName": "load", "exchangeName": "test"}
}

#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub acked: AtomicU64,
    pub submit_errors: AtomicU64,
    pub ack_timeouts: AtomicU64,
}

pub struct Load {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    pub history: Arc<History>,
    /// Newest accepted (version, value) per key.
    pub accepted: Arc<Mutex<HashMap<String, (Version, i64)>>>,
    pub counters: Arc<Counters>,
}

/// What every writer task of a load shares.
#[derive(Clone)]
struct Shared {
    stop: CancellationToken,
    history: Arc<History>,
    accepted: Arc<Mutex<HashMap<String, (Version, i64)>>>,
    counters: Arc<Counters>,
}

impl Shared {
    /// Records how waiting for a write's ack ended; `true` if it was acked.
    fn settle(&self, w: usize, name: &str, own: Version, value: i64, acked: bool) -> bool {
        if acked {
            self.counters.acked.fetch_add(1, Ordering::Relaxed);
            self.history.push(Event::Acked {
                client: w,
                key: name.to_string(),
                version: own,
                value,
                at: std::time::Instant::now(),
            });
        } else {
            self.counters.ack_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        acked
    }

    /// A refused submit: counted, then a short pause.
    async fn submit_failed(&self) {
        self.counters.submit_errors.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Waits `pace`, or until the load stops.
    async fn pace(&self, pace: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = self.stop.cancelled() => {}
        }
    }

    /// Counts an accepted write and keeps the newest per key.
    fn accept(&self, name: &str, own: Version, value: i64) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let mut a = self.accepted.lock().unwrap();
        let slot = a.entry(name.to_string()).or_insert((own, value));
        if slot.0 < own {
            *slot = (own, value);
        }
    }
}

impl Load {
    /// Connects `writers` clients and runs `body(w, writ, shared)` for each.
    async fn spawn<F, Fut>(config: &Config, writers: usize, body: F) -> Load
    where
        F: Fn(usize, Writ, Shared) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let shared = Shared {
            stop: CancellationToken::new(),
            history: Arc::new(History::default()),
            accepted: Arc::default(),
            counters: Arc::new(Counters::default()),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let writ = Writ::connect(config.clone()).await.unwrap();
            tasks.spawn(body(w, writ, shared.clone()));
        }
        Load {
            stop: shared.stop,
            tasks,
            history: shared.history,
            accepted: shared.accepted,
            counters: shared.counters,
        }
    }

    /// `writers` clients, each cycling over `keys` keys, one write per `pace`.
    pub async fn start(
        config: &Config,
        writers: usize,
        keys: usize,
        pace: Duration,
        ack_wait: Duration,
    ) -> Load {
        Self::spawn(config, writers, move |w, writ, sh| async move {
            let c = writ.collection("signal").unwrap();
            let mut i: i64 = 0;
            while !sh.stop.is_cancelled() {
                i += 1;
                let name = format!("L{}", (i as usize + w) % keys);
                let value = (w as i64) * 1_000_000 + i;
                match c.submit(&key(&name), &doc! {"value": value}).await {
                    Ok(ticket) => {
                        let own = ticket.version();
                        sh.accept(&name, own, value);
                        let acked = ticket.wait_for(ack_wait).await.is_ok();
                        if !sh.settle(w, &name, own, value, acked) {
                            // Still queued: no read now (it would wait for this write too).
                            continue;
                        }
                        let started = std::time::Instant::now();
                        if let Ok(r) = c.read_record(&key(&name)).await {
                            sh.history.push(Event::Read {
                                client: w,
                                at: started,
                                key: name.clone(),
                                version: r.as_ref().map(|r| r.version),
                                value: r
                                    .and_then(|r| r.payload)
                                    .and_then(|p| p.get_i64("value").ok()),
                            });
                        }
                    }
                    Err(_) => sh.submit_failed().await,
                }
                sh.pace(pace).await;
            }
        })
        .await
    }

    /// `writers` clients that `submit` without waiting: each ticket is awaited
    /// by its own task (at most `max_waiting` per writer), so hundreds of
    /// writes can be in flight. Acks go into the history; there are no reads
    /// (a read would wait for the writer's own pending writes). Each ack is
    /// awaited at most `ack_wait` (a lost ack then costs the stop no more).
    pub async fn start_submit(
        config: &Config,
        writers: usize,
        keys: usize,
        pace: Duration,
        max_waiting: usize,
        ack_wait: Duration,
    ) -> Load {
        Self::spawn(config, writers, move |w, writ, sh| async move {
            let c = writ.collection("signal").unwrap();
            let waiting = Arc::new(tokio::sync::Semaphore::new(max_waiting));
            let mut acks = tokio::task::JoinSet::new();
            let mut i: i64 = 0;
            while !sh.stop.is_cancelled() {
                i += 1;
                let name = format!("L{}", (i as usize * 7 + w) % keys);
                let value = (w as i64) * 1_000_000 + i;
                let permit = waiting.clone().acquire_owned().await.unwrap();
                match c.submit(&key(&name), &doc! {"value": value}).await {
                    Ok(ticket) => {
                        let own = ticket.version();
                        sh.accept(&name, own, value);
                        let sh = sh.clone();
                        acks.spawn(async move {
                            let _permit = permit;
                            let acked = ticket.wait_for(ack_wait).await.is_ok();
                            sh.settle(w, &name, own, value, acked);
                        });
                    }
                    Err(_) => sh.submit_failed().await,
                }
                sh.pace(pace).await;
            }
            while acks.join_next().await.is_some() {}
        })
        .await
    }

    pub fn accepted_count(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    pub fn acked_count(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    pub async fn stop(mut self) -> Load {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self
    }

    /// Waits (up to `limit`) until MongoDB holds the newest accepted write of
    /// every key and the cache has caught up with it, then checks the cache
    /// equals MongoDB and the history.
    pub async fn verify_quiescent(
        &self,
        config: &Config,
        mongo: &mongodb::Database,
        limit: Duration,
    ) -> Duration {
        let started = std::time::Instant::now();
        let accepted = self.accepted.lock().unwrap().clone();
        assert!(!accepted.is_empty(), "the load wrote nothing");
        let coll = mongo.collection::<Document>("signal");
        loop {
            let mut behind = Vec::new();
            for (name, (version, _)) in &accepted {
                let d = coll.find_one(key(name)).await.ok().flatten();
                let v = d.as_ref().and_then(doc_version);
                // `>=`: a submit whose reply was lost (Redis restart) may have
                // been accepted after all, with a newer version.
                if v.is_none_or(|v| v < *version) {
                    behind.push(format!("{name}: mongodb {v:?} want {version}"));
                    continue;
                }
                // The cache follows MongoDB by one step of the daemon's round
                // (the bulk, then the cache script): not yet is not wrong.
                // A failed read (Redis restarting) is behind too, not a panic.
                match super::try_cached(config, "signal", &key(name)).await {
                    Ok(c) if c.as_ref().map(|c| c.version) == v => {}
                    Ok(c) => {
                        let c = c.map(|c| c.version);
                        behind.push(format!("{name}: cache {c:?} behind mongodb {v:?}"));
                    }
                    Err(e) => behind.push(format!("{name}: cache read failed: {e}")),
                }
            }
            if behind.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "accepted writes not applied after {limit:?}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drained = started.elapsed();
        let mut stored_of: HashMap<String, (Version, i64)> = HashMap::new();
        for (name, (version, value)) in &accepted {
            let d = coll.find_one(key(name)).await.unwrap().unwrap();
            let stored = doc_version(&d).unwrap();
            let stored_value = d
                .get_document("payload")
                .ok()
                .and_then(|p| p.get_i64("value").ok())
                .unwrap_or(i64::MIN);
            stored_of.insert(name.clone(), (stored, stored_value));
            if stored == *version {
                assert_eq!(
                    d.get_document("payload").unwrap().get_i64("value").unwrap(),
                    *value,
                    "mongodb value of {name}"
                );
            }
            let cached = super::cached(config, "signal", &key(name)).await;
            let cached = cached.unwrap_or_else(|| panic!("cache lacks {name}"));
            assert_eq!(cached.version, stored, "cache version of {name}");
            assert_eq!(
                cached.doc.as_ref(),
                Some(&d),
                "cache equals mongodb for {name}"
            );
        }
        let bad = self.history.regressions();
        assert!(bad.is_empty(), "version regressions: {bad:?}");
        // Every acked write is at or below what MongoDB holds for its key
        // (compared with MongoDB, not with what the writers sent), and an
        // acked write that is the stored version has the stored value.
        for e in self.history.events() {
            if let Event::Acked {
                key: name,
                version,
                value,
                ..
            } = e
            {
                let (stored, stored_value) = stored_of.get(&name).copied().unwrap_or_else(|| {
                    panic!("acked {version} of {name}: mongodb holds no such key")
                });
                assert!(
                    stored >= version,
                    "acked {version} of {name} lost: mongodb holds {stored}"
                );
                if stored == version {
                    assert_eq!(
                        stored_value, value,
                        "acked {version} of {name}: mongodb holds another value"
                    );
                }
            }
        }
        drained
    }
}
