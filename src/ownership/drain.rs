//! A daemon's ownership at shutdown: stop reading everywhere, keep the
//! leases while in-flight work drains, release each as soon as its partition
//! is drained, abort what is left at `daemon.shutdown_deadline_ms`. No Redis
//! call here waits past the deadline plus [`RELEASE_GRACE`]: a Redis that
//! stopped answering would otherwise cost a reply timeout per call (19 s
//! past a 1 s deadline, before session 45).

use std::time::Duration;

use tokio::time::Instant;

use super::Owner;

/// How long the releases after the shutdown deadline may take: a lease not
/// released in time expires within its TTL.
pub(super) const RELEASE_GRACE: Duration = Duration::from_secs(1);

impl Owner {
    /// Stops reading everywhere, keeps renewing (the renewers: [`super::renewal`]) while in-flight work drains,
    /// releases each lease as soon as its partition is drained, and aborts
    /// what is left at the deadline.
    pub(super) async fn drain(mut self, deadline: Instant) {
        for t in self.owned.values_mut() {
            t.run.stop_reading.cancel();
            t.handing_over.get_or_insert_with(Instant::now); // released when drained, even if the lease looks old
        }
        while !self.owned.is_empty() {
            if Instant::now() >= deadline {
                tracing::warn!("shutdown deadline passed; abandoning what is left (it stays pending for the next owner)");
                for t in self.owned.values() {
                    t.run.abort.cancel();
                }
                break;
            }
            // The renewers keep renewing until each tenure ends.
            self.say_renewals();
            // Releases of tenures that ended get the same grace as the last.
            self.end_tenures(Some(deadline.max(Instant::now()) + RELEASE_GRACE))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Join what is left at once: a stuck tenure costs its 2 s grace once,
        // not once per partition.
        let joins = std::mem::take(&mut self.owned)
            .into_iter()
            .map(|(p, t)| async move {
                // No renewal after the deadline: a lease kept for a tenure
                // still inside a call expires within the TTL.
                t.renewer.abort();
                crate::telemetry::clear_partition(p);
                let token = t.run.lease.token;
                let stopped = tokio::time::timeout(Duration::from_secs(2), t.handle)
                    .await
                    .is_ok();
                (p, token, stopped)
            });
        // And those a stop cut short in the ownership loop.
        let mut releases = std::mem::take(&mut self.unreleased);
        for (p, token, stopped) in futures::future::join_all(joins).await {
            if stopped {
                releases.push((p, token));
            } else {
                // Still inside a call: keep the lease so nobody else applies
                // the partition meanwhile; it expires within the TTL.
                tracing::warn!(
                    partition = p,
                    "partition did not stop in time; leaving its lease to expire"
                );
            }
        }
        // At once: a Redis that does not answer costs one reply timeout, not
        // one per partition, and no more than the grace.
        let releases = releases
            .into_iter()
            .map(|(p, token)| self.release(p, token));
        let grace = deadline.max(Instant::now()) + RELEASE_GRACE;
        if tokio::time::timeout_at(grace, futures::future::join_all(releases))
            .await
            .is_err()
        {
            tracing::warn!("redis did not answer the leases' releases in time; they expire within the lease TTL");
        }
    }
}
