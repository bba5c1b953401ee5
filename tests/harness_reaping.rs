//! The harness's promise that no server outlives its test, checked where a
//! drop cannot keep it: a test process killed with SIGKILL (a CI time limit,
//! an OOM kill). Its redis-server, SecantusDB and `writ serve` must die with
//! it ([`support::reap`]).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child process only.
const CHILD: &str = "WRIT_REAP_CHILD";

/// Not a test of its own: the body of the process that
/// `servers_die_with_a_killed_test_process` starts and kills. Without
/// [`CHILD`] it returns at once.
#[test]
#[ignore = "the child body of servers_die_with_a_killed_test_process"]
fn reap_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let env = support::TestEnv::start("reap");
    let dir = tempfile::tempdir().unwrap();
    let config = env.config_file(dir.path(), "");
    let daemon = support::proc::DaemonProc::start(&config, dir.path(), "reap");
    let mut pids = vec![daemon.pid()];
    pids.extend(env.redis.as_ref().map(|r| r.pid()));
    pids.extend(env.mongo.as_ref().map(|m| m.pid()));
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("PIDS {}", list.join(" "));
    // Wait to be killed: the parent never writes to our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Whether `pid` is gone: no such process, or a zombie nobody reaped yet.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[test]
fn servers_die_with_a_killed_test_process() {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "reap_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD, "1")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = support::reap::spawn(cmd).expect("start this test binary again");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let pids: Vec<u32> = loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "the child test process ended before it printed its servers' pids"
        );
        // libtest prints `test reap_child ... ` before the test's own output.
        if let Some((_, list)) = line.trim().split_once("PIDS ") {
            break list.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    };
    assert!(!pids.is_empty());
    for &pid in &pids {
        assert!(!gone(pid), "server {pid} is not running before the kill");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let begun = Instant::now();
    let left = loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
        if left.is_empty() || begun.elapsed() > Duration::from_secs(30) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for &pid in &left {
        // SAFETY: plain kill(2) of a pid this test saw its child start.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(
        left.is_empty(),
        "processes {left:?} outlived the test process that started them by 30 s"
    );
}
