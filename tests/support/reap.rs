//! Children that die with the test process.
//!
//! Every server a test starts is killed when its handle drops, but a test
//! process killed outright (SIGKILL, a CI time limit, an OOM kill) runs no
//! drop, and its redis-server, SecantusDB and `writ serve` children would
//! live on. So each child asks the kernel for SIGKILL when its parent goes
//! (`PR_SET_PDEATHSIG`). The kernel ties that to the *thread* that forked,
//! not the process, and test threads come and go (a test's thread ends with
//! the test, `spawn_blocking` threads when idle), so every child is forked by
//! one thread that lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Spawns `cmd` so that the kernel kills it when this process ends, in a
/// process group of its own (see [`super::pause`]: a paused server in the
/// test's group would be sent SIGHUP whenever the kernel finds that group
/// orphaned, as it is under `nohup` or a detached runner).
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: between fork and exec the closure only makes two
    // async-signal-safe system calls and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nothing
            // would ever send the signal.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("test-child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the child spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("the child spawner thread is gone");
    rx.recv().expect("the child spawner thread is gone")
}
