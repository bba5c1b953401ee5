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
use std::sync::{Mutex, OnceLock};

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

/// Whether Redis refused `EVAL` to this process (an ACL without `+eval`).
static EVAL_REFUSED: AtomicBool = AtomicBool::new(false);

/// Redis refused an `EVAL` of [`as_eval`]: says so once, and no more are
/// tried (each refusal is also an entry in Redis's `ACL LOG`).
pub fn eval_refused() {
    if !EVAL_REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!("Redis refuses EVAL to this process (an ACL without +eval; see docs/operations.md, \"Redis ACL users\"): on a Redis Cluster a node that lacks one of writ's scripts gets it by SCRIPT LOAD to every node instead, which waits for any master that does not answer");
    }
}

/// The `EVAL` of `cmd`, an `EVALSHA` of a script made by [`script`]: the
/// same keys and arguments, the script's text for its SHA1. `None` for any
/// other command, and once Redis refused an `EVAL` ([`eval_refused`]).
pub fn as_eval(cmd: &Cmd) -> Option<Cmd> {
    if EVAL_REFUSED.load(Ordering::Relaxed) {
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
        let eval = as_eval(&call).expect("known");
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
        assert!(as_eval(&redis::cmd("GET")).is_none());
        let mut unknown = redis::cmd("EVALSHA");
        unknown.arg("0123").arg(0);
        assert!(as_eval(&unknown).is_none());
    }
}
