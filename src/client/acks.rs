//! The ack listener: one task per handle reads the handle's ack stream with
//! `XREAD BLOCK`, resuming after the last id it saw (across reconnects), and
//! wakes the tickets and reads waiting for each request.

use std::sync::Weak;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::ack::{Ack, Outcome};
use crate::backoff::Backoff;
use crate::error::Result;
use crate::protocol::Version;
use crate::stream::parse_read_reply;

/// What a waiter learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckResult {
    /// Durable and readable at this version (or newer).
    Committed(Version),
    /// Parked in the dead-letter stream, with the reason.
    DeadLettered(String),
    /// Lost by Redis before any daemon applied it ([`super::overdue`]), with
    /// where its entry went missing.
    Lost(String),
}

const BLOCK: Duration = Duration::from_millis(1000);

pub(super) async fn spawn_listener(inner: Weak<Inner>, stop: CancellationToken) -> Result<()> {
    let (config, stream) = {
        let i = inner.upgrade().expect("called during connect");
        (i.config.clone(), i.names.acks(&i.client_id))
    };
    let mut conn = crate::redis_conn::connect(&config, BLOCK).await?;
    tokio::spawn(async move {
        let mut last = "0".to_string();
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            let cmd = crate::stream::cmd::xread_blocking(&stream, &last, 512, BLOCK);
            let read = cmd.query_async::<redis::Value>(&mut conn);
            let v = tokio::select! {
                v = read => v,
                _ = stop.cancelled() => return,
            };
            let Some(inner) = inner.upgrade() else { return };
            match v {
                Ok(v) => {
                    backoff.reset();
                    for entry in parse_read_reply(&v) {
                        last = entry.id.to_stream_id();
                        if let Some(ack) = entry.fields.as_deref().and_then(Ack::parse) {
                            deliver(&inner, ack);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading acks failed; reconnecting and resuming after the last ack seen");
                    drop(inner);
                    if !backoff.sleep(&stop).await {
                        return;
                    }
                }
            }
        }
    });
    Ok(())
}

/// Wakes the waiter of `ack`'s request and drops the write from the pending
/// ones of its key (also for an ack settled from the streams: [`super::overdue`]).
pub(super) fn deliver(inner: &Inner, ack: Ack) {
    let result = match ack.outcome {
        Outcome::DeadLettered => AckResult::DeadLettered(ack.reason.unwrap_or_default()),
        _ => AckResult::Committed(ack.version),
    };
    settle(inner, &ack.request, ack.entry, result);
}

/// Wakes the waiter of `request` (the write of entry `entry`) with `result`
/// and drops the write from the pending ones of its key. A refusal (dead
/// letter, lost write) nobody waits for any more is logged and counted
/// ([`Writ::unheard_refusals`]): the caller of a `submit` that dropped its
/// ticket would otherwise never learn it. `true` when it logged so.
pub(super) fn settle(inner: &Inner, request: &str, entry: Version, result: AckResult) -> bool {
    let refused = match &result {
        AckResult::Committed(_) => None,
        AckResult::DeadLettered(why) => Some(("dead-lettered", why.clone())),
        AckResult::Lost(why) => Some(("lost", why.clone())),
    };
    let Some((key, tx, held)) = inner.waiters.lock().expect("lock").remove(request) else {
        return match refused {
            Some(refused) => {
                unheard(inner, request, entry, refused);
                true
            }
            None => false,
        };
    };
    // Wake waiters first: submit checks the receiver under the `latest` lock.
    let _ = tx.send(Some(result));
    {
        let mut latest = inner.latest.lock().expect("lock");
        if let Some(pending) = latest.get_mut(&key) {
            // Another write may hold `entry` now ([`Inner::add_pending`]).
            if pending.get(&entry).is_some_and(|p| p.request == request) {
                pending.remove(&entry);
            }
            if pending.is_empty() {
                latest.remove(&key);
            }
        }
    }
    match refused.filter(|_| held.strong_count() == 0) {
        Some(refused) => {
            unheard(inner, request, entry, refused);
            true
        }
        None => false,
    }
}

/// A refusal no ticket receives: its ticket was dropped (a `submit` nobody
/// waits for), or its ack came twice.
fn unheard(inner: &Inner, request: &str, entry: Version, (what, why): (&str, String)) {
    inner
        .unheard_refusals
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(request, entry = %entry.to_stream_id(), outcome = what, reason = %why, "a write of this handle was {what}, and no caller waits for its ticket: its value was not stored (`writ dlq list` shows dead letters by their write's id)");
}

impl super::Writ {
    /// Writes of this handle refused (dead-lettered, or lost by Redis) after
    /// their tickets were dropped: each is also logged. A process that
    /// submits without waiting learns of its refused writes here.
    pub fn unheard_refusals(&self) -> u64 {
        self.inner
            .unheard_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
