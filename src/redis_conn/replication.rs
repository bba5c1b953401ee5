//! `redis.min_replicas_acked`: waiting (`WAIT`) until writes writ relies on
//! reached enough replicas to survive a failover. [`Replication`] puts the
//! `WAIT` in the write's own pipeline (the daemon's cache writes, leases and
//! dead letters); a [`Confirmer`] lets a client's many concurrent submits
//! share one `WAIT` per node (group commit), tied to the connection each
//! write went out on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Pipeline;

use super::Conn;
use crate::config::Config;
use crate::error::{Error, Result};

/// `redis.min_replicas_acked`: how writ makes sure a write it relies on
/// survives a failover. Redis replicates asynchronously, so a master that
/// fails over may lose writes it already answered; `WAIT n` returns once `n`
/// replicas hold every write sent before it on the same connection.
#[derive(Debug, Clone, Copy)]
pub struct Replication {
    /// Replicas that must confirm; 0 skips the wait.
    pub replicas: u32,
    /// Bound of one wait.
    pub timeout: Duration,
}

impl Replication {
    /// No confirmation (`min_replicas_acked = 0`).
    pub const NONE: Replication = Replication {
        replicas: 0,
        timeout: Duration::ZERO,
    };

    /// From the config.
    pub fn of(config: &Config) -> Replication {
        Replication {
            replicas: config.min_replicas_acked,
            timeout: config.replica_ack_timeout,
        }
    }

    /// Whether writes must be confirmed.
    pub fn wanted(&self) -> bool {
        self.replicas > 0
    }

    /// With writes to confirm, checks once at start that Redis lets this
    /// user run what confirming needs (`CLIENT ID`, `WAIT`). Without them
    /// each write would be added and then reported failed (the refusal comes
    /// after the `XADD`), so a writer would send again writes Redis holds.
    pub async fn check_permitted(&self, conn: &Conn) -> Result<()> {
        if !self.wanted() {
            return Ok(());
        }
        let mut missing = Vec::new();
        for (cmd, rule) in [
            (redis::cmd("CLIENT").arg("ID").clone(), "+client|id"),
            (redis::cmd("WAIT").arg(0).arg(0).clone(), "+wait"),
        ] {
            match cmd.query_async::<redis::Value>(&mut conn.clone()).await {
                Ok(_) => {}
                Err(e) if super::has_code(&e, "NOPERM") => missing.push(rule),
                Err(e) => return Err(e.into()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "redis.min_replicas_acked = {} confirms writes with CLIENT ID and WAIT, and Redis refuses \
             {} to this user (NOPERM): add `{}` to its ACL line (docs/operations.md, \"Redis ACL users\"), \
             or set min_replicas_acked = 0",
            self.replicas,
            if missing.len() == 2 { "both" } else { "one of them" },
            missing.join(" "),
        )))
    }

    /// Adds the `WAIT` to a pipeline that wrote: its reply is the number of
    /// replicas that confirmed (check it with [`Replication::check`]). On a
    /// cluster the pipeline goes to the node of its keys, and so does the
    /// `WAIT`.
    pub fn add_to(&self, pipe: &mut Pipeline) {
        pipe.cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout.as_millis() as u64);
    }

    /// Waits until the writes connection `client_id` (a `CLIENT ID`) sent to
    /// `key`'s node reached enough replicas; not confirmed if the connection
    /// changed since. `what` names the write for the error.
    pub async fn confirm_on(
        &self,
        conn: &Conn,
        key: &str,
        client_id: u64,
        what: &'static str,
    ) -> Result<()> {
        match self.confirm_again(conn, key, client_id, what).await? {
            true => Ok(()),
            false => self.check(0, what),
        }
    }

    /// [`Replication::confirm_on`], telling a connection that changed since
    /// the write (`Ok(false)`: its confirmation can no longer be asked for)
    /// from too few replicas (`Err(NotReplicated)`). A caller that keeps the
    /// write's `client_id` can ask again after a short `WAIT` without
    /// writing again.
    pub async fn confirm_again(
        &self,
        conn: &Conn,
        key: &str,
        client_id: u64,
        what: &'static str,
    ) -> Result<bool> {
        let first = self.wait_on(conn, key).await?;
        let (id, confirmed) = self.for_connection(conn, key, client_id, first).await;
        if id != client_id {
            return Ok(false);
        }
        self.check(confirmed, what).map(|()| true)
    }

    /// The `WAIT` reply that counts for connection `client_id`, given the
    /// `first` one of [`Replication::wait_on`]. If that came from another
    /// connection, the write may have followed a `MOVED` to the slot's new
    /// node: one more `WAIT`, [`Replication::wait_following`]. Its failure
    /// (an `ASK` mid-move, say) confirms nothing.
    async fn for_connection(
        &self,
        conn: &Conn,
        key: &str,
        client_id: u64,
        first: (u64, u32),
    ) -> (u64, u32) {
        if first.0 == client_id {
            return first;
        }
        self.wait_following(conn, key).await.unwrap_or((first.0, 0))
    }

    /// Sends `CLIENT ID` and `WAIT` to the master of `key`'s slot as the
    /// connection's slot map has it; returns both replies. Neither command
    /// names a key: the `WAIT` must reach the node the writes went to, and a
    /// keyed command is redirected (`ASK`) while a resharding moves the key.
    async fn wait_on(&self, conn: &Conn, key: &str) -> redis::RedisResult<(u64, u32)> {
        use redis::aio::ConnectionLike;
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        let mut pipe = Confirmer::write_pipeline();
        self.add_to(&mut pipe);
        let replies = match conn.clone() {
            Conn::Cluster(mut c, _) => {
                let to =
                    SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
                c.route_pipeline(pipe, 0, 2, to).await?
            }
            Conn::Node(mut c) => c.req_packed_commands(&pipe, 0, 2).await?,
        };
        Ok(redis::from_redis_value(redis::Value::Array(replies))?)
    }

    /// [`Replication::wait_on`] for a write that [`Replication::wait_on`]
    /// found on another connection: with an `EXISTS` of `key` in the
    /// pipeline, which redis-rs sends on to `key`'s node if the slot moved
    /// (`MOVED`). redis-rs follows a `MOVED` for the write at once but
    /// rebuilds its slot map in the background, so a `WAIT` sent right after
    /// the write may still go to the slot's old node.
    async fn wait_following(&self, conn: &Conn, key: &str) -> redis::RedisResult<(u64, u32)> {
        let mut pipe = Confirmer::write_pipeline();
        pipe.cmd("EXISTS").arg(key).ignore();
        self.add_to(&mut pipe);
        pipe.query_async(&mut conn.clone()).await
    }

    /// Turns a `WAIT` reply into an error when too few replicas confirmed.
    pub fn check(&self, confirmed: u32, what: &'static str) -> Result<()> {
        if confirmed >= self.replicas {
            Ok(())
        } else {
            Err(Error::NotReplicated {
                what,
                confirmed,
                wanted: self.replicas,
                timeout_ms: self.timeout.as_millis() as u64,
            })
        }
    }
}

/// Group commit for [`Replication`] on a shared connection. `WAIT` blocks the
/// connection it is sent on until it returns, and covers every write sent
/// before it on that connection: one `WAIT` per write would serialise every
/// writer behind the replica round trip. Callers that wrote to a node join
/// the next `WAIT` of their route key (a key on that node); while one is in
/// flight, the next callers gather for the following one.
///
/// A `WAIT` only covers writes of its own connection, and a reconnect (a
/// failover, say) between a write and its `WAIT` would make a fresh
/// connection's `WAIT` vacuous. So a caller passes the `CLIENT ID` its write
/// went out on (see [`Confirmer::write_pipeline`]), each `WAIT` is sent with
/// `CLIENT ID` too, and a caller whose id differs is not confirmed.
pub struct Confirmer {
    conn: Conn,
    replication: Replication,
    routes: std::sync::Mutex<HashMap<String, Arc<Route>>>,
}

/// The `CLIENT ID` a `WAIT` went out on, and its reply.
type Confirmed = std::result::Result<(u64, u32), redis::RedisError>;

#[derive(Default)]
struct Route {
    state: std::sync::Mutex<RouteState>,
}

#[derive(Default)]
struct RouteState {
    running: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Confirmed>>,
}

impl Confirmer {
    /// Confirms writes on `conn` with `replication`.
    pub fn new(conn: Conn, replication: Replication) -> Confirmer {
        Confirmer {
            conn,
            replication,
            routes: Default::default(),
        }
    }

    /// Whether writes need confirming at all.
    pub fn wanted(&self) -> bool {
        self.replication.wanted()
    }

    /// A pipeline that starts with `CLIENT ID`: add the write after it, and
    /// pass the id (the first reply) to [`Confirmer::confirm`].
    pub fn write_pipeline() -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("ID");
        pipe
    }

    /// Returns once `replication.replicas` replicas hold every write that
    /// connection `client_id` sent to `key`'s node before the call (`what`
    /// names the write for the error).
    pub async fn confirm(&self, key: &str, client_id: u64, what: &'static str) -> Result<()> {
        if !self.replication.wanted() {
            return Ok(());
        }
        let route = self
            .routes
            .lock()
            .expect("lock")
            .entry(key.to_string())
            .or_default()
            .clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut st = route.state.lock().expect("lock");
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            // The guard exists before the task: a runtime shutting down may
            // drop the task before it ever runs.
            let running = Driving { route, done: false };
            tokio::spawn(Self::drive(
                running,
                self.conn.clone(),
                self.replication,
                key.to_string(),
            ));
        }
        let not_confirmed = Error::NotReplicated {
            what,
            confirmed: 0,
            wanted: self.replication.replicas,
            timeout_ms: self.replication.timeout.as_millis() as u64,
        };
        let first = match rx.await {
            Ok(Ok(first)) => first,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(not_confirmed),
        };
        match self
            .replication
            .for_connection(&self.conn, key, client_id, first)
            .await
        {
            (id, n) if id == client_id => self.replication.check(n, what),
            (id, _) => {
                tracing::warn!(
                    wrote_on = client_id,
                    waited_on = id,
                    "the Redis connection changed between a write and its WAIT; the write is not confirmed"
                );
                Err(not_confirmed)
            }
        }
    }

    /// Sends one `WAIT` per gathered group until nobody waits.
    async fn drive(mut running: Driving, conn: Conn, replication: Replication, key: String) {
        let route = running.route.clone();
        loop {
            let group = {
                let mut st = route.state.lock().expect("lock");
                if st.waiting.is_empty() {
                    st.running = false;
                    running.done = true;
                    return;
                }
                std::mem::take(&mut st.waiting)
            };
            let res: Confirmed = replication.wait_on(&conn, &key).await;
            for tx in group {
                let _ = tx.send(res.clone());
            }
        }
    }
}

/// A route's driver, which a runtime shutting down can drop mid-`WAIT` or
/// before it first ran (a handle used from a short-lived runtime). Dropped
/// before it finished, it frees the route, or every later write of that
/// route would wait for a driver that never comes; those waiting get "not
/// confirmed".
struct Driving {
    route: Arc<Route>,
    done: bool,
}

impl Drop for Driving {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.route.state.lock().unwrap_or_else(|e| e.into_inner());
        st.running = false;
        st.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RetryClass;

    #[test]
    fn too_few_replicas_is_a_retryable_error() {
        let r = Replication {
            replicas: 2,
            timeout: Duration::from_millis(100),
        };
        assert!(r.check(2, "x").is_ok());
        let e = r.check(1, "the write").unwrap_err();
        assert_eq!(e.retry_class(), RetryClass::Transient);
        assert!(e.to_string().contains("only 1 of 2 replicas"), "{e}");
    }
}
