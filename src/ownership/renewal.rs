//! Lease renewals and the membership heartbeat, each on a task of its own,
//! all at one tick every quarter of the lease TTL. At a tick every renewal
//! goes out at once, on the shared connection, so with `appendfsync always`
//! Redis syncs its AOF once for them all rather than once per lease; and
//! since no renewal waits for another, nor for the ownership loop's other
//! calls, a Redis Cluster master that stops answering costs only the leases
//! it holds. Each renewal waits as long as its lease is still surely this
//! daemon's (a quarter of the TTL at least): a slow Redis that still answers
//! keeps the lease, as before session 47, when all of this ran in the
//! ownership loop, one call after another (`tests/lease_stall.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::members::Members;
use super::{Leases, PartitionRun};
use crate::error::Error;
use crate::redis_conn::Conn;
use crate::telemetry::Event;

/// The partitions whose last renewal failed, with its error.
pub(super) type Failing = Arc<Mutex<BTreeMap<u32, String>>>;

/// Ticks every `every` until every receiver is gone.
pub(super) fn ticker(every: Duration) -> (watch::Receiver<u64>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(0u64);
    let task = tokio::spawn(async move {
        let mut at = Instant::now();
        loop {
            at += every;
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = tx.closed() => return,
            }
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    });
    (rx, task)
}

/// A receiver of `tick` that waits for the next tick, not the past ones.
fn next_ticks(tick: &watch::Receiver<u64>) -> watch::Receiver<u64> {
    let mut rx = tick.clone();
    rx.borrow_and_update();
    rx
}

/// One tenure's renewals.
pub(super) struct Renewer {
    pub leases: Leases,
    pub partition: u32,
    pub run: Arc<PartitionRun>,
    pub failing: Failing,
    pub ttl: Duration,
}

impl Renewer {
    /// Renews the lease at every tick until the task is aborted (its tenure
    /// ended). A lost lease aborts the tenure; an aborted tenure is still
    /// renewed until it ends, and then released if the lease is still this
    /// daemon's.
    pub(super) fn spawn(self, tick: &watch::Receiver<u64>) -> JoinHandle<()> {
        let mut tick = next_ticks(tick);
        tokio::spawn(async move {
            // However the task ends (aborted with its tenure), its partition
            // leaves the failing ones, after any insert of its last poll.
            let _clear = Clear(self.failing.clone(), self.partition);
            // Its lease was found lost (reported once).
            let mut lost = false;
            while tick.changed().await.is_ok() {
                self.renew_once(&mut lost).await;
            }
        })
    }

    async fn renew_once(&self, lost: &mut bool) {
        let bound = self.run.lease.left().max(self.ttl / 4);
        let renewed = tokio::time::timeout(bound, self.leases.renew(&self.run.lease))
            .await
            .unwrap_or(Err(Error::Timeout {
                after: bound,
                what: "a lease renewal",
                accepted: None,
            }));
        let p = self.partition;
        match renewed {
            Ok(true) => {
                self.failing.lock().expect("lock").remove(&p);
            }
            Ok(false) => {
                self.failing.lock().expect("lock").remove(&p);
                if !std::mem::replace(lost, true) {
                    Event::LeaseLost { partition: p }.emit();
                }
                self.run.abort.cancel();
            }
            Err(e) => {
                self.failing.lock().expect("lock").insert(p, e.to_string());
            }
        }
    }
}

/// Takes a partition out of the failing ones when dropped.
struct Clear(Failing, u32);

impl Drop for Clear {
    fn drop(&mut self) {
        if let Ok(mut failing) = self.0.lock() {
            failing.remove(&self.1);
        }
    }
}

/// Heartbeats at every tick (each within `bound`) until `stop` (looked at
/// first): the first heartbeat went out before the ownership loop's first
/// count.
pub(super) fn heartbeats(
    members: Arc<Members>,
    conn: Conn,
    tick: &watch::Receiver<u64>,
    bound: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut tick = next_ticks(tick);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = tick.changed() => if r.is_err() { return },
            }
            if tokio::time::timeout(bound, members.heartbeat(&conn))
                .await
                .is_err()
            {
                tracing::debug!(
                    "the membership heartbeat did not answer in time; the next tick sends another"
                );
            }
        }
    })
}
