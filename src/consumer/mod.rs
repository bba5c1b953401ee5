//! The partition consumer: one task per partition stream.
//!
//! A reader task pulls entries through the consumer group (pending ones first,
//! after a restart) and hands them to the dispatcher, which keeps one FIFO
//! queue per key. The dispatcher moves the ready keys in **rounds**
//! ([`batch`]): the next segment of up to `batch_size` keys goes to MongoDB as
//! one bulk, to the cache as one pipeline, and is acked with one pipeline and
//! one XACK. At most two rounds are in flight, on disjoint keys. A segment the
//! bulk does not settle goes to its key's own worker ([`worker`], the single
//! path with retries and dead-lettering), and the key waits for it. One key's
//! writes therefore run strictly one after another, in stream order. In-flight
//! entries are bounded by a semaphore whose permits travel with the entries
//! until they are acked.

mod batch;
mod reader;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::apply::Store;
use crate::cache::Cache;
use crate::config::Config;
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

pub use crate::ownership::PartitionRun;

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

/// What a finished task of the partition hands back.
enum Done {
    /// A round over these keys, and how it ended.
    Round(Vec<KeyId>, batch::RoundEnd),
    /// A key's own worker finished.
    Key(KeyId),
}

/// Rounds of one partition at once: one at MongoDB while the next is
/// prepared (their keys are disjoint: a key with a write in flight waits).
const ROUNDS_IN_FLIGHT: usize = 2;

/// The dispatcher's state: per-key FIFO queues, the keys with work in
/// flight, and the keys ready for the next round.
#[derive(Default)]
struct Keys {
    queues: HashMap<KeyId, VecDeque<Job>>,
    busy: HashSet<KeyId>,
    ready: VecDeque<KeyId>,
}

impl Keys {
    fn push(&mut self, job: Job) {
        let id = (job.write.collection.clone(), job.write.key.canonical());
        let q = self.queues.entry(id.clone()).or_default();
        q.push_back(job);
        if q.len() == 1 && !self.busy.contains(&id) {
            self.ready.push_back(id);
        }
    }

    /// Marks `id` idle again; it is ready if it has queued work.
    fn release(&mut self, id: KeyId) {
        self.busy.remove(&id);
        if self.queues.get(&id).is_some_and(|q| !q.is_empty()) {
            self.ready.push_back(id);
        } else {
            self.queues.remove(&id);
        }
    }

    /// Puts a segment back at the head of its key's queue (its bulk failed
    /// as a whole); the key is ready again, for a smaller round.
    fn requeue(&mut self, seg: batch::Segment) {
        let q = self.queues.entry(seg.id.clone()).or_default();
        for job in seg.jobs.into_iter().rev() {
            q.push_front(job);
        }
        self.busy.remove(&seg.id);
        self.ready.push_back(seg.id);
    }

    /// The next segment of up to `max` ready keys, marking them busy.
    fn take_round(&mut self, config: &Config, max: usize) -> Vec<batch::Segment> {
        let mut segs = Vec::new();
        while segs.len() < max {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if self.busy.contains(&id) {
                continue;
            }
            let Some(q) = self.queues.get_mut(&id) else {
                continue;
            };
            let Some(first) = q.pop_front() else { continue };
            let coalesce = first.write.op == protocol::Op::Put
                && config
                    .collection(&id.0)
                    .is_some_and(|c| c.mode == crate::config::WriteMode::Replace);
            let mut jobs = vec![first];
            while coalesce && q.front().is_some_and(|j| j.write.op == protocol::Op::Put) {
                jobs.push(q.pop_front().expect("front exists"));
            }
            self.busy.insert(id.clone());
            segs.push(batch::Segment { id, jobs });
        }
        segs
    }
}

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
    let mut keys = Keys::default();
    let mut running: JoinSet<Done> = JoinSet::new();
    let mut rounds = 0usize;
    // Writes per round: halved when a whole bulk fails (a bulk too large to
    // finish within the server-side time limit), grown back on success.
    let mut round_max = ctx.config.batch_size;
    let mut reading = true;
    let mut aborted = false;
    loop {
        while !aborted && rounds < ROUNDS_IN_FLIGHT && !keys.ready.is_empty() {
            let segs = keys.take_round(&ctx.config, round_max);
            if segs.is_empty() {
                break;
            }
            rounds += 1;
            let ids: Vec<KeyId> = segs.iter().map(|s| s.id.clone()).collect();
            let (ctx, run, stream) = (ctx.clone(), run.clone(), stream.clone());
            running.spawn(async move {
                let end = batch::run_round(&ctx, &run, p, &stream, segs).await;
                Done::Round(ids, end)
            });
        }
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
                            keys.push(job);
                        }
                    }
                }
                None => reading = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok(Done::Round(ids, end)) => {
                        rounds -= 1;
                        round_max = if end.bulk_failed {
                            (round_max / 2).max(1)
                        } else {
                            (round_max + round_max / 4 + 1).min(ctx.config.batch_size)
                        };
                        let mut held = HashSet::new();
                        if end.bulk_failed && !aborted {
                            // Not the writes' fault: they go back for the
                            // next, smaller round. Rounds under 4 writes apply
                            // write by write, so a failure that persists ends
                            // on each key's own worker, with its retries.
                            for seg in end.single {
                                held.insert(seg.id.clone());
                                keys.requeue(seg);
                            }
                            for id in ids.into_iter().filter(|id| !held.contains(id)) {
                                keys.release(id);
                            }
                            continue;
                        }
                        for seg in end.single {
                            if aborted {
                                break;
                            }
                            held.insert(seg.id.clone());
                            let (ctx, run, stream) = (ctx.clone(), run.clone(), stream.clone());
                            running.spawn(async move {
                                worker::run_key(&ctx, &run, p, &stream, seg.jobs).await;
                                Done::Key(seg.id)
                            });
                        }
                        for id in ids.into_iter().filter(|id| !held.contains(id)) {
                            keys.release(id);
                        }
                    }
                    Ok(Done::Key(id)) => keys.release(id),
                    Err(e) => {
                        // Its keys' later jobs must not run ahead of the lost
                        // ones: stop the partition; the next tenure re-reads
                        // everything pending, in order.
                        tracing::error!(partition = p, error = %e, "a partition task panicked; aborting the partition so its entries are re-applied in order");
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
