//! The daemon-wide bound on MongoDB operations in flight, adapted to the
//! latency MongoDB shows (additive increase, multiplicative decrease).
//!
//! Without it every partition's key workers call MongoDB at once: thousands of
//! operations queue in the driver's pool, time out while queued, are retried
//! while the first attempt may still run, and the load multiplies (a congestive
//! collapse under a backlog). With it, operations wait *here*, outside any
//! timeout, and at most `limit` reach the driver, whose pool is sized to the
//! upper bound. Slots go in arrival order: a freed slot wakes only the
//! longest waiter, and an operation that arrives while others wait queues
//! behind them, however quickly it runs (no partition's round is passed
//! over again and again by busier ones, and a completion costs one wake-up,
//! not one per waiter).
//!
//! The limit starts at 1 (a slow start), holds there for the first
//! `HOLD_AFTER_DECREASE` completions, and then grows by one per `limit` fast
//! completions made while it was fully used (a limit never reached is not
//! evidence). It shrinks by a tenth (at most once per round trip) when a
//! completion is slower than `TOLERANCE` times the best latency seen
//! recently, or slower than a quarter of the operation timeout (queueing must
//! never approach the server-side time limit), or failed for a transient
//! reason; after a decrease it holds for `HOLD_AFTER_DECREASE` fast
//! completions before it grows again. Each increase is a probe: one that
//! ends in a decrease doubles the next hold (up to `HOLD_MAX`), one that
//! holds resets it. A server that serialises operations therefore settles at
//! 1 with ever rarer probes at 2 (more concurrency only adds queueing), one
//! that scales settles high.
//!
//! Latency is compared **per write**: a bulk of 200 writes that takes 200 times
//! a single write's time is not congestion, so a bulk reports its write count
//! ([`Permit::done_writes`]) and its latency is divided by it before it is
//! compared with the best. The quarter-timeout rule still judges the whole
//! operation.
//!
//! Why a slow start: the best latency must be learned with one operation in
//! flight. A server that shares its time among the operations it holds (as
//! SecantusDB's threads do) finishes a burst of eight bulks at about the same
//! moment, each eight times slower than alone; a limiter that starts at eight
//! never sees the uncongested latency, takes the congested one as its best,
//! and stays at 8-12. That cost a backlog drain 10-25 % of the server's
//! ceiling (docs/performance.md, session 9). Growing from 1 costs a server
//! that scales a few dozen completions.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A completion (per write) this many times slower than the recent best
/// counts as congestion. Tight on purpose: on a server that runs operations
/// one at a time, each extra operation in flight adds a whole service time of
/// queueing, and a limit of 2 there (rounds gather into larger bulks while
/// they wait) applied 1.9-2.2x the writes of a limit of 4-7 in
/// `writ bench --mode sync` (docs/performance.md, session 7).
const TOLERANCE: f64 = 1.5;
/// Per-write latency below which no sample counts as congestion (noise
/// floor): a real MongoDB applies a write of a bulk in well under this, so
/// there the limit is bounded by the quarter-timeout rule and failures only.
const FLOOR: Duration = Duration::from_millis(1);
/// How fast the remembered best latency forgets (per sample), so a server
/// that became slower for good is not judged against a stale best.
const BEST_DECAY: f64 = 1.001;
/// Fast completions after a decrease before the limit may grow again. Every
/// increase is a probe; on a server that runs one operation at a time, a
/// probe that follows each decrease at once keeps the limit at 2 half the
/// time, and two operations sharing that server run slower together than
/// one after another (a drain lost 10-30 % so, docs/performance.md, session
/// 9). Waiting this many completions keeps probes to about one in sixteen.
const HOLD_AFTER_DECREASE: u32 = 16;
/// The longest hold. A probe that ends in a decrease doubles the next hold,
/// up to this; a probe that holds (a full window of fast completions at the
/// new limit) brings it back to [`HOLD_AFTER_DECREASE`]. On a server where
/// more concurrency never helps, probes then grow rare: each costs two
/// operations that run slower together than apart (a drain at 0.90-0.92x
/// of the server's ceiling with a fixed hold of 16, 0.95x with the limit
/// pinned at 1, docs/performance.md, session 10).
const HOLD_MAX: u32 = 256;

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    best: Option<f64>,
    last_decrease: Instant,
    /// Fast completions still to come before the next increase.
    hold: u32,
    /// The hold the next decrease sets (doubled by each failed probe).
    next_hold: u32,
    /// After an increase of the whole limit: fast completions since, until
    /// a full window of them confirms the probe.
    probe: Option<u32>,
    /// Operations waiting for a slot, longest first: (ticket, its wake-up).
    queue: VecDeque<(u64, Arc<Notify>)>,
    next_ticket: u64,
}

impl State {
    fn has_free_slot(&self) -> bool {
        (self.in_flight as f64) < self.limit.floor().max(1.0)
    }

    /// Wakes the longest waiter if a slot is free for it. Its wake-up is
    /// kept if it is not waiting yet, so none is lost.
    fn wake_head(&self) {
        if self.has_free_slot() {
            if let Some((_, wake)) = self.queue.front() {
                wake.notify_one();
            }
        }
    }
}

/// A place in the queue; dropped before its slot came (the wait was
/// cancelled), it leaves the queue and passes its turn on.
struct Queued<'a> {
    limiter: &'a Limiter,
    ticket: u64,
    served: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut s = self.limiter.state.lock().expect("limiter lock");
        s.queue.retain(|(t, _)| *t != self.ticket);
        s.wake_head();
    }
}

/// The shared limiter; cheap to clone.
#[derive(Clone, Debug)]
pub struct Limiter {
    state: Arc<Mutex<State>>,
    max: usize,
    slow: Duration,
}

/// One admitted operation; report how it went with [`Permit::done`]. Dropped
/// without a report (cancelled), it frees its slot and teaches nothing.
#[derive(Debug)]
pub struct Permit {
    limiter: Limiter,
    started: Instant,
    /// Set once [`Permit::done_writes`] reported (its drop then frees nothing).
    reported: bool,
}

/// How an operation ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It completed (applied, stale or refused for good): its latency counts.
    Completed,
    /// It failed for a reason that suggests overload (timeout, connection).
    Overloaded,
}

impl Limiter {
    /// A limiter between 1 and `max`, starting at 1, for operations with
    /// time limit `op_timeout`.
    pub fn new(max: usize, op_timeout: Duration) -> Limiter {
        let max = max.max(1);
        Limiter {
            state: Arc::new(Mutex::new(State {
                limit: 1.0,
                in_flight: 0,
                best: None,
                last_decrease: Instant::now(),
                // Starting as after a decrease: the first completions, run
                // alone, teach the best latency (the very first is often
                // slow: a cold collection, a new connection).
                hold: HOLD_AFTER_DECREASE,
                next_hold: HOLD_AFTER_DECREASE,
                probe: None,
                queue: VecDeque::new(),
                next_ticket: 0,
            })),
            max,
            slow: op_timeout / 4,
        }
    }

    /// Waits for a slot, behind every operation already waiting. Cancel-safe:
    /// dropping the future takes no slot and loses no other waiter's turn.
    pub async fn acquire(&self) -> Permit {
        let (ticket, wake) = {
            let mut s = self.state.lock().expect("limiter lock");
            if s.queue.is_empty() && s.has_free_slot() {
                s.in_flight += 1;
                return self.permit();
            }
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            let wake = Arc::new(Notify::new());
            s.queue.push_back((ticket, wake.clone()));
            (ticket, wake)
        };
        let mut queued = Queued {
            limiter: self,
            ticket,
            served: false,
        };
        loop {
            wake.notified().await;
            let mut s = self.state.lock().expect("limiter lock");
            if s.queue.front().map(|(t, _)| *t) == Some(ticket) && s.has_free_slot() {
                s.queue.pop_front();
                s.in_flight += 1;
                // A grown limit can have freed more than one slot.
                s.wake_head();
                queued.served = true;
                return self.permit();
            }
        }
    }

    fn permit(&self) -> Permit {
        Permit {
            limiter: self.clone(),
            started: Instant::now(),
            reported: false,
        }
    }

    /// The current limit (whole operations).
    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").limit.floor() as usize
    }

    /// Operations admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.state.lock().expect("limiter lock").in_flight
    }

    fn finish(&self, latency: Option<(Duration, Signal, usize)>) {
        let mut s = self.state.lock().expect("limiter lock");
        // Whether the limit was what held operations back: it only grows
        // then. A limit that is never reached proves nothing about the
        // server, and growing it anyway lets every caller start its work at
        // once, in small pieces, on a server that may run them one by one.
        let used = !s.has_free_slot();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some((latency, signal, writes)) = latency {
            let per_write = latency / writes.max(1) as u32;
            let secs = per_write.as_secs_f64();
            let best = s.best.map(|b| (b * BEST_DECAY).min(secs)).unwrap_or(secs);
            s.best = Some(best);
            let congested = signal == Signal::Overloaded
                || latency > self.slow
                || (per_write > FLOOR && secs > best * TOLERANCE);
            if congested {
                // At most one decrease per round trip: the operations already
                // in flight were admitted under the old limit.
                if s.last_decrease.elapsed() > latency {
                    s.limit = (s.limit * 0.9).max(1.0);
                    s.last_decrease = Instant::now();
                    if s.probe.take().is_some() {
                        // The last increase made it worse: probe half as often.
                        s.next_hold = (s.next_hold * 2).min(HOLD_MAX);
                    }
                    s.hold = s.next_hold;
                }
            } else {
                if let Some(fast) = s.probe.as_mut() {
                    *fast += 1;
                    if *fast as f64 >= s.limit.floor() {
                        // A full window at the new limit: the probe held.
                        s.probe = None;
                        s.next_hold = HOLD_AFTER_DECREASE;
                    }
                }
                if s.hold > 0 {
                    s.hold -= 1;
                } else if used {
                    let before = s.limit.floor();
                    s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
                    if s.limit.floor() > before {
                        s.probe = Some(0);
                    }
                }
            }
            metrics::gauge!("writ_mongodb_concurrency_limit").set(s.limit.floor());
        }
        s.wake_head();
    }
}

impl Permit {
    /// Reports the outcome of a one-write operation and frees the slot.
    pub fn done(self, signal: Signal) {
        self.done_writes(signal, 1);
    }

    /// Reports the outcome of an operation that carried `writes` writes (a
    /// bulk) and frees the slot; its latency is judged per write.
    pub fn done_writes(mut self, signal: Signal, writes: usize) {
        let latency = self.started.elapsed();
        self.reported = true;
        self.limiter.finish(Some((latency, signal, writes)));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.limiter.finish(None);
        }
    }
}

#[cfg(test)]
mod tests;
