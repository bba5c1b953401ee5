//! The partition reader: claims pending entries left by earlier consumers,
//! then reads new ones, never holding more than the in-flight bound.
//!
//! Every group read and claim is fenced ([`crate::source`]). Waiting for new
//! entries uses a plain `XREAD BLOCK`, which delivers nothing.
//!
//! Entry bytes in flight are bounded too (`daemon.max_in_flight_bytes`): a
//! read waits for free bytes, and the read script takes entries in steps
//! sized by the largest it has seen (the first by the largest of the last
//! read), returning no more than fit (at least one; the rest stay pending,
//! claimed next). So a backlog of large documents is read a few at a time,
//! and no read script holds Redis, or the daemon's memory, for long.
//!
//! Once it has caught up with the stream, the reader also holds back while
//! its dispatcher says so (`hold`): while keys already read wait for the next
//! round, reading more would only move entries from the stream into memory a
//! few at a time, each read a script run in Redis. Held, new entries gather
//! in the stream and come in larger reads once those keys have gone. A
//! reader that is behind (its reads come back full) never holds back.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};

use super::{ByteBudget, FencedReader, Item};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::ownership::PartitionRun;
use crate::protocol::Names;
use crate::stream::Entry;

/// The bounds a tenure's reader reads under: entry slots and entry bytes.
pub(crate) struct Bounds {
    /// One permit per entry in flight (`daemon.max_in_flight`).
    pub permits: Arc<Semaphore>,
    /// Entry bytes in flight (`daemon.max_in_flight_bytes`).
    pub bytes: Arc<ByteBudget>,
}

/// Reads partition `p` for one tenure into `tx`, holding a permit of
/// `bounds` per entry, until `run.stop_reading` (or a fence refusal). Once
/// caught up with the stream, it waits for new entries only when `hold` is
/// `false`.
pub(crate) async fn run(
    p: u32,
    config: Arc<Config>,
    names: Names,
    run: Arc<PartitionRun>,
    bounds: Bounds,
    mut hold: watch::Receiver<bool>,
    tx: mpsc::Sender<Vec<Item>>,
) {
    let mut backoff = Backoff::new(config.backoff_cap);
    // A connection that cannot be opened (Redis at its `maxclients`, no file
    // descriptors left) is retried within the tenure, after a backoff: a
    // reader that gave up would end the tenure, and the ownership pass would
    // take the partition again at once, over and over, with no backoff.
    let conn = loop {
        let attempt = tokio::select! {
            c = crate::redis_conn::connect(&config, config.block) => c,
            _ = run.stop_reading.cancelled() => return,
        };
        match attempt {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "the partition's reader cannot connect to redis; retrying");
                if !backoff.sleep(&run.stop_reading).await {
                    return;
                }
            }
        }
    };
    let mut reader = Reader {
        p,
        stream: names.stream(p),
        fence: names.fence(p),
        group: names.group(),
        fenced: FencedReader::new(&names, p, &config.consumer_name, run.lease.token),
        conn,
        backoff: Backoff::new(config.backoff_cap),
        // First, everything pending in the group (earlier runs, crashed
        // daemons), in id order, before any new entry: that keeps per-key
        // order.
        cursor: Some("0-0".to_string()),
        received: None,
        kept_back: false,
        pruned: false,
        config,
        run,
    };
    while reader.step(&bounds, &mut hold, &tx).await {}
}

/// What one read or claim brought.
struct Next {
    /// The entries, in id order.
    entries: Vec<Entry>,
    /// Set when the stream holds nothing after this id (the read delivered
    /// everything there was): the reader waits for a newer entry before it
    /// reads again, instead of spending a read to learn that nothing came.
    wait_after: Option<String>,
}

/// One tenure's reading state.
struct Reader {
    p: u32,
    config: Arc<Config>,
    run: Arc<PartitionRun>,
    stream: String,
    /// The partition's fencing counter (for [`super::prune`]).
    fence: String,
    group: String,
    fenced: FencedReader,
    conn: crate::redis_conn::Conn,
    backoff: Backoff,
    /// Where the claim of pending entries goes on; `None` once they are all
    /// claimed and new entries are read.
    cursor: Option<String>,
    /// The group's last-delivered-id as far as this reader received it;
    /// `None` until the first read after a claim.
    received: Option<String>,
    /// The claims going on are of entries a read kept back (past its bytes),
    /// not of an earlier owner's: nothing to report.
    kept_back: bool,
    /// Whether this tenure removed earlier daemons' consumers ([`super::prune`]).
    pruned: bool,
}

impl Reader {
    /// The next entries: claimed pending ones first, then new ones. A read
    /// that delivered fewer than `count` entries delivered all there were
    /// (the script is atomic, and only this tenure reads the group), so it
    /// says to wait after its last entry, as an empty read says to wait after
    /// the stream's last id. Reads and claims return entries while those
    /// before came to less than `bytes`.
    async fn next(&mut self, count: usize, bytes: usize) -> Result<Next, Error> {
        match self.cursor.clone() {
            Some(from) => self.claim(&from, count, bytes).await,
            None => self.read(count, bytes).await,
        }
    }

    /// One round of reading: a permit, the lease, free bytes, then the next
    /// entries to the dispatcher, and a wait for new ones once caught up
    /// (and not held). `false`: stop.
    async fn step(
        &mut self,
        bounds: &Bounds,
        hold: &mut watch::Receiver<bool>,
        tx: &mpsc::Sender<Vec<Item>>,
    ) -> bool {
        let Bounds { permits, bytes } = bounds;
        let Some(first) = acquire(permits, &self.run).await else {
            return false;
        };
        if !self.run.lease.valid() {
            self.run.abort.cancel();
            return false;
        }
        if !bytes.some_free(&self.run.stop_reading).await {
            return false;
        }
        let count = self.config.batch_size.min(permits.available_permits() + 1);
        let next = match self.next(count, bytes.free().max(1)).await {
            Ok(next) => next,
            Err(e) => {
                drop(first);
                return self.failed(e).await;
            }
        };
        self.backoff.reset();
        let sent = if next.entries.is_empty() {
            drop(first);
            true
        } else {
            send(next.entries, first, permits, bytes, tx).await
        };
        match next.wait_after {
            Some(last) if sent => unheld(hold, &self.run).await && self.wait_after(&last).await,
            _ => sent,
        }
    }

    /// New entries (a fenced group read).
    async fn read(&mut self, count: usize, bytes: usize) -> Result<Next, Error> {
        let r = self.fenced.read(&mut self.conn, count, bytes).await?;
        if self.replies_lost(&r.before) {
            return Ok(Next {
                entries: Vec::new(),
                wait_after: None,
            });
        }
        self.received = Some(match r.entries.last() {
            Some(e) => e.id.to_stream_id(),
            None => r.before.clone(),
        });
        if let Some(more) = r.more {
            // Delivered, but past the bytes: pending on this consumer,
            // claimed next (the claims end by setting `received`).
            self.cursor = Some(more);
            self.kept_back = true;
            return Ok(Next {
                entries: r.entries,
                wait_after: None,
            });
        }
        let wait_after = match r.entries.last() {
            None => Some(r.last),
            Some(_) if r.full => None,
            Some(e) if r.entries.len() < count => Some(e.id.to_stream_id()),
            Some(_) => None,
        };
        Ok(Next {
            entries: r.entries,
            wait_after,
        })
    }

    /// Compares the group's last-delivered id before a read (`before`) with
    /// the last this reader received. `true`: entries were delivered whose
    /// reply never came, and their claim is set up to run first.
    fn replies_lost(&mut self, before: &str) -> bool {
        let Some(received) = self.received.take() else {
            return false;
        };
        match compare_ids(before, &received) {
            std::cmp::Ordering::Greater => {
                // An earlier read delivered entries whose reply never
                // came (a dropped connection, a client-side retry):
                // they are pending on this consumer. Claim them, then
                // these, in id order, before anything newer.
                tracing::warn!(partition = self.p, received = %received, delivered = %before, "entries were delivered to this daemon whose read reply was lost; claiming them again, in order");
                self.cursor = Some(after(&received));
                true
            }
            std::cmp::Ordering::Less => {
                // The group went back (`XGROUP SETID`, a failover to
                // a replica behind, an AOF that lost its tail): its
                // entries are delivered again, in order, by this read
                // and the next ones.
                tracing::warn!(partition = self.p, received = %received, delivered = %before, "the consumer group's last-delivered id went back; re-reading from there");
                false
            }
            std::cmp::Ordering::Equal => false,
        }
    }

    /// Pending entries from `from` on (a fenced claim).
    async fn claim(&mut self, from: &str, count: usize, bytes: usize) -> Result<Next, Error> {
        let c = self
            .fenced
            .claim(&mut self.conn, from, count, bytes)
            .await?;
        if !c.deleted.is_empty() {
            // writ trims only below the committed watermark, so only an
            // outside XDEL/XTRIM can do this. Say so loudly.
            tracing::error!(partition = self.p, ids = ?c.deleted, "pending entries were deleted from the stream by someone else before they were applied; they cannot be applied (check for XDEL/XTRIM outside writ)");
        }
        if !c.entries.is_empty() && !self.kept_back {
            tracing::info!(
                partition = self.p,
                entries = c.entries.len(),
                "re-applying pending entries"
            );
        }
        self.cursor = (c.next != "0-0").then_some(c.next);
        self.kept_back &= self.cursor.is_some();
        if self.cursor.is_none() {
            // Everything the group delivered is claimed (the partition is
            // fenced: nobody else reads it), so the next read's gap check
            // starts from here.
            self.received = c.delivered;
            if !self.pruned {
                // Earlier consumers hold nothing pending now.
                self.pruned = true;
                let at = super::prune::Tenure {
                    stream: &self.stream,
                    group: &self.group,
                    fence: &self.fence,
                    token: self.run.lease.token,
                };
                let me = &self.config.consumer_name;
                tokio::select! {
                    _ = super::prune::prune(&mut self.conn, self.p, at, me) => {}
                    _ = self.run.stop_reading.cancelled() => {}
                }
            }
        }
        Ok(Next {
            entries: c.entries,
            wait_after: None,
        })
    }

    /// Nothing new: waits for an entry after `last` without taking it. A
    /// hand-over or shutdown does not wait out the block. `false`: stop.
    async fn wait_after(&mut self, last: &str) -> bool {
        let after = if last.is_empty() { "$" } else { last };
        let xread = crate::stream::cmd::xread_blocking(&self.stream, after, 1, self.config.block);
        let wait: redis::RedisResult<redis::Value> = tokio::select! {
            w = xread.query_async(&mut self.conn) => w,
            _ = self.run.stop_reading.cancelled() => return false,
        };
        match wait {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(partition = self.p, error = %e, "waiting for new entries failed; retrying");
                self.backoff.sleep(&self.run.stop_reading).await
            }
        }
    }

    /// A read or claim failed. A fence refusal ends the tenure; a missing
    /// group is created; anything else is retried after a backoff. `false`:
    /// stop.
    async fn failed(&mut self, e: Error) -> bool {
        if matches!(e, Error::Fenced { .. }) {
            self.run.abort.cancel();
            return false;
        }
        if is_nogroup(&e) {
            return match super::ensure_group(&mut self.conn, &self.stream, &self.group).await {
                Ok(()) => true,
                Err(e) => {
                    // Redis at its maxmemory or read-only, say: retried
                    // after a backoff, not as fast as Redis answers.
                    tracing::warn!(partition = self.p, error = %e, "the partition's consumer group is gone and cannot be made again; retrying");
                    self.backoff.sleep(&self.run.stop_reading).await
                }
            };
        }
        tracing::warn!(partition = self.p, error = %e, "reading the partition stream failed; retrying");
        self.backoff.sleep(&self.run.stop_reading).await
    }
}

/// Stream ids in stream order (an unparsable one sorts first).
fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |id: &str| {
        id.split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)))
    };
    parse(a).cmp(&parse(b))
}

/// The stream id right after `id` (XAUTOCLAIM's start is inclusive).
fn after(id: &str) -> String {
    match id
        .split_once('-')
        .map(|(ms, seq)| (ms.parse::<u64>(), seq.parse::<u64>()))
    {
        Some((Ok(ms), Ok(u64::MAX))) => format!("{}-0", ms.saturating_add(1)),
        Some((Ok(ms), Ok(seq))) => format!("{ms}-{}", seq + 1),
        _ => "0-0".to_string(),
    }
}

fn is_nogroup(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if crate::redis_conn::has_code(r, "NOGROUP"))
}

/// Waits until the dispatcher no longer holds reading back. `false`: stop
/// (the tenure ends, or the dispatcher is gone).
async fn unheld(hold: &mut watch::Receiver<bool>, run: &PartitionRun) -> bool {
    tokio::select! {
        r = hold.wait_for(|held| !held) => r.is_ok(),
        _ = run.stop_reading.cancelled() => false,
    }
}

async fn acquire(
    permits: &Arc<Semaphore>,
    run: &PartitionRun,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if run.stop_reading.is_cancelled() {
        return None;
    }
    tokio::select! {
        p = permits.clone().acquire_owned() => p.ok(),
        _ = run.stop_reading.cancelled() => None,
    }
}

/// Attaches a permit and its bytes to each entry (the first permit already
/// held) and sends.
async fn send(
    entries: Vec<Entry>,
    first: tokio::sync::OwnedSemaphorePermit,
    permits: &Arc<Semaphore>,
    bytes: &Arc<ByteBudget>,
    tx: &mpsc::Sender<Vec<Item>>,
) -> bool {
    let mut items = Vec::with_capacity(entries.len());
    let mut first = Some(first);
    for entry in entries {
        let permit = match first.take() {
            Some(p) => p,
            // Only this task acquires, and it asked for no more than were free.
            None => match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closes"),
            },
        };
        let permit = bytes.take(permit, entry.bytes());
        items.push(Item { entry, permit });
    }
    tx.send(items).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::after;

    #[test]
    fn the_id_after() {
        assert_eq!(after("5-3"), "5-4");
        assert_eq!(after(&format!("5-{}", u64::MAX)), "6-0");
        assert_eq!(after("0-0"), "0-1");
        assert_eq!(after(""), "0-0");
    }

    #[test]
    fn ids_compare_as_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(super::compare_ids("10-0", "9-5"), Greater);
        assert_eq!(super::compare_ids("9-10", "9-9"), Greater);
        assert_eq!(super::compare_ids("9-9", "9-9"), Equal);
        assert_eq!(super::compare_ids("0-0", "1-0"), Less);
    }
}
