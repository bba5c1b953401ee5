//! A real Prometheus (Debian package `prometheus`) scrapes a real daemon with
//! writ's alert rules loaded: the rules evaluate healthily, the scraped series
//! move with the workload, and no alert fires on a healthy system.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::doc;
use support::proc::DaemonProc;
use support::{eventually, http_get, listen_port, Overrides, TestEnv};

struct Prometheus {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn query(port: u16, q: &str) -> Option<serde_json::Value> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (code, body) = http_get(port, &format!("/api/v1/query?query={enc}"))?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["data"]["result"].clone())
}

fn scalar(result: &serde_json::Value) -> Option<f64> {
    result.get(0)?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemon_and_evaluates_the_alert_rules() {
    let env = TestEnv::start("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = listen_port();
    let daemon_cfg =
        format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\nstats_interval_ms = 200");
    let o = Overrides {
        daemon: &daemon_cfg,
        ..Default::default()
    };
    let path = env.config_file_with(dir.path(), &o);
    let config = env.config_with(&o);
    let _daemon = DaemonProc::start(&path, dir.path(), "prom-daemon");

    let prom_port = listen_port();
    let rules = format!("{}/dashboards/alerts.yml", env!("CARGO_MANIFEST_DIR"));
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: writ\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = support::reap::spawn(cmd)
        .expect("prometheus is installed by ./scripts/setup (sudo apt-get install prometheus)");
    let _prom = Prometheus { child, log };
    eventually(Duration::from_secs(60), "prometheus ready", || async {
        (http_get(prom_port, "/-/ready")?.0 == 200).then_some(())
    })
    .await;

    let writ = writ::Writ::connect(config.clone()).await.unwrap();
    let s = writ.collection("signal").unwrap();
    for i in 0..25 {
        s.write(
            &doc! {"symbol": format!("P{i}"), "strategyName": "prom", "exchangeName": "x"},
            &doc! {"i": i},
        )
        .await
        .unwrap();
    }
    // The scraped counter reaches the workload.
    eventually(
        Duration::from_secs(60),
        "prometheus sees 25 applied writes",
        || async {
            let r = query(
                prom_port,
                r#"sum(writ_writes_total{job="writ",outcome="applied"})"#,
            )?;
            (scalar(&r)? == 25.0).then_some(())
        },
    )
    .await;
    let up = query(prom_port, r#"up{job="writ"}"#).unwrap();
    assert_eq!(scalar(&up), Some(1.0));
    let owned = query(prom_port, r#"sum(writ_partition_owned{job="writ"})"#).unwrap();
    assert_eq!(scalar(&owned), Some(4.0));
    // The alert rules loaded and evaluate without errors.
    let rules = eventually(Duration::from_secs(30), "rules evaluated", || async {
        let (code, body) = http_get(prom_port, "/api/v1/rules")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (code == 200
            && !rules.is_empty()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            }))
        .then_some(rules)
    })
    .await;
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} evaluates: {}",
            r["name"], r["lastError"]
        );
    }
    assert!(rules.iter().any(|r| r["name"] == "WritPartitionUnowned"));
    // Every alert is (or goes back to) inactive on a healthy system. Not
    // firing is not enough: most rules wait a minute or more (`for:`)
    // before they fire, so in a run of seconds one that is pending would
    // pass, and fire a minute later in production.
    let active = || async {
        let (_, body) = http_get(prom_port, "/api/v1/rules")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let active: Vec<String> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["type"] == "alerting" && r["state"] != "inactive")
            .map(|r| format!("{} ({})", r["name"], r["state"]))
            .collect();
        Some(active)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = active().await;
        if now.as_ref().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alerts pending or firing on a healthy system: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
