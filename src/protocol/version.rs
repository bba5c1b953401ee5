//! Per-key versions. A write's version is the ID Redis gave its entry in the
//! partition stream: all writes of a key go to one stream, so the IDs are
//! monotonic per key across any number of writers.
//!
//! Stored in MongoDB and the cache as a fixed-width decimal string
//! (`MMMMMMMMMMMMMMMMMMMM-SSSSSSSSSSSSSSSSSSSS`) so that plain byte order is
//! version order in MongoDB filters and in Lua alike.

use std::fmt;
use std::str::FromStr;

/// A stream entry ID `ms-seq`, ordered by (ms, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl Version {
    /// The sortable stored form.
    pub fn to_sortable(self) -> String {
        format!("{:020}-{:020}", self.ms, self.seq)
    }

    /// Parses the sortable stored form.
    pub fn from_sortable(s: &str) -> Option<Version> {
        let (a, b) = s.split_once('-')?;
        if a.len() != 20 || b.len() != 20 {
            return None;
        }
        Some(Version {
            ms: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }

    /// The stream ID form, `ms-seq`.
    pub fn to_stream_id(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

/// The wall clock in unix milliseconds, the unit of [`Version::ms`] (stream
/// IDs are Redis's clock): for ages, cut-offs and `--from`/`--since`. 0 if
/// the clock is before 1970.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Version {
    type Err = ();
    /// Parses a stream ID `ms-seq` (a bare `ms` means `ms-0`).
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.split_once('-') {
            Some((a, b)) => Ok(Version {
                ms: a.parse().map_err(|_| ())?,
                seq: b.parse().map_err(|_| ())?,
            }),
            None => Ok(Version {
                ms: s.parse().map_err(|_| ())?,
                seq: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_order_matches_version_order() {
        let a: Version = "1700000000000-9".parse().unwrap();
        let b: Version = "1700000000000-10".parse().unwrap();
        let c: Version = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert!(a.to_sortable() < b.to_sortable() && b.to_sortable() < c.to_sortable());
        assert_eq!(Version::from_sortable(&b.to_sortable()), Some(b));
        assert_eq!(b.to_stream_id(), "1700000000000-10");
    }
}
