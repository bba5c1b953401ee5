//! The overdue sweep: settles, in the background, this handle's writes whose
//! acks are long overdue, so that the maps of pending writes stay bounded
//! when acks are lost and the keys are never read again (a submit-and-forget
//! caller of many distinct keys, an ack stream lost in a failover or taken
//! by another program's value). A read or a list of a key settles its own
//! writes ([`super::overdue`]); this does the same for the keys nobody reads,
//! as the Node package's sweep does.
//!
//! Every [`EVERY`], a write pending for longer than `client.write_timeout_ms`
//! since a sweep first saw it is looked at: its key's cache entry first (at
//! or past the key's newest pending write: settled for reads, and the
//! waiters of dropped tickets go), else the streams and MongoDB, as a read's
//! look does. At most [`KEYS_PER_SWEEP`] keys a sweep, each look within
//! `client.read_timeout_ms`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Inner, KeyId, Pending};
use crate::protocol::{self, Version};

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(5);
/// Keys looked at per sweep, at most; the rest wait for the next one.
const KEYS_PER_SWEEP: usize = 64;

/// Runs the sweep of the handle behind `inner` until `stop` (or the handle
/// is dropped).
pub(super) fn spawn(inner: Weak<Inner>, stop: CancellationToken) {
    tokio::spawn(async move {
        // When a sweep first saw each pending write (by request id).
        let mut seen: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let Some(inner) = inner.upgrade() else { return };
            let overdue = overdue(&inner, &mut seen);
            for (id, writes) in overdue {
                if stop.is_cancelled() {
                    return;
                }
                settle(&inner, id, writes).await;
            }
        }
    });
}

/// The keys with a write pending for longer than `client.write_timeout_ms`
/// since a sweep first saw it (at most [`KEYS_PER_SWEEP`]), with all their
/// pending writes; `seen` keeps only the writes still pending.
fn overdue(
    inner: &Inner,
    seen: &mut HashMap<String, Instant>,
) -> Vec<(KeyId, BTreeMap<Version, Pending>)> {
    let now = Instant::now();
    let latest = inner.latest.lock().expect("lock");
    let mut pending: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (id, writes) in latest.iter() {
        let mut late = false;
        for w in writes.values() {
            pending.insert(w.request.as_str());
            let first = *seen.entry(w.request.clone()).or_insert(now);
            late |= now.duration_since(first) >= inner.config.write_timeout;
        }
        if late && out.len() < KEYS_PER_SWEEP {
            out.push((id.clone(), writes.clone()));
        }
    }
    seen.retain(|request, _| pending.contains(request.as_str()));
    out
}

/// Settles the overdue writes of one key: from its cache entry when that is
/// at or past the newest of them, else by a look at the streams and MongoDB
/// within `client.read_timeout_ms`. Failures wait for the next sweep.
async fn settle(inner: &Inner, id: KeyId, writes: BTreeMap<Version, Pending>) {
    let Some(newest) = writes.keys().next_back().copied() else {
        return;
    };
    let p = protocol::partition_of(&id.0, &id.1, inner.config.partitions);
    let entry = inner.names.cache(p, &id.0, &id.1);
    // Read as a read does, with the partition count checked: a handle on a
    // count the namespace no longer records looks at no stream.
    match inner.cached_one(p, &entry).await {
        Ok(Some(c)) if c.version >= newest => {
            drop(writes);
            inner.forget(&id, c.version);
        }
        Ok(_) => {
            if let Err(e) = inner.settle_within(&id.0, p, &entry, writes).await {
                tracing::debug!(error = %e, "overdue sweep: a look failed; the next sweep tries again");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "overdue sweep: cannot read the cache; the next sweep tries again")
        }
    }
}
