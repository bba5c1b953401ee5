//! Typed telemetry events: what happened, said once. Emitting an event both
//! counts it (Prometheus) and logs it (`tracing`), so the two never disagree
//! and no call site builds metric names or log lines by hand.
//!
//! Write outcomes are emitted per step, not per write: a round (or one key's
//! step on the single path) emits one [`Event::Settled`] per collection with
//! the counts, one counter update per outcome. The partition and the tenure
//! come from the surrounding tracing span (`tenure`), not from the event.

use crate::protocol::{Reject, Version};

/// Something the daemon did that operators count and read about.
#[derive(Debug)]
pub enum Event<'a> {
    /// Writes of one collection were settled by one step: committed and
    /// cached, superseded inside the step, or found stale.
    Settled {
        /// The collection.
        collection: &'a str,
        /// Committed (the last write of each key in the step).
        applied: u64,
        /// Superseded inside the step by a later write of the same key.
        coalesced: u64,
        /// MongoDB already held this version or newer.
        stale: u64,
    },
    /// An entry that can never apply was parked in the dead-letter stream.
    DeadLettered {
        /// The collection, when the entry named a declared one.
        collection: Option<&'a str>,
        /// The entry.
        entry: Version,
        /// Why.
        reject: &'a Reject,
        /// Apply attempts made (0: refused when decoded).
        attempts: u32,
        /// The dead letter's own id (what `writ dlq show` takes).
        letter: &'a str,
    },
    /// A partition operation was refused by its fence: this daemon lost the
    /// lease (`op`: `read`, `claim`, `cache` or `dead_letter`).
    Fenced {
        /// The partition.
        partition: u32,
        /// What was refused.
        op: &'static str,
        /// This daemon's stale token.
        token: u64,
    },
    /// A cache key held another program's value (not a hash, or a document
    /// that is not BSON): a reader treated it as a miss, or a cache write
    /// replaced it.
    ForeignCacheValue {
        /// The cache key.
        key: &'a str,
        /// What was done about it.
        then: &'static str,
    },
    /// Writers' acks that could not be added because their ack stream key
    /// holds another type (another program's value): those writers' waits
    /// time out; their writes are committed and cached all the same.
    AcksSkipped {
        /// How many acks.
        count: u64,
    },
    /// This daemon took a partition's lease.
    LeaseAcquired {
        /// The partition.
        partition: u32,
        /// The fencing token of the new tenure.
        token: u64,
    },
    /// This daemon gave a partition's lease up.
    LeaseReleased {
        /// The partition.
        partition: u32,
    },
    /// This daemon found a partition's lease gone (expired, taken).
    LeaseLost {
        /// The partition.
        partition: u32,
    },
}

impl Event<'_> {
    /// Counts and logs the event.
    pub fn emit(self) {
        match self {
            Event::Settled {
                collection,
                applied,
                coalesced,
                stale,
            } => {
                for (outcome, n) in [
                    ("applied", applied),
                    ("coalesced", coalesced),
                    ("stale", stale),
                ] {
                    if n > 0 {
                        metrics::counter!("writ_writes_total", "collection" => collection.to_string(), "outcome" => outcome)
                            .increment(n);
                    }
                }
                tracing::debug!(collection, applied, coalesced, stale, "writes settled");
            }
            Event::DeadLettered {
                collection,
                entry,
                reject,
                attempts,
                letter,
            } => {
                metrics::counter!("writ_rejected_total", "reason" => reject.reason.as_str())
                    .increment(1);
                if let Some(c) = collection {
                    metrics::counter!("writ_writes_total", "collection" => c.to_string(), "outcome" => "dead_lettered")
                        .increment(1);
                }
                tracing::error!(
                    dead_letter = letter,
                    entry = %entry,
                    collection = collection.unwrap_or("-"),
                    reason = reject.reason.as_str(),
                    attempts,
                    detail = %reject.detail,
                    remedy = reject.reason.remedy(),
                    "parked a write in the dead-letter stream (`writ dlq show <dead_letter>` has it)"
                );
            }
            Event::Fenced {
                partition,
                op,
                token,
            } => {
                metrics::counter!("writ_fenced_total", "op" => op).increment(1);
                tracing::warn!(
                    partition,
                    op,
                    token,
                    "fenced: the partition lease moved to another daemon; refused and stopping this partition"
                );
            }
            Event::ForeignCacheValue { key, then } => {
                metrics::counter!("writ_cache_foreign_total").increment(1);
                tracing::warn!(
                    key,
                    then,
                    "a cache key holds a value that is not writ's (not a hash, or a document that is not BSON): another program writes under writ's namespace"
                );
            }
            Event::AcksSkipped { count } => {
                metrics::counter!("writ_acks_skipped_total").increment(count);
                tracing::error!(
                    skipped = count,
                    "cannot add writers' acks: a key under the ack prefix holds a value that is not a stream (another program writes under writ's namespace; delete the key), or Redis refused the call for good (logged just before: an ACL missing the ack keys, say). Those writers' waits time out; their writes are committed"
                );
            }
            Event::LeaseAcquired { partition, token } => {
                metrics::counter!("writ_lease_acquired_total", "partition" => partition.to_string())
                    .increment(1);
                super::own_partition(partition);
                tracing::info!(partition, token, "took the partition lease");
            }
            Event::LeaseReleased { partition } => {
                metrics::counter!("writ_lease_released_total", "partition" => partition.to_string())
                    .increment(1);
                tracing::info!(partition, "released the partition lease");
            }
            Event::LeaseLost { partition } => {
                metrics::counter!("writ_lease_lost_total", "partition" => partition.to_string())
                    .increment(1);
                tracing::warn!(partition, "lost the partition lease; aborting it");
            }
        }
    }
}
