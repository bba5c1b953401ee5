//! The one apply routine with retries. The daemon's key worker runs it for a
//! write its bulk did not settle; `writ replay` and `writ dlq retry` run it for
//! every entry they re-apply. So an operator's re-apply behaves exactly like the
//! daemon's: the same limiter slot, the same time bound per attempt, the same
//! backoff through outages, and the same count of permanent failures towards
//! `max_attempts` before the write's reject is returned.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Applied, Signal, Store};
use crate::backoff::Backoff;
use crate::config::{CollectionConfig, Config};
use crate::error::{Error, RetryClass};
use crate::protocol::{Reject, Version, Write};

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
    /// `max_attempts` times; the reject says why.
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
        // this local bound (op_timeout + 5 s) gives up on an attempt the
        // server has stopped it too: a retry never runs beside an earlier
        // attempt. The wait for a limiter slot is outside the bound, so
        // queueing never times an operation out.
        let limit = self.config.op_timeout + Duration::from_secs(5);
        loop {
            if !still_owner() {
                return None;
            }
            let permit = tokio::select! {
                p = self.store.limiter().acquire() => p,
                _ = self.abort.cancelled() => return None,
            };
            let res = tokio::select! {
                r = tokio::time::timeout(limit, self.store.apply(coll, write, id)) => r,
                _ = self.abort.cancelled() => return None,
            };
            let res = res.unwrap_or(Err(Error::Timeout {
                after: limit,
                what: "a MongoDB write",
            }));
            permit.done(match &res {
                Err(e) if e.retry_class() == RetryClass::Transient => Signal::Overloaded,
                _ => Signal::Completed,
            });
            let e = match res {
                Ok(a) => return Some(Ok(a)),
                Err(e) => e,
            };
            let class = e.retry_class();
            metrics::counter!("writ_retries_total", "error_class" => class.as_str()).increment(1);
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
            tracing::warn!(entry = %id, collection = %coll.name, attempts, class = class.as_str(), error = %e, "apply failed; retrying");
            if !backoff.sleep(self.abort).await {
                return None;
            }
        }
    }
}
