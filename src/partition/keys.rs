//! The dispatcher's queues: one FIFO per key, the keys with work in flight,
//! and the keys ready for the next round. A key is never in two rounds (or a
//! round and its own worker) at once, which is what keeps its writes in
//! stream order.

use std::collections::{HashMap, HashSet, VecDeque};

use super::round::Segment;
use super::{Job, KeyId};
use crate::config::Config;
use crate::protocol;

/// The dispatcher's state: per-key FIFO queues, the keys with work in
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
        q.push_back(job);
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
        for job in seg.jobs.into_iter().rev() {
            q.push_front(job);
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
            segs.push(Segment { id, jobs });
        }
        segs
    }
}
