//! The Redis cache of committed documents.
//!
//! Each key's entry is a hash `{v: <sortable version>, doc: <BSON>}`, or
//! `{v, gone: 1}` after a hard delete. Entries are only ever replaced by a
//! strictly newer version, through one atomic compare-and-set script, so a
//! slow writer (the daemon retrying, a read-through on a miss) can never move
//! a key backwards. `writ rebuild-cache` alone also replaces the same version
//! with MongoDB's document ([`Cache::refresh`]).

use crate::redis_conn::{Conn, Replication};
use mongodb::bson::Document;

use crate::error::{Error, Result};
use crate::protocol::Version;

/// Sets the entry if `ARGV[1]` is newer than the stored version. Byte-wise
/// comparison (not `<`, which follows the server's locale). With a fence
/// (`KEYS[2]`, `ARGV[3]`), refuses (-1) unless the token is the current one.
const CAS_SCRIPT: &str = include_str!("../lua/cache_cas.lua");

/// The same rule for many entries under one fence, in one call: a round's
/// cache step is one script run instead of one per key (all of a round's
/// entries and its fence share the partition's hash tag, so one slot).
const CAS_MANY_SCRIPT: &str = include_str!("../lua/cache_cas_many.lua");

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    /// Version of the cached state.
    pub version: Version,
    /// The committed document, or `None` after a hard delete.
    pub doc: Option<Document>,
}

/// What a compare-and-set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Stored.
    Stored,
    /// The cache already held this version or a newer one.
    NotNewer,
    /// The fencing token is no longer current: this writer lost its lease.
    Fenced,
}

/// A fencing check: the fence key and the token that must be current.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The partition (for the refusal's log line and metric).
    pub partition: u32,
    /// `<ns>:{p<N>}:fence`.
    pub key: String,
    /// The writer's token.
    pub token: u64,
}

/// What a cache entry stores for `doc`: its BSON, or nothing (a tombstone).
fn entry_bytes(doc: Option<&Document>) -> Result<Vec<u8>> {
    doc.map_or(Ok(Vec::new()), |d| {
        crate::bson_bytes::to_vec(d).map_err(|e| Error::Encode(e.to_string()))
    })
}

/// Appends a round's acks to its cache script call (the layout is in
/// src/lua/cache_cas_many.lua): the partition stream and the distinct ack
/// streams as keys, then the group, the ack streams' cap and TTL, each ack
/// with the index of its stream, and the ids to `XACK`.
fn add_acks(call: &mut redis::ScriptInvocation<'_>, b: &crate::ack::Batch) {
    call.key(&b.stream);
    let mut streams: Vec<&str> = Vec::new();
    let mut acks = Vec::with_capacity(b.acks.len());
    for (stream, ack) in &b.acks {
        let at = match streams.iter().position(|s| s == stream) {
            Some(i) => i,
            None => {
                streams.push(stream);
                call.key(stream);
                streams.len() - 1
            }
        };
        acks.push((at + 1, ack.fields()));
    }
    call.arg(&b.group)
        .arg(crate::ack::ACK_STREAM_MAXLEN)
        .arg(crate::ack::ACK_STREAM_TTL_SECS)
        .arg(acks.len());
    for (at, fields) in acks {
        call.arg(at).arg(2 * fields.len());
        for (name, value) in fields {
            call.arg(name).arg(value);
        }
    }
    call.arg(b.ids.len());
    for id in &b.ids {
        call.arg(id.to_stream_id());
    }
}

/// The cache scripts' answer for a write its fence refused.
const FENCED: i64 = -1;

/// The cache scripts' answer for a write stored over a value of another type
/// (another program's key in writ's namespace), which it replaced.
const REPLACED_FOREIGN: i64 = 2;

/// What the cache script answered for `key`.
fn outcome(key: &str, script_result: i64) -> CasOutcome {
    match script_result {
        1 => CasOutcome::Stored,
        REPLACED_FOREIGN => {
            foreign(key, "replaced by the committed document");
            CasOutcome::Stored
        }
        FENCED => CasOutcome::Fenced,
        _ => CasOutcome::NotNewer,
    }
}

/// Logs and counts a cache key that held another program's value (not a
/// hash): a reader treats it as a miss, a cache write replaces it. The cache
/// is a copy of MongoDB, so nothing is lost; the log names the key so that an
/// operator can find who writes under writ's namespace.
fn foreign(key: &str, then: &'static str) {
    crate::telemetry::Event::ForeignCacheValue { key, then }.emit();
}

impl Fence {
    /// Says that Redis refused a cache write under this fence.
    fn refused(&self) {
        crate::telemetry::Event::Fenced {
            partition: self.partition,
            op: "cache",
            token: self.token,
        }
        .emit();
    }
}

/// The cache, on a shared connection.
#[derive(Clone)]
pub struct Cache {
    conn: Conn,
    cas: redis::Script,
    cas_many: redis::Script,
    replication: Replication,
}

impl Cache {
    /// Wraps a connection; cache writes are not confirmed by replicas.
    pub fn new(conn: Conn) -> Cache {
        Cache {
            conn,
            cas: crate::redis_conn::script(CAS_SCRIPT),
            cas_many: crate::redis_conn::script(CAS_MANY_SCRIPT),
            replication: Replication::NONE,
        }
    }

    /// Confirms every cache write with `replication` (`WAIT`) before it
    /// returns: the daemon acks a write only once the cache holds it, so
    /// with `redis.min_replicas_acked` the cache entry must survive a
    /// failover too.
    pub fn with_replication(mut self, replication: Replication) -> Cache {
        self.replication = replication;
        self
    }

    /// Stores `doc` (or a tombstone) at `version` unless the cache already
    /// holds that version or a newer one. Returns whether it stored.
    pub async fn put_if_newer(
        &self,
        key: &str,
        version: Version,
        doc: Option<&Document>,
    ) -> Result<bool> {
        Ok(self.put_fenced(key, version, doc, None).await? == CasOutcome::Stored)
    }

    /// Stores MongoDB's `doc` (or a tombstone) at `version` unless the cache
    /// holds a newer version; unlike [`Cache::put_if_newer`] the same version
    /// is replaced too: `writ rebuild-cache` takes MongoDB's word for it, as
    /// another program (the official adapter) may have changed the document
    /// without moving its version. Returns whether it stored.
    pub async fn refresh(
        &self,
        key: &str,
        version: Version,
        doc: Option<&Document>,
    ) -> Result<bool> {
        let mut call = self.cas.key(key);
        call.arg(version.to_sortable())
            .arg(entry_bytes(doc)?)
            .arg("")
            .arg("refresh");
        let res: i64 = self.invoke(&self.cas, &call, |_| false).await?;
        Ok(outcome(key, res) == CasOutcome::Stored)
    }

    /// Like [`Cache::put_if_newer`], refused if `fence` is given and stale
    /// (the refusal is logged and counted in `writ_fenced_total{op="cache"}`).
    pub async fn put_fenced(
        &self,
        key: &str,
        version: Version,
        doc: Option<&Document>,
        fence: Option<&Fence>,
    ) -> Result<CasOutcome> {
        let bytes = entry_bytes(doc)?;
        let mut call = self.cas.key(key);
        call.arg(version.to_sortable()).arg(bytes);
        if let Some(f) = fence {
            call.key(&f.key).arg(f.token);
        }
        let res: i64 = self.invoke(&self.cas, &call, |r| *r == FENCED).await?;
        let outcome = outcome(key, res);
        if let (CasOutcome::Fenced, Some(f)) = (outcome, fence) {
            f.refused();
        }
        Ok(outcome)
    }

    /// [`Cache::put_fenced`], retried through Redis failures until it
    /// answers; `None` once `abort` fires. The one way a committed write is
    /// made readable, by the daemon (fenced) and by `replay`/`dlq retry`.
    pub async fn publish(
        &self,
        key: &str,
        version: Version,
        doc: Option<&Document>,
        fence: Option<&Fence>,
        abort: &tokio_util::sync::CancellationToken,
    ) -> Option<CasOutcome> {
        crate::backoff::retry_until(abort, "cache update", || {
            self.put_fenced(key, version, doc, fence)
        })
        .await
    }

    /// Compare-and-sets many entries in one round trip and one script run,
    /// all under the same fence; one outcome per entry, in order. The
    /// entries must share the fence's hash tag (one partition's keys).
    pub async fn put_many_fenced(
        &self,
        entries: &[(String, Version, Option<&Document>)],
        fence: &Fence,
    ) -> Result<Vec<CasOutcome>> {
        Ok(self.put_many(entries, fence, None).await?.0)
    }

    /// Whether the round's acks can ride in its cache script
    /// ([`Cache::put_many_fenced_acking`]): on one server (on Redis Cluster
    /// the writers' ack streams live in other slots), with no replicas to
    /// confirm the cache first (the acks must wait for that `WAIT`).
    pub fn acks_ride_along(&self) -> bool {
        !self.conn.is_cluster() && !self.replication.wanted()
    }

    /// [`Cache::put_many_fenced`], then, in the same script run, the acks and
    /// `XACK` of `batch` (see [`Cache::acks_ride_along`]): under a stale
    /// fence neither the entries nor the acks are written. An ack whose
    /// stream key holds another type is skipped, logged and counted, as
    /// [`crate::ack::Acker::send`] does.
    pub async fn put_many_fenced_acking(
        &self,
        entries: &[(String, Version, Option<&Document>)],
        fence: &Fence,
        batch: &crate::ack::Batch,
    ) -> Result<Vec<CasOutcome>> {
        let (outcomes, skipped) = self.put_many(entries, fence, Some(batch)).await?;
        if skipped > 0 {
            crate::telemetry::Event::AcksSkipped {
                count: skipped as u64,
            }
            .emit();
        }
        Ok(outcomes)
    }

    async fn put_many(
        &self,
        entries: &[(String, Version, Option<&Document>)],
        fence: &Fence,
        batch: Option<&crate::ack::Batch>,
    ) -> Result<(Vec<CasOutcome>, i64)> {
        if entries.is_empty() && batch.is_none() {
            return Ok((Vec::new(), 0));
        }
        let mut call = self.cas_many.key(&fence.key);
        call.arg(fence.token).arg(entries.len());
        for (key, version, doc) in entries {
            let bytes = entry_bytes(*doc)?;
            call.key(key).arg(version.to_sortable()).arg(bytes);
        }
        if let Some(b) = batch {
            add_acks(&mut call, b);
        }
        let mut res: Vec<i64> = self
            .invoke(&self.cas_many, &call, |r: &Vec<i64>| r.contains(&FENCED))
            .await?;
        if res.contains(&FENCED) {
            // The script wrote nothing: no entry, no ack.
            fence.refused();
            return Ok((vec![CasOutcome::Fenced; entries.len()], 0));
        }
        let skipped = match batch {
            Some(_) => res.pop(),
            None => Some(0),
        };
        if res.len() != entries.len() || skipped.is_none() {
            return Err(Error::Encode(format!(
                "the cache script answered {} outcomes for {} entries",
                res.len(),
                entries.len()
            )));
        }
        let outcomes: Vec<CasOutcome> = entries
            .iter()
            .zip(res)
            .map(|((key, ..), r)| outcome(key, r))
            .collect();
        Ok((outcomes, skipped.unwrap_or(0)))
    }

    /// Runs a cache script call. With replicas to confirm, the call and its
    /// `WAIT` go in one pipeline (one connection), and too few confirmations
    /// is an error, unless `fenced(reply)`: a fenced call wrote nothing.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        call: &redis::ScriptInvocation<'_>,
        fenced: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        if !self.replication.wanted() {
            return Ok(call.invoke_async(&mut conn).await?);
        }
        let mut pipe = redis::pipe();
        pipe.load_script(script).ignore();
        pipe.invoke_script(call);
        self.replication.add_to(&mut pipe);
        let (res, confirmed): (T, u32) = pipe.query_async(&mut conn).await?;
        if !fenced(&res) {
            self.replication.check(confirmed, "a cache write")?;
        }
        Ok(res)
    }

    /// Reads a key's entry; `None` on a miss.
    pub async fn get(&self, key: &str) -> Result<Option<Cached>> {
        Ok(self.get_many(&[key.to_string()]).await?.pop().flatten())
    }

    /// Reads many entries in one pipelined round trip; `None` for a miss.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Cached>>> {
        Ok(self.get_many_counted(keys, &[]).await?.0)
    }

    /// [`Cache::get_many`], and in the same round trip the partition count
    /// that each of `metas` (partition meta hashes, `<ns>:{p<N>}:meta`)
    /// records: `None` where none is, or where it is not a positive number
    /// (as admission reads it: `src/lua/admit.lua`). A meta hash shares its
    /// partition's hash tag with the partition's cache entries, so on Redis
    /// Cluster it rides in their pipeline, to the same node.
    pub async fn get_many_counted(
        &self,
        keys: &[String],
        metas: &[String],
    ) -> Result<(Vec<Option<Cached>>, Vec<Option<u32>>)> {
        if keys.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut cmds: Vec<(String, redis::Cmd)> = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(key).arg("v").arg("doc").arg("gone");
                (key.clone(), cmd)
            })
            .collect();
        cmds.extend(metas.iter().map(|meta| {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(meta).arg(crate::partition_count::FIELD);
            (meta.clone(), cmd)
        }));
        type Raw = (Option<String>, Option<Vec<u8>>, Option<String>);
        let mut replies = self.conn.query_by_slot(cmds).await?;
        let counts = replies.split_off(keys.len());
        let cached = keys
            .iter()
            .zip(replies)
            .map(|(key, reply)| match reply {
                Ok(v) => parse(
                    key,
                    redis::from_redis_value::<Raw>(v).map_err(|e| Error::Encode(e.to_string()))?,
                ),
                Err(e) if crate::redis_conn::is_wrong_type(&e) => {
                    foreign(key, "reading");
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            })
            .collect::<Result<_>>()?;
        let counts = counts
            .into_iter()
            .map(|reply| match reply {
                Ok(v) => Ok(redis::from_redis_value::<Option<String>>(v)
                    .ok()
                    .flatten()
                    .as_deref()
                    .and_then(crate::partition_count::parse)),
                Err(e) if crate::redis_conn::is_wrong_type(&e) => Ok(None),
                Err(e) => Err(e.into()),
            })
            .collect::<Result<_>>()?;
        Ok((cached, counts))
    }
}

fn parse(
    key: &str,
    (v, doc, gone): (Option<String>, Option<Vec<u8>>, Option<String>),
) -> Result<Option<Cached>> {
    let Some(v) = v else { return Ok(None) };
    let Some(version) = Version::from_sortable(&v) else {
        tracing::warn!(
            key,
            "cache entry has an unreadable version; treating it as a miss"
        );
        return Ok(None);
    };
    let doc = match (doc, gone) {
        (Some(bytes), _) => match Document::from_reader(bytes.as_slice()) {
            Ok(d) => Some(d),
            // Not written by writ (another program, a truncated value): a
            // miss, so the read goes to MongoDB, which holds the value; a
            // failed read here would make the key unreadable until its next
            // write (and say, wrongly, that a write was not accepted). The
            // next write of the key, or `writ rebuild-cache`, replaces it.
            Err(_) => {
                foreign(key, "reading: its document is not BSON; read as a miss");
                return Ok(None);
            }
        },
        (None, Some(_)) => None,
        (None, None) => return Ok(None),
    };
    Ok(Some(Cached { version, doc }))
}
