//! writ's Lua scripts by SHA1, so that a Redis Cluster node that does not
//! have one yet gets it by `EVAL`, on that node alone. redis-rs answers a
//! `NOSCRIPT` with `SCRIPT LOAD`, which a cluster connection sends to every
//! node and waits for all of them: while any master does not answer (a node
//! stopped, a failover under way), the first call of each script on every
//! other node waited out the reply timeout and failed (found in session 47
//! with `tests/lease_stall.rs`: a lease renewal on a healthy master stuck
//! behind the stopped one until its lease lapsed). `EVAL` goes to the node of
//! the call's keys and caches the script there, as `SCRIPT LOAD` would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::{Arg, Cmd};

fn registry() -> &'static Mutex<HashMap<String, &'static str>> {
    static SCRIPTS: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    SCRIPTS.get_or_init(Default::default)
}

/// `crate::redis_conn::script(text)`, with `text` kept by its SHA1 for [`as_eval`].
pub fn script(text: &'static str) -> redis::Script {
    let script = redis::Script::new(text);
    registry()
        .lock()
        .expect("lock")
        .insert(script.get_hash().to_string(), text);
    script
}

/// When Redis last refused an `EVAL` of [`as_eval`] on one connection (its
/// user has no `+eval`): for a minute no more are tried on it (each refusal
/// is an entry in Redis's `ACL LOG`), then one is, so a user given `+eval`
/// meanwhile gets the fallback back without a restart. Shared by the clones
/// of one connection, not by the process: the daemon's user and a writer's
/// may differ.
#[derive(Clone, Default)]
pub struct EvalRefused(Arc<Mutex<Option<Instant>>>);

/// How long a refused `EVAL` is not tried again on its connection.
const EVAL_RETRY: Duration = Duration::from_secs(60);

impl EvalRefused {
    /// Redis refused an `EVAL` now: said once per process.
    pub fn now(&self) {
        static SAID: AtomicBool = AtomicBool::new(false);
        *self.0.lock().expect("lock") = Some(Instant::now());
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!("Redis refuses EVAL to this connection's user (an ACL without +eval; see docs/operations.md, \"Redis ACL users\"): on a Redis Cluster a node that lacks one of writ's scripts gets it by SCRIPT LOAD to every node instead, which waits for any master that does not answer");
        }
    }

    fn lately(&self) -> bool {
        self.0
            .lock()
            .expect("lock")
            .is_some_and(|at| at.elapsed() < EVAL_RETRY)
    }
}

/// The `EVAL` of `cmd`, an `EVALSHA` of a script made by [`script`]: the
/// same keys and arguments, the script's text for its SHA1. `None` for any
/// other command, and while `refused` says Redis refused one lately.
pub fn as_eval(cmd: &Cmd, refused: &EvalRefused) -> Option<Cmd> {
    if refused.lately() {
        return None;
    }
    let mut args = cmd.args_iter();
    match args.next()? {
        Arg::Simple(name) if name.eq_ignore_ascii_case(b"EVALSHA") => {}
        _ => return None,
    }
    let Arg::Simple(sha) = args.next()? else {
        return None;
    };
    let text = *registry()
        .lock()
        .expect("lock")
        .get(std::str::from_utf8(sha).ok()?)?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(text);
    for a in args {
        match a {
            Arg::Simple(v) => eval.arg(v),
            _ => return None,
        };
    }
    Some(eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evalsha_of_a_known_script_becomes_its_eval() {
        let s = script("return {KEYS[1], ARGV[1]}");
        let mut call = redis::cmd("EVALSHA");
        call.arg(s.get_hash()).arg(1).arg("k").arg("a");
        let eval = as_eval(&call, &EvalRefused::default()).expect("known");
        let args: Vec<Vec<u8>> = eval
            .args_iter()
            .map(|a| match a {
                Arg::Simple(v) => v.to_vec(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            args,
            [
                b"EVAL".to_vec(),
                b"return {KEYS[1], ARGV[1]}".to_vec(),
                b"1".to_vec(),
                b"k".to_vec(),
                b"a".to_vec()
            ]
        );
        assert!(as_eval(&redis::cmd("GET"), &EvalRefused::default()).is_none());
        let mut unknown = redis::cmd("EVALSHA");
        unknown.arg("0123").arg(0);
        assert!(as_eval(&unknown, &EvalRefused::default()).is_none());
        let refused = EvalRefused::default();
        refused.now();
        assert!(as_eval(&call, &refused).is_none(), "refused lately");
    }
}
