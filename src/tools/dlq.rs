//! `writ dlq list | show | retry | drop`: inspect and resolve dead letters.
//!
//! `retry` re-applies the original entry **at its original version**, so it
//! can never overwrite a newer write of the same key (the sequence guard turns
//! it into a no-op instead); it is removed from the dead-letter stream only if
//! it applied or was superseded.

use redis::Value;

use super::failed::Failed;
use super::{Reapplied, Tools};
use crate::deadletter::field;
use crate::error::Result;
use crate::protocol::Version;
use crate::stream::{cmd, parse_entries, Entry, Fields, PageSize};

/// About the most letter bytes one page of `--all` reads.
const PAGE_BYTES: usize = 4 << 20;

/// A dead letter as read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Letter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Reason label.
    pub reason: String,
    /// Detail.
    pub detail: String,
    /// Source stream and entry id.
    pub source: String,
    /// Original entry id.
    pub source_id: String,
    /// Attempts made.
    pub attempts: String,
    /// The namespace's partition count when it was parked (empty for
    /// letters parked by a writ before session 36).
    pub partitions: String,
    /// The original fields (values as UTF-8 where possible, else hex).
    pub fields: Vec<(String, String)>,
    #[serde(skip)]
    original: Fields,
}

/// The value of field `name` in `fields`, if it is there.
/// An entry's `client` and `req` fields, when it has both.
pub(super) fn request_of(fields: &Fields) -> Option<(Vec<u8>, Vec<u8>)> {
    use crate::protocol::field::{CLIENT, REQUEST};
    Some((
        field(fields, CLIENT)?.to_vec(),
        field(fields, REQUEST)?.to_vec(),
    ))
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// The config of the collection a writer's `fields` name, if declared.
fn collection_of<'a>(
    fields: &Fields,
    config: &'a crate::config::Config,
) -> Option<&'a crate::config::CollectionConfig> {
    field(fields, crate::protocol::field::COLLECTION)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| config.collection(c))
}

impl Letter {
    /// The write's key as its writer sent it (collection, encoding, key
    /// bytes): two letters of one key, from writers of one encoding, share
    /// it. Not decoded, so a letter refused at decode has one too; a letter
    /// without a key field has none.
    fn key_as_sent(&self) -> Option<Vec<u8>> {
        use crate::protocol::field::{COLLECTION, ENCODING, KEY};
        let get = |name| field(&self.original, name);
        let key = get(KEY)?;
        let mut out = Vec::new();
        for part in [
            get(COLLECTION).unwrap_or_default(),
            get(ENCODING).unwrap_or_default(),
            key,
        ] {
            out.extend_from_slice(part);
            out.push(0);
        }
        Some(out)
    }

    /// The parked write's own id (its place in its partition's order).
    fn write_id(&self) -> Option<Version> {
        self.source_id.parse().ok()
    }
}

/// What orders the letters of `--all`: a letter's id, its write's partition
/// stream, id and key. Kept for every letter of a run, without the
/// documents.
#[derive(Debug, Clone)]
pub struct LetterHead {
    /// The letter's id.
    pub id: String,
    pub(super) source: String,
    pub(super) write: Option<Version>,
    pub(super) key: Option<Vec<u8>>,
    /// Its write's `client` and `req` fields, when it has them: another
    /// write may come to hold its write's id (a promoted replica whose clock
    /// is behind), and only these tell them apart.
    pub(super) request: Option<(Vec<u8>, Vec<u8>)>,
    /// Whether its collection's writes must apply in order: the `fields`
    /// layout (a put sets only its fields), `insert_once` (the first value
    /// stands), or a collection the config does not declare. Otherwise a
    /// newer write applied first leaves the older one stale and superseded:
    /// the same document as in order.
    pub(super) ordered: bool,
}

impl LetterHead {
    fn of(l: &Letter, config: &crate::config::Config) -> Self {
        use crate::config::{Layout, WriteMode};
        let coll = collection_of(&l.original, config);
        LetterHead {
            id: l.id.clone(),
            source: l.source.clone(),
            write: l.write_id(),
            key: l.key_as_sent(),
            request: request_of(&l.original),
            ordered: coll
                .is_none_or(|c| c.layout == Layout::Fields || c.mode == WriteMode::InsertOnce),
        }
    }

    /// Whether `self` parks an older write of the same key than `other`,
    /// whose collection needs its writes in order.
    pub(super) fn is_older_write_of(&self, other: &LetterHead) -> bool {
        other.ordered
            && self.id != other.id
            && self.source == other.source
            && self.key.is_some()
            && self.key == other.key
            && matches!((self.write, other.write), (Some(a), Some(b)) if a < b)
    }
}

/// Why a letter waits for an older letter of its key.
pub(super) fn older_letter_waits(older: &str, letter: &str) -> String {
    format!(
        "kept: dead letter {older} parks an older write of the same key; applied first, this letter \
         would make that write stale. Retry {older} first (or drop it), then {letter}; `writ dlq retry \
         --all` retries letters in write order"
    )
}

fn text(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => format!(
            "0x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// A letter's fields after the daemon's own (`dlq.reason` ...
/// `dlq.partitions`, written first): what the writer sent, unchanged, even a field of the
/// writer's that happens to be named `dlq.*` (an entry refused for it must
/// stay refused on retry).
fn writers_fields(fields: &Fields) -> Fields {
    use crate::deadletter::field::{AT, ATTEMPTS, DETAIL, ID, PARTITIONS, REASON, SOURCE};
    // `dlq.partitions` since session 36; letters parked before end at `dlq.at`.
    let ours = [REASON, DETAIL, SOURCE, ID, ATTEMPTS, AT, PARTITIONS];
    let skip = fields
        .iter()
        .zip(ours)
        .take_while(|((k, _), name)| k.as_slice() == name.as_bytes())
        .count();
    fields[skip..].to_vec()
}

/// Where a walk through the dead letters is ([`Tools::dlq_pages`]).
pub struct DlqPages {
    after: Option<String>,
    through: String,
    max: usize,
    sizes: PageSize,
}

fn letter(e: &Entry) -> Letter {
    let fields = e.fields.clone().unwrap_or_default();
    let get = |n: &str| field(&fields, n).map(text).unwrap_or_default();
    let original = writers_fields(&fields);
    Letter {
        id: e.id.to_stream_id(),
        reason: get(field::REASON),
        detail: get(field::DETAIL),
        source: get(field::SOURCE),
        source_id: get(field::ID),
        attempts: get(field::ATTEMPTS),
        partitions: get(field::PARTITIONS),
        fields: original.iter().map(|(k, v)| (text(k), text(v))).collect(),
        original,
    }
}

impl Tools {
    /// Dead letters, oldest first, at most `count`.
    pub async fn dlq_list(&self, count: usize) -> Result<Vec<Letter>> {
        let entries = self.dlq_entries(None, "+", count as u64).await?;
        Ok(entries.iter().map(letter).collect())
    }

    /// A walk through the dead letters up to `through` (what `--all` acts
    /// on), in pages of at most `max` letters and about 4 MiB of them.
    pub fn dlq_pages(&self, through: String, max: usize) -> DlqPages {
        DlqPages {
            after: None,
            through,
            max,
            sizes: PageSize::new(PAGE_BYTES, 1, max as u64),
        }
    }

    /// The next page of `pages` (empty at the end). Letters hold whole
    /// documents (a `too_large` one more than `max_document_bytes`), so
    /// `--all` pages through the stream by size instead of holding many of
    /// them, or asking Redis for them, at once.
    pub async fn dlq_next(&self, pages: &mut DlqPages) -> Result<Vec<Letter>> {
        let (mut out, mut bytes) = (Vec::new(), 0);
        while out.len() < pages.max && bytes < PAGE_BYTES {
            let want = pages.sizes.next().min((pages.max - out.len()) as u64);
            let entries = self
                .dlq_entries(pages.after.as_deref(), &pages.through, want)
                .await?;
            let Some(last) = entries.last() else { break };
            pages.after = Some(last.id.to_stream_id());
            pages.sizes.saw(&entries);
            bytes += entries.iter().map(|e| e.bytes()).sum::<usize>();
            let ended = (entries.len() as u64) < want;
            out.extend(entries.iter().map(letter));
            if ended {
                break;
            }
        }
        Ok(out)
    }

    /// Letters after `after` up to `through`, at most `count`, as entries.
    async fn dlq_entries(
        &self,
        after: Option<&str>,
        through: &str,
        count: u64,
    ) -> Result<Vec<Entry>> {
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let mut conn = self.conn.clone();
        let v: Value = cmd::xrange(&self.names.dead_letters(), &start, through, Some(count))
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(&v))
    }

    /// The id of the newest dead letter, if any: where `--all` stops, so a
    /// letter parked while it runs is left for the operator to see.
    pub async fn dlq_newest(&self) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let v: Value = cmd::newest(&self.names.dead_letters())
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(&v).first().map(|e| e.id.to_stream_id()))
    }

    /// One dead letter.
    pub async fn dlq_show(&self, id: &str) -> Result<Option<Letter>> {
        let mut conn = self.conn.clone();
        let v: Value = cmd::xrange(&self.names.dead_letters(), id, id, None)
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(&v).first().map(letter))
    }

    /// The heads of every letter up to `through`, in the order `--all`
    /// retries them: by the parked write's id (letters are parked in
    /// another order: one refused at decode at once, an earlier write of
    /// its key only after its attempts), letters without one last.
    pub async fn dlq_heads(&self, through: String, max: usize) -> Result<Vec<LetterHead>> {
        let mut pages = self.dlq_pages(through, max);
        let mut heads = Vec::new();
        loop {
            let page = self.dlq_next(&mut pages).await?;
            if page.is_empty() {
                break;
            }
            heads.extend(page.iter().map(|l| LetterHead::of(l, &self.config)));
        }
        heads.sort_by_key(|h| (h.write.is_none(), h.write, h.id.clone()));
        Ok(heads)
    }

    /// Why `letter` must wait for another letter, if one up to `through`
    /// parks an older write of its key (`writ dlq retry <id>`), read in
    /// pages of at most `max` letters.
    pub async fn dlq_older_letter(
        &self,
        letter: &Letter,
        through: String,
        max: usize,
    ) -> Result<Option<String>> {
        let me = LetterHead::of(letter, &self.config);
        if !me.ordered || me.key.is_none() || me.write.is_none() {
            // No letter can be an older write it must wait for: no scan.
            return Ok(None);
        }
        let heads = self.dlq_heads(through, max).await?;
        Ok(heads
            .iter()
            .find(|h| h.is_older_write_of(&me))
            .map(|h| older_letter_waits(&h.id, &letter.id)))
    }

    /// [`Tools::dlq_retry`] in a `--all` run: a letter whose key has an
    /// older letter that failed earlier in the run (`failed`) waits for it.
    pub async fn dlq_retry_in_run(
        &self,
        head: &LetterHead,
        failed: &Failed,
    ) -> Result<Option<std::result::Result<crate::ack::Outcome, String>>> {
        if let Some(older) = failed.older_than(head) {
            return Ok(Some(Err(older_letter_waits(&older.id, &head.id))));
        }
        // Gone meanwhile (another operator's drop or retry): nothing to do.
        let Some(letter) = self.dlq_show(&head.id).await? else {
            return Ok(None);
        };
        self.dlq_retry(&letter).await.map(Some)
    }

    /// Re-applies a dead letter at its original version; removes it if that
    /// worked. Returns the outcome or the reason it failed again.
    pub async fn dlq_retry(
        &self,
        letter: &Letter,
    ) -> Result<std::result::Result<crate::ack::Outcome, String>> {
        let Ok(version) = letter.source_id.parse::<Version>() else {
            return Ok(Err(format!(
                "dead letter {} has no readable source id",
                letter.id
            )));
        };
        let partition = self.names.partition_of_stream(&letter.source);
        if let Some(kept) = self.earlier_unapplied(partition, version).await? {
            return Ok(Err(kept));
        }
        // The partition is checked against the count the letter was parked
        // under: the count may have changed since (`writ partitions --set`),
        // and its key may hash elsewhere now. Order stays safe: the sequence
        // guard finds it stale if a newer write of its key was applied.
        let count = letter.partitions.parse().unwrap_or(self.config.partitions);
        match self
            .apply_entry(partition, count, version, &letter.original)
            .await
        {
            Ok(r) => {
                self.settle_letter(&letter.id, &letter.original, version, r)
                    .await
            }
            Err(crate::Error::Rejected(r)) => Ok(Err(format!(
                "{r}; {}",
                r.reason.remedy().replace("<dead-letter id>", &letter.id)
            ))),
            Err(e) => Err(e),
        }
    }

    /// What a re-applied parked write means for its letter (`dlq retry`,
    /// and `replay` of an entry that has one): removed when the write is
    /// applied or superseded, else kept, with why and what to do.
    pub(super) async fn settle_letter(
        &self,
        letter_id: &str,
        original: &Fields,
        version: Version,
        r: Reapplied,
    ) -> Result<std::result::Result<crate::ack::Outcome, String>> {
        match r {
            // A newer write stands, and this letter's write would have
            // changed what the key reads had it come first. Not so when the
            // key reads as absent: a later delete or remove ends the key in
            // write order too, and re-writing the letter's value would
            // revive it.
            Reapplied {
                outcome: crate::ack::Outcome::Stale,
                now,
                gone: false,
            } if now > version && self.stale_is_not_redundant(original) => {
                let why = if self.sets_only_its_fields(original) {
                    "in the `fields` layout a put sets only the fields it sends, so this letter's \
                     fields may be missing from the document. Compare `writ dlq show {id}` with the \
                     document, write what is missing again"
                } else {
                    "in `insert_once` the first value stands, and this letter's write came first: \
                     the key holds the later one's value. Compare `writ dlq show {id}` with the \
                     document; if this letter's value should stand, hard-delete the key (`delete`, \
                     not `remove`: a removed `insert_once` key ignores later puts) and write the \
                     value again through a client"
                };
                Ok(Err(format!(
                    "kept: the key holds a newer write ({now}) than this letter ({version}), and \
                     {why}, then `writ dlq drop {id}`",
                    why = why.replace("{id}", letter_id),
                    now = now.to_stream_id(),
                    version = version.to_stream_id(),
                    id = letter_id
                )))
            }
            r => {
                self.dlq_drop(letter_id).await?;
                Ok(Ok(r.outcome))
            }
        }
    }

    /// Why the letter must wait, if its partition still holds a write older
    /// than it that is neither applied nor parked. A write refused at decode
    /// is parked at once, while earlier writes of its key may still wait (a
    /// round, a MongoDB outage, a daemon stopped under a backlog); applied
    /// first, it would make them stale: in the `fields` layout their fields
    /// would be lost, in `insert_once` the letter's value would stand instead
    /// of the first one.
    async fn earlier_unapplied(
        &self,
        partition: Option<u32>,
        version: Version,
    ) -> Result<Option<String>> {
        let Some(p) = partition else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let oldest = crate::status::oldest_unapplied(&mut conn, &self.names, p).await?;
        Ok(oldest.filter(|o| *o < version).map(|o| {
            format!(
                "kept: partition {p} still holds an unapplied write ({o}) older than this \
                 letter's ({version}); it may be of the same key, and applying the letter \
                 first would put that write out of order. Let the daemons apply it (`writ \
                 status`: partition {p}'s watermark past {version}), then retry",
                o = o.to_stream_id(),
                version = version.to_stream_id(),
            )
        }))
    }

    /// Whether the letter is a put of a `fields`-layout collection: a write
    /// that sets only the fields it sends, so a newer write of its key does
    /// not make it redundant.
    fn sets_only_its_fields(&self, original: &Fields) -> bool {
        let is_put = field(original, crate::protocol::field::OP) == Some(b"put".as_slice());
        let coll = collection_of(original, &self.config);
        is_put && coll.is_some_and(|c| c.layout == crate::config::Layout::Fields)
    }

    /// Whether a newer write of the letter's key leaves it unapplied rather
    /// than redundant: a `fields`-layout put ([`Self::sets_only_its_fields`]),
    /// or a put of an `insert_once` collection, whose first value should
    /// stand (a letter dropped as stale there lost the value that came first).
    fn stale_is_not_redundant(&self, original: &Fields) -> bool {
        let is_put = field(original, crate::protocol::field::OP) == Some(b"put".as_slice());
        let coll = collection_of(original, &self.config);
        self.sets_only_its_fields(original)
            || (is_put && coll.is_some_and(|c| c.mode == crate::config::WriteMode::InsertOnce))
    }

    /// Removes a dead letter.
    pub async fn dlq_drop(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: u64 = cmd::xdel(&self.names.dead_letters(), id)
            .query_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}
