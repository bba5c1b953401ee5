//! How often a daemon below its share asks for leases that others hold.
//!
//! The share is `ceil(partitions / members)`, so with partitions that do not
//! divide evenly some daemon stays below its share for good, and it used to
//! ask for every lease it does not hold at every poll: at 4,096 partitions
//! and 3 daemons, 2,730 script calls every 100 ms, about a fifth of a Redis
//! core, for nothing. A refused try says how long the lease has left (Redis's
//! `PTTL`), and once nothing has changed for [`QUIET_AFTER`] polls the daemon
//! asks for such a lease again only one poll before it could have expired:
//! about once per lease TTL instead of ten times a second. A crashed owner's
//! lease is still taken within the TTL plus a poll.
//!
//! After a change the daemon asks at every poll, as before, for as long as a
//! hand-over can take: the shutdown deadline, the tenures' 2 s grace and a
//! few polls (a daemon joining shrinks the others' share and they hand
//! partitions over, each released when its drain ends, at the latest when
//! the deadline aborts it; one leaving leaves the member set before it
//! drains; a lease taken). A hand-over releases a lease before its TTL is
//! out, and must not wait for it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::POLL;

/// Polls in a row that took nothing, with the member count unchanged, after
/// which held leases are asked for by their TTL only.
pub const QUIET_AFTER: u32 = 10;

/// When each lease another daemon holds is worth asking for again.
#[derive(Debug)]
pub struct Tries {
    not_before: HashMap<u32, Instant>,
    /// Polls in a row below the share that took nothing.
    fruitless: u32,
    members: Option<u64>,
    /// The last change (a member count, a lease taken), and how long after
    /// it every lease is asked for at every poll.
    changed: Option<Instant>,
    window: Duration,
}

impl Tries {
    /// Asks at every poll for `window` after each change: the longest a
    /// hand-over takes (`daemon.shutdown_deadline_ms` and its grace).
    pub fn new(window: Duration) -> Tries {
        Tries {
            not_before: HashMap::new(),
            fruitless: 0,
            members: None,
            changed: None,
            window,
        }
    }

    /// A poll counted `n` live members: a change asks for every lease again.
    pub fn members(&mut self, n: u64, now: Instant) {
        if self.members != Some(n) {
            self.members = Some(n);
            self.changed_at(now);
        }
    }

    fn changed_at(&mut self, now: Instant) {
        self.fruitless = 0;
        self.changed = Some(now);
    }

    /// Whether to ask for partition `p`'s lease at this poll.
    pub fn due(&self, p: u32, now: Instant) -> bool {
        self.fruitless < QUIET_AFTER
            || self.changed.is_none_or(|c| now < c + self.window)
            || self.not_before.get(&p).is_none_or(|t| *t <= now)
    }

    /// `p`'s lease is held for `left` more (when Redis said).
    pub fn held(&mut self, p: u32, left: Option<Duration>, now: Instant) {
        match left {
            Some(left) => {
                self.not_before.insert(p, now + left.saturating_sub(POLL));
            }
            None => {
                self.not_before.remove(&p);
            }
        }
    }

    /// A poll below the share ended; `took` whether it took any lease.
    pub fn passed(&mut self, took: bool, now: Instant) {
        if took {
            self.changed_at(now);
        } else {
            self.fruitless = self.fruitless.saturating_add(1);
        }
    }

    /// Leases this daemon holds need no entry.
    pub fn taken(&mut self, p: u32) {
        self.not_before.remove(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_polls_ask_by_the_ttl_and_a_change_asks_at_once() {
        let window = Duration::from_secs(12);
        let mut t = Tries::new(window);
        let now = Instant::now();
        t.members(3, now);
        t.held(5, Some(Duration::from_secs(2)), now);
        // Right after a change: every poll, for ten polls and the window.
        for _ in 0..QUIET_AFTER {
            assert!(t.due(5, now));
            t.passed(false, now);
        }
        assert!(t.due(5, now + window - Duration::from_millis(1)));
        // Quiet: not before one poll short of the lease's end.
        let later = now + window;
        t.held(5, Some(Duration::from_secs(2)), later);
        assert!(!t.due(5, later));
        assert!(!t.due(5, later + Duration::from_millis(1800)));
        assert!(t.due(5, later + Duration::from_millis(1900)));
        // A lease Redis gave no time for is asked for every poll.
        t.held(6, None, later);
        assert!(t.due(6, later));
        // A member joins or leaves: every poll again.
        t.members(2, later);
        assert!(t.due(5, later));
        for _ in 0..QUIET_AFTER {
            t.passed(false, later);
        }
        assert!(
            t.due(5, later + Duration::from_secs(1)),
            "within the window"
        );
        let quiet = later + window;
        t.held(5, Some(Duration::from_secs(2)), quiet);
        assert!(!t.due(5, quiet));
        // A lease taken: every poll again.
        t.passed(true, quiet);
        assert!(t.due(5, quiet));
    }
}
