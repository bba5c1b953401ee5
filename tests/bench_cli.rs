//! `writ bench` through the real binary, on real servers: each mode runs a
//! small load to the end, prints its figures, and passes its own check that
//! MongoDB and the cache hold every key's last write. No figure is asserted
//! (speed lives in benchmarks); what is asserted is that the bench works, so
//! that the commands in docs/performance.md keep running.

mod support;

use std::path::Path;
use std::process::Output;

use support::proc::writ_cli;
use support::{Daemon, TestEnv};

async fn bench(config: &Path, args: &[&str]) -> String {
    let config = config.to_path_buf();
    let mut all = vec!["bench", "--quiet"];
    all.extend_from_slice(args);
    let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = all.iter().map(String::as_str).collect();
        writ_cli(&config, &a)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "writ bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn line<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no `{start}` line in:\n{out}"))
}

/// The drain bench preloads with no daemon, starts `writ serve` as its own
/// child, times it until the backlog is empty, stops it gracefully (it
/// leaves the member set), and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_bench_runs_its_own_daemon_and_stops_it() {
    let env = TestEnv::start("bench_drain");
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file(dir.path(), "");
    let out = bench(&path, &["--mode", "drain", "--writes", "300"]).await;
    let drained = line(&out, "drained");
    assert!(drained.contains("drained    300 in"), "{out}");
    assert!(drained.contains("µs daemon CPU per applied write"), "{out}");
    assert!(line(&out, "ratio").contains("drain/ceiling"), "{out}");
    assert!(line(&out, "verify").contains("OK"), "{out}");
    // The child stopped gracefully: it left the member set on its way out.
    let members = || async {
        redis::cmd("ZCARD")
            .arg(writ::protocol::Names::new(&env.config().namespace).members())
            .query_async::<u64>(&mut env.redis().await)
            .await
            .unwrap()
    };
    assert_eq!(
        members().await,
        0,
        "the bench's daemon is still a member:\n{out}"
    );

    // A second drain bench refuses to run beside a live daemon, saying why.
    let daemon = Daemon::start(env.config());
    support::eventually(
        std::time::Duration::from_secs(10),
        "the daemon joins",
        || async { (members().await > 0).then_some(()) },
    )
    .await;
    let p = path.clone();
    let refused = tokio::task::spawn_blocking(move || {
        writ_cli(
            &p,
            &["bench", "--quiet", "--mode", "drain", "--writes", "10"],
        )
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("stop every `writ serve`"), "{err}");
    daemon.stop().await;
}

/// The sync and submit benches against a running daemon, each with the
/// direct baseline of the same run and its ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_and_submit_benches_print_their_ratio_and_verify() {
    let env = TestEnv::start("bench_modes");
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file(dir.path(), "");
    let daemon = Daemon::start(env.config());
    for mode in ["sync", "submit"] {
        let out = bench(
            &path,
            &[
                "--mode",
                mode,
                "--writers",
                "4",
                "--keys",
                "20",
                "--writes",
                "200",
                "--baseline",
                "direct",
            ],
        )
        .await;
        let what = if mode == "sync" { "acked" } else { "accepted" };
        assert!(line(&out, what).contains("(200 in"), "{out}");
        assert!(line(&out, "ratio").contains("writ/direct"), "{out}");
        assert!(line(&out, "verify").contains("OK"), "{out}");
        if mode == "submit" {
            line(&out, "drained");
            assert!(out.contains("applied over the whole run: "), "{out}");
        }
    }

    // Paced (open loop): 50 writes at 100/s are due over 0.49 s, on both
    // sides, however fast the servers answer.
    let out = bench(
        &path,
        &[
            "--writers",
            "4",
            "--keys",
            "20",
            "--writes",
            "50",
            "--rate",
            "100",
            "--baseline",
            "direct",
        ],
    )
    .await;
    assert!(
        line(&out, "paced").contains("100 writes/s offered"),
        "{out}"
    );
    for what in ["acked", "direct"] {
        let l = line(&out, what);
        let secs: f64 = l
            .rsplit_once(" in ")
            .and_then(|(_, t)| t.trim_end_matches(" s)").parse().ok())
            .unwrap_or_else(|| panic!("no elapsed time in {l:?}"));
        // The direct pattern runs in two halves of 25 writes (0.24 s each).
        let due = if what == "direct" { 0.48 } else { 0.49 };
        assert!(secs >= due, "{what} ran ahead of its schedule:\n{out}");
    }
    assert!(line(&out, "verify").contains("OK"), "{out}");

    // A pace one writer cannot keep (400 acked writes due within 4 ms): the
    // bench says it fell behind, and by how much.
    let out = bench(
        &path,
        &[
            "--writers",
            "1",
            "--keys",
            "20",
            "--writes",
            "400",
            "--rate",
            "100000",
        ],
    )
    .await;
    assert!(line(&out, "acked").contains("(400 in"), "{out}");
    assert!(
        out.contains("acked      fell behind the offered 100000/s"),
        "{out}"
    );

    // A pace means nothing to a read or a drain bench: refused, saying so.
    let p = path.clone();
    let refused = tokio::task::spawn_blocking(move || {
        writ_cli(&p, &["bench", "--quiet", "--mode", "read", "--rate", "10"])
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--rate paces writes"), "{err}");
    daemon.stop().await;
}
