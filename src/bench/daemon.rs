//! The daemon's own cost, read from its `/metrics`: process CPU seconds, RSS
//! and writes applied (`writ_writes_total`), sampled before and after a run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One sample of the daemon's counters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub applied: f64,
}

/// Scrapes `url` (`http://host:port/metrics`); `None` without a URL or when
/// the daemon does not answer.
pub(super) async fn sample(url: Option<&str>) -> Option<Sample> {
    let url = url?.to_string();
    tokio::task::spawn_blocking(move || scrape(&url))
        .await
        .ok()?
}

fn scrape(url: &str) -> Option<Sample> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/metrics".to_string()), |(h, p)| {
            (h, format!("/{p}"))
        });
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    // Series of `name`, but those with `skip` in their labels.
    let sum_but = |name: &str, skip: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .filter(|l| skip.is_empty() || !l.contains(skip))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let sum = |name: &str| sum_but(name, "");
    Some(Sample {
        cpu_seconds: sum("process_cpu_seconds_total"),
        rss_bytes: sum("process_resident_memory_bytes"),
        // Every write the daemon settled in MongoDB (applied, coalesced into
        // a later one, or stale), not the ones it dead-lettered.
        applied: sum_but("writ_writes_total", "outcome=\"dead_lettered\""),
    })
}
