//! Group commit of submits: one admission call per partition carries every
//! submit that queued while the previous call to that partition was in
//! flight.
//!
//! With `appendfsync always` a submit's latency is Redis's fsync, and with
//! one script call per submit Redis spends its time on call overhead (script
//! dispatch, the meta hash update, one AOF transaction per entry). Submits of
//! one partition share a stream and a meta hash, so the admission script takes
//! many entries at once (`src/lua/admit.lua`, batch form): nothing changes for
//! the entry or for the rule (each entry is admitted only while the backlog is
//! under the bound), and a lone submit still goes at once, alone.
//!
//! Each call carries the partition's next call number and this handle's
//! admission record (`<ns>:{p<N>}:adm:<client id>`): redis-rs in cluster mode
//! sends a command again after a timeout or a dropped connection, and the
//! script then answers the second run with the first run's ids instead of
//! adding the entries again. One call in flight per partition, so a window of
//! one call is enough.
//!
//! While a resharding moves a partition's slot, Redis Cluster refuses the
//! call until the move is done (`TRYAGAIN`, or `ASK` where the keys are split
//! or not created yet), and redis-rs gives up after its 6 retries (under a
//! second for `ASK`, about 2 s for `TRYAGAIN`). The call is then sent again,
//! under the same number, every [`REDIRECT_DELAY`] until
//! `client.write_timeout_ms` from its first send: the node did not run it,
//! and a second run would be answered from the admission record anyway.
//!
//! A call whose reply is lost (the connection dropped after Redis ran it, or
//! the reply timed out) is sent again the same way, under its number, up to
//! `LOST_REPLY_SENDS` (20) times within `client.write_timeout_ms`, and not once
//! Redis refuses connections: the record answers a call that ran with its
//! first reply, and one that did not run runs now, so the caller learns
//! whether its writes were added instead of an error that cannot say.
//!
//! Each call also carries a deadline in Redis's clock ([`super::clock`]):
//! the moment this batcher gives up on it, less allowances. A copy of the
//! call that Redis runs later (a paused Redis, a send still queued) is
//! refused with `EXPIRED` and adds nothing, so a write reported as unknown
//! never lands after its caller was told so.
//!
//! The call is made by a task of its own, so a caller that gives up waiting
//! cannot strand the submits queued behind it; nor can a runtime that shuts
//! down under that task ([`Flush`]). Bounded: at most
//! [`MAX_BATCH`] entries or [`MAX_BATCH_BYTES`] per call, one call in flight
//! per partition; callers queue behind it (each caller waits for its own
//! result, so the queue is bounded by the callers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::oneshot;

use super::admission_reply::{maybe_ran, refusal, results};
pub use super::admission_reply::{Admitted, Refused};
use super::clock::RedisClock;
use crate::redis_conn::{not_run, Confirmer, Conn};

/// Most entries in one admission call.
pub const MAX_BATCH: usize = 256;
/// Most argument bytes in one admission call.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The pause before a call that a node did not run (its slot is moving), or
/// whose reply was lost, is sent again.
pub const REDIRECT_DELAY: Duration = Duration::from_millis(100);

/// Sends of one call whose reply is lost before it stops sending: a blip (a
/// dropped connection) is over after one; in an outage it stops after about
/// 2 s, and fails as unknown once the call's deadline has passed.
const LOST_REPLY_SENDS: u32 = 20;

/// One entry's fields, as the protocol encodes them.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

struct Waiting {
    fields: Fields,
    reply: oneshot::Sender<Admitted>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    busy: bool,
    /// The number of the partition's last call (1, 2, 3, ...).
    calls: u64,
}

/// How many of its last calls' replies the admission record keeps: one call
/// is in flight per partition.
const WINDOW: u64 = 1;

/// Where a partition's admission calls go.
pub struct Target {
    /// `KEYS`: the partition stream and its meta hash.
    pub stream: String,
    /// The meta hash.
    pub meta: String,
    /// This handle's admission record in the partition.
    pub record: String,
}

/// The admission batcher of one client handle.
pub struct Batcher {
    queues: Vec<Mutex<Queue>>,
    targets: Vec<Target>,
    conn: Conn,
    script: redis::Script,
    group: String,
    settings: Settings,
    clock: RedisClock,
}

/// How the batcher calls: the bound, whether replicas confirm, and how long a
/// call the cluster did not run is sent again.
pub struct Settings {
    /// `redis.max_backlog`.
    pub bound: u64,
    /// Whether the call's pipeline starts with `CLIENT ID` (replicas confirm).
    pub confirm: bool,
    /// `client.write_timeout_ms`, plus `2 × redis.replica_ack_timeout_ms` when replicas confirm.
    pub patience: Duration,
}

impl Settings {
    /// How long a call waits for Redis: `client.write_timeout_ms`; with
    /// replicas to confirm (`confirm`), a call may first wait out the `WAIT`
    /// of the call before it on the same connection, so twice
    /// `redis.replica_ack_timeout_ms` more (as the Node client allows).
    pub fn patience(config: &crate::config::Config, confirm: bool) -> Duration {
        if confirm {
            config.write_timeout + 2 * config.replica_ack_timeout
        } else {
            config.write_timeout
        }
    }
}

impl Batcher {
    /// One queue per partition (`targets[p]`).
    pub fn new(
        targets: Vec<Target>,
        conn: Conn,
        script: redis::Script,
        group: String,
        settings: Settings,
    ) -> Arc<Batcher> {
        Arc::new(Batcher {
            queues: targets.iter().map(|_| Mutex::default()).collect(),
            clock: RedisClock::new(targets.len()),
            targets,
            conn,
            script,
            group,
            settings,
        })
    }

    /// Admits one entry to partition `p`, in a call with whatever else is
    /// queued for `p`.
    pub async fn admit(self: &Arc<Self>, p: usize, fields: Fields) -> Admitted {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = self.queues[p].lock().expect("lock");
            q.waiting.push(Waiting { fields, reply: tx });
            !std::mem::replace(&mut q.busy, true)
        };
        if lead {
            let flush = Flush {
                batcher: self.clone(),
                p,
                done: false,
            };
            tokio::spawn(flush.run());
        }
        rx.await.unwrap_or(Err(Refused::Unanswered))
    }
}

/// Partition `p`'s flush task: sends the queue, call after call, until it is
/// empty. The task runs on the runtime of the submit that started it; if that
/// runtime shuts down first, the task is dropped mid-way, and its drop frees
/// the queue (else every later submit to `p` would wait for good behind a
/// task that no longer runs) and tells the writes still queued that they
/// were not sent.
struct Flush {
    batcher: Arc<Batcher>,
    p: usize,
    done: bool,
}

impl Drop for Flush {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut q = self.batcher.queues[self.p]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        q.busy = false;
        for w in q.waiting.drain(..) {
            let _ = w.reply.send(Err(Refused::NotSent));
        }
    }
}

impl Flush {
    async fn run(mut self) {
        let (batcher, p) = (self.batcher.clone(), self.p);
        loop {
            let (seq, batch) = {
                let mut q = batcher.queues[p].lock().expect("lock");
                if q.waiting.is_empty() {
                    q.busy = false;
                    self.done = true;
                    return;
                }
                let mut bytes = 0;
                let mut n = 0;
                for w in &q.waiting {
                    bytes += w
                        .fields
                        .iter()
                        .map(|(f, v)| f.len() + v.len())
                        .sum::<usize>();
                    if n > 0 && (n == MAX_BATCH || bytes > MAX_BATCH_BYTES) {
                        break;
                    }
                    n += 1;
                }
                q.calls += 1;
                (q.calls, q.waiting.drain(..n).collect::<Vec<_>>())
            };
            let results = batcher.call(p, seq, &batch).await;
            for (w, r) in batch.into_iter().zip(results) {
                let _ = w.reply.send(r);
            }
        }
    }
}

impl Batcher {
    /// The deadline, in Redis's clock, of a call to partition `p` that gives
    /// up at `deadline` ([`RedisClock::deadline`]), asked again while the
    /// partition's slot moves; bounded by `deadline` itself.
    async fn expiry(&self, p: usize, deadline: tokio::time::Instant) -> redis::RedisResult<i64> {
        let meta = &self.targets[p].meta;
        loop {
            let asked = self
                .clock
                .deadline(p, meta, &self.conn, deadline.into_std());
            let asked = match tokio::time::timeout_at(deadline, asked).await {
                Ok(asked) => asked,
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "Redis did not tell its clock (for the admission call's deadline) within client.write_timeout_ms",
                ))),
            };
            match asked {
                Err(e)
                    if not_run(&e) && tokio::time::Instant::now() + REDIRECT_DELAY < deadline =>
                {
                    tokio::time::sleep(REDIRECT_DELAY).await
                }
                other => return other,
            }
        }
    }

    /// Admission call number `seq` of partition `p`, for `batch`; one result
    /// per entry.
    async fn call(&self, p: usize, seq: u64, batch: &[Waiting]) -> Vec<Admitted> {
        let target = &self.targets[p];
        let deadline = tokio::time::Instant::now() + self.settings.patience;
        // The last moment the call may run, in Redis's clock: after it, this
        // call has given up and told its writes "unknown", and a copy of it
        // that Redis runs then adds nothing (docs/protocol.md §2a).
        let expires = match self.expiry(p, deadline).await {
            Ok(at) => at,
            // Nothing was sent: NOT added.
            Err(e) => return vec![Err(Refused::Failed(e)); batch.len()],
        };
        let mut inv = self.script.key(&target.stream);
        inv.key(&target.meta).key(&target.record);
        inv.arg(&self.group).arg(self.settings.bound);
        inv.arg(self.targets.len())
            .arg("")
            .arg(batch.len())
            .arg(seq)
            .arg(WINDOW)
            .arg(expires);
        for w in batch {
            inv.arg(w.fields.len() * 2);
            for (f, v) in &w.fields {
                inv.arg(*f).arg(v.as_slice());
            }
        }
        // Sends that lost their reply: the call may have run.
        let mut lost = 0;
        // redis-rs's cluster connection sends a command again on its own
        // (after a dropped connection, a timeout, a redirect), and returns
        // only its last error: a failure to reach a node (a refused
        // connection, none found) may follow an earlier send that ran. A
        // refusal by Redis (OOM, PARTITIONS, also wrapped in a pipeline's
        // error) is taken as final, though it too could follow a lost reply
        // redis-rs sent again, which this cannot see.
        let cluster = self.conn.is_cluster();
        loop {
            let mut conn = self.conn.clone();
            let send = async {
                if self.settings.confirm {
                    let mut pipe = Confirmer::write_pipeline();
                    pipe.load_script(&self.script).ignore();
                    pipe.invoke_script(&inv);
                    pipe.query_async::<(u64, Value)>(&mut conn).await
                } else {
                    inv.invoke_async::<Value>(&mut conn).await.map(|v| (0, v))
                }
            };
            // No longer than client.write_timeout_ms from the first send
            // (the connection's own reply timeout is 5 s and more): then the
            // call may or may not have run, and it cannot run after its
            // deadline.
            let reply = match tokio::time::timeout_at(deadline, send).await {
                Ok(reply) => reply,
                Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no reply within client.write_timeout_ms",
                ))),
            };
            match reply {
                Ok((client, value)) => return results(batch.len(), client, value),
                Err(e)
                    if not_run(&e) && tokio::time::Instant::now() + REDIRECT_DELAY < deadline =>
                {
                    tracing::debug!(partition = p, error = %e, "admission not run (a slot is moving); sending it again");
                    tokio::time::sleep(REDIRECT_DELAY).await;
                }
                // The call may have run and its reply been lost (a dropped
                // connection, a timeout): sent again under the same number,
                // it is answered from the admission record if it ran, and
                // runs now if it did not. So the caller learns which.
                Err(e)
                    if maybe_ran(&e, cluster)
                        && lost < LOST_REPLY_SENDS
                        && tokio::time::Instant::now() + REDIRECT_DELAY < deadline =>
                {
                    tracing::debug!(partition = p, error = %e, "admission reply lost; sending the call again under its number");
                    lost += 1;
                    tokio::time::sleep(REDIRECT_DELAY).await;
                }
                Err(e) => {
                    let refused = refusal(e, lost > 0, cluster, self.targets.len() as u32);
                    if matches!(refused, Refused::Unknown(_)) {
                        // "May or may not": only once the call's deadline
                        // has passed (a copy still held then is refused),
                        // not at once after a spent re-send budget.
                        tokio::time::sleep_until(deadline).await;
                    }
                    return vec![Err(refused); batch.len()];
                }
            }
        }
    }
}
