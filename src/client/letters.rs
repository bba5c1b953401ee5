//! The dead letters of a look's writes ([`super::overdue`]): where a look
//! reads the dead-letter stream from, and the letters it finds there for
//! this handle's writes whose acks are overdue. Bounded per look; a look that
//! stops early records where it stopped, so that the next goes on from there.

use std::collections::{HashMap, HashSet};

use redis::Value;

use super::overdue::value;
use super::Inner;
use crate::deadletter::field;
use crate::error::Result;
use crate::protocol::field as entry_field;
use crate::protocol::Version;
use crate::stream::{cmd, take_entries, Entry, PageSize};

/// Dead letters read per page at most, and in all, when looking for the
/// letters of a look's writes: letters come after their entries, read from a
/// minute before the oldest one's time (other nodes' clocks). A letter
/// carries its write's document (up to `client.max_document_bytes`, 16 MiB
/// by default), so a page holds about [`LETTERS_PAGE_BYTES`] of letters as
/// large as the largest seen, starting at a few ([`PageSize`]): 100 such
/// letters were 1.6 GB in one reply. With more letters than the total, the
/// writes not found are not settled now, and a later read looks again.
const LETTERS_PAGE: u64 = 100;
const LETTERS_AT_MOST: usize = 2_000;
const LETTERS_PAGE_BYTES: usize = 4 << 20;
/// The bytes of letters one look reads at most (then it is incomplete).
const LETTERS_BYTES_AT_MOST: usize = 64 << 20;

/// The letters found for a look's writes: each one's reason, and whether
/// the search reached the end of the dead-letter stream (else writes not
/// found may have letters further on).
pub(super) struct Letters {
    pub(super) reasons: HashMap<Version, String>,
    pub(super) complete: bool,
    /// The id of the last letter read: a later look for the writes not
    /// found goes on after it ([`Inner::letters_read`]).
    pub(super) read_to: Option<Version>,
}

impl Inner {
    /// Where this look reads the dead-letter stream from, and the writes of
    /// `wanted` it judges. Each write's letter may be after the letter an
    /// earlier look read up to for it without finding it
    /// ([`Inner::letters_read`]), else from a minute before its own time (a
    /// margin for other nodes' clocks). Writes an earlier look left part way
    /// go first, from the earliest point one of them reached: a write that
    /// joins later (its own window reaching back over the letters read
    /// already) must not send them back to the start at each look, or with
    /// acks lost all the time none would ever get past a burst of letters.
    /// A write whose start is before that point is not judged now; its turn
    /// comes once those are settled.
    pub(super) fn letter_scan(&self, wanted: &[(Version, String)]) -> (Version, HashSet<Version>) {
        let read = self.letters_read.lock().expect("lock");
        let start = |v: &Version, request: &str| match read.get(request) {
            Some(at) => Version {
                ms: at.ms,
                seq: at.seq.saturating_add(1),
            },
            None => Version {
                ms: v.ms.saturating_sub(60_000),
                seq: 0,
            },
        };
        let resumed: Vec<&(Version, String)> = wanted
            .iter()
            .filter(|(_, r)| read.contains_key(r))
            .collect();
        let from = if resumed.is_empty() {
            wanted.iter().map(|(v, r)| start(v, r)).min()
        } else {
            resumed.iter().map(|(v, r)| start(v, r)).min()
        }
        .unwrap_or_default();
        let covered = wanted
            .iter()
            .filter(|(v, r)| start(v, r) >= from)
            .map(|(v, _)| *v)
            .collect();
        (from, covered)
    }

    /// The dead letters of this handle's writes `wanted` (entry id, request)
    /// of partition `p`, read once for all of them, in pages, from `from`.
    /// A letter carries its entry's fields, so only one of this client's
    /// request is its write's: a promoted replica whose clock is behind may
    /// give a lost entry's id to another write, which may be parked.
    pub(super) async fn letters(
        &self,
        p: u32,
        wanted: &[(Version, String)],
        from: Version,
        taken: &HashSet<String>,
    ) -> Result<Letters> {
        let stream = self.names.stream(p);
        let dlq = self.names.dead_letters();
        let mut conn = self.conn.clone();
        let by_id: HashMap<String, (Version, &str)> = wanted
            .iter()
            .map(|(v, r)| (v.to_stream_id(), (*v, r.as_str())))
            .collect();
        let mut reasons = HashMap::new();
        let mut from = from.to_stream_id();
        let mut read_to = None;
        let (mut sizes, mut read, mut bytes) =
            (PageSize::new(LETTERS_PAGE_BYTES, 4, LETTERS_PAGE), 0, 0);
        while read < LETTERS_AT_MOST && bytes < LETTERS_BYTES_AT_MOST {
            let asked = sizes.next();
            let page: Value = cmd::xrange(&dlq, &from, "+", Some(asked))
                .query_async(&mut conn)
                .await?;
            let letters = take_entries(page);
            sizes.saw(&letters);
            read += letters.len();
            if let Some(last) = letters.last() {
                read_to = Some(last.id);
            }
            bytes += letters.iter().map(Entry::bytes).sum::<usize>();
            for l in &letters {
                if value(l, field::SOURCE) != Some(stream.as_bytes()) {
                    continue;
                }
                let Some((id, request)) = value(l, field::ID)
                    .and_then(|id| std::str::from_utf8(id).ok())
                    .and_then(|id| by_id.get(id))
                else {
                    continue;
                };
                // A letter without its entry's fields (an entry deleted while
                // pending was parked without them) goes by stream and id,
                // unless another write's entry holds that id ([`Done::Taken`]):
                // then it is that write's.
                let (client, req) = (
                    value(l, entry_field::CLIENT),
                    value(l, entry_field::REQUEST),
                );
                let bare = client.is_none() && req.is_none();
                if (bare && taken.contains(*request))
                    || (!bare
                        && (client != Some(self.client_id.as_bytes())
                            || req != Some(request.as_bytes())))
                {
                    continue;
                }
                let reason = value(l, field::REASON).unwrap_or_default();
                let detail = value(l, field::DETAIL).unwrap_or_default();
                let why = format!(
                    "{}: {}",
                    String::from_utf8_lossy(reason),
                    String::from_utf8_lossy(detail)
                );
                reasons.insert(*id, why);
            }
            match letters.last() {
                Some(last) if letters.len() as u64 == asked && reasons.len() < wanted.len() => {
                    from = format!("({}", last.id.to_stream_id());
                }
                _ => {
                    return Ok(Letters {
                        reasons,
                        complete: true,
                        read_to,
                    })
                }
            }
        }
        Ok(Letters {
            reasons,
            complete: false,
            read_to,
        })
    }
}
