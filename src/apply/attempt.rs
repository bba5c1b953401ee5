//! The one apply routine with retries. The daemon's key worker runs it for a
//! write its bulk did not settle; `writ replay` and `writ dlq retry` run it for
//! every entry they re-apply. So an operator's re-apply behaves exactly like the
//! daemon's: the same limiter slot, the same time bound per attempt, the same
//! backoff through outages, and the same count of permanent failures towards
//! `max_attempts` before the write's reject is returned. Timeouts count
//! towards `daemon.max_timeouts`, but only in a row, only while MongoDB
//! answers other operations on the collection in between, more of them than
//! time out: then the write itself is what never finishes,
//! and an unbounded retry would hold its key, and in time its partition, for
//! ever. Before such a write is refused, the key is read: a timed-out
//! attempt may have committed with its reply lost.

use tokio_util::sync::CancellationToken;

use super::{Applied, Signal, Store};
use crate::backoff::Backoff;
use crate::config::{CollectionConfig, Config};
use crate::error::{Error, RetryClass};
use crate::protocol::{Reject, RejectReason, Version, Write};

/// Who applies, and until when.
pub struct Attempts<'a> {
    /// MongoDB (and its limiter).
    pub store: &'a Store,
    /// `backoff_cap`, `op_timeout`.
    pub config: &'a Config,
    /// Permanent failures allowed before the write's reject is returned:
    /// `daemon.max_attempts`, or 1 for a write of a key whose later write
    /// MongoDB already refused for good in the same run.
    pub max_attempts: u32,
    /// Stops the retries (a tenure's end, or an operator's Ctrl-C).
    pub abort: &'a CancellationToken,
}

impl Attempts<'_> {
    /// Applies `write` at version `id`, retrying. `still_owner` is asked
    /// before every attempt (the daemon's lease; a tool always may).
    /// `None`: stopped. `Some(Err)`: MongoDB refused it for good
    /// `max_attempts` times, or it timed out `daemon.max_timeouts` times in a
    /// row while MongoDB answered others; the reject says why.
    pub async fn apply(
        &self,
        still_owner: impl Fn() -> bool,
        coll: &CollectionConfig,
        write: &Write,
        id: Version,
    ) -> Option<Result<Applied, (Reject, u32)>> {
        let mut backoff = Backoff::new(self.config.backoff_cap);
        // Only permanent failures count towards `max_attempts`: an outage
        // must not dead-letter writes that were merely waiting for MongoDB.
        let mut attempts = 0u32;
        // Every operation carries `maxTimeMS = op_timeout`, so by the time
        // the local bound (`Store::within`: op_timeout + 5 s) gives up on an
        // attempt the server has stopped it too: a retry never runs beside an
        // earlier attempt. The wait for a limiter slot is outside the bound,
        // so queueing never times an operation out.
        // Timeouts in a row while MongoDB answered other operations: the
        // write is slow by itself (a huge document, a stalled statement), not
        // the server. Bounded like permanent failures, or one such write
        // would hold its key, and in time its partition, for ever.
        let mut slow = 0u32;
        // What the server had done on this collection at the last failure
        // (or the start). Per collection, so that a collection MongoDB cannot
        // serve (a lock, an index build) is an outage for its writes, not
        // their fault; and as many other operations timing out as answered
        // says the server is struggling, not this write.
        let mut seen = self.store.answers(&coll.name);
        loop {
            if !still_owner() {
                return None;
            }
            let e = match self.once(&still_owner, coll, write, id).await? {
                Ok(a) => return Some(Ok(a)),
                Err(e) => e,
            };
            let class = e.retry_class();
            let now = self.store.answers(&coll.name);
            // Since the last failure: the others answered, and more of them
            // were answered than timed out (this write's own timeout aside).
            let answered = now.answered - seen.answered;
            let others_timed_out = (now.timed_out - seen.timed_out).saturating_sub(1);
            seen = now;
            if e.is_timeout() && answered > others_timed_out {
                slow += 1;
                if self.config.max_timeouts > 0 && slow >= self.config.max_timeouts {
                    match self.committed_unanswered(coll, write, id).await {
                        Held::Yes(a) => return Some(Ok(a)),
                        Held::No(reject) => {
                            return Some(Err((
                                reject.unwrap_or_else(|| self.slow_reject(slow)),
                                attempts + slow,
                            )))
                        }
                        Held::Unknown => {} // read again after the next timeout
                    }
                }
            } else {
                slow = 0;
            }
            crate::backoff::count_retry(class);
            metrics::counter!("writ_mongodb_errors_total", "error_class" => class.as_str())
                .increment(1);
            if class == RetryClass::Permanent {
                attempts += 1;
                if attempts >= self.max_attempts.max(1) {
                    let reject = match e {
                        Error::Rejected(r) => r,
                        e => crate::deadletter::mongo_rejected(&e),
                    };
                    return Some(Err((reject, attempts)));
                }
            }
            tracing::warn!(entry = %id, collection = %coll.name, attempts, slow, class = class.as_str(), error = %e, "apply failed; retrying");
            if !backoff.sleep(self.abort).await {
                return None;
            }
        }
    }

    /// One attempt: a limiter slot, then the write within the store's
    /// bound, telling the limiter and the collection's answer counts how it
    /// went. `None`: stopped, or no longer the owner once the slot came (the
    /// wait for it can outlast the lease).
    async fn once(
        &self,
        still_owner: &impl Fn() -> bool,
        coll: &CollectionConfig,
        write: &Write,
        id: Version,
    ) -> Option<Result<Applied, Error>> {
        let permit = tokio::select! {
            p = self.store.limiter().acquire() => p,
            _ = self.abort.cancelled() => return None,
        };
        if !still_owner() {
            return None;
        }
        let res = tokio::select! {
            r = self.store.within("a MongoDB write", self.store.apply(coll, write, id)) => r,
            _ = self.abort.cancelled() => return None,
        };
        permit.done(match &res {
            Err(e) if e.retry_class() == RetryClass::Transient => Signal::Overloaded,
            _ => Signal::Completed,
        });
        let name = [coll.name.as_str()];
        match &res {
            Ok(_) => self.store.note_answered(name),
            Err(e) => {
                if e.retry_class() == RetryClass::Permanent {
                    self.store.note_answered(name);
                }
                if e.is_timeout() {
                    self.store.note_timed_out(name);
                }
            }
        }
        Some(res)
    }

    /// Whether MongoDB holds `write` at `id` (or newer) although its attempts
    /// timed out: a commit whose reply was lost is settled, not refused.
    async fn committed_unanswered(
        &self,
        coll: &CollectionConfig,
        write: &Write,
        id: Version,
    ) -> Held {
        let read = tokio::select! {
            r = self.store.within("a MongoDB read", self.store.holds(coll, write, id)) => r,
            _ = self.abort.cancelled() => return Held::Unknown,
        };
        match read {
            Ok(Some(a)) => Held::Yes(a),
            Ok(None) => Held::No(None),
            Err(Error::Rejected(r)) => Held::No(Some(r)),
            Err(Error::Timeout { .. }) => Held::Unknown,
            Err(e) => {
                tracing::warn!(entry = %id, collection = %coll.name, error = %e, "cannot tell whether a write that keeps timing out was committed; retrying it");
                Held::Unknown
            }
        }
    }

    /// The refusal of a write that timed out `times` times in a row while
    /// MongoDB answered other operations.
    fn slow_reject(&self, times: u32) -> Reject {
        Reject::new(
            RejectReason::MongoRejected,
            format!(
                "MongoDB did not complete this write within mongodb.op_timeout_ms ({} ms) {times} times \
                 in a row, while it completed other operations meanwhile: the write itself is too slow \
                 (a very large document, a missing index) or stalls the server. Fix the cause or raise \
                 op_timeout_ms, then `writ dlq retry`",
                self.config.op_timeout.as_millis()
            ),
        )
    }
}

/// What a read of a key says about a write whose attempts timed out.
enum Held {
    /// MongoDB holds it (or a newer version): settled as this.
    Yes(Applied),
    /// It does not: refused (with this reason, or for its timeouts).
    No(Option<Reject>),
    /// The read failed: keep trying the write.
    Unknown,
}
