//! The dispatcher's queues: one queue per key, in id order, the keys with
//! work in flight, and the keys ready for the next round. A key is never in
//! two rounds (or a round and its own worker) at once, which is what keeps
//! its writes in stream order.

use std::collections::{HashMap, HashSet, VecDeque};

use super::round::Segment;
use super::{Job, KeyId};
use crate::config::{CollectionConfig, Config, Layout, WriteMode};
use crate::protocol::Op;

/// The dispatcher's state: per-key queues in id order, the keys with work in
/// flight, and the keys ready for the next round.
#[derive(Default)]
pub(super) struct Keys {
    queues: HashMap<KeyId, VecDeque<Job>>,
    busy: HashSet<KeyId>,
    pub(super) ready: VecDeque<KeyId>,
    /// Keys whose segment was in a round that failed as a whole, and their
    /// collection's `Store::answered` count at that failure.
    failed: HashMap<KeyId, u64>,
    /// Keys whose last write MongoDB refused for good, with writes still
    /// queued: their next write gets one attempt for a permanent failure
    /// ([`super::key_worker::run_key`]). Forgotten once the key applies a
    /// write or its queue runs empty.
    refused: HashSet<KeyId>,
}

impl Keys {
    pub(super) fn push(&mut self, job: Job) {
        let id = (job.write.collection.clone(), job.write.key.canonical());
        let q = self.queues.entry(id.clone()).or_default();
        insert_in_order(q, job);
        if q.len() == 1 && !self.busy.contains(&id) {
            self.ready.push_back(id);
        }
    }

    /// Marks `id` idle again; it is ready if it has queued work.
    pub(super) fn release(&mut self, id: KeyId) {
        self.failed.remove(&id);
        self.busy.remove(&id);
        if self.queues.get(&id).is_some_and(|q| !q.is_empty()) {
            self.ready.push_back(id);
        } else {
            self.queues.remove(&id);
            self.refused.remove(&id);
        }
    }

    /// Marks `id` idle again after its own worker ran; `refused`: the last
    /// write it settled was refused for good.
    pub(super) fn release_worked(&mut self, id: KeyId, refused: bool) {
        if refused {
            self.refused.insert(id.clone());
        } else {
            self.refused.remove(&id);
        }
        self.release(id);
    }

    /// Whether `id`'s last write was refused for good (see `refused`).
    pub(super) fn was_refused(&self, id: &KeyId) -> bool {
        self.refused.contains(id)
    }

    /// Records that `id`'s segment was in a round that failed as a whole
    /// (a timeout, a lost connection), with `answered` its collection's
    /// count of answered operations now. True if it failed so before and
    /// MongoDB answered other operations on that collection in between: the
    /// failure is then the write's own (a statement the server never
    /// finishes), and requeueing it would fail every round it joins for
    /// ever. It goes to its key's worker instead, whose retries are bounded.
    /// In an outage nothing is answered, and the segment is requeued as
    /// before.
    pub(super) fn failed_again(&mut self, id: &KeyId, answered: u64) -> bool {
        match self.failed.insert(id.clone(), answered) {
            Some(before) if answered > before => {
                self.failed.remove(id);
                true
            }
            _ => false,
        }
    }

    /// Puts a segment back at the head of its key's queue (its bulk failed
    /// as a whole); the key is ready again, for a smaller round.
    pub(super) fn requeue(&mut self, seg: Segment) {
        let q = self.queues.entry(seg.id.clone()).or_default();
        for job in seg.jobs {
            insert_in_order(q, job);
        }
        self.busy.remove(&seg.id);
        self.ready.push_back(seg.id);
    }

    /// The next segment of up to `max` ready keys, marking them busy.
    pub(super) fn take_round(&mut self, config: &Config, max: usize) -> Vec<Segment> {
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
            let n = match config.collection(&id.0) {
                Some(coll) => run_len(coll, q.iter()),
                None => 1,
            };
            let jobs: Vec<Job> = q.drain(..n.min(q.len())).collect();
            if jobs.is_empty() {
                continue;
            }
            self.busy.insert(id.clone());
            segs.push(Segment { id, jobs });
        }
        segs
    }
}

/// Puts `job` in its key's queue in id order, whatever order entries arrive
/// in: after the group went back (`XGROUP SETID`, a failover to a replica
/// behind) entries are delivered again behind newer ones of their key, and a
/// run coalesces into its last write, acking the others with its version
/// (an older one, before this). An entry delivered twice sits beside itself.
fn insert_in_order(q: &mut VecDeque<Job>, job: Job) {
    let at = q.iter().rposition(|j| j.id <= job.id).map_or(0, |i| i + 1);
    q.insert(at, job);
}

/// How many of a key's queued writes (`jobs`, oldest first) one apply of the
/// last of them stands for: consecutive puts to a `replace` collection are
/// coalesced, and anything else runs alone.
///
/// A put of the `payload` layout replaces the whole payload, so the last put
/// stands for every put before it. A put of the `fields` layout sets only
/// the fields it sends (`$set`), so the last stands for the earlier ones only
/// where it sends every field they sent: the run ends before a put that
/// leaves out a field of an earlier one (`{a:1}` then `{b:2}` both apply, in
/// order). The adapters send whole rows, which always coalesce.
pub(super) fn run_len<'a>(
    coll: &CollectionConfig,
    jobs: impl IntoIterator<Item = &'a Job>,
) -> usize {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else { return 0 };
    if coll.mode != WriteMode::Replace || first.write.op != Op::Put {
        return 1;
    }
    let mut sent = first.write.doc.as_ref();
    let mut n = 1;
    for job in jobs {
        let (Op::Put, Some(next)) = (job.write.op, job.write.doc.as_ref()) else {
            break;
        };
        let covers = || {
            sent.into_iter()
                .flat_map(|d| d.keys())
                .all(|k| next.contains_key(k))
        };
        if coll.layout == Layout::Fields && !covers() {
            break;
        }
        // `next` sends every field sent so far: it is the union now.
        sent = Some(next);
        n += 1;
    }
    n
}
