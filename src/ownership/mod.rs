//! Partition ownership: which daemon applies which partition.
//!
//! Every daemon heartbeats into `<ns>:members` and aims for an even share,
//! `ceil(partitions / live members)`. Each tick it renews its leases, hands
//! over partitions above its share (stop reading, drain, release), and takes
//! free partitions below it. A new tenure first re-applies the partition's
//! pending entries (XAUTOCLAIM) before reading new ones, so a crashed owner's
//! work is finished in order. A lost lease aborts the partition at once.

mod lease;

pub use lease::{fence_key, lease_key, Lease, Leases};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::{run_partition, Ctx, PartitionRun};

struct Tenure {
    run: Arc<PartitionRun>,
    handle: JoinHandle<()>,
    handing_over: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Owns partitions until `shutdown`, then drains them (bounded by the
/// shutdown deadline) and releases the leases.
pub async fn run(ctx: Arc<Ctx>, leases: Leases, shutdown: CancellationToken) {
    let cfg = ctx.config.clone();
    let members_key = format!("{}:members", cfg.namespace);
    let me = cfg.consumer_name.clone();
    let tick = (cfg.lease_ttl / 3).max(Duration::from_millis(100));
    let mut owned: BTreeMap<u32, Tenure> = BTreeMap::new();
    loop {
        // Membership: who is alive decides each daemon's share.
        let mut conn = ctx.conn.clone();
        let now = now_ms();
        let members: Option<u64> = redis::pipe()
            .cmd("ZADD")
            .arg(&members_key)
            .arg(now)
            .arg(&me)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&members_key)
            .arg("-inf")
            .arg(now.saturating_sub(cfg.lease_ttl.as_millis() as u64))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&members_key)
            .arg(cfg.lease_ttl.as_millis() as u64 * 3)
            .ignore()
            .cmd("ZCARD")
            .arg(&members_key)
            .query_async::<(u64,)>(&mut conn)
            .await
            .ok()
            .map(|(n,)| n.max(1));
        let share = members
            .map(|n| cfg.partitions.div_ceil(n as u32))
            .unwrap_or(cfg.partitions);

        // Tenures that ended: handed over, aborted, or failed.
        let ended: Vec<u32> = owned
            .iter()
            .filter(|(_, t)| t.handle.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            let t = owned.remove(&p).expect("listed");
            if t.handing_over || t.run.lease.valid() {
                let _ = leases.release(p).await;
                metrics::counter!("writ_lease_released_total", "partition" => p.to_string())
                    .increment(1);
            }
            crate::telemetry::clear_partition(p);
            tracing::info!(partition = p, "partition tenure ended");
        }

        // Renew what we hold.
        for (p, t) in &owned {
            match leases.renew(&t.run.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(partition = p, "lost the partition lease; aborting it");
                    metrics::counter!("writ_lease_lost_total", "partition" => p.to_string())
                        .increment(1);
                    t.run.abort.cancel();
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot renew the lease; the partition stops when it expires")
                }
            }
        }

        // Hand over above our share, one partition per tick.
        let active = owned.values().filter(|t| !t.handing_over).count() as u32;
        if active > share {
            if let Some((p, t)) = owned.iter_mut().rev().find(|(_, t)| !t.handing_over) {
                tracing::info!(
                    partition = p,
                    share,
                    "handing the partition over to balance the daemons"
                );
                t.handing_over = true;
                t.run.stop_reading.cancel();
            }
        }

        // Take free partitions up to our share.
        let mut active = owned.values().filter(|t| !t.handing_over).count() as u32;
        if members.is_some() {
            for p in 0..cfg.partitions {
                if active >= share || shutdown.is_cancelled() {
                    break;
                }
                if owned.contains_key(&p) {
                    continue;
                }
                match leases.try_acquire(p).await {
                    Ok(Some(lease)) => {
                        tracing::info!(
                            partition = p,
                            token = lease.token,
                            "took the partition lease"
                        );
                        metrics::counter!("writ_lease_acquired_total", "partition" => p.to_string()).increment(1);
                        metrics::gauge!("writ_partition_owned", "partition" => p.to_string())
                            .set(1.0);
                        let run = Arc::new(PartitionRun {
                            stop_reading: shutdown.child_token(),
                            abort: CancellationToken::new(),
                            lease: Arc::new(lease),
                        });
                        let handle = tokio::spawn(run_partition(p, ctx.clone(), run.clone()));
                        owned.insert(
                            p,
                            Tenure {
                                run,
                                handle,
                                handing_over: false,
                            },
                        );
                        active += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take partition leases (redis)");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    drain(owned, &leases, &ctx, tick).await;
    let mut conn = ctx.conn.clone();
    let _: redis::RedisResult<()> = redis::cmd("ZREM")
        .arg(&members_key)
        .arg(&me)
        .query_async(&mut conn)
        .await;
}

/// Stops reading everywhere, keeps renewing while in-flight work drains, and
/// releases the leases; aborts what is left at the deadline.
async fn drain(mut owned: BTreeMap<u32, Tenure>, leases: &Leases, ctx: &Ctx, tick: Duration) {
    for t in owned.values() {
        t.run.stop_reading.cancel();
    }
    let deadline = tokio::time::Instant::now() + ctx.config.shutdown_deadline;
    let mut renewed = tokio::time::Instant::now();
    while !owned.values().all(|t| t.handle.is_finished()) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("shutdown deadline passed; abandoning what is left (it stays pending for the next owner)");
            for t in owned.values() {
                t.run.abort.cancel();
            }
            break;
        }
        if renewed.elapsed() >= tick {
            renewed = tokio::time::Instant::now();
            for t in owned.values() {
                let _ = leases.renew(&t.run.lease).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Join every tenure at once: a stuck one costs its 2 s grace once, not
    // once per partition.
    let joins = std::mem::take(&mut owned)
        .into_iter()
        .map(|(p, t)| async move {
            crate::telemetry::clear_partition(p);
            let stopped = tokio::time::timeout(Duration::from_secs(2), t.handle)
                .await
                .is_ok();
            (p, stopped)
        });
    for (p, stopped) in futures::future::join_all(joins).await {
        if !stopped {
            // Still inside a call: keep the lease so nobody else applies the
            // partition meanwhile; it expires by itself within the TTL.
            tracing::warn!(
                partition = p,
                "partition did not stop in time; leaving its lease to expire"
            );
            continue;
        }
        let _ = leases.release(p).await;
        metrics::counter!("writ_lease_released_total", "partition" => p.to_string()).increment(1);
    }
}
