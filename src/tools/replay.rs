//! `writ replay`: re-applies retained stream entries in a range. Idempotent:
//! each entry applies at its own version through the sequence guard, so
//! entries MongoDB already holds (or holds newer) are skipped and counted.
//!
//! A partition whose daemons have not applied everything before the range
//! is replayed from its oldest unapplied entry instead: applied first, a
//! write in the range would make an older unapplied write of its key stale
//! when a daemon reaches it (its fields lost in the `fields` layout, the
//! wrong value standing in `insert_once`), as `dlq retry` keeps a letter
//! for the same reason.
//!
//! An entry a daemon parked is settled as `writ dlq retry` settles its
//! letter (removed when applied or superseded, kept otherwise), so a
//! replay neither calls an overtaken write `stale` nor leaves the letters of
//! what it applied behind; and as `dlq retry` keeps a letter whose key has
//! an older letter in an ordered collection, such an entry is not applied.

use std::collections::{BTreeMap, HashMap, HashSet};

use redis::Value;

use super::dlq::{self, LetterHead};
use super::Tools;
use crate::error::Result;
use crate::protocol::{self, Version};
use crate::stream::{cmd, parse_entries, Fields, PageSize};

/// About the most entry bytes one page of a replay reads, and its most
/// entries.
const PAGE_BYTES: usize = 4 << 20;
const MAX_PAGE: u64 = 500;
/// Most dead letters one page reads (letter heads are kept, not documents).
const LETTERS_PAGE: usize = 100;

/// What a replay did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplaySummary {
    /// Entries read in the range.
    pub read: u64,
    /// Entries of other collections, left alone.
    pub filtered: u64,
    /// Outcome counts (`applied`, `stale`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Entries that could not apply (already dead-lettered at the time, or
    /// bad), and parked entries whose letter stays (a newer write of their
    /// key stood first, in the `fields` layout or `insert_once`, or an older
    /// letter of their key is still there).
    pub rejected: u64,
    /// The first [`MAX_NAMED`] of them: which, and why.
    pub rejections: Vec<Rejection>,
    /// Entries before `from` that a partition's earlier start reached and
    /// that could not apply either: writes the daemons had not applied yet,
    /// which they park themselves, so they do not make the replay
    /// incomplete. The first [`MAX_NAMED`].
    pub rejected_before_range: Vec<Rejection>,
    /// Dead letters of entries the replay applied, or found superseded, and
    /// removed as `writ dlq retry` would.
    pub letters_dropped: u64,
    /// Partitions replayed from an unapplied entry older than `from`, and
    /// that entry's id (the module header says why).
    pub started_earlier: BTreeMap<u32, String>,
    /// Partitions whose stream may no longer hold the whole range:
    /// retention trimmed it up to a first entry after `from` (or an `XDEL`
    /// removed entries in it), so writes there, if any, were not replayed.
    pub trimmed: Vec<u32>,
}

/// How many rejected entries a summary names.
pub const MAX_NAMED: usize = 100;

/// An entry a replay could not apply.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// Its partition.
    pub partition: u32,
    /// Its id in the partition's stream.
    pub id: String,
    /// Why (the refusal's reason and what to do).
    pub reason: String,
}

type ByWrite = HashMap<(String, Version), Vec<LetterHead>>;
type ByKey = HashMap<(String, Vec<u8>), Vec<LetterHead>>;

/// What one replay works from: its range, its filter and the letters of
/// the parked writes.
struct Run<'a> {
    from: Version,
    collection: Option<&'a str>,
    /// The letters there are, by their write's stream and id.
    parked: ByWrite,
    /// The same letters by their write's stream and key (as sent), in write
    /// order: a parked entry waits for an older letter of its key, as
    /// `writ dlq retry` does.
    by_key: ByKey,
    /// Letters this run removed.
    dropped: std::sync::Mutex<HashSet<String>>,
}

impl Run<'_> {
    /// A letter still there, other than `own`, that parks an older write of
    /// `me`'s key, when `me`'s collection needs its writes in order.
    fn older_letter(&self, me: &LetterHead, own: &[&LetterHead]) -> Option<&LetterHead> {
        let key = me.key.clone()?;
        let dropped = self.dropped.lock().expect("lock");
        self.by_key
            .get(&(me.source.clone(), key))?
            .iter()
            .find(|h| {
                h.is_older_write_of(me)
                    && !dropped.contains(&h.id)
                    && !own.iter().any(|o| o.id == h.id)
            })
    }
}

impl Tools {
    /// Replays `[from, to]` of every partition (optionally one collection).
    pub async fn replay(
        &self,
        from: Version,
        to: Option<Version>,
        collection: Option<&str>,
    ) -> Result<ReplaySummary> {
        self.check_collection(collection)?;
        let mut sum = ReplaySummary::default();
        let (parked, by_key) = self.parked_writes().await?;
        let run = Run {
            from,
            collection,
            parked,
            by_key,
            dropped: Default::default(),
        };
        // Without `--to`, each partition's range ends at its newest entry as
        // of the start: writers keep adding, and a replay must end.
        let mut ends = Vec::with_capacity(self.config.partitions as usize);
        for p in 0..self.config.partitions {
            let stream = self.names.stream(p);
            if self.removed_since(&stream, from).await? {
                sum.trimmed.push(p);
            }
            ends.push(match to {
                Some(v) => Some(v),
                None => self.newest(&stream).await?,
            });
        }
        for (p, end) in (0..self.config.partitions).zip(ends) {
            match end {
                Some(end) if end >= from => self.replay_partition(&run, p, end, &mut sum).await?,
                _ => {}
            }
        }
        Ok(sum)
    }

    /// Replays partition `p` up to `end`, from the range's start or its
    /// oldest unapplied entry, whichever is older.
    async fn replay_partition(
        &self,
        run: &Run<'_>,
        p: u32,
        end: Version,
        sum: &mut ReplaySummary,
    ) -> Result<()> {
        let stream = self.names.stream(p);
        let to = end.to_stream_id();
        let mut conn = self.conn.clone();
        let begin = match crate::status::oldest_unapplied(&mut conn, &self.names, p).await? {
            Some(oldest) if oldest < run.from => {
                sum.started_earlier.insert(p, oldest.to_stream_id());
                oldest
            }
            _ => run.from,
        };
        let mut start = begin.to_stream_id();
        // The first id this page may hold: what was read so far is before
        // it. Retention keeps trimming while a long replay runs; entries it
        // removed ahead of the replay are missed, and said so.
        let mut next = begin;
        // Pages of about 4 MiB: entries may be up to 16 MiB each.
        let mut page = PageSize::new(PAGE_BYTES, 1, MAX_PAGE);
        loop {
            // A stop (SIGINT, SIGTERM, SIGHUP) ends the replay here too, not
            // only inside an apply: pages of entries of other collections
            // apply nothing.
            if self.abort.is_cancelled() {
                return Err(crate::Error::Shutdown);
            }
            let v: Value = cmd::xrange(&stream, &start, &to, Some(page.next()))
                .query_async(&mut conn)
                .await?;
            // Only the range counts: what retention trimmed before it (an
            // earlier start's entries the daemons applied meanwhile) was
            // applied.
            if !sum.trimmed.contains(&p) && self.removed_since(&stream, next.max(run.from)).await? {
                sum.trimmed.push(p);
            }
            let entries = parse_entries(&v);
            let Some(last) = entries.last().map(|e| e.id) else {
                return Ok(());
            };
            page.saw(&entries);
            for e in &entries {
                sum.read += 1;
                let Some(fields) = &e.fields else { continue };
                if let Some(c) = run.collection {
                    let coll = fields
                        .iter()
                        .find(|(k, _)| k.as_slice() == protocol::field::COLLECTION.as_bytes());
                    if coll.is_none_or(|(_, v)| v.as_slice() != c.as_bytes()) {
                        sum.filtered += 1;
                        continue;
                    }
                }
                self.replay_entry(run, p, &stream, e.id, fields, sum)
                    .await?;
            }
            start = format!("({}", last.to_stream_id());
            next = Version {
                ms: last.ms,
                seq: last.seq.saturating_add(1),
            };
        }
    }

    /// Applies entry `id` of partition `p` and counts what it did.
    async fn replay_entry(
        &self,
        run: &Run<'_>,
        p: u32,
        stream: &str,
        id: Version,
        fields: &Fields,
        sum: &mut ReplaySummary,
    ) -> Result<()> {
        // An entry a daemon parked: its letters go as `dlq retry` would drop
        // them, or stay, and the entry counts as not applied (a newer write
        // stood first: `stale` would say MongoDB holds it). Only letters of
        // this entry's own write: another write may have come to hold its
        // id (a promoted replica whose clock is behind).
        let own = dlq::request_of(fields);
        let letters: Vec<&LetterHead> = run
            .parked
            .get(&(stream.to_string(), id))
            .into_iter()
            .flatten()
            .filter(|h| h.request.is_none() || h.request == own)
            .collect();
        // And, as `dlq retry` keeps it, one that an older letter of its key
        // still parks: applied first, it would make that write stale.
        let waits = letters
            .iter()
            .find_map(|me| Some((run.older_letter(me, &letters)?, me)));
        let applied = match waits {
            Some((older, me)) => Err(dlq::older_letter_waits(&older.id, &me.id)),
            None => Ok(self
                .apply_entry(Some(p), self.config.partitions, id, fields)
                .await),
        };
        let (settled, kept) = match applied {
            Err(waits) => (Err(waits), true),
            Ok(Ok(r)) => {
                let mut settled = Ok(r.outcome);
                for letter in letters {
                    match self.settle_letter(&letter.id, fields, id, r).await? {
                        Ok(_) => {
                            sum.letters_dropped += 1;
                            run.dropped.lock().expect("lock").insert(letter.id.clone());
                        }
                        Err(kept) => settled = Err(format!("dead letter {}: {kept}", letter.id)),
                    }
                }
                let kept = settled.is_err();
                (settled, kept)
            }
            Ok(Err(crate::Error::Rejected(r))) => (Err(r.to_string()), false),
            Ok(Err(err)) => return Err(err),
        };
        let reason = match settled {
            Ok(o) => {
                *sum.outcomes.entry(o.as_str().to_string()).or_default() += 1;
                return Ok(());
            }
            Err(reason) => reason,
        };
        tracing::warn!(partition = p, entry = %id.to_stream_id(), reason = %reason, "replay could not apply an entry");
        // A kept letter makes the replay incomplete wherever its entry is:
        // the daemons parked it already.
        let named = if id < run.from && !kept {
            &mut sum.rejected_before_range
        } else {
            sum.rejected += 1;
            &mut sum.rejections
        };
        if named.len() < MAX_NAMED {
            named.push(Rejection {
                partition: p,
                id: id.to_stream_id(),
                reason,
            });
        }
        Ok(())
    }

    /// The dead letters there are, by their write's stream and id, and by
    /// its stream and key (in write order).
    async fn parked_writes(&self) -> Result<(ByWrite, ByKey)> {
        let Some(through) = self.dlq_newest().await? else {
            return Ok(Default::default());
        };
        let (mut parked, mut by_key) = (ByWrite::new(), ByKey::new());
        // In write order ([`Tools::dlq_heads`]).
        for h in self.dlq_heads(through, LETTERS_PAGE).await? {
            let Some(write) = h.write else { continue };
            if let Some(key) = &h.key {
                by_key
                    .entry((h.source.clone(), key.clone()))
                    .or_default()
                    .push(h.clone());
            }
            parked.entry((h.source.clone(), write)).or_default().push(h);
        }
        Ok((parked, by_key))
    }

    /// The id of `stream`'s newest entry, if it has any.
    async fn newest(&self, stream: &str) -> Result<Option<Version>> {
        let mut conn = self.conn.clone();
        let v: Value = cmd::newest(stream).query_async(&mut conn).await?;
        Ok(parse_entries(&v).first().map(|e| e.id))
    }

    /// Whether `stream` may have lost entries at or after `from`: trimmed
    /// from before its first retained entry, or deleted (`XINFO STREAM`).
    async fn removed_since(&self, stream: &str, from: Version) -> Result<bool> {
        let mut conn = self.conn.clone();
        let exists: bool = cmd::exists(stream).query_async(&mut conn).await?;
        if !exists {
            // No stream: nothing was ever there to remove.
            return Ok(false);
        }
        let info: Value = cmd::info(stream).query_async(&mut conn).await?;
        let text = |v: &Value| redis::from_redis_value::<String>(v.clone()).ok();
        let pairs: Vec<(Value, Value)> = match info {
            Value::Map(pairs) => pairs,
            Value::Array(items) => items
                .chunks(2)
                .filter(|kv| kv.len() == 2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect(),
            _ => Vec::new(),
        };
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some(name))
                .map(|(_, v)| v)
        };
        let number =
            |name: &str| get(name).and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok());
        let version = |v: Option<&Value>| v.and_then(text).and_then(|s| s.parse::<Version>().ok());
        // Trimming (retention's XTRIM MINID) removes the oldest entries and
        // leaves no id behind, but counts: entries-added > length. Then
        // anything before the first entry still there may have been removed;
        // in a stream trimmed empty (an idle partition), anything up to its
        // last id.
        let trimmed = number("entries-added") > number("length")
            && match get("first-entry") {
                Some(Value::Array(e)) => version(e.first()).is_none_or(|first| from < first),
                _ => version(get("last-generated-id")).is_none_or(|last| from <= last),
            };
        // XDEL leaves its newest removed id.
        let deleted = version(get("max-deleted-entry-id"))
            .is_some_and(|d| d >= from && d != Version { ms: 0, seq: 0 });
        Ok(trimmed || deleted)
    }
}
