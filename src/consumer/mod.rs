//! The partition consumer: one task per partition stream.
//!
//! A reader task pulls entries through the consumer group (pending ones first,
//! after a restart) and hands them to the dispatcher, which keeps one FIFO
//! queue per key. Different keys run concurrently; one key's writes run
//! strictly one after another, in stream order. In-flight entries are bounded
//! by a semaphore whose permits travel with the entries until they are acked.

mod reader;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apply::Store;
use crate::cache::Cache;
use crate::config::Config;
use crate::ownership::Lease;
use crate::protocol::{self, Names, Write};
use crate::stream::Entry;

/// What every partition task shares.
pub struct Ctx {
    /// The validated config.
    pub config: Arc<Config>,
    /// Key names.
    pub names: Names,
    /// MongoDB.
    pub store: Store,
    /// The cache.
    pub cache: Cache,
    /// Shared connection for acks, XACK and dead letters.
    pub conn: ConnectionManager,
}

/// One tenure of one partition: its lease and its stop signals.
pub struct PartitionRun {
    /// Fired on shutdown or hand-over: stop reading, drain what is in flight.
    pub stop_reading: CancellationToken,
    /// Fired at the shutdown deadline or when the lease is lost: apply nothing
    /// more, leave the rest pending for the next owner.
    pub abort: CancellationToken,
    /// The lease this tenure holds.
    pub lease: Arc<Lease>,
}

/// An entry read from a partition, holding its in-flight permit.
pub(crate) struct Item {
    entry: Entry,
    _permit: OwnedSemaphorePermit,
}

/// A decoded entry ready for its key's worker.
pub(crate) struct Job {
    id: protocol::Version,
    write: Write,
    fields: crate::stream::Fields,
    _permit: OwnedSemaphorePermit,
}

type KeyId = (String, String);

/// Runs partition `p` until `run.stop_reading` fires and its in-flight work is
/// drained, or `run.abort` fires.
pub async fn run_partition(p: u32, ctx: Arc<Ctx>, run: Arc<PartitionRun>) {
    let stream = ctx.names.stream(p);
    let permits = Arc::new(Semaphore::new(ctx.config.max_in_flight));
    let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
    let reader = tokio::spawn(reader::run(
        p,
        ctx.clone(),
        run.clone(),
        permits.clone(),
        tx,
    ));
    let label = p.to_string();
    let mut queues: HashMap<KeyId, VecDeque<Job>> = HashMap::new();
    let mut running: JoinSet<KeyId> = JoinSet::new();
    let mut reading = true;
    let mut aborted = false;
    loop {
        metrics::gauge!("writ_inflight_entries", "partition" => label.clone())
            .set((ctx.config.max_in_flight - permits.available_permits()) as f64);
        tokio::select! {
            batch = rx.recv(), if reading => match batch {
                Some(items) => {
                    metrics::histogram!("writ_batch_entries").record(items.len() as f64);
                    for item in items {
                        if aborted {
                            break; // left pending for the next owner
                        }
                        if let Some(job) = worker::admit(&ctx, &run, p, &stream, item).await {
                            let id = (job.write.collection.clone(), job.write.key.canonical());
                            let idle = !queues.contains_key(&id);
                            queues.entry(id.clone()).or_default().push_back(job);
                            if idle {
                                spawn_key(&mut running, &mut queues, id, &ctx, &run, p, &stream);
                            }
                        }
                    }
                }
                None => reading = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok(id) => {
                        if !aborted && queues.get(&id).is_some_and(|q| !q.is_empty()) {
                            spawn_key(&mut running, &mut queues, id, &ctx, &run, p, &stream);
                        } else {
                            queues.remove(&id);
                        }
                    }
                    Err(e) => {
                        // Its key's later jobs must not run ahead of the lost
                        // ones: stop the partition; the next tenure re-reads
                        // everything pending, in order.
                        tracing::error!(partition = p, error = %e, "key worker panicked; aborting the partition so its entries are re-applied in order");
                        run.abort.cancel();
                    }
                }
            }
            _ = run.abort.cancelled(), if !aborted && (reading || !running.is_empty()) => {
                aborted = true;
                run.stop_reading.cancel();
                tracing::warn!(partition = p, "partition aborted; unfinished entries stay pending for the next owner");
            }
            else => break,
        }
    }
    let _ = reader.await;
    metrics::gauge!("writ_inflight_entries", "partition" => label).set(0.0);
    tracing::info!(partition = p, "partition drained");
}

/// Marks `id` running with everything queued for it so far. The queue entry
/// stays (empty) while the worker runs, so new jobs for the key wait.
fn spawn_key(
    running: &mut JoinSet<KeyId>,
    queues: &mut HashMap<KeyId, VecDeque<Job>>,
    id: KeyId,
    ctx: &Arc<Ctx>,
    run: &Arc<PartitionRun>,
    p: u32,
    stream: &str,
) {
    let jobs: Vec<Job> = queues
        .get_mut(&id)
        .map(|q| q.drain(..).collect())
        .unwrap_or_default();
    let ctx = ctx.clone();
    let run = run.clone();
    let stream = stream.to_string();
    running.spawn(async move {
        worker::run_key(&ctx, &run, p, &stream, jobs).await;
        id
    });
}
