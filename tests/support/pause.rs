//! Pausing a child process (SIGSTOP) and resuming it (SIGCONT).
//!
//! `kill(SIGSTOP)` returns before the process has stopped. The kernel wakes
//! one of its threads to take the signal, and only when that thread runs does
//! it stop the others; until then they go on running. On a busy machine that
//! takes milliseconds, in which a "paused" daemon can still read and apply a
//! write the test made after pausing it (seen: a refusal 2 ms after the
//! write). So [`pause`] returns only once every thread of the process is
//! stopped, read from `/proc/<pid>/task/*/stat`.
//!
//! Servers run in process groups of their own ([`super::reap`]): a stopped
//! process in a group the kernel finds orphaned is sent SIGHUP and SIGCONT
//! (POSIX job control), which ends a paused `writ serve`.

use std::time::{Duration, Instant};

/// Longest wait for a process to stop.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// SIGSTOPs `pid` and waits until every one of its threads has stopped.
pub fn pause(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let start = Instant::now();
    loop {
        match stopped(pid) {
            Some(true) => return,
            Some(false) => {}
            None => panic!("process {pid} is gone: it cannot be paused"),
        }
        assert!(
            start.elapsed() < STOP_LIMIT,
            "process {pid} did not stop within {STOP_LIMIT:?} of SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGCONTs `pid` (the kernel resumes every thread before `kill` returns).
pub fn resume(pid: u32) {
    signal(pid, libc::SIGCONT);
}

/// Sends signal `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a plain pid and signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert!(
        rc == 0,
        "signal {sig} to process {pid} failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether every live thread of `pid` is stopped; `None` if the process is
/// gone.
fn stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut any = false;
    for task in tasks.flatten() {
        // A thread that exits meanwhile is not running either.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        match thread_state(&stat) {
            Some('T' | 't' | 'Z' | 'X') => any = true,
            _ => return Some(false),
        }
    }
    Some(any)
}

/// The state letter of a `/proc/.../stat` line: the field after the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn thread_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}
