//! The real `writ` binary as a child process, for crash, pause and CLI tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn writ_bin() -> &'static str {
    env!("CARGO_BIN_EXE_writ")
}

/// Runs `writ --config <config> <args>` to completion.
pub fn writ_cli(config: &Path, args: &[&str]) -> Output {
    Command::new(writ_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("WRIT_REDIS_URL")
        .env_remove("WRIT_MONGODB_URI")
        .output()
        .expect("run writ")
}

/// A `writ serve` child.
pub struct DaemonProc {
    child: Child,
    log: PathBuf,
    pub name: String,
}

impl DaemonProc {
    /// Starts `writ serve` as consumer `name`, logging into `dir`.
    pub fn start(config: &Path, dir: &Path, name: &str) -> DaemonProc {
        Self::start_with_env(config, dir, name, &[])
    }

    /// Like [`DaemonProc::start`], with extra environment variables.
    pub fn start_with_env(
        config: &Path,
        dir: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> DaemonProc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(writ_bin());
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .env("WRIT_LOG", "info,writ=info")
            .env_remove("WRIT_REDIS_URL")
            .env_remove("WRIT_MONGODB_URI")
            .env("WRIT_CONSUMER_NAME", name)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = super::reap::spawn(cmd).expect("start writ serve");
        DaemonProc {
            child,
            log,
            name: name.into(),
        }
    }

    /// Whether the process has exited (reaps it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process freezes (a "paused" daemon); returns once it
    /// has.
    pub fn pause(&self) {
        super::pause::pause(self.pid());
    }

    /// SIGCONT.
    pub fn resume(&self) {
        super::pause::resume(self.pid());
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.stop_with(libc::SIGTERM, limit)
    }

    /// Sends signal `sig` (`libc::SIGTERM`, ...) and waits for the exit;
    /// returns the exit code (`None`: the signal ended the process).
    pub fn stop_with(&mut self, sig: libc::c_int, limit: Duration) -> Option<i32> {
        super::pause::signal(self.pid(), sig);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > limit {
                panic!(
                    "writ serve did not exit within {limit:?} of signal {sig}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        // Wakes a paused daemon so that it can die; one that already exited
        // makes `kill` say "No such process", which is no news here.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- writ serve {} log ----\n{}",
                self.name,
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
    }
}
