//! `writ replay`: re-applies retained stream entries in a range. Idempotent:
//! each entry applies at its own version through the sequence guard, so
//! entries MongoDB already holds (or holds newer) are skipped and counted.

use std::collections::BTreeMap;

use redis::Value;

use super::Tools;
use crate::error::Result;
use crate::protocol::{self, Version};
use crate::stream::{cmd, parse_entries};

/// What a replay did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplaySummary {
    /// Entries read in the range.
    pub read: u64,
    /// Entries of other collections, left alone.
    pub filtered: u64,
    /// Outcome counts (`applied`, `stale`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Entries that could not apply (already dead-lettered at the time, or bad).
    pub rejected: u64,
}

impl Tools {
    /// Replays `[from, to]` of every partition (optionally one collection).
    pub async fn replay(
        &self,
        from: Version,
        to: Option<Version>,
        collection: Option<&str>,
    ) -> Result<ReplaySummary> {
        let mut sum = ReplaySummary::default();
        let to = to.map(|v| v.to_stream_id()).unwrap_or_else(|| "+".into());
        for p in 0..self.config.partitions {
            let stream = self.names.stream(p);
            let mut start = from.to_stream_id();
            loop {
                let mut conn = self.conn.clone();
                let v: Value = cmd::xrange(&stream, &start, &to, Some(500))
                    .query_async(&mut conn)
                    .await?;
                let entries = parse_entries(&v);
                let Some(last) = entries.last().map(|e| e.id) else {
                    break;
                };
                for e in &entries {
                    sum.read += 1;
                    let Some(fields) = &e.fields else { continue };
                    if let Some(c) = collection {
                        let coll = fields
                            .iter()
                            .find(|(k, _)| k.as_slice() == protocol::field::COLLECTION.as_bytes());
                        if coll.is_none_or(|(_, v)| v.as_slice() != c.as_bytes()) {
                            sum.filtered += 1;
                            continue;
                        }
                    }
                    match self.apply_entry(e.id, fields).await {
                        Ok(o) => *sum.outcomes.entry(o.as_str().to_string()).or_default() += 1,
                        Err(crate::Error::Rejected(_)) => sum.rejected += 1,
                        Err(err) => return Err(err),
                    }
                }
                start = format!("({}", last.to_stream_id());
            }
        }
        Ok(sum)
    }
}
