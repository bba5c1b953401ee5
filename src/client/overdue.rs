//! Settling writes whose ack is overdue (docs/protocol.md §5, "An ack can
//! still be lost"). A read waits for this handle's pending writes of its key;
//! when one's ack was lost (a failover, an ack stream trimmed or of another
//! type) and the write was dead-lettered, the cache never reaches its
//! version, and every read of the key would wait out `client.read_timeout_ms`
//! and fail, for the life of the handle. So after such a wait the handle asks
//! the streams what became of each write still unacked, and settles the ones
//! the daemon is done with, as their ack would have.

use redis::Value;

use super::{acks, Inner, Pending};
use crate::ack::{Ack, Outcome};
use crate::deadletter::field;
use crate::error::Result;
use crate::protocol::Version;
use crate::stream::{cmd, parse_entries, take_entries, Entry};

/// Dead letters read per page, and pages at most, when looking for one write's
/// letter: letters come after the entry, read from a minute before its time
/// (other nodes' clocks). With more letters than that, the write is not
/// settled now, and a later read looks again.
const LETTERS_PAGE: u64 = 500;
const LETTERS_PAGES: usize = 4;
/// Writes looked at per settling, at most (a few round trips each); the
/// rest wait for a later read's look.
const LOOK_AT_MOST: usize = 256;

/// What the streams say about a write whose ack is overdue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// The daemon is not done with it: nor with any later entry of the
    /// partition.
    NotDone,
    /// It cannot be told (the entry is gone, or too many letters to look
    /// through).
    Unknown,
    /// Done, and not dead-lettered: readable at its version or newer.
    Applied,
    /// Parked, with this reason.
    DeadLettered(String),
}

impl Inner {
    /// Settles each of `writes` (this handle's pending writes of partition
    /// `p`) that is still unacked and that the daemon is done with, as its
    /// ack would, in id order: at the first the daemon is not done with, or
    /// after [`LOOK_AT_MOST`], it stops. `true` when none is left unsettled.
    pub(super) async fn settle_overdue(
        &self,
        p: u32,
        writes: impl IntoIterator<Item = (Version, Pending)>,
    ) -> Result<bool> {
        let mut writes: Vec<(Version, Pending)> = writes
            .into_iter()
            .filter(|(_, w)| w.state.borrow().is_none())
            .collect();
        writes.sort_by_key(|(v, _)| *v);
        let mut all = writes.len() <= LOOK_AT_MOST;
        for (version, Pending { request, state }) in writes.into_iter().take(LOOK_AT_MOST) {
            if state.borrow().is_some() {
                continue; // acked meanwhile
            }
            let (outcome, reason) = match self.fate(p, version).await? {
                // The group has not passed it: later entries wait too.
                Fate::NotDone => return Ok(false),
                Fate::Unknown => {
                    all = false;
                    continue;
                }
                Fate::Applied => (Outcome::Applied, None),
                Fate::DeadLettered(why) => (Outcome::DeadLettered, Some(why)),
            };
            tracing::warn!(request = %request, entry = %version, outcome = outcome.as_str(), "the ack of this write was lost (Redis lost data, or the ack stream was trimmed or holds another type); settled from the streams");
            acks::deliver(
                self,
                Ack {
                    request,
                    outcome,
                    version,
                    entry: version,
                    reason,
                },
            );
        }
        Ok(all)
    }

    /// What became of entry `id` of partition `p`. The daemon does every
    /// step of a write before its `XACK`, so it is done with an entry that
    /// the stream still holds, that the group delivered, and that no entry up
    /// to it is pending; then the dead-letter stream says whether it was
    /// parked.
    async fn fate(&self, p: u32, id: Version) -> Result<Fate> {
        let stream = self.names.stream(p);
        let mut conn = self.conn.clone();
        let at = id.to_stream_id();
        let held: Value = cmd::xrange(&stream, &at, &at, Some(1))
            .query_async(&mut conn)
            .await?;
        // An entry that is gone may never have been written at all.
        if parse_entries(&held).is_empty() {
            return Ok(Fate::Unknown);
        }
        if !super::sync::applied_through(&mut conn, &stream, &self.names.group(), id).await? {
            return Ok(Fate::NotDone);
        }
        let dlq = self.names.dead_letters();
        let mut from = Version {
            ms: id.ms.saturating_sub(60_000),
            seq: 0,
        }
        .to_stream_id();
        for _ in 0..LETTERS_PAGES {
            let page: Value = cmd::xrange(&dlq, &from, "+", Some(LETTERS_PAGE))
                .query_async(&mut conn)
                .await?;
            let letters = take_entries(page);
            if let Some(l) = letters.iter().find(|l| {
                value(l, field::SOURCE) == Some(stream.as_bytes())
                    && value(l, field::ID) == Some(at.as_bytes())
            }) {
                let reason = value(l, field::REASON).unwrap_or_default();
                let detail = value(l, field::DETAIL).unwrap_or_default();
                return Ok(Fate::DeadLettered(format!(
                    "{}: {}",
                    String::from_utf8_lossy(reason),
                    String::from_utf8_lossy(detail)
                )));
            }
            match letters.last() {
                Some(last) if letters.len() as u64 == LETTERS_PAGE => {
                    from = format!("({}", last.id.to_stream_id());
                }
                _ => return Ok(Fate::Applied),
            }
        }
        Ok(Fate::Unknown)
    }
}

/// The value of field `name` of an entry.
fn value<'a>(e: &'a Entry, name: &str) -> Option<&'a [u8]> {
    e.fields
        .as_ref()?
        .iter()
        .find(|(f, _)| f == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}
