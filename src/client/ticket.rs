//! A ticket for a submitted write: its version, and a way to await its ack.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::acks::AckResult;
use super::overdue::Done;
use super::pending::Pending;
use super::Inner;
use crate::error::{Accepted, Error, Result};
use crate::protocol::Version;

/// Returned by `submit`: the write is in the stream; await [`Ticket::wait`]
/// for it to be durable and readable.
pub struct Ticket {
    version: Version,
    rx: watch::Receiver<Option<AckResult>>,
    timeout: Duration,
    origin: Origin,
}

/// Where a ticket's write went: the handle (kept alive, so that its ack
/// listener runs while the ticket is awaited) and what settles the write
/// from the streams if its ack never comes.
pub(super) struct Origin {
    pub(super) inner: Arc<Inner>,
    pub(super) collection: String,
    pub(super) partition: u32,
    pub(super) cache_key: String,
    pub(super) pending: Pending,
    /// Held while the ticket lives: a refusal after it is dropped is
    /// logged and counted ([`super::acks::settle`]).
    pub(super) _held: Arc<()>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("version", &self.version)
            .field("collection", &self.origin.collection)
            .field("acked", &self.rx.borrow().is_some())
            .finish()
    }
}

impl Ticket {
    pub(super) fn new(
        version: Version,
        rx: watch::Receiver<Option<AckResult>>,
        timeout: Duration,
        origin: Origin,
    ) -> Ticket {
        Ticket {
            version,
            rx,
            timeout,
            origin,
        }
    }

    /// The write's version (its stream entry id).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Waits for the ack, at most the configured write timeout. Returns the
    /// version now readable (this write's, or a newer one that superseded it).
    ///
    /// A ticket keeps its handle's connections and ack listener alive: it
    /// can be awaited after every clone of the [`crate::Writ`] is dropped.
    /// When no ack came within the bound, the ticket settles the write from
    /// the streams if the daemon is done with it (its ack was lost: a Redis
    /// failover, the ack stream trimmed), as a read of the key does
    /// (docs/protocol.md §5); otherwise [`Error::Timeout`]: the write stays
    /// queued and may still commit (`accepted` `Yes`), or, if its entry is
    /// gone from the stream (a failover lost it, say) or the stream cannot
    /// be read, `Unknown`: read the key once Redis answers, then decide.
    pub async fn wait(self) -> Result<Version> {
        let timeout = self.timeout;
        self.wait_for(timeout).await
    }

    /// Like [`Ticket::wait`] with an explicit bound (the look at the
    /// streams after it is bounded by `client.read_timeout_ms`).
    pub async fn wait_for(mut self, timeout: Duration) -> Result<Version> {
        let res = tokio::time::timeout(timeout, self.rx.wait_for(|a| a.is_some()))
            .await
            .map(|r| r.map(|ack| ack.clone()));
        match res {
            Ok(Ok(ack)) => outcome(ack.expect("waited for Some")),
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => {
                self.settle_overdue().await;
                let settled = self.rx.borrow().clone();
                match settled {
                    Some(ack) => outcome(ack),
                    None => Err(Error::Timeout {
                        after: timeout,
                        what: "the daemon's ack",
                        accepted: Some(self.held().await),
                    }),
                }
            }
        }
    }

    /// Whether the stream still holds this unsettled write (or the group
    /// holds it pending): `Yes`. Its entry gone (a failover lost it, or
    /// retention trimmed it and MongoDB could not tell), or the stream not
    /// readable: `Unknown`, for a read of the key to decide.
    async fn held(&self) -> Accepted {
        let o = &self.origin;
        let look = o
            .inner
            .done_with(o.partition, self.version, &o.pending.request);
        match tokio::time::timeout(o.inner.config.read_timeout, look).await {
            Ok(Ok(Done::Yes | Done::NotYet)) => Accepted::Yes,
            Ok(Ok(Done::Gone | Done::Taken) | Err(_)) | Err(_) => Accepted::Unknown,
        }
    }

    /// Settles the write from the streams if the daemon is done with it
    /// (best effort, within `client.read_timeout_ms`).
    async fn settle_overdue(&self) {
        let o = &self.origin;
        let look = o.inner.settle_within(
            &o.collection,
            o.partition,
            &o.cache_key,
            [(self.version, o.pending.clone())],
        );
        if let Err(e) = look.await {
            tracing::debug!(error = %e, "could not look for a lost ack");
        }
    }
}

fn outcome(ack: AckResult) -> Result<Version> {
    match ack {
        AckResult::Committed(v) => Ok(v),
        AckResult::DeadLettered(reason) => Err(Error::DeadLettered { reason }),
        AckResult::Lost(reason) => Err(Error::Lost { reason }),
    }
}
