//! How many entries to ask of one `XRANGE`: a reply is built whole in Redis
//! (which serves nobody else meanwhile) and held whole by the reader, so a
//! page of large entries must stay small. The size follows the largest entry
//! seen so far: about `page_bytes` of entries that large, growing at most
//! fourfold a page (the first pages are small while sizes are unknown).

use super::Entry;

/// The entry count of the next page of a paged read.
#[derive(Debug, Clone)]
pub struct PageSize {
    page_bytes: usize,
    max: u64,
    largest: usize,
    next: u64,
}

impl PageSize {
    /// Pages of about `page_bytes`, from `first` entries up to `max`.
    pub fn new(page_bytes: usize, first: u64, max: u64) -> PageSize {
        PageSize {
            page_bytes,
            max,
            largest: 0,
            next: first.clamp(1, max),
        }
    }

    /// Entries the next page asks for (at least one).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Takes in a page read.
    pub fn saw(&mut self, entries: &[Entry]) {
        for e in entries {
            self.largest = self.largest.max(e.bytes());
        }
        let fits = (self.page_bytes / self.largest.max(1)) as u64;
        self.next = fits.min(self.next.saturating_mul(4)).clamp(1, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Version;

    fn entry(bytes: usize) -> Entry {
        Entry {
            id: Version { ms: 1, seq: 0 },
            fields: Some(vec![(b"doc".to_vec(), vec![0; bytes])]),
        }
    }

    #[test]
    fn pages_grow_fourfold_to_what_fits_and_shrink_for_large_entries() {
        let mut p = PageSize::new(1000, 1, 500);
        let mut asked = Vec::new();
        for _ in 0..4 {
            asked.push(p.next());
            p.saw(&[entry(10)]);
        }
        assert_eq!(asked, [1, 4, 16, 64]);
        p.saw(&[entry(10)]);
        assert_eq!(p.next(), 100, "1000 bytes of 10-byte entries");
        p.saw(&[entry(10), entry(400)]);
        assert_eq!(p.next(), 2, "1000 bytes of 400-byte entries");
        p.saw(&[entry(5000)]);
        assert_eq!(p.next(), 1, "never less than one");
        let mut small = PageSize::new(1 << 30, 1, 500);
        for _ in 0..10 {
            small.saw(&[entry(1)]);
        }
        assert_eq!(small.next(), 500, "never more than the maximum");
    }
}
