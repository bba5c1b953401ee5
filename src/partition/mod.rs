//! One partition's tenure, as one [`Partition`] value shared by its steps.
//!
//! The reader ([`crate::source::reader`]) pulls entries through the consumer
//! group (pending ones first, after a restart) and hands them to the
//! dispatcher, which keeps one queue per key, in id order ([`keys`]). The dispatcher
//! moves the ready keys in **rounds** ([`round`]): the next segment of up to
//! `batch_size` keys goes to MongoDB as one bulk, to the cache as one pipeline,
//! and is acked with one pipeline and one XACK. At most two rounds are in
//! flight, on disjoint keys. A round is formed only once it holds a slot of the
//! daemon-wide MongoDB limiter: while the server is busy, writes gather in the
//! queues, so a slow server gets fewer, larger bulks (and more coalescing)
//! instead of a queue of small ones formed too early. While keys wait so and a
//! batch's worth of entries is in flight, the reader, once caught up, reads no
//! more until they have gone: the writes gather in the stream, and come in
//! full reads (see [`crate::source::reader`]). A segment the bulk does
//! not settle goes to its key's own worker ([`key_worker`], the single path
//! with retries and dead-lettering), and the key waits for it. One key's writes
//! therefore run strictly one after another, in stream order. In-flight entries
//! are bounded, in number and in bytes, by permits that travel with the
//! entries until they are acked ([`crate::source::InFlight`]).

mod key_worker;
mod keys;
mod records;
mod round;

use std::collections::HashSet;
use std::sync::Arc;

use crate::redis_conn::Conn;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::ack::Acker;
use crate::apply::{Permit, Store};
use crate::cache::{Cache, Fence};
use crate::config::Config;
use crate::protocol::{self, Names, Write};
use crate::source::Item;
use keys::Keys;
use tracing::Instrument;

/// Entry bytes decoded between two yields of [`Dispatcher::admit`]: about a
/// millisecond of decoding.
const ADMIT_STEP: usize = 1 << 20;

/// How a part of the daemon stops the whole daemon, and says why (the
/// error `writ serve` then returns).
#[derive(Clone)]
pub struct Halt {
    daemon: tokio_util::sync::CancellationToken,
    why: Arc<std::sync::Mutex<Option<crate::error::Error>>>,
}

impl Halt {
    /// Stops through `daemon` (the daemon's shutdown).
    pub fn new(daemon: tokio_util::sync::CancellationToken) -> Halt {
        Halt {
            daemon,
            why: Default::default(),
        }
    }

    /// Stops the daemon (its partitions drain and go to the others); the
    /// first reason given is the one returned.
    pub fn stop(&self, why: crate::error::Error) {
        if let Ok(mut w) = self.why.lock() {
            w.get_or_insert(why);
        }
        self.daemon.cancel();
    }

    /// The reason, once stopped.
    pub fn why(&self) -> Option<crate::error::Error> {
        self.why.lock().ok().and_then(|mut w| w.take())
    }
}

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
    pub conn: Conn,
    /// The daemon's standing against the namespace's partition count.
    pub standing: crate::partition_count::Standing,
    /// Stops the daemon (a changed partition count).
    pub halt: Halt,
}

pub use crate::ownership::PartitionRun;

/// One tenure of one partition: what every step of it needs, in one value
/// (shared by the dispatcher, its rounds and its keys' workers).
pub(crate) struct Partition {
    /// The partition number.
    pub p: u32,
    /// What every partition shares.
    pub ctx: Arc<Ctx>,
    /// This tenure's lease and stop signals.
    pub run: Arc<PartitionRun>,
    /// Where its acks go (and its stream's name).
    pub acker: Acker,
}

impl Partition {
    /// Whether this tenure may still apply: not aborted, and the lease surely
    /// ours by the local clock. If not, aborts the tenure (what is left stays
    /// pending for the next owner).
    fn still_owner(&self) -> bool {
        if self.run.abort.is_cancelled() || !self.run.lease.valid() {
            self.run.abort.cancel();
            return false;
        }
        true
    }

    /// The fence every cache write of this tenure carries.
    fn fence(&self) -> Fence {
        Fence {
            partition: self.p,
            key: self.ctx.names.fence(self.p),
            token: self.run.lease.token,
        }
    }
}

/// A decoded entry ready for its key's worker.
pub(crate) struct Job {
    id: protocol::Version,
    write: Write,
    fields: crate::stream::Fields,
    _permit: crate::source::InFlight,
}

type KeyId = (String, String);

/// What a finished task of the partition hands back.
enum Done {
    /// A round over these keys, and how it ended.
    Round(Vec<KeyId>, round::RoundEnd),
    /// A key's own worker finished; whether the last write it settled was
    /// refused for good.
    Key(KeyId, bool),
    /// An entry refused at decode was dead-lettered (or its tenure ended).
    Parked,
}

/// Rounds of one partition at once: one at MongoDB while the next is
/// prepared (their keys are disjoint: a key with a write in flight waits).
const ROUNDS_IN_FLIGHT: usize = 2;

/// Runs partition `p` until `run.stop_reading` fires and its in-flight work is
/// drained, or `run.abort` fires. Everything it logs carries the tenure's
/// span (`partition`, `token`).
pub async fn run_partition(p: u32, ctx: Arc<Ctx>, run: Arc<PartitionRun>) {
    let span = tracing::info_span!("tenure", partition = p, token = run.lease.token);
    // The partition-count copy, and partition 0's database record.
    records::write(&ctx, p, &run).instrument(span.clone()).await;
    let stream = ctx.names.stream(p);
    let acker = Acker::new(
        ctx.conn.clone(),
        ctx.names.clone(),
        stream,
        ctx.config.partitions,
        run.abort.clone(),
        crate::redis_conn::Replication::of(&ctx.config),
    );
    let permits = Arc::new(Semaphore::new(ctx.config.max_in_flight));
    let part = Arc::new(Partition { p, ctx, run, acker });
    Dispatcher {
        round_max: part.ctx.config.batch_size,
        bytes: crate::source::ByteBudget::new(part.ctx.config.max_in_flight_bytes),
        part,
        permits,
        keys: Keys::default(),
        running: JoinSet::new(),
        rounds: 0,
        aborted: false,
        slot: None,
    }
    .run()
    .instrument(span)
    .await
}

/// One tenure's dispatcher: admits what the reader delivers into per-key
/// queues and starts rounds and key workers on disjoint keys.
struct Dispatcher {
    part: Arc<Partition>,
    permits: Arc<Semaphore>,
    /// Entry bytes in flight (`daemon.max_in_flight_bytes`).
    bytes: Arc<crate::source::ByteBudget>,
    keys: Keys,
    running: JoinSet<Done>,
    rounds: usize,
    /// Writes per round: halved when a whole bulk fails (a bulk too large to
    /// finish within the server-side time limit), grown back on success.
    round_max: usize,
    aborted: bool,
    /// The wait for a limiter slot for the next round, if one is wanted.
    slot: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Permit> + Send>>>,
}

impl Dispatcher {
    async fn run(mut self) {
        let part = self.part.clone();
        let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
        let (hold, held) = watch::channel(false);
        let reader = tokio::spawn(
            crate::source::reader::run(
                part.p,
                part.ctx.config.clone(),
                part.ctx.names.clone(),
                part.run.clone(),
                crate::source::reader::Bounds {
                    permits: self.permits.clone(),
                    bytes: self.bytes.clone(),
                },
                held,
                tx,
            )
            .in_current_span(),
        );
        let label = part.p.to_string();
        let mut reading = true;
        loop {
            self.start_rounds();
            let in_flight = part.ctx.config.max_in_flight - self.permits.available_permits();
            // Under a backlog (a batch's worth of entries read and not yet
            // acked) with keys waiting for the next round, a caught-up reader
            // waits for those keys to go before it reads again, then reads
            // what gathered meanwhile at once, instead of a few entries at a
            // time. Below that (a closed loop of fewer than about half a
            // batch of writers, waiting for their acks: an acked entry's
            // permit is freed a moment after its ack) it reads at once, so a
            // write that comes while a round is at MongoDB still joins the
            // next round.
            let held = !self.keys.ready.is_empty() && in_flight >= part.ctx.config.batch_size;
            hold.send_if_modified(|h| std::mem::replace(h, held) != held);
            metrics::gauge!("writ_inflight_entries", "partition" => label.clone())
                .set(in_flight as f64);
            metrics::gauge!("writ_inflight_bytes", "partition" => label.clone())
                .set(self.bytes.used() as f64);
            tokio::select! {
                batch = rx.recv(), if reading => match batch {
                    Some(items) => self.admit(items).await,
                    None => reading = false,
                },
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    self.finished(done);
                }
                permit = async { self.slot.as_mut().expect("guarded").await }, if self.slot.is_some() => {
                    self.slot = None;
                    self.start_round(permit);
                }
                _ = part.run.abort.cancelled(), if !self.aborted && (reading || !self.running.is_empty() || self.slot.is_some()) => {
                    self.aborted = true;
                    // No round starts after an abort: the wait for a
                    // limiter slot ends here, not when another partition's
                    // operation frees one (up to op_timeout later, with this
                    // lease still renewed and the next owner kept waiting).
                    self.slot = None;
                    part.run.stop_reading.cancel();
                    tracing::warn!("partition aborted; unfinished entries stay pending for the next owner");
                }
                else => break,
            }
        }
        let _ = reader.await;
        metrics::gauge!("writ_inflight_entries", "partition" => label.clone()).set(0.0);
        metrics::gauge!("writ_inflight_bytes", "partition" => label).set(0.0);
        if self.aborted {
            tracing::info!("partition stopped after its abort; what it had not finished stays pending for the next owner");
        } else {
            tracing::info!("partition drained");
        }
    }

    /// Asks for a limiter slot when a round could start (ready keys, fewer
    /// than [`ROUNDS_IN_FLIGHT`] rounds): the round itself is formed when
    /// the slot comes ([`Dispatcher::start_round`]).
    fn start_rounds(&mut self) {
        if self.aborted
            || self.slot.is_some()
            || self.rounds >= ROUNDS_IN_FLIGHT
            || self.keys.ready.is_empty()
        {
            return;
        }
        let limiter = self.part.ctx.store.limiter().clone();
        self.slot = Some(Box::pin(async move { limiter.acquire().await }));
    }

    /// Forms a round of what is ready now and starts it with `permit`.
    fn start_round(&mut self, permit: Permit) {
        if self.aborted {
            return;
        }
        let segs = self.keys.take_round(&self.part.ctx.config, self.round_max);
        if segs.is_empty() {
            return; // the permit is dropped: the slot is freed
        }
        self.rounds += 1;
        let ids: Vec<KeyId> = segs.iter().map(|s| s.id.clone()).collect();
        let part = self.part.clone();
        self.running.spawn(
            async move { Done::Round(ids, round::run_round(&part, segs, permit).await) }
                .in_current_span(),
        );
    }

    /// Decodes a read's entries into jobs. A read can hold up to
    /// `daemon.max_in_flight_bytes` of entries, tens of milliseconds of
    /// decoding: it gives way to the other tasks after each [`ADMIT_STEP`]
    /// bytes, so the lease renewals (on the same threads, one by default)
    /// never wait for a whole read of every partition.
    async fn admit(&mut self, items: Vec<Item>) {
        metrics::histogram!("writ_batch_entries").record(items.len() as f64);
        let mut since_yield = 0;
        for item in items {
            if self.aborted {
                return; // left pending for the next owner
            }
            since_yield += item.entry.bytes();
            if since_yield >= ADMIT_STEP {
                since_yield = 0;
                tokio::task::yield_now().await;
                if self.part.run.abort.is_cancelled() {
                    return; // the abort arm runs next; the rest stays pending
                }
            }
            match key_worker::admit(&self.part, item) {
                Ok(job) => self.keys.push(job),
                Err(refused) => {
                    let part = self.part.clone();
                    self.running.spawn(
                        async move {
                            key_worker::park_refused(part, refused).await;
                            Done::Parked
                        }
                        .in_current_span(),
                    );
                }
            }
        }
    }

    fn finished(&mut self, done: Result<Done, tokio::task::JoinError>) {
        match done {
            Ok(Done::Round(ids, end)) => self.round_finished(ids, end),
            Ok(Done::Key(id, refused)) => self.keys.release_worked(id, refused),
            Ok(Done::Parked) => {}
            Err(e) => {
                // Its keys' later jobs must not run ahead of the lost ones:
                // stop the partition; the next tenure re-reads everything
                // pending, in order.
                tracing::error!(error = %e, "a partition task panicked; aborting the partition so its entries are re-applied in order");
                self.part.run.abort.cancel();
            }
        }
    }

    fn round_finished(&mut self, ids: Vec<KeyId>, end: round::RoundEnd) {
        self.rounds -= 1;
        let max = self.part.ctx.config.batch_size;
        self.round_max = if end.bulk_failed {
            (self.round_max / 2).max(1)
        } else {
            (self.round_max + self.round_max / 4 + 1).min(max)
        };
        // A failed bulk is not the writes' fault: they go back for the next,
        // smaller round (rounds under 4 writes apply write by write, so a
        // failure that persists ends on each key's own worker), unless a
        // segment failed a round before too while MongoDB answered other
        // operations on its collection (`Keys::failed_again`). Otherwise the segments the bulk did not
        // settle go to their keys' own workers.
        let requeue = end.bulk_failed && !self.aborted;
        let mut held = HashSet::new();
        for seg in end.single {
            if !requeue && self.aborted {
                break;
            }
            held.insert(seg.id.clone());
            let answered = self.part.ctx.store.answers(&seg.id.0).answered;
            if requeue && !self.keys.failed_again(&seg.id, answered) {
                self.keys.requeue(seg);
            } else {
                let part = self.part.clone();
                let refused = self.keys.was_refused(&seg.id);
                self.running.spawn(
                    async move {
                        let refused = key_worker::run_key(&part, seg.jobs, refused).await;
                        Done::Key(seg.id, refused)
                    }
                    .in_current_span(),
                );
            }
        }
        // The round settled these keys' writes (applied or stale): a key
        // refused earlier has applied again.
        for id in ids.into_iter().filter(|id| !held.contains(id)) {
            self.keys.release_worked(id, false);
        }
    }
}
