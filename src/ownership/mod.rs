//! Partition ownership: which daemon applies which partition.
//!
//! Every daemon heartbeats into `<ns>:members` (on Redis's clock: `members.rs`)
//! and aims for an even share, `ceil(partitions / live members)`. It polls
//! every [`POLL`]: counts the live members (the heartbeat and the lease
//! renewals go out on tasks of their own, all at once every quarter of the
//! lease TTL: [`renewal`]), hands over every partition above
//! its share at once (stop reading, drain, release the moment the drain
//! ends), and takes free partitions below it (asking for leases others hold
//! by their time to live once nothing has changed for as long as a
//! hand-over takes: [`tries`]). A new tenure first re-applies
//! the partition's pending entries (XAUTOCLAIM) before reading new ones, so a
//! crashed owner's work is finished in order. A lost lease aborts the
//! partition at once.
//!
//! How fast a partition moves (the figures are in the note and
//! docs/operations.md): after a kill -9, within the lease TTL plus one poll;
//! after a join or a graceful stop, within the drain of what is in flight
//! plus one poll, because a stopping daemon leaves the member set first and
//! releases each lease as soon as that partition is drained.
//!
//! This module does not know what a partition run does: `serve` hands it a
//! spawn function (see [`Spawn`]).

mod drain;
mod lease;
mod members;
mod renewal;
mod tries;

pub use lease::{Acquired, Lease, Leases};
pub(crate) use members::live as live_members;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::Conn;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::protocol::Names;
use crate::telemetry::Event;

/// How often a daemon looks at membership and free partitions.
pub const POLL: Duration = Duration::from_millis(100);

/// One tenure of one partition: its lease and its stop signals.
pub struct PartitionRun {
    /// Fired on shutdown or hand-over: stop reading, drain what is in flight.
    pub stop_reading: CancellationToken,
    /// Fired at the shutdown deadline or when the lease is lost: apply nothing
    /// more, leave the rest pending for the next owner.
    pub abort: CancellationToken,
    /// The lease this tenure holds.
    pub lease: Arc<Lease>,
}

/// Starts the run of a partition whose lease was just taken; the task ends
/// when the run is drained or aborted.
pub type Spawn = Box<dyn Fn(u32, Arc<PartitionRun>) -> JoinHandle<()> + Send + Sync>;

struct Tenure {
    run: Arc<PartitionRun>,
    handle: JoinHandle<()>,
    /// Since when it is handed over (it reads no more; released once
    /// drained, aborted at `daemon.shutdown_deadline`).
    handing_over: Option<Instant>,
    /// Renews its lease until the tenure ends ([`renewal::Renewer`]).
    renewer: JoinHandle<()>,
}

/// One daemon's view of the partitions it holds.
struct Owner {
    config: Arc<Config>,
    conn: Conn,
    leases: Leases,
    spawn: Spawn,
    members: Arc<members::Members>,
    owned: BTreeMap<u32, Tenure>,
    /// Every quarter of the lease TTL: when the renewals and the heartbeat
    /// go out.
    tick: tokio::sync::watch::Receiver<u64>,
    /// The partitions whose last renewal failed (the renewers keep it).
    failing: renewal::Failing,
    /// Leases of ended tenures not released yet (partition, token).
    unreleased: Vec<(u32, u64)>,
    /// Since when the member count fails (its error is logged once).
    counting_failed: Option<Instant>,
    /// Since when it works again, while this daemon is out of the member set.
    counting_again: Option<Instant>,
    /// The partitions whose leases the last try could not take (said once
    /// per change, not every poll).
    refused: Vec<u32>,
    /// Those whose lease or fence key holds another program's value (said
    /// once per change).
    foreign: Vec<u32>,
    /// Those whose last renewal failed (said once per change).
    renew_failing: Vec<u32>,
    /// When to ask again for leases others hold.
    tries: tries::Tries,
}

/// Owns partitions until `shutdown`, then drains them (bounded by the
/// shutdown deadline) and releases the leases.
pub async fn run(
    config: Arc<Config>,
    conn: Conn,
    leases: Leases,
    spawn: Spawn,
    shutdown: CancellationToken,
) {
    let config_deadline = config.shutdown_deadline;
    let (tick, ticker) = renewal::ticker(config.lease_ttl / 4);
    let mut owner = Owner {
        members: Arc::new(members::Members::new(
            crate::protocol::Names::new(&config.namespace).members(),
            &config.consumer_name,
            config.lease_ttl,
        )),
        config,
        conn,
        leases,
        spawn,
        owned: BTreeMap::new(),
        tick,
        failing: Default::default(),
        unreleased: Vec::new(),
        counting_failed: None,
        counting_again: None,
        refused: Vec::new(),
        foreign: Vec::new(),
        renew_failing: Vec::new(),
        // Every poll for as long as a hand-over takes after a change: its
        // drain's deadline, the tenures' 2 s grace, a few polls.
        tries: tries::Tries::new(config_deadline + Duration::from_secs(2) + 5 * POLL),
    };
    // The first heartbeat before the first count, which must count this
    // daemon; then one at every tick.
    // A heartbeat holds nothing else up: it may take the TTL less a tick.
    let beat_bound = owner.config.lease_ttl - owner.config.lease_ttl / 4;
    let first = owner.members.heartbeat(&owner.conn);
    tokio::select! {
        _ = tokio::time::timeout(beat_bound, first) => {}
        _ = shutdown.cancelled() => {}
    }
    let beating = CancellationToken::new();
    let mut heartbeats = renewal::heartbeats(
        owner.members.clone(),
        owner.conn.clone(),
        &owner.tick,
        beat_bound,
        beating.clone(),
    );
    loop {
        // A Redis that does not answer (the master of the member set) must
        // not hold a stop up: the count and the releases give way to it (a
        // lease not released expires within its TTL).
        let members = tokio::select! {
            m = owner.keep_up() => m,
            _ = shutdown.cancelled() => break,
        };
        tokio::select! {
            _ = owner.end_tenures(None) => {}
            _ = shutdown.cancelled() => break,
        }
        if let Some(n) = members {
            owner.tries.members(n, Instant::now());
            let share = owner.config.partitions.div_ceil(n as u32);
            owner.hand_over_above(share);
            owner.take_up_to(share, &shutdown).await;
        }
        owner.abort_slow_hand_overs();
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Leave first, so the others' share grows and they take each partition
    // the moment it is released. Every Redis call from here on waits no
    // longer than the shutdown deadline (a Redis that stopped answering
    // costs a reply timeout per call otherwise: 19 s past a 1 s deadline),
    // and the last releases [`drain::RELEASE_GRACE`] past it.
    let deadline = Instant::now() + owner.config.shutdown_deadline;
    beating.cancel();
    // A heartbeat still out must not land after the leave: it is waited for
    // (a heartbeat is a few round trips), a quarter of the TTL at most and
    // not past the deadline, then stopped (an aborted one is not sent on).
    let beat_by = deadline.min(Instant::now() + owner.config.lease_ttl / 4);
    if tokio::time::timeout_at(beat_by, &mut heartbeats)
        .await
        .is_err()
    {
        heartbeats.abort();
    }
    let _ = tokio::time::timeout_at(deadline, owner.leave()).await;
    owner.drain(deadline).await;
    ticker.abort();
}

impl Owner {
    /// Every poll: the number of live members (`None`: Redis did not answer,
    /// so take nothing new), after saying which renewals fail.
    async fn keep_up(&mut self) -> Option<u64> {
        self.say_renewals();
        let counted = self.members.count(&self.conn).await;
        match counted {
            Ok(n) => {
                self.counting_failed = None;
                if self.members.is_out() {
                    // Back in once counts have worked for a TTL (a count
                    // that fails on and off would make the others hand
                    // partitions over and back at each step), then counted
                    // first: its share comes from the next count.
                    let since = *self.counting_again.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.config.lease_ttl {
                        self.members.step_in();
                        self.counting_again = None;
                        tracing::info!(
                            "the live daemons can be counted again; this daemon is a member again"
                        );
                        self.members.heartbeat(&self.conn).await;
                    }
                    return None;
                }
                Some(n.max(1))
            }
            Err(e) => {
                self.counting_again = None;
                let now = Instant::now();
                let since = *self.counting_failed.get_or_insert_with(|| {
                    // Said once per failing streak, not every poll.
                    tracing::error!(error = %e, "cannot count the live daemons; taking no partition until it works (a Redis ACL without ZCOUNT? see docs/operations.md)");
                    now
                });
                // For long (not a blip), it steps out of the member set: the
                // others' shares then grow to the partitions it cannot take.
                // It keeps and renews the ones it holds.
                if now.duration_since(since) >= 2 * self.config.lease_ttl && !self.members.is_out()
                {
                    tracing::warn!("this daemon still cannot count the live daemons: it leaves the member set, so that the others take the partitions it cannot, and comes back once it can count");
                    self.members.step_out(&self.conn).await;
                }
                None
            }
        }
    }

    /// Logs the partitions whose renewal failed, once per change of that
    /// set (every renewal pass, a quarter of the TTL, per partition, was
    /// 128 lines a second with 64 partitions).
    fn say_renewals(&mut self) {
        let (failing, error): (Vec<u32>, Option<String>) = {
            let f = self.failing.lock().expect("lock");
            (f.keys().copied().collect(), f.values().next().cloned())
        };
        if failing == self.renew_failing {
            return;
        }
        match error {
            Some(e) => {
                tracing::warn!(partitions = ?failing, error = %e, "cannot renew these leases; each partition stops when its lease expires")
            }
            // The failing ones renewed, or their tenures ended.
            None => tracing::info!("no lease renewal is failing now"),
        }
        self.renew_failing = failing;
    }

    async fn leave(&mut self) {
        self.members.leave(&self.conn).await;
    }

    /// Releases the leases of tenures that ended (handed over, drained,
    /// aborted, or failed) while they are still ours.
    /// During a shutdown the releases wait `until` at most (a lease not
    /// released expires within its TTL).
    async fn end_tenures(&mut self, until: Option<Instant>) {
        let ended: Vec<u32> = self
            .owned
            .iter()
            .filter(|(_, t)| t.handle.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            let t = self.owned.remove(&p).expect("listed");
            t.renewer.abort();
            // Even when this daemon no longer trusts it (a renewal late by a
            // stall): Redis may still hold it in this daemon's name, and
            // nobody could take it for up to a TTL. The release checks the
            // name and the token, and the tenure has stopped.
            self.unreleased.push((p, t.run.lease.token));
            crate::telemetry::clear_partition(p);
            tracing::info!(partition = p, "partition tenure ended");
        }
        // At once, as the renewals go: tenures that end together (a
        // shutdown, a Redis stall that aborts them all) cost one round trip,
        // or one reply timeout, not one per partition.
        // Kept in `unreleased` until they went out: a stop that cuts this
        // short leaves them to the drain's last releases.
        if self.unreleased.is_empty() {
            return;
        }
        let releases = futures::future::join_all(
            self.unreleased
                .iter()
                .map(|&(p, token)| self.release(p, token)),
        );
        match until {
            Some(until) => {
                if tokio::time::timeout_at(until, releases).await.is_err() {
                    tracing::warn!("redis did not answer the leases' releases in time; they expire within the lease TTL");
                }
            }
            None => {
                releases.await;
            }
        }
        self.unreleased.clear();
    }

    async fn release(&self, p: u32, token: u64) {
        match self.leases.release(p, token).await {
            Ok(true) => Event::LeaseReleased { partition: p }.emit(),
            // Expired meanwhile (and counted as lost if a renewal saw it).
            Ok(false) => {
                tracing::debug!(
                    partition = p,
                    "the lease was no longer this tenure's; nothing to release"
                )
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot release the lease; it expires within its TTL")
            }
        }
    }

    fn active(&self) -> u32 {
        self.owned
            .values()
            .filter(|t| t.handing_over.is_none())
            .count() as u32
    }

    /// Stops reading every partition above `share` (the highest numbers);
    /// each is released as soon as its in-flight work is drained.
    fn hand_over_above(&mut self, share: u32) {
        let mut excess = self.active().saturating_sub(share);
        for (p, t) in self.owned.iter_mut().rev() {
            if excess == 0 {
                break;
            }
            if t.handing_over.is_some() {
                continue;
            }
            tracing::info!(
                partition = p,
                share,
                "handing the partition over to balance the daemons"
            );
            t.handing_over = Some(Instant::now());
            t.run.stop_reading.cancel();
            excess -= 1;
        }
    }

    /// Aborts a hand-over still draining at `daemon.shutdown_deadline`, as
    /// a shutdown does: work that cannot finish (an entry waiting for a
    /// dead-letter stream it cannot write, a cache or ack step Redis keeps
    /// refusing) would otherwise hold the partition, renewed, for ever, and
    /// the daemon it goes to could never take it. What is left stays
    /// pending for that daemon.
    fn abort_slow_hand_overs(&self) {
        for (p, t) in &self.owned {
            let late = t
                .handing_over
                .is_some_and(|since| since.elapsed() >= self.config.shutdown_deadline);
            if late && !t.run.abort.is_cancelled() {
                tracing::warn!(
                    partition = p,
                    deadline_ms = self.config.shutdown_deadline.as_millis() as u64,
                    "the partition handed over did not drain within daemon.shutdown_deadline_ms; abandoning what is left (it stays pending for the next owner)"
                );
                t.run.abort.cancel();
            }
        }
    }

    async fn take_up_to(&mut self, share: u32, shutdown: &CancellationToken) {
        let mut active = self.active();
        let mut failed: Vec<u32> = Vec::new();
        let mut foreign: Vec<u32> = Vec::new();
        let mut first_error: Option<Error> = None;
        let mut reached = 0;
        let (below, before, now) = (active < share, active, Instant::now());
        for p in 0..self.config.partitions {
            if active >= share || shutdown.is_cancelled() {
                break;
            }
            reached = p + 1;
            if self.owned.contains_key(&p) || !self.tries.due(p, now) {
                continue;
            }
            // However long the acquisitions take (a slow Redis, a master
            // that stopped answering), the leases already held are renewed
            // meanwhile by their own tasks ([`renewal`]).
            let acquired = tokio::select! {
                r = self.leases.acquire_or_held(p) => r,
                // A stop is not held up by an acquisition from a Redis that
                // does not answer (one that lands expires within its TTL).
                _ = shutdown.cancelled() => break,
            };
            match acquired {
                Ok(Acquired::Taken(lease)) => {
                    self.tries.taken(p);
                    Event::LeaseAcquired {
                        partition: p,
                        token: lease.token,
                    }
                    .emit();
                    let run = Arc::new(PartitionRun {
                        stop_reading: shutdown.child_token(),
                        abort: CancellationToken::new(),
                        lease: Arc::new(lease),
                    });
                    let handle = (self.spawn)(p, run.clone());
                    let renewer = renewal::Renewer {
                        leases: self.leases.clone(),
                        partition: p,
                        run: run.clone(),
                        failing: self.failing.clone(),
                        ttl: self.config.lease_ttl,
                    }
                    .spawn(&self.tick);
                    self.owned.insert(
                        p,
                        Tenure {
                            run,
                            handle,
                            handing_over: None,
                            renewer,
                        },
                    );
                    active += 1;
                }
                Ok(Acquired::Held(left)) => self.tries.held(p, left, now),
                // One partition's keys hold something else (another
                // program's value): that partition stays unowned, the
                // others are still taken.
                Err(Error::Redis(e)) if crate::redis_conn::is_wrong_type(&e) => {
                    foreign.push(p);
                    if !self.foreign.contains(&p) {
                        tracing::error!(
                            partition = p,
                            lease = %Names::new(&self.config.namespace).lease(p),
                            error = %e,
                            "cannot take this partition's lease: its lease or fence key (same hash tag) holds a value writ did not write; delete it"
                        );
                    }
                }
                // One partition's trouble (its cluster node failing over, no
                // replica to confirm its lease, an ACL without its keys) must
                // not keep the partitions after it unowned: they are tried
                // too. Only a Redis that does not answer at all, on one
                // server, ends the round (each try would wait it out again).
                Err(e) => {
                    let unreachable = !self.conn.is_cluster()
                        && (e.is_timeout()
                            || matches!(&e, Error::Redis(r) if r.is_io_error() || r.is_connection_dropped()));
                    failed.push(p);
                    first_error.get_or_insert(e);
                    if unreachable {
                        break;
                    }
                }
            }
        }
        match first_error {
            Some(e) if failed != self.refused => {
                tracing::warn!(partitions = ?failed, error = %e, "cannot take these partitions' leases (redis); the others were tried, and these are tried again every poll");
            }
            _ => {}
        }
        self.refused = failed;
        if below {
            self.tries.passed(active > before, Instant::now());
        }
        // A pass that stopped early (share reached, shutdown, Redis not
        // answering) did not look at the partitions from `reached` on: what
        // it knew of those stays.
        self.foreign.retain(|p| *p >= reached);
        self.foreign.extend(foreign);
    }
}
