//! A recorded history of writes and reads, and the checks run on it: no
//! client ever reads a version older than one it already read or wrote.

use std::collections::HashMap;
use std::sync::Mutex;

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
    },
    /// `client` read `version` (None: absent) of `key`.
    Read {
        client: usize,
        key: String,
        version: Option<Version>,
        value: Option<i64>,
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
    /// client already read or had acked. Returns the violations.
    pub fn regressions(&self) -> Vec<String> {
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
        });
        h.push(Event::Read {
            client: 0,
            key: "k".into(),
            version: Some(v(6)),
            value: Some(2),
        });
        assert!(h.regressions().is_empty());
        h.push(Event::Read {
            client: 0,
            key: "k".into(),
            version: Some(v(5)),
            value: Some(1),
        });
        assert_eq!(h.regressions().len(), 1);
        h.push(Event::Read {
            client: 1,
            key: "k".into(),
            version: Some(v(1)),
            value: Some(0),
        });
        assert_eq!(h.regressions().len(), 1);
    }
}
