//! A ticket for a submitted write: its version, and a way to await its ack.

use std::time::Duration;

use tokio::sync::watch;

use super::acks::AckResult;
use crate::error::{Error, Result};
use crate::protocol::Version;

/// Returned by `submit`: the write is in the stream; await [`Ticket::wait`]
/// for it to be durable and readable.
#[derive(Debug)]
pub struct Ticket {
    version: Version,
    rx: watch::Receiver<Option<AckResult>>,
    timeout: Duration,
}

impl Ticket {
    pub(super) fn new(
        version: Version,
        rx: watch::Receiver<Option<AckResult>>,
        timeout: Duration,
    ) -> Ticket {
        Ticket {
            version,
            rx,
            timeout,
        }
    }

    /// The write's version (its stream entry id).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Waits for the ack, at most the configured write timeout. Returns the
    /// version now readable (this write's, or a newer one that superseded it).
    /// On timeout the write stays queued and may still commit.
    ///
    /// The acks come through the handle ([`crate::Writ`]): keep a clone of it
    /// alive while tickets are awaited. Once every clone is dropped, a wait
    /// fails at once with [`Error::Shutdown`], and the write (accepted) may
    /// still commit: read the key to learn its outcome.
    pub async fn wait(self) -> Result<Version> {
        let timeout = self.timeout;
        self.wait_for(timeout).await
    }

    /// Like [`Ticket::wait`] with an explicit bound.
    pub async fn wait_for(mut self, timeout: Duration) -> Result<Version> {
        let res = tokio::time::timeout(timeout, self.rx.wait_for(|a| a.is_some())).await;
        match res {
            Ok(Ok(ack)) => match ack.clone().expect("waited for Some") {
                AckResult::Committed(v) => Ok(v),
                AckResult::DeadLettered(reason) => Err(Error::DeadLettered { reason }),
                AckResult::Lost(reason) => Err(Error::Lost { reason }),
            },
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::Timeout {
                after: timeout,
                what: "the daemon's ack",
            }),
        }
    }
}
