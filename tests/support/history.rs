//! A recorded history of writes and reads, and the checks run on it: no
//! client ever reads a version older than one it already read or wrote.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use writ::protocol::Version;

/// One observed event.
#[derive(Debug, Clone)]
pub enum Event {
    /// `client` had `version` of `key` acknowledged (value `value`).
    Acked {
        client: usize,
        key: String,
        version: Version,
        value: i64,
        /// When the write call (or the wait for its ack) returned.
        at: Instant,
    },
    /// `client` read `version` (None: absent) of `key`.
    Read {
        client: usize,
        key: String,
        version: Option<Version>,
        value: Option<i64>,
        /// When the read started.
        at: Instant,
    },
}

/// Events in the order each client observed them.
#[derive(Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
}

impl History {
    pub fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Per client and key: every read is at least the newest version that
    /// client already read or had acked. Across clients: a read that started
    /// after any client's write of the key returned is at least that write's
    /// version. Returns the violations.
    pub fn regressions(&self) -> Vec<String> {
        let mut bad = self.per_client_regressions();
        bad.extend(self.cross_client_regressions());
        bad
    }

    /// A read started after a write call returned (any client) sees at least
    /// that write's version.
    pub fn cross_client_regressions(&self) -> Vec<String> {
        let events = self.events();
        // Per key: acks ordered by the time their call returned, with the
        // running maximum version.
        let mut acks: HashMap<String, Vec<(Instant, Version, usize)>> = HashMap::new();
        for e in &events {
            if let Event::Acked {
                client,
                key,
                version,
                at,
                ..
            } = e
            {
                acks.entry(key.clone())
                    .or_default()
                    .push((*at, *version, *client));
            }
        }
        for list in acks.values_mut() {
            list.sort_by_key(|a| a.0);
            let mut max: Option<(Version, usize)> = None;
            for a in list.iter_mut() {
                if max.is_none_or(|m| a.1 > m.0) {
                    max = Some((a.1, a.2));
                }
                let m = max.expect("set above");
                a.1 = m.0;
                a.2 = m.1;
            }
        }
        let mut bad = Vec::new();
        for e in &events {
            if let Event::Read {
                client,
                key,
                version,
                at,
                ..
            } = e
            {
                let Some(list) = acks.get(key) else { continue };
                // The newest version acked before this read started.
                let n = list.partition_point(|a| a.0 < *at);
                if n == 0 {
                    continue;
                }
                let (_, floor, by) = list[n - 1];
                if version.is_none_or(|v| v < floor) {
                    bad.push(format!(
                        "client {client} read {version:?} of {key} after client {by}'s write of {floor} had returned"
                    ));
                }
            }
        }
        bad
    }

    fn per_client_regressions(&self) -> Vec<String> {
        let mut floor: HashMap<(usize, String), Version> = HashMap::new();
        let mut bad = Vec::new();
        for e in self.events() {
            match e {
                Event::Acked {
                    client,
                    key,
                    version,
                    ..
                } => {
                    let f = floor.entry((client, key)).or_default();
                    *f = (*f).max(version);
                }
                Event::Read {
                    client,
                    key,
                    version,
                    ..
                } => {
                    let f = floor.entry((client, key.clone())).or_default();
                    match version {
                        Some(v) if v >= *f => *f = v,
                        other => {
                            if *f > Version::default() {
                                bad.push(format!(
                                    "client {client} read {other:?} of {key} after seeing {f}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        bad
    }

    /// The last acknowledged write per key: (version, value).
    pub fn last_acked(&self) -> HashMap<String, (Version, i64)> {
        let mut last: HashMap<String, (Version, i64)> = HashMap::new();
        for e in self.events() {
            if let Event::Acked {
                key,
                version,
                value,
                ..
            } = e
            {
                let slot = last.entry(key).or_insert((version, value));
                if slot.0 < version {
                    *slot = (version, value);
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_regression() {
        let h = History::default();
        let v = |ms| Version { ms, seq: 0 };
        h.push(Event::Acked {
            client: 0,
            key: "k".into(),
            version: v(5),
            value: 1,
            at: Instant::now(),
        });
        h.push(Event::Read {
            client: 0,
            key: "k".into(),
            version: Some(v(6)),
            value: Some(2),
            at: Instant::now(),
        });
        assert!(h.regressions().is_empty());
        h.push(Event::Read {
            client: 0,
            key: "k".into(),
            version: Some(v(5)),
            value: Some(1),
            at: Instant::now(),
        });
        assert_eq!(h.regressions().len(), 1);
        h.push(Event::Read {
            client: 1,
            key: "k".into(),
            version: Some(v(1)),
            value: Some(0),
            at: Instant::now(),
        });
        // Client 1 read version 1 after client 0's write of 5 had returned.
        assert_eq!(h.per_client_regressions().len(), 1);
        assert_eq!(h.cross_client_regressions().len(), 1);
        // A read that started before the write returned may see older data.
        let h = History::default();
        let early = Instant::now();
        h.push(Event::Acked {
            client: 0,
            key: "k".into(),
            version: v(5),
            value: 1,
            at: Instant::now(),
        });
        h.push(Event::Read {
            client: 1,
            key: "k".into(),
            version: Some(v(1)),
            value: Some(0),
            at: early,
        });
        assert!(h.regressions().is_empty());
    }
}
