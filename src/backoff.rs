//! Capped exponential backoff with jitter, a sleep that gives up when
//! a cancellation token fires, and a retry loop built from both.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Backoff state: delays grow from `base` towards `cap`, each one drawn
/// uniformly from `[current / 4, current]` (jittered, never near zero, so a
/// failing call is not retried in a burst); [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from 50 ms up to `cap`.
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            base: Duration::from_millis(50),
            cap,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = exp.min(self.cap).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ceiling / 4..=ceiling.max(1)))
    }

    /// Starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps the next delay; `false` if `cancel` fired first.
    pub async fn sleep(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

/// Counts one retried step, MongoDB or Redis, in `writ_retries_total`.
pub fn count_retry(class: crate::error::RetryClass) {
    metrics::counter!("writ_retries_total", "error_class" => class.as_str()).increment(1);
}

/// Runs `op` until it succeeds, backing off (capped at 2 s) after each
/// failure; `None` once `stop` fires. Each failure is counted in
/// `writ_retries_total` and logged with `what`.
///
/// Permanent errors are retried too: these are the Redis steps after a write
/// committed (cache, acks, `XACK`), which must happen before the write is
/// acked, and nothing else can take their place. They are logged as errors,
/// since only an operator can clear them.
pub async fn retry_until<F, Fut, T>(
    stop: &CancellationToken,
    what: &'static str,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                count_retry(e.retry_class());
                if e.retry_class() == crate::error::RetryClass::Permanent {
                    tracing::error!(what, error = %e, "redis step failed with an error retrying will not clear; retrying until it is fixed (the partition waits)");
                } else {
                    tracing::warn!(what, error = %e, "redis step failed; retrying");
                }
                if !backoff.sleep(stop).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_capped() {
        let mut b = Backoff::new(Duration::from_millis(400));
        for _ in 0..40 {
            assert!(b.next_delay() <= Duration::from_millis(400));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }
}
