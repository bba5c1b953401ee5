//! The source of a partition's writes: its stream, read through the consumer
//! group, and only by the partition's current owner.
//!
//! Every group read and every claim runs in one script with a fencing check
//! (`src/lua/fenced_read.lua`): it delivers entries only while the caller's
//! token is the partition's current one. A daemon that was paused or cut off
//! past its lease therefore cannot pull entries into its pending list, nor
//! claim the new owner's, even if its own clock still trusts the lease. A
//! refusal is [`Error::Fenced`], logged and counted in `writ_fenced_total`.
//!
//! [`reader`] is the tenure's reader task: pending entries first (a crashed
//! owner's, in id order), then new ones, never more than the in-flight
//! bound; each entry travels with its permit ([`Item`]).

pub mod prune;
pub(crate) mod reader;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::redis_conn::Conn;
use redis::aio::ConnectionLike;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::stream::{parse_autoclaim, take_entries, Entry};

const FENCED_READ: &str = include_str!("../lua/fenced_read.lua");

/// An entry read from a partition, holding its in-flight permit until it is
/// acked.
pub(crate) struct Item {
    /// The entry.
    pub entry: Entry,
    /// Its place under `daemon.max_in_flight` and `max_in_flight_bytes`.
    pub permit: InFlight,
}

/// An entry's share of the in-flight bounds: its slot, and its bytes, given
/// back when it is dropped (once the entry is acked, or its tenure ends).
pub(crate) struct InFlight {
    _slot: OwnedSemaphorePermit,
    bytes: usize,
    budget: Arc<ByteBudget>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// The bytes of a partition's entries read and not yet acked, against
/// `daemon.max_in_flight_bytes`. Only the tenure's reader takes; entries
/// give back as they are dropped.
pub(crate) struct ByteBudget {
    bound: usize,
    used: AtomicUsize,
    freed: Notify,
}

impl ByteBudget {
    /// A budget of `bound` bytes.
    pub fn new(bound: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            bound,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// The bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The bytes free now (0 when at or over the bound).
    pub fn free(&self) -> usize {
        self.bound.saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// Waits until some bytes are free. `false`: `stop` fired first.
    pub async fn some_free(&self, stop: &tokio_util::sync::CancellationToken) -> bool {
        loop {
            let freed = self.freed.notified();
            if self.free() > 0 {
                return true;
            }
            tokio::select! {
                _ = freed => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Takes `bytes` for an entry, with its `slot`: over the bound is allowed
    /// (a read returns at most one entry past what was free).
    pub fn take(self: &Arc<Self>, slot: OwnedSemaphorePermit, bytes: usize) -> InFlight {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        InFlight {
            _slot: slot,
            bytes,
            budget: self.clone(),
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Creates the consumer group of a stream (and the stream) from `0`, if
/// missing: the daemon does this at start for every partition (writers never
/// create groups; docs/protocol.md).
pub async fn ensure_group(conn: &mut Conn, stream: &str, group: &str) -> Result<()> {
    let res: redis::RedisResult<()> = crate::stream::cmd::create_group(stream, group)
        .query_async(conn)
        .await;
    match res {
        Ok(()) => Ok(()),
        Err(e) if crate::redis_conn::has_code(&e, "BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The fenced reads of one partition tenure.
pub struct FencedReader {
    script: redis::Script,
    partition: u32,
    token: u64,
    stream: String,
    fence: String,
    meta: String,
    group: String,
    consumer: String,
    /// The largest entry of the last read or claim that returned any, in
    /// bytes (0: none yet): the script sizes its first step by it.
    hint: AtomicUsize,
}

/// What a claim returned.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Where the next claim starts; `0-0` when the pending list is done.
    pub next: String,
    /// The claimed entries, in id order.
    pub entries: Vec<Entry>,
    /// Ids that were pending but are gone from the stream.
    pub deleted: Vec<String>,
    /// Once the pending list is done (`next` is `0-0`): the group's
    /// last-delivered-id.
    pub delivered: Option<String>,
}

/// What a read returned.
#[derive(Debug, Default)]
pub struct Read {
    /// New entries, now pending for this consumer.
    pub entries: Vec<Entry>,
    /// With no entries: the stream's last id, to wait after (empty: none).
    pub last: String,
    /// The group's last-delivered-id before this read.
    pub before: String,
    /// When the read delivered more than fitted in its bytes: the first
    /// entry it did not return (pending on this consumer, to be claimed).
    pub more: Option<String>,
    /// The bytes ran out before the entries did: the stream may hold more
    /// (read again rather than wait).
    pub full: bool,
}

impl FencedReader {
    /// Reads of partition `p` as `consumer`, holding fencing `token`.
    pub fn new(names: &Names, p: u32, consumer: &str, token: u64) -> Self {
        FencedReader {
            script: crate::redis_conn::script(FENCED_READ),
            partition: p,
            token,
            stream: names.stream(p),
            fence: names.fence(p),
            meta: names.meta(p),
            group: names.group(),
            consumer: consumer.to_string(),
            hint: AtomicUsize::new(0),
        }
    }

    fn call(
        &self,
        mode: &str,
        count: usize,
        cursor: &str,
        bytes: usize,
    ) -> redis::ScriptInvocation<'_> {
        let mut call = self.script.key(&self.stream);
        call.key(&self.fence)
            .key(&self.meta)
            .arg(self.token)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(count)
            .arg(mode)
            .arg(cursor)
            .arg(bytes)
            .arg(self.hint.load(Ordering::Relaxed));
        call
    }

    async fn invoke<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        op: &'static str,
        count: usize,
        cursor: &str,
        bytes: usize,
    ) -> Result<redis::Value> {
        match self.call(op, count, cursor, bytes).invoke_async(conn).await {
            Ok(v) => Ok(v),
            Err(e) if crate::redis_conn::has_code(&e, "FENCED") => {
                crate::telemetry::Event::Fenced {
                    partition: self.partition,
                    op,
                    token: self.token,
                }
                .emit();
                Err(Error::Fenced {
                    partition: self.partition,
                    op,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Claims up to `count` pending entries of the group from `cursor`, for
    /// this consumer (XAUTOCLAIM, min idle 0: the lease makes it ours),
    /// returning them while the ones before came to less than `bytes`.
    pub async fn claim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        cursor: &str,
        count: usize,
        bytes: usize,
    ) -> Result<Claimed> {
        let v = self.invoke(conn, "claim", count, cursor, bytes).await?;
        let delivered = match &v {
            redis::Value::Array(parts) => parts
                .get(3)
                .and_then(|d| redis::from_redis_value::<String>(d.clone()).ok()),
            _ => None,
        };
        let (next, entries, deleted) = parse_autoclaim(v);
        self.hinted(&entries);
        Ok(Claimed {
            next,
            entries,
            deleted,
            delivered,
        })
    }

    /// Reads up to `count` new entries (XREADGROUP `>`), returning them
    /// while the ones before came to less than `bytes`.
    pub async fn read<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        count: usize,
        bytes: usize,
    ) -> Result<Read> {
        let v = self.invoke(conn, "read", count, "", bytes).await?;
        let string = |v: Option<redis::Value>| {
            v.and_then(|v| redis::from_redis_value::<String>(v).ok())
                .unwrap_or_default()
        };
        Ok(match v {
            redis::Value::Array(parts) if (3..=5).contains(&parts.len()) => {
                let mut parts = parts.into_iter();
                let entries = parts.next().map(take_entries).unwrap_or_default();
                self.hinted(&entries);
                Read {
                    entries,
                    last: string(parts.next()),
                    before: string(parts.next()),
                    more: Some(string(parts.next())).filter(|m| !m.is_empty()),
                    full: !string(parts.next()).is_empty(),
                }
            }
            _ => Read::default(),
        })
    }

    /// Keeps the largest of `entries` as the next call's size hint.
    fn hinted(&self, entries: &[Entry]) {
        if let Some(largest) = entries.iter().map(Entry::bytes).max() {
            self.hint.store(largest, Ordering::Relaxed);
        }
    }
}
