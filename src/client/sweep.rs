//! The overdue sweep: settles, in the background, this handle's writes whose
//! acks are long overdue, so that the maps of pending writes do not grow for
//! the life of the handle when acks are lost and the keys are never read
//! again (a submit-and-forget caller of many distinct keys, an ack stream
//! lost in a failover or taken by another program's value). A read or a
//! list of a key settles its own writes ([`super::overdue`]); this does the
//! same for the keys nobody reads, and for writes whose entry id Redis gave
//! out again to a later write of this handle (their entries were lost).
//!
//! Every [`EVERY`], the keys with a write pending for longer than
//! `client.write_timeout_ms` since a sweep first saw it are read from the
//! cache, all in one round trip per [`CACHE_BATCH`] keys: a key whose entry
//! is at or past its newest pending write is settled for reads at once, and
//! the waiters of its dropped tickets go. The others get the read's look at
//! the streams and MongoDB, at most [`LOOKS_PER_SWEEP`] a sweep, the keys
//! looked at longest ago first (so keys that cannot settle yet, a partition
//! nobody owns, do not hide the others), each look within
//! `client.read_timeout_ms`. The sweep holds the handle only while it works
//! on one batch or key: a dropped handle ends it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Inner, KeyId, Pending};
use crate::protocol::{self, Version};

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(5);
/// Cache entries read per round trip.
const CACHE_BATCH: usize = 256;
/// Looks at the streams and MongoDB per sweep, at most.
const LOOKS_PER_SWEEP: usize = 64;

/// What the sweep remembers between runs.
#[derive(Default)]
struct Memory {
    /// When a sweep first saw each pending write (by request id).
    seen: HashMap<String, Instant>,
    /// When each key was last looked at (the streams and MongoDB).
    looked: HashMap<KeyId, Instant>,
}

/// Runs the sweep of the handle behind `inner` until `stop` (or the handle
/// is dropped).
pub(super) fn spawn(inner: Weak<Inner>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut memory = Memory::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let overdue = match inner.upgrade() {
                Some(i) => overdue(&i, &mut memory),
                None => return,
            };
            let unsettled = settle_from_cache(&inner, overdue).await;
            look(&inner, &mut memory, unsettled).await;
            look_displaced(&inner).await;
        }
    });
}

/// The keys with a write pending for longer than `client.write_timeout_ms`
/// since a sweep first saw it, with all their pending writes; `memory`
/// keeps only the writes and keys still pending.
fn overdue(inner: &Inner, memory: &mut Memory) -> Vec<(KeyId, BTreeMap<Version, Pending>)> {
    let now = Instant::now();
    let latest = inner.latest.lock().expect("lock");
    let mut pending: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (id, writes) in latest.iter() {
        let mut late = false;
        for w in writes.values() {
            pending.insert(w.request.as_str());
            let first = *memory.seen.entry(w.request.clone()).or_insert(now);
            late |= now.duration_since(first) >= inner.config.write_timeout;
        }
        if late {
            out.push((id.clone(), writes.clone()));
        }
    }
    memory
        .seen
        .retain(|request, _| pending.contains(request.as_str()));
    memory.looked.retain(|id, _| latest.contains_key(id));
    out
}

/// Settles, for reads, the keys whose cache entry is at or past their
/// newest pending write; returns the others. A batch that cannot be read
/// is left for the next sweep.
async fn settle_from_cache(
    inner: &Weak<Inner>,
    keys: Vec<(KeyId, BTreeMap<Version, Pending>)>,
) -> Vec<(KeyId, BTreeMap<Version, Pending>)> {
    let mut unsettled = Vec::new();
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let batch: Vec<_> = keys.by_ref().take(CACHE_BATCH).collect();
        let Some(inner) = inner.upgrade() else {
            return Vec::new();
        };
        let entries: Vec<(u32, String)> = batch
            .iter()
            .map(|(id, _)| {
                let p = protocol::partition_of(&id.0, &id.1, inner.config.partitions);
                (p, inner.names.cache(p, &id.0, &id.1))
            })
            .collect();
        // As a read reads, the partition count checked: a handle on a count
        // the namespace no longer records settles nothing here.
        let cached = tokio::time::timeout(inner.config.read_timeout, inner.cached(&entries)).await;
        let Ok(Ok(cached)) = cached else {
            tracing::debug!("overdue sweep: cannot read the cache; the next sweep tries again");
            return Vec::new();
        };
        for ((id, writes), c) in batch.into_iter().zip(cached) {
            let newest = writes.keys().next_back().copied();
            match (c, newest) {
                (Some(c), Some(newest)) if c.version >= newest => {
                    drop(writes);
                    inner.forget(&id, c.version);
                }
                _ => unsettled.push((id, writes)),
            }
        }
    }
    unsettled
}

/// The read's look for at most [`LOOKS_PER_SWEEP`] of `keys`, those looked
/// at longest ago (or never) first.
async fn look(
    inner: &Weak<Inner>,
    memory: &mut Memory,
    mut keys: Vec<(KeyId, BTreeMap<Version, Pending>)>,
) {
    keys.sort_by_key(|(id, _)| memory.looked.get(id).copied());
    for (id, writes) in keys.into_iter().take(LOOKS_PER_SWEEP) {
        memory.looked.insert(id.clone(), Instant::now());
        let Some(inner) = inner.upgrade() else { return };
        let p = protocol::partition_of(&id.0, &id.1, inner.config.partitions);
        let entry = inner.names.cache(p, &id.0, &id.1);
        if let Err(e) = inner.settle_within(&id.0, p, &entry, writes).await {
            tracing::debug!(error = %e, "overdue sweep: a look failed; the next sweep tries again");
        }
        drop::<Arc<Inner>>(inner);
    }
}

/// The read's look for each write whose entry id Redis gave out again
/// ([`Inner::add_pending`]), on its own (the pending map holds the later
/// write at that version), at most [`LOOKS_PER_SWEEP`] a sweep, those
/// looked at longest ago first; the settled ones leave the list.
async fn look_displaced(inner: &Weak<Inner>) {
    let writes: Vec<(KeyId, Version, Pending)> = {
        let Some(inner) = inner.upgrade() else { return };
        let mut displaced = inner.displaced.lock().expect("lock");
        displaced.retain(|(_, _, w)| w.state.borrow().is_none());
        // Those looked at now go to the back: writes that cannot settle yet
        // do not hide the others.
        let n = displaced.len().min(LOOKS_PER_SWEEP);
        let now: Vec<_> = displaced.drain(..n).collect();
        displaced.extend(now.iter().cloned());
        now
    };
    for (id, version, write) in writes {
        let Some(inner) = inner.upgrade() else { return };
        let p = protocol::partition_of(&id.0, &id.1, inner.config.partitions);
        let entry = inner.names.cache(p, &id.0, &id.1);
        if let Err(e) = inner
            .settle_within(&id.0, p, &entry, [(version, write)])
            .await
        {
            tracing::debug!(error = %e, "overdue sweep: a look failed; the next sweep tries again");
        }
        drop::<Arc<Inner>>(inner);
    }
}
