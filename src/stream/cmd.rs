//! The stream commands writ sends, built here and nowhere else, so that every
//! `MAXLEN`, `BLOCK` and id range is visible in one file. Each builder returns
//! a [`redis::Cmd`] for the caller to run (or add to a pipeline).

use std::time::Duration;

use redis::Cmd;

use crate::protocol::Version;

/// `XADD <stream> [MAXLEN ~ <n>] *`; the caller adds the field pairs.
pub fn xadd(stream: &str, approx_maxlen: Option<u64>) -> Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(n) = approx_maxlen {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*");
    cmd
}

/// `XACK <stream> <group> <id>...`.
pub fn xack(stream: &str, group: &str, ids: &[Version]) -> Cmd {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(stream).arg(group);
    for id in ids {
        cmd.arg(id.to_stream_id());
    }
    cmd
}

/// `XRANGE <stream> <start> <end> [COUNT <n>]`. `start` and `end` are ids,
/// `-`/`+`, or exclusive `(<id>`.
pub fn xrange(stream: &str, start: &str, end: &str, count: Option<u64>) -> Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg(start).arg(end);
    if let Some(n) = count {
        cmd.arg("COUNT").arg(n);
    }
    cmd
}

/// `XREVRANGE <stream> + - COUNT 1`: the newest entry.
pub fn newest(stream: &str) -> Cmd {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
    cmd
}

/// `XREVRANGE <stream> <id> - COUNT 1`: the newest entry at or before `id`.
pub fn xrev_upto(stream: &str, id: &str) -> Cmd {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(stream).arg(id).arg("-").arg("COUNT").arg(1);
    cmd
}

/// `EXISTS <stream>`.
pub fn exists(stream: &str) -> Cmd {
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(stream);
    cmd
}

/// `XINFO STREAM <stream>`: its length, ids and `max-deleted-entry-id`.
pub fn info(stream: &str) -> Cmd {
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("STREAM").arg(stream);
    cmd
}

/// `XREAD COUNT <n> BLOCK <ms> STREAMS <stream> <after>`: waits for entries
/// after `after` (`$`: after the newest) without joining a group.
pub fn xread_blocking(stream: &str, after: &str, count: u64, block: Duration) -> Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(after);
    cmd
}

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`.
pub fn create_group(stream: &str, group: &str) -> Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM");
    cmd
}

/// `XINFO GROUPS <stream>`.
pub fn groups(stream: &str) -> Cmd {
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("GROUPS").arg(stream);
    cmd
}

/// `XPENDING <stream> <group>`: the summary (count, lowest id, ...).
pub fn pending_summary(stream: &str, group: &str) -> Cmd {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group);
    cmd
}

/// `XPENDING <stream> <group> - <through> 1`: the oldest pending entry at or
/// below `through`, if any.
pub fn pending_through(stream: &str, group: &str, through: Version) -> Cmd {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream)
        .arg(group)
        .arg("-")
        .arg(through.to_stream_id())
        .arg(1);
    cmd
}

/// `XPENDING <stream> <group> <id> <id> 1`: whether the group holds entry
/// `id` pending (a deleted entry stays pending until it is acked or claimed).
pub fn pending_at(stream: &str, group: &str, id: Version) -> Cmd {
    let at = id.to_stream_id();
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group).arg(&at).arg(&at).arg(1);
    cmd
}

/// `XLEN <stream>`.
pub fn xlen(stream: &str) -> Cmd {
    let mut cmd = redis::cmd("XLEN");
    cmd.arg(stream);
    cmd
}

/// `XDEL <stream> <id>`.
pub fn xdel(stream: &str, id: &str) -> Cmd {
    let mut cmd = redis::cmd("XDEL");
    cmd.arg(stream).arg(id);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn shapes() {
        assert_eq!(
            words(&xadd("s", Some(10))),
            ["XADD", "s", "MAXLEN", "~", "10", "*"]
        );
        assert_eq!(words(&xadd("s", None)), ["XADD", "s", "*"]);
        let ids = [Version { ms: 1, seq: 2 }, Version { ms: 3, seq: 0 }];
        assert_eq!(
            words(&xack("s", "g", &ids)),
            ["XACK", "s", "g", "1-2", "3-0"]
        );
        assert_eq!(
            words(&xrange("s", "(1-2", "+", Some(5))),
            ["XRANGE", "s", "(1-2", "+", "COUNT", "5"]
        );
        assert_eq!(
            words(&xread_blocking("s", "$", 1, Duration::from_millis(250))),
            ["XREAD", "COUNT", "1", "BLOCK", "250", "STREAMS", "s", "$"]
        );
        assert_eq!(
            words(&pending_through("s", "g", Version { ms: 7, seq: 1 })),
            ["XPENDING", "s", "g", "-", "7-1", "1"]
        );
    }
}
