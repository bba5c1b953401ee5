//! The records a tenure writes into its partition's meta hash at its start:
//! the copy of the namespace's partition count (writers on another count are
//! refused in this partition from then on: src/partition_count/copies.rs)
//! and, in partition 0, the namespace's MongoDB database record
//! (src/database_record.rs), so that a Redis that lost them has them back
//! without a restart. A tenure often starts when Redis is in trouble (a
//! failover's `LOADING`, `maxmemory`): what fails is retried in the
//! background, with capped backoff, for as long as the tenure reads, not
//! left until the next tenure, which may be weeks away.

use std::sync::Arc;

use tracing::Instrument;

use super::{Ctx, PartitionRun};
use crate::backoff::Backoff;
use crate::error::Error;

/// Writes the records once; if that fails, says so and goes on trying in
/// a task of its own until they are written or the tenure stops.
pub(super) async fn write(ctx: &Arc<Ctx>, p: u32, run: &Arc<PartitionRun>) {
    let Err(e) = write_once(ctx, p).await else {
        return;
    };
    tracing::warn!(error = %e, error_class = e.retry_class().as_str(), "cannot write this partition's records into its meta hash (the partition-count copy, in partition 0 also the database record); retrying in the background. Until then writers configured with another partition count are not refused here. Free Redis memory, or fix the ACL (docs/operations.md)");
    let (ctx, run) = (ctx.clone(), run.clone());
    tokio::spawn(retry(ctx, p, run).in_current_span());
}

/// [`write`]'s retries, until the records are written or the tenure stops.
async fn retry(ctx: Arc<Ctx>, p: u32, run: Arc<PartitionRun>) {
    let mut backoff = Backoff::new(ctx.config.backoff_cap);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = run.stop_reading.cancelled() => return,
            _ = run.abort.cancelled() => return,
        }
        match write_once(&ctx, p).await {
            Ok(()) => {
                tracing::info!("this partition's records are written into its meta hash after all");
                return;
            }
            Err(e) => crate::backoff::count_retry(e.retry_class()),
        }
    }
}

/// The partition-count copy, then (partition 0) the database record.
async fn write_once(ctx: &Ctx, p: u32) -> Result<(), Error> {
    let mut conn = ctx.conn.clone();
    crate::partition_count::try_copy(&mut conn, &ctx.names, p, ctx.config.partitions).await?;
    if p == 0 {
        crate::database_record::record(&mut conn, &ctx.config).await?;
    }
    Ok(())
}
