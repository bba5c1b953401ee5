//! What operators see: the live `/metrics` under a workload, the health
//! endpoints through a MongoDB outage, `promtool check metrics`, the Grafana
//! dashboard and alert rules against the metrics really exported, and
//! `writ status --json`. All against the real binary.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use mongodb::bson::doc;
use support::proc::{writ_cli, DaemonProc};
use support::{eventually, http_get, listen_port, Overrides, TestEnv};

/// Sum of every sample of `name` whose labels contain all of `labels`.
fn sample_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect()
}

fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("writ_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|e| start + e)
            .unwrap_or(text.len());
        if boundary {
            let n = &text[start..end];
            out.insert(
                n.trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count")
                    .to_string(),
            );
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_dashboard_and_status_tell_the_truth() {
    let env = TestEnv::start("observability");
    let dir = tempfile::tempdir().unwrap();
    let (proxy, proxied) = support::proxy::in_front_of_mongo(&env.mongo_uri).await;
    let port = listen_port();
    // Three runtime threads: neither the default (1) nor one per core (2
    // here), so the gauge shows the config reached the runtime.
    let daemon_cfg = format!(
        "metrics_listen = \"127.0.0.1:{port}\"\nstats_interval_ms = 200\nworker_threads = 3"
    );
    let o = Overrides {
        mongo_uri: Some(proxied),
        daemon: &daemon_cfg,
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let mut daemon = DaemonProc::start(&path, dir.path(), "obs-daemon");
    eventually(Duration::from_secs(30), "ready", || async {
        (http_get(port, "/health/ready")?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(http_get(port, "/health/live").unwrap().0, 200);

    // Workload: 40 writes to distinct keys (no coalescing), one bad entry.
    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..40 {
        s.write(
            &doc! {"symbol": format!("M{i}"), "strategyName": "obs", "exchangeName": "x"},
            &doc! {"i": i},
        )
        .await
        .unwrap();
    }
    let mut r = env.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(format!("{}:{{p0}}:in", env.name))
        .arg("*")
        .arg("v")
        .arg("7")
        .query_async(&mut r)
        .await
        .unwrap();
    let text = eventually(Duration::from_secs(30), "metrics settle", || async {
        let (_, t) = http_get(port, "/metrics")?;
        let settled = sample_sum(&t, "writ_dead_letter_entries", &[]) == 1.0
            && sample_sum(&t, "writ_partition_unapplied_entries", &[]) == 0.0
            && sample_sum(&t, "writ_writes_total", &["outcome=\"applied\""]) == 40.0;
        settled.then_some(t)
    })
    .await;
    assert_eq!(
        sample_sum(
            &text,
            "writ_writes_total",
            &["collection=\"signal\"", "outcome=\"applied\""]
        ),
        40.0,
        "applied = writes"
    );
    assert_eq!(
        sample_sum(&text, "writ_rejected_total", &["reason=\"bad_version\""]),
        1.0
    );
    assert_eq!(sample_sum(&text, "writ_worker_threads", &[]), 3.0);
    // The log line of the parked entry names the dead letter's own id, the
    // one `writ dlq show` takes, and what to do for its reason.
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("parked a write"))
        .unwrap_or_else(|| panic!("no dead-letter line in the log:\n{log}"));
    let letter = line
        .split("dead_letter=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|id| id.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no dead_letter= in {line}"));
    assert!(line.contains("remedy="), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a log file: {line}"
    );
    let shown = writ_cli(&path, &["dlq", "show", &letter]);
    assert!(shown.status.success(), "dlq show {letter}: {line}");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("bad_version"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    assert_eq!(
        sample_sum(&text, "writ_end_to_end_seconds_count", &[]),
        40.0
    );
    assert_eq!(sample_sum(&text, "writ_partition_owned", &[]), 4.0);
    assert_eq!(sample_sum(&text, "writ_partitions", &[]), 4.0);
    assert_eq!(
        sample_sum(&text, "writ_up", &["dependency=\"mongodb\""]),
        1.0
    );

    // The CPU counter is the daemon's CPU time to the clock tick, not in
    // whole seconds: a scrape lies between two readings of the process's
    // own utime + stime.
    let ticks = || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split(' ').collect();
        // Fields 14 and 15 of proc(5), counted from the state (field 3).
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let before = ticks();
    let (_, scraped) = http_get(port, "/metrics").unwrap();
    let after = ticks();
    let cpu = sample_sum(&scraped, "process_cpu_seconds_total", &[]);
    assert!(
        before <= cpu && cpu <= after,
        "process_cpu_seconds_total {cpu} is not between the daemon's CPU times {before} and {after} read around the scrape"
    );

    // promtool agrees with the exposition format and naming conventions.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by ./scripts/setup (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the dashboard and the alert rules query is really exported.
    let exported = exported_names(&text);
    for file in ["dashboards/grafana/writ.json", "dashboards/alerts.yml"] {
        let body =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        if file.ends_with(".json") {
            let _: serde_json::Value =
                serde_json::from_str(&body).expect("dashboard is valid JSON");
        }
        let referenced = referenced_names(&body);
        assert!(referenced.len() > 5, "{file} queries writ metrics");
        let missing: Vec<_> = referenced.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics the daemon does not export: {missing:?}"
        );
    }

    // writ status --json matches: owner of every partition, no lag, one dead letter.
    let out = writ_cli(&path, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["dead_letters"], 1);
    for p in st["partitions"].as_array().unwrap() {
        assert_eq!(p["owner"], "obs-daemon");
        assert_eq!(p["unapplied"], 0);
    }
    let table = writ_cli(&path, &["status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("obs-daemon"));

    // Order, observed: 4 writers on 6 keys for 2 s, no fault. The daemon
    // applies every key's writes in stream order, so none is ever stale
    // (an older write after a newer one), and every accepted write is
    // counted once as applied or coalesced.
    let before = http_get(port, "/metrics").unwrap().1;
    let load = support::load::Load::start(
        &config,
        4,
        6,
        Duration::from_millis(1),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the load's duration
    let load = load.stop().await;
    load.verify_quiescent(&config, &env.mongo_db().await, Duration::from_secs(60))
        .await;
    let counted = |t: &str, o: &str| {
        sample_sum(
            t,
            "writ_writes_total",
            &["collection=\"signal\"", &format!("outcome=\"{o}\"")],
        )
    };
    let after = eventually(
        Duration::from_secs(30),
        "every accepted write counted",
        || async {
            let (_, t) = http_get(port, "/metrics")?;
            let n = counted(&t, "applied") + counted(&t, "coalesced") + counted(&t, "stale")
                - counted(&before, "applied")
                - counted(&before, "coalesced")
                - counted(&before, "stale");
            (n >= load.accepted_count() as f64).then_some(t)
        },
    )
    .await;
    assert!(
        load.accepted_count() > 50,
        "the load ran: {}",
        load.accepted_count()
    );
    assert_eq!(
        counted(&after, "stale") - counted(&before, "stale"),
        0.0,
        "stale writes in a fault-free run"
    );
    assert_eq!(
        counted(&after, "applied") + counted(&after, "coalesced")
            - counted(&before, "applied")
            - counted(&before, "coalesced"),
        load.accepted_count() as f64,
        "each accepted write counted once"
    );

    // MongoDB unreachable: not ready (but live); writes queue up and status shows the lag.
    proxy.cut();
    eventually(
        Duration::from_secs(30),
        "not ready while MongoDB is down",
        || async { (http_get(port, "/health/ready")?.0 == 503).then_some(()) },
    )
    .await;
    assert_eq!(http_get(port, "/health/live").unwrap().0, 200);
    let key = doc! {"symbol": "LAG", "strategyName": "obs", "exchangeName": "x"};
    let mut tickets = Vec::new();
    for i in 0..3 {
        tickets.push(s.submit(&key, &doc! {"i": i}).await.unwrap());
    }
    let lagging = writ::protocol::Key::from_document(&key, config.collection("signal").unwrap())
        .unwrap()
        .partition("signal", 4);
    eventually(
        Duration::from_secs(30),
        "status shows the unapplied entries",
        || async {
            let st: serde_json::Value =
                serde_json::from_slice(&writ_cli(&path, &["status", "--json"]).stdout).ok()?;
            let p = &st["partitions"][lagging as usize];
            (p["unapplied"].as_u64()? >= 1 && p["oldest_unapplied"].is_string()).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the lag shows in the metrics",
        || async {
            let (_, t) = http_get(port, "/metrics")?;
            let lag = sample_sum(
                &t,
                "writ_partition_unapplied_entries",
                &[&format!("partition=\"{lagging}\"")],
            );
            (lag >= 1.0 && sample_sum(&t, "writ_up", &["dependency=\"mongodb\""]) == 0.0)
                .then_some(())
        },
    )
    .await;
    proxy.heal();
    eventually(
        Duration::from_secs(60),
        "ready again after MongoDB returns",
        || async { (http_get(port, "/health/ready")?.0 == 200).then_some(()) },
    )
    .await;
    for t in tickets {
        t.wait_for(Duration::from_secs(60)).await.unwrap();
    }
    eventually(Duration::from_secs(30), "lag back to zero", || async {
        let (_, t) = http_get(port, "/metrics")?;
        (sample_sum(&t, "writ_partition_unapplied_entries", &[]) == 0.0).then_some(())
    })
    .await;
    assert_eq!(daemon.terminate(Duration::from_secs(20)), Some(0));
    // After a clean shutdown the leases are released.
    let st: serde_json::Value =
        serde_json::from_slice(&writ_cli(&path, &["status", "--json"]).stdout).unwrap();
    assert!(st["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["owner"].is_null()));
}

#[test]
fn bad_config_and_refused_connection_get_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[redis]\npartitions = 0\n[mongodb]\n[[collections]]\nname = \"s\"\nkey = [\"k\"]\n",
    )
    .unwrap();
    let out = writ_cli(&bad, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redis.partitions") && err.contains("between 1 and 4096"),
        "{err}"
    );
    // A log filter typo in WRIT_LOG is refused by name, as one in the file
    // would be (it used to turn to the file's level without a word).
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[redis]\n[mongodb]\n[[collections]]\nname = \"s\"\nkey = [\"k\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::proc::writ_bin())
        .args(["--config", good.to_str().unwrap(), "check-config"])
        .env("WRIT_LOG", "debgu")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WRIT_LOG") && err.contains("\"debgu\" is not a level"),
        "{err}"
    );
    // A bad URL in the environment is named as the environment's, not
    // blamed on the file (whose own URL is fine).
    for (var, value, named) in [
        (
            "WRIT_MONGODB_URI",
            "postgres://u:pw-in-env@h/",
            "WRIT_MONGODB_URI (environment, overrides mongodb.uri)",
        ),
        (
            "WRIT_REDIS_URL",
            "http://u:pw-in-env@h/",
            "WRIT_REDIS_URL (environment, overrides redis.url)",
        ),
        (
            "WRIT_REDIS_URL",
            "",
            "WRIT_REDIS_URL (environment, overrides redis.url)",
        ),
    ] {
        let out = std::process::Command::new(support::proc::writ_bin())
            .args(["--config", good.to_str().unwrap(), "check-config"])
            .env_remove("WRIT_REDIS_URL")
            .env_remove("WRIT_MONGODB_URI")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{var}={value:?}: {err}");
        assert!(!err.contains("pw-in-env"), "{err}");
    }
    std::fs::write(&bad, "[redis]\nurl = \"redis://:s3cret-pw@127.0.0.1:1\"\n[mongodb]\n[[collections]]\nname = \"s\"\nkey = [\"k\"]\n").unwrap();
    let out = writ_cli(&bad, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("s3cret"), "the password leaked: {err}");
    // The daemon waits for an unreachable MongoDB with one clear warning, and
    // logs both URLs with their passwords replaced.
    let quiet = dir.path().join("quiet.toml");
    std::fs::write(
        &quiet,
        std::fs::read_to_string(&bad)
            .unwrap()
            .replace("[mongodb]", "[daemon]\nmetrics_listen = \"\"\n[mongodb]"),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut serve = std::process::Command::new(support::proc::writ_bin());
    serve
        .args(["--config", quiet.to_str().unwrap(), "serve"])
        .env(
            "WRIT_MONGODB_URI",
            "mongodb://user:m0ngo-pw@127.0.0.1:1/?serverSelectionTimeoutMS=200",
        )
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap());
    let serve = KillOnDrop(support::reap::spawn(serve).unwrap());
    let start = std::time::Instant::now();
    let all = loop {
        let all = std::fs::read_to_string(dir.path().join("serve.err")).unwrap_or_default();
        if all.contains("MongoDB is not reachable yet") || start.elapsed() > Duration::from_secs(20)
        {
            break all;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(serve);
    assert!(all.contains("MongoDB is not reachable yet"), "{all}");
    assert!(
        !all.contains("s3cret") && !all.contains("m0ngo-pw"),
        "a password leaked: {all}"
    );
    assert!(
        all.contains("***@127.0.0.1"),
        "URLs are logged redacted: {all}"
    );
    assert!(
        err.contains("redis") && (err.contains("refused") || err.contains("onnect")),
        "{err}"
    );
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("writ:"))
            .count(),
        1,
        "one message: {err}"
    );
}

/// Redis down for 30 s: `/health/ready` says 503 while it is down (and
/// `/health/live` stays 200), writers get a clear retryable error, and after
/// Redis is back the daemon is ready again and every write accepted before
/// the outage is acked; new writes are accepted and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_a_redis_outage_of_30_seconds() {
    let env = TestEnv::start("ready_redis");
    let (proxy, proxied) = support::proxy::in_front_of_redis(&env.redis_url).await;
    let port = listen_port();
    let daemon_lines = format!("metrics_listen = \"127.0.0.1:{port}\"");
    let o = Overrides {
        daemon: &daemon_lines,
        redis_url: Some(proxied),
        client: "write_timeout_ms = 60000",
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let mut daemon = DaemonProc::start(&path, dir.path(), "ready-redis");
    eventually(Duration::from_secs(30), "ready", || async {
        (http_get(port, "/health/ready")?.0 == 200).then_some(())
    })
    .await;
    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    let key = |i: i64| doc! {"symbol": format!("R{i}"), "strategyName": "out", "exchangeName": "x"};
    let mut before = Vec::new();
    for i in 0..10 {
        before.push(s.submit(&key(i), &doc! {"i": i}).await.unwrap());
    }

    proxy.cut();
    let cut_at = std::time::Instant::now();
    eventually(
        Duration::from_secs(25),
        "not ready while Redis is down",
        || async { (http_get(port, "/health/ready")?.0 == 503).then_some(()) },
    )
    .await;
    assert_eq!(
        http_get(port, "/health/live").unwrap().0,
        200,
        "live while Redis is down"
    );
    let err = s
        .submit(&key(99), &doc! {"i": 99})
        .await
        .expect_err("a submit while Redis is down");
    assert_eq!(
        err.retry_class(),
        writ::RetryClass::Transient,
        "retryable: {err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("redis"),
        "names Redis: {err}"
    );
    if let Some(left) = Duration::from_secs(30).checked_sub(cut_at.elapsed()) {
        tokio::time::sleep(left).await; // the outage itself, not a readiness wait
    }
    assert_eq!(
        http_get(port, "/health/ready").unwrap().0,
        503,
        "still not ready at 30 s"
    );

    proxy.heal();
    eventually(
        Duration::from_secs(60),
        "ready again after Redis returns",
        || async { (http_get(port, "/health/ready")?.0 == 200).then_some(()) },
    )
    .await;
    for t in before {
        t.wait_for(Duration::from_secs(60)).await.unwrap();
    }
    let after = eventually(
        Duration::from_secs(30),
        "a write accepted after the outage",
        || {
            let s = s.clone();
            async move { s.submit(&key(100), &doc! {"i": 100}).await.ok() }
        },
    )
    .await;
    after.wait_for(Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.read(&key(100)).await.unwrap(), Some(doc! {"i": 100}));
    assert_eq!(daemon.terminate(Duration::from_secs(20)), Some(0));
}
