//! This handle's writes whose ack has not arrived: what a read of their key
//! waits for, or settles from the cache when the cache already shows a
//! version at least that new (the ack may have been lost). Keeps the maps of
//! pending writes and waiters bounded when acks are lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;

use super::{AckState, Collection, Inner, KeyId, Waiter};
use crate::error::{Error, Result};
use crate::protocol::{self, Version};

/// One unacked write of this handle: its request id, its ack state and its
/// key (to ask MongoDB about it if its entry is lost: [`super::overdue`]).
#[derive(Clone)]
pub(crate) struct Pending {
    pub(super) request: String,
    pub(super) state: AckState,
    pub(super) key: std::sync::Arc<protocol::Key>,
}

impl Inner {
    /// Registers the waiter of `request` (a write of key `id`): the receiver
    /// of its ack, and the token its ticket holds.
    pub(super) fn waiter(&self, request: &str, id: &KeyId) -> (AckState, Arc<()>) {
        let (tx, rx) = watch::channel(None);
        let held = Arc::new(());
        let waiter = (id.clone(), tx, Arc::downgrade(&held));
        self.waiters
            .lock()
            .expect("lock")
            .insert(request.to_string(), waiter);
        (rx, held)
    }

    /// Adds `pending`, this handle's write of `id` at `version`, unless its
    /// ack came already. Redis gives out an id once per stream, so another
    /// pending write of this handle at that version had its entry lost (a
    /// failover to a replica whose clock is behind gave the id out again):
    /// it moves to `displaced`, and the overdue sweep settles it as a read's
    /// look would (applied, parked or lost). Overwritten, its waiter stayed
    /// for the handle's life, and its refusal was never told.
    pub(super) fn add_pending(&self, id: KeyId, version: Version, pending: Pending) {
        let mut latest = self.latest.lock().expect("lock");
        if pending.state.borrow().is_some() {
            return;
        }
        // No clone of the key on this path (every submit): it is only
        // needed for a displaced write.
        let displaced = match latest.get_mut(&id) {
            Some(writes) => writes.insert(version, pending).map(|old| (id, old)),
            None => {
                latest.entry(id).or_default().insert(version, pending);
                None
            }
        };
        drop(latest);
        if let Some((id, old)) = displaced {
            tracing::warn!(request = %old.request, entry = %version.to_stream_id(), "Redis gave this write's entry id to a later write of this handle: its entry was lost (a failover with redis.min_replicas_acked = 0, or a clock behind); the overdue sweep settles it");
            self.displaced
                .lock()
                .expect("lock")
                .push((id, version, old));
        }
    }

    /// Forgets this handle's pending writes of `id` up to `upto`: the cache
    /// shows a version at least that new, so they are settled for reads even
    /// if their ack was lost. Keeps the pending and waiter maps bounded. A
    /// write whose ticket is still waiting keeps its waiter: the cache is
    /// written before the ack is sent, and dropping the sender here would end
    /// that `wait` with `Shutdown` instead of the ack.
    pub(super) fn forget(&self, id: &KeyId, upto: Version) {
        let mut latest = self.latest.lock().expect("lock");
        let Some(pending) = latest.get_mut(id) else {
            return;
        };
        let newer = pending.split_off(&Version {
            ms: upto.ms,
            seq: upto.seq.saturating_add(1),
        });
        let settled = std::mem::replace(pending, newer);
        if pending.is_empty() {
            latest.remove(id);
        }
        drop(latest);
        let mut waiters = self.waiters.lock().expect("lock");
        let mut kept = self.settled.lock().expect("lock");
        for Pending { request, state, .. } in settled.into_values() {
            drop(state);
            kept.push(request);
        }
        prune(&mut waiters, &mut kept);
    }

    /// Writes whose ack has not arrived, less the settled ones nobody waits
    /// for any more.
    pub(super) fn unacked(&self) -> usize {
        let mut waiters = self.waiters.lock().expect("lock");
        prune(&mut waiters, &mut self.settled.lock().expect("lock"));
        waiters.len()
    }
}

/// Drops the waiters of settled writes that no receiver is left for (their
/// tickets dropped); keeps the rest of `settled` for a later look.
fn prune(waiters: &mut HashMap<String, Waiter>, settled: &mut Vec<String>) {
    settled.retain(|request| match waiters.get(request) {
        Some((_, _, held)) if held.strong_count() == 0 => {
            waiters.remove(request);
            false
        }
        Some(_) => true,
        None => false, // its ack came after all
    });
}

impl Collection {
    /// Settles this handle's pending writes to the collection before a list:
    /// a key whose cache entry is at least as new as its newest pending write
    /// is settled at once (its ack may have been lost); the rest are waited
    /// for, bounded by `client.read_timeout_ms`.
    pub(super) async fn settle_pending(&self) -> Result<()> {
        let inner = self.inner();
        let pending: Vec<(KeyId, BTreeMap<Version, Pending>)> = inner
            .latest
            .lock()
            .expect("lock")
            .iter()
            .filter(|((c, _), m)| *c == self.coll.name && !m.is_empty())
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let partition = |id: &KeyId| protocol::partition_of(&id.0, &id.1, inner.config.partitions);
        let entries: Vec<(u32, String)> = pending
            .iter()
            .map(|(id, _)| {
                (
                    partition(id),
                    inner.names.cache(partition(id), &id.0, &id.1),
                )
            })
            .collect();
        let cached = inner.cached(&entries).await?;
        let mut wait = Vec::new();
        for ((id, writes), c) in pending.into_iter().zip(cached) {
            let newest = *writes.keys().next_back().expect("not empty");
            match c {
                Some(c) if c.version >= newest => {
                    drop(writes); // see `read_record`
                    inner.forget(&id, c.version)
                }
                _ => wait.push((id, writes)),
            }
        }
        // Each key's writes newest first, as a read waits for them: once the
        // newest is committed, an older write whose ack was lost is not waited for.
        let keys: Vec<Vec<AckState>> = wait
            .iter()
            .map(|(_, m)| m.values().rev().map(|p| p.state.clone()).collect())
            .collect();
        let waited = wait_keys(
            keys,
            inner.config.read_timeout,
            "this client's pending writes before listing",
        )
        .await;
        let Err(timeout @ Error::Timeout { .. }) = waited else {
            return waited;
        };
        // Acks overdue may have been lost: settled from the streams where
        // the daemon is done with their writes. Within one more
        // `client.read_timeout_ms`, and only until one key is found not
        // done (the call fails then anyway; the next call goes on).
        let settle = async {
            for (id, writes) in wait {
                // A key whose newest write is committed was waited for
                // already (its older writes' acks do not matter to a list);
                // looking at them could stop the look at an older write
                // the daemon still holds (refused, waiting to be parked).
                let newest_committed = writes.values().next_back().is_some_and(|w| {
                    matches!(
                        *w.state.borrow(),
                        Some(super::acks::AckResult::Committed(_))
                    )
                });
                if newest_committed {
                    continue;
                }
                let p = partition(&id);
                let entry = inner.names.cache(p, &id.0, &id.1);
                if !inner.settle_overdue(&id.0, p, &entry, writes).await? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        match tokio::time::timeout(inner.config.read_timeout, settle).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(false)) | Err(_) => Err(timeout),
        }
    }
}

/// Waits for the pending writes of every key of `keys` (each newest first:
/// [`wait_key`]), all within one `timeout`.
pub(super) async fn wait_keys(
    keys: Vec<Vec<AckState>>,
    timeout: std::time::Duration,
    what: &'static str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for newest_first in keys {
        wait_key_until(newest_first, deadline, timeout, what).await?;
    }
    Ok(())
}

/// Waits for one key's pending writes, newest first, all within `timeout`:
/// once one of them is committed, the cache holds its version or a newer
/// one, so the older ones are readable too, and their acks (one may have
/// been lost) are not waited for.
pub(super) async fn wait_key(
    newest_first: Vec<AckState>,
    timeout: std::time::Duration,
    what: &'static str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    wait_key_until(newest_first, deadline, timeout, what).await
}

/// [`wait_key`] until `deadline`; a timeout says `timeout` (the whole wait's).
async fn wait_key_until(
    newest_first: Vec<AckState>,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
    what: &'static str,
) -> Result<()> {
    for mut rx in newest_first {
        match tokio::time::timeout_at(deadline, rx.wait_for(|a| a.is_some())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(Error::Shutdown),
            Err(_) => {
                return Err(Error::Timeout {
                    after: timeout,
                    what,
                    accepted: None,
                })
            }
        }
        if matches!(*rx.borrow(), Some(super::acks::AckResult::Committed(_))) {
            return Ok(());
        }
    }
    Ok(())
}
