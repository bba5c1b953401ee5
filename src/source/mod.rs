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

pub(crate) mod reader;

use crate::redis_conn::Conn;
use redis::aio::ConnectionLike;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::stream::{parse_autoclaim, parse_entries, Entry};

const FENCED_READ: &str = include_str!("../lua/fenced_read.lua");

/// An entry read from a partition, holding its in-flight permit until it is
/// acked.
pub(crate) struct Item {
    /// The entry.
    pub entry: Entry,
    /// Its place under `daemon.max_in_flight`.
    pub permit: OwnedSemaphorePermit,
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
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
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
}

impl FencedReader {
    /// Reads of partition `p` as `consumer`, holding fencing `token`.
    pub fn new(names: &Names, p: u32, consumer: &str, token: u64) -> Self {
        FencedReader {
            script: redis::Script::new(FENCED_READ),
            partition: p,
            token,
            stream: names.stream(p),
            fence: names.fence(p),
            meta: names.meta(p),
            group: names.group(),
            consumer: consumer.to_string(),
        }
    }

    fn call(&self, mode: &str, count: usize, cursor: &str) -> redis::ScriptInvocation<'_> {
        let mut call = self.script.key(&self.stream);
        call.key(&self.fence)
            .key(&self.meta)
            .arg(self.token)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(count)
            .arg(mode)
            .arg(cursor);
        call
    }

    async fn invoke<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        op: &'static str,
        count: usize,
        cursor: &str,
    ) -> Result<redis::Value> {
        match self.call(op, count, cursor).invoke_async(conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.code() == Some("FENCED") => {
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
    /// this consumer (XAUTOCLAIM, min idle 0: the lease makes it ours).
    pub async fn claim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        cursor: &str,
        count: usize,
    ) -> Result<Claimed> {
        let v = self.invoke(conn, "claim", count, cursor).await?;
        let (next, entries, deleted) = parse_autoclaim(&v);
        let delivered = match &v {
            redis::Value::Array(parts) => parts
                .get(3)
                .and_then(|d| redis::from_redis_value::<String>(d.clone()).ok()),
            _ => None,
        };
        Ok(Claimed {
            next,
            entries,
            deleted,
            delivered,
        })
    }

    /// Reads up to `count` new entries (XREADGROUP `>`).
    pub async fn read<C: ConnectionLike + Send>(&self, conn: &mut C, count: usize) -> Result<Read> {
        let v = self.invoke(conn, "read", count, "").await?;
        Ok(match &v {
            redis::Value::Array(parts) if parts.len() == 3 => Read {
                entries: parse_entries(&parts[0]),
                last: redis::from_redis_value(parts[1].clone()).unwrap_or_default(),
                before: redis::from_redis_value(parts[2].clone()).unwrap_or_default(),
            },
            _ => Read::default(),
        })
    }
}
