//! Settling writes whose ack is overdue (docs/protocol.md §5, "An ack can
//! still be lost"). A read waits for this handle's pending writes of its key;
//! when one's ack was lost (a failover, an ack stream trimmed or of another
//! type) and the write was dead-lettered, the cache never reaches its
//! version, and every read of the key would wait out `client.read_timeout_ms`
//! and fail, for the life of the handle. So after such a wait the handle asks
//! the streams what became of each write still unacked, and settles the ones
//! the daemon is done with, as their ack would have. A write whose entry Redis
//! lost (a failover) is never applied: MongoDB tells, and it is settled lost
//! ([`crate::Error::Lost`]) rather than wedge its key's reads.

use std::collections::HashSet;

use redis::Value;

use super::acks::AckResult;
use super::letters::Letters;
use super::{acks, Inner, Pending};
use crate::apply::doc_version;
use crate::error::Result;
use crate::protocol::field as entry_field;
use crate::protocol::Version;
use crate::stream::{cmd, parse_entries, Entry};

/// What [`Inner::gone_writes`] found of writes whose entries are gone.
struct Gone {
    /// The writes MongoDB holds at their version or newer.
    applied: Vec<(Version, Pending)>,
    /// The writes MongoDB does not hold.
    missing: Vec<(Version, Pending)>,
    /// Writes the primary holds and the majority does not yet: neither
    /// applied nor missing, for a later look.
    unconfirmed: bool,
    /// MongoDB's document with its version, when `applied` is not empty.
    stored: Option<(Version, mongodb::bson::Document)>,
}

/// Writes looked at per settling, at most (a few round trips each); the
/// rest wait for a later read's look.
const LOOK_AT_MOST: usize = 256;

/// Whether the daemon is done with a write whose ack is overdue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    /// Done: readable at its version or newer, unless it was dead-lettered.
    Yes,
    /// Not done yet: the look stops there (the key's later writes wait for
    /// a later look).
    NotYet,
    /// Its entry is gone: trimmed by retention after the daemon finished it,
    /// deleted by hand, or lost by Redis (a failover; the group may then
    /// have passed its id on later entries). The stream cannot tell which:
    /// MongoDB can ([`Inner::gone_writes`]).
    Gone,
    /// Its entry is gone, and the stream holds another write's entry at its
    /// id (a promoted replica whose clock is behind gave the id out again).
    /// Judged as [`Done::Gone`], except that a version exactly its own, in
    /// the cache or MongoDB, is taken for that other write's, and a letter
    /// at its id that names no write for the other's too.
    Taken,
}

impl Inner {
    /// [`Inner::settle_overdue`] within one more `client.read_timeout_ms`:
    /// `Ok(false)` also when it did not end in time.
    pub(super) async fn settle_within(
        &self,
        coll: &str,
        p: u32,
        cache_key: &str,
        writes: impl IntoIterator<Item = (Version, Pending)>,
    ) -> Result<bool> {
        let look = self.settle_overdue(coll, p, cache_key, writes);
        tokio::time::timeout(self.config.read_timeout, look)
            .await
            .unwrap_or(Ok(false))
    }

    /// Settles each of `writes` (this handle's pending writes of one key of
    /// collection `coll`, in partition `p`, whose cache entry is `cache_key`)
    /// that is still unacked and that the daemon is done with, as its ack
    /// would, in id order: at the first the daemon is not done with, or after
    /// [`LOOK_AT_MOST`], it stops. A write whose entry is gone is done if the
    /// cache holds its version or a newer one; else it is asked of MongoDB
    /// ([`Inner::gone_writes`]): done if MongoDB holds its version or a newer
    /// one and the cache could be filled with that; else parked if a letter
    /// says so, or lost once `client.lost_write_after_ms` has passed since a
    /// look first saw it so. A done write is parked if a letter says so.
    /// `true` when none is left unsettled.
    pub(super) async fn settle_overdue(
        &self,
        coll: &str,
        p: u32,
        cache_key: &str,
        writes: impl IntoIterator<Item = (Version, Pending)>,
    ) -> Result<bool> {
        // The callers (a read, a list) checked the partition count with their
        // own cache read just before.
        let committed = self.cache.get(cache_key).await?.map(|c| c.version);
        let mut writes: Vec<(Version, Pending)> = writes
            .into_iter()
            .filter(|(_, w)| w.state.borrow().is_none())
            .collect();
        writes.sort_by_key(|(v, _)| *v);
        let mut all = writes.len() <= LOOK_AT_MOST;
        writes.truncate(LOOK_AT_MOST);
        let mut done = Vec::new();
        let mut gone = Vec::new();
        // The requests of writes whose id another write's entry holds.
        let mut taken = HashSet::new();
        for (version, pending) in writes {
            // The cache at or past a write's version does not make the daemon
            // done with it: an entry refused at decode waits, pending, to be
            // parked while later writes of its key are applied.
            match self.done_with(p, version, &pending.request).await? {
                Done::Yes => done.push((version, pending)),
                Done::Gone if committed.is_some_and(|c| c >= version) => {
                    done.push((version, pending))
                }
                Done::Gone => gone.push((version, pending)),
                Done::Taken => {
                    taken.insert(pending.request.clone());
                    if committed.is_some_and(|c| c > version) {
                        done.push((version, pending))
                    } else {
                        gone.push((version, pending))
                    }
                }
                // The group has not passed it (or holds it pending, its entry
                // gone: a daemon may be applying it): later entries wait too.
                Done::NotYet => {
                    self.missing.lock().expect("lock").remove(&pending.request);
                    all = false;
                    break;
                }
            }
        }
        let missing = match self.gone_writes(coll, gone, &taken).await {
            Some(Gone {
                applied,
                missing,
                unconfirmed,
                stored,
            }) => {
                all &= !unconfirmed;
                // Settled applied from MongoDB's document: the cache may hold
                // an older version (lost with the entry, in a failover), and
                // no read after this one may answer it. So they are settled
                // only once the cache holds MongoDB's version; while Redis
                // refuses that fill (at its maxmemory, say), they wait for a
                // later look.
                let cached = match &stored {
                    Some((version, doc)) if committed.is_none_or(|c| c < *version) => {
                        self.fill(cache_key, *version, doc).await
                    }
                    _ => true,
                };
                if cached {
                    done.extend(applied);
                } else {
                    all = false;
                }
                missing
            }
            None => {
                all = false;
                Vec::new()
            }
        };
        if done.is_empty() && missing.is_empty() {
            return Ok(all);
        }
        let wanted: Vec<(Version, String)> = done
            .iter()
            .chain(&missing)
            .map(|(v, w)| (*v, w.request.clone()))
            .collect();
        let (from, covered) = self.letter_scan(&wanted);
        let Letters {
            mut reasons,
            complete,
            read_to,
        } = self.letters(p, &wanted, from, &taken).await?;
        if let Some(read_to) = read_to.filter(|_| !complete) {
            // The letters from `from` to `read_to` hold none of the writes
            // not found: their next look goes on from there (never back).
            let mut read = self.letters_read.lock().expect("lock");
            for (version, request) in &wanted {
                if covered.contains(version) && !reasons.contains_key(version) {
                    let at = read.entry(request.clone()).or_insert(read_to);
                    *at = (*at).max(read_to);
                }
            }
        }
        let lost_after = self.config.lost_write_after;
        let now = tokio::time::Instant::now();
        let stream = self.names.stream(p);
        let settle = done
            .into_iter()
            .map(|w| (w, false))
            .chain(missing.into_iter().map(|w| (w, true)));
        for ((version, Pending { request, state, .. }), is_missing) in settle {
            if state.borrow().is_some() {
                continue; // acked meanwhile
            }
            let result = match reasons.remove(&version) {
                Some(why) => AckResult::DeadLettered(why),
                // Its letter may be further on, or before where this look
                // started (`letter_scan`).
                None if !complete || !covered.contains(&version) => {
                    all = false;
                    continue;
                }
                None if !is_missing => AckResult::Committed(version),
                None => {
                    let since = *self
                        .missing
                        .lock()
                        .expect("lock")
                        .entry(request.clone())
                        .or_insert(now);
                    if now.duration_since(since) < lost_after {
                        all = false;
                        continue;
                    }
                    AckResult::Lost(format!("its entry is gone from {stream}"))
                }
            };
            self.missing.lock().expect("lock").remove(&request);
            let what = result.clone();
            if acks::settle(self, &request, version, result) {
                continue; // logged as a refusal nobody waits for
            }
            match &what {
                AckResult::Lost(_) => {
                    tracing::warn!(request = %request, entry = %version, "this write's entry is gone from its stream, no ack or dead letter came, and MongoDB holds an older version of its key: Redis lost it (a failover with redis.min_replicas_acked = 0, or the entry was deleted by hand); settled as lost")
                }
                AckResult::DeadLettered(why) => {
                    tracing::warn!(request = %request, entry = %version, reason = %why, "the ack of this write was lost (Redis lost data, or the ack stream was trimmed or holds another type); settled from the streams: it was dead-lettered")
                }
                AckResult::Committed(_) => {
                    tracing::warn!(request = %request, entry = %version, "the ack of this write was lost (Redis lost data, or the ack stream was trimmed or holds another type); settled from the streams: applied")
                }
            }
        }
        Ok(all)
    }

    /// Splits `gone` (writes of one key of `coll` whose entries are gone:
    /// trimmed by retention, deleted, or lost by Redis) into those MongoDB
    /// holds at their version or newer, confirmed by a majority where the
    /// write concern asks for one (the daemon applied them, or a newer write
    /// superseded them), with the primary's document for the cache; those
    /// only the primary holds yet (left for a later look); and the others:
    /// not applied, unless a daemon that read the entry before it went is
    /// applying it now (hence `client.lost_write_after_ms`). One MongoDB read
    /// (two with a majority to confirm: [`crate::apply::Store::find_settling`]),
    /// and none when `gone` is empty; `None` if MongoDB cannot
    /// be read (they stay unknown, and the writes whose entries are there are
    /// settled all the same). Also forgets the missing-since times of writes
    /// nobody waits for any more.
    async fn gone_writes(
        &self,
        coll: &str,
        gone: Vec<(Version, Pending)>,
        taken: &HashSet<String>,
    ) -> Option<Gone> {
        {
            let waiters = self.waiters.lock().expect("lock");
            self.missing
                .lock()
                .expect("lock")
                .retain(|request, _| waiters.contains_key(request));
            self.letters_read
                .lock()
                .expect("lock")
                .retain(|request, _| waiters.contains_key(request));
        }
        let Some(key) = gone.first().map(|(_, w)| w.key.clone()) else {
            return Some(Gone {
                applied: Vec::new(),
                missing: Vec::new(),
                unconfirmed: false,
                stored: None,
            });
        };
        let (confirmed, local) = match self.store.find_settling(coll, &key).await {
            Ok(docs) => docs,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask MongoDB about this handle's writes whose entries are gone; a later read looks again");
                return None;
            }
        };
        let version = |d: &Option<mongodb::bson::Document>| {
            d.as_ref().and_then(doc_version).unwrap_or_default()
        };
        let (confirmed, stored) = (version(&confirmed), version(&local));
        // At exactly a taken write's version, MongoDB holds the other write.
        let holds = |at: Version, (v, w): &(Version, Pending)| {
            at > *v || (at == *v && !taken.contains(&w.request))
        };
        let (applied, rest): (Vec<_>, Vec<_>) = gone.into_iter().partition(|w| holds(confirmed, w));
        let (held, missing): (Vec<_>, Vec<_>) = rest.into_iter().partition(|w| holds(stored, w));
        {
            let mut since = self.missing.lock().expect("lock");
            for (_, w) in &held {
                since.remove(&w.request);
            }
        }
        let settled = (!applied.is_empty()).then_some(local).flatten();
        Some(Gone {
            applied,
            missing,
            unconfirmed: !held.is_empty(),
            stored: settled.map(|d| (stored, d)),
        })
    }

    /// Whether the daemon is done with entry `id` of partition `p`, this
    /// handle's write `request`. It does every step of a write before its
    /// `XACK`, so it is done with an entry that the stream still holds, that
    /// the group delivered, and that is not pending (other entries pending
    /// before it, a poison write retrying say, do not hold it up). An entry
    /// of this handle's that the stream does not hold was added all the same
    /// (its admission returned its id): it is [`Done::Gone`], whatever the
    /// group says, unless the group still holds it pending (a daemon read it
    /// before it went and may be applying it now: [`Done::NotYet`]). An entry
    /// at its id that another write added (a promoted replica whose clock is
    /// behind may give out a lost entry's id again) is not its entry.
    pub(super) async fn done_with(&self, p: u32, id: Version, request: &str) -> Result<Done> {
        let stream = self.names.stream(p);
        let group = self.names.group();
        let mut conn = self.conn.clone();
        let at = id.to_stream_id();
        let upto: Value = cmd::xrev_upto(&stream, &at).query_async(&mut conn).await?;
        let entries = parse_entries(&upto);
        let Some(at_id) = entries.first().filter(|e| e.id == id) else {
            return self.pending_or(&stream, &group, id, Done::Gone).await;
        };
        let own = value(at_id, entry_field::CLIENT) == Some(self.client_id.as_bytes())
            && value(at_id, entry_field::REQUEST) == Some(request.as_bytes());
        if !own {
            // Whatever the group holds at this id is the other write.
            return Ok(Done::Taken);
        }
        // Delivered first, pending after: an entry leaves the pending list
        // only by its `XACK`, so delivered then not pending means done. The
        // other order took a delivery between the two reads (a daemon
        // catching up) for done, with the write not applied.
        if !super::sync::delivered_through(&mut conn, &stream, &group, id).await? {
            return Ok(Done::NotYet);
        }
        self.pending_or(&stream, &group, id, Done::Yes).await
    }

    /// [`Done::NotYet`] if the group holds entry `id` of `stream` pending (a
    /// daemon read it and may be applying it, even if it is gone since),
    /// else `otherwise`.
    async fn pending_or(
        &self,
        stream: &str,
        group: &str,
        id: Version,
        otherwise: Done,
    ) -> Result<Done> {
        let mut conn = self.conn.clone();
        let pending = match cmd::pending_at(stream, group, id)
            .query_async::<Value>(&mut conn)
            .await
        {
            Ok(Value::Array(a)) => !a.is_empty(),
            Ok(_) => false,
            // No group (or no stream): nothing holds it.
            Err(e) if crate::redis_conn::has_code(&e, "NOGROUP") => false,
            Err(e) => return Err(e.into()),
        };
        Ok(if pending { Done::NotYet } else { otherwise })
    }
}

/// The value of field `name` of an entry.
pub(super) fn value<'a>(e: &'a Entry, name: &str) -> Option<&'a [u8]> {
    e.fields
        .as_ref()?
        .iter()
        .find(|(f, _)| f == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}
