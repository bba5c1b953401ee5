//! The letters of a `writ dlq retry --all` run that failed, so that a later
//! letter of the same key waits for them (a fields-layout put, an
//! `insert_once` put: their order matters).

use std::collections::HashMap;

use super::dlq::LetterHead;

/// The letters of a `--all` run that failed: the oldest of each key, so a
/// later letter of that key waits for it. Kept by stream and key: after an
/// outage every letter may fail, and looking through a list of them for
/// each letter made a run of 200,000 letters cost 2*10^10 comparisons.
#[derive(Debug, Default)]
pub struct Failed {
    oldest: HashMap<(String, Vec<u8>), LetterHead>,
    count: usize,
}

impl Failed {
    /// `head` failed (heads come in write order, so the first of a key is
    /// its oldest).
    pub fn add(&mut self, head: &LetterHead) {
        self.count += 1;
        if let (Some(key), Some(_)) = (&head.key, head.write) {
            self.oldest
                .entry((head.source.clone(), key.clone()))
                .and_modify(|h| {
                    if h.write > head.write {
                        *h = head.clone();
                    }
                })
                .or_insert_with(|| head.clone());
        }
    }

    /// Whether no letter failed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A failed letter that parks an older write of `head`'s key.
    pub(super) fn older_than(&self, head: &LetterHead) -> Option<&LetterHead> {
        let key = (head.source.clone(), head.key.clone()?);
        self.oldest.get(&key).filter(|f| f.is_older_write_of(head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Version;

    fn head(id: u64, key: &str, write: u64) -> LetterHead {
        LetterHead {
            id: format!("{id}-0"),
            source: "ns:{p0}:in".into(),
            write: Some(Version { ms: write, seq: 0 }),
            key: Some(key.as_bytes().to_vec()),
            request: None,
            ordered: true,
        }
    }

    #[test]
    fn a_later_letter_waits_for_the_oldest_failed_letter_of_its_key() {
        let mut failed = Failed::default();
        assert!(failed.is_empty());
        failed.add(&head(1, "a", 10));
        failed.add(&head(2, "a", 20));
        failed.add(&head(3, "b", 30));
        assert!(!failed.is_empty());
        assert_eq!(
            failed.older_than(&head(4, "a", 40)).map(|h| h.id.as_str()),
            Some("1-0")
        );
        assert_eq!(
            failed.older_than(&head(5, "b", 25)).map(|h| h.id.as_str()),
            None
        );
        assert_eq!(
            failed.older_than(&head(6, "c", 50)).map(|h| h.id.as_str()),
            None
        );
        let unordered = LetterHead {
            ordered: false,
            ..head(7, "a", 60)
        };
        assert!(failed.older_than(&unordered).is_none());
    }
}
