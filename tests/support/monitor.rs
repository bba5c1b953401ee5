//! What Redis runs, seen through `MONITOR`, for tests that show a command
//! was sent (or never was). A watch only counts once it is seen to have
//! caught up: [`Monitor::finish`] sends an `ECHO` to each node and waits for
//! it, so every command a node ran before it was seen, and a watch that saw
//! nothing at all fails instead of passing a "never sent" check.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `MONITOR` watch of some Redis nodes, keeping the lines `keep` accepts.
pub struct Monitor {
    nodes: Vec<String>,
    seen: Arc<Mutex<Vec<String>>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

const SENTINEL: &str = "writ-test-monitor-sentinel";

impl Monitor {
    /// Watches each of `nodes` (redis:// URLs) from now on.
    pub async fn start(nodes: &[String], keep: fn(&str) -> bool) -> Monitor {
        let seen: Arc<Mutex<Vec<String>>> = Default::default();
        let mut watches = Vec::new();
        for node in nodes {
            let monitor = redis::Client::open(node.as_str())
                .unwrap()
                .get_async_monitor()
                .await
                .unwrap();
            let seen = seen.clone();
            watches.push(tokio::spawn(async move {
                // As values, read lossily: a line with an entry's binary
                // BSON would end a stream of Strings at its first such line.
                let mut lines = std::pin::pin!(monitor.into_on_message::<redis::Value>());
                while let Some(v) = futures::StreamExt::next(&mut lines).await {
                    let line = match v {
                        redis::Value::SimpleString(s) => s,
                        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                        other => format!("{other:?}"),
                    };
                    if keep(&line) || line.contains(SENTINEL) {
                        seen.lock().unwrap().push(line);
                    }
                }
            }));
        }
        Monitor {
            nodes: nodes.to_vec(),
            seen,
            watches,
        }
    }

    /// Waits until every node's watch has shown an `ECHO` sent now, stops
    /// watching, and returns the lines kept (sentinels left out).
    pub async fn finish(self) -> Vec<String> {
        for (i, node) in self.nodes.iter().enumerate() {
            let sentinel = format!("{SENTINEL}-{i}");
            let mut c = redis::Client::open(node.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let _: String = redis::cmd("ECHO")
                .arg(&sentinel)
                .query_async(&mut c)
                .await
                .unwrap();
            super::eventually(Duration::from_secs(10), "MONITOR to catch up", || {
                let (seen, sentinel) = (self.seen.clone(), sentinel.clone());
                async move {
                    let s = seen.lock().unwrap();
                    s.iter().any(|l| l.contains(&sentinel)).then_some(())
                }
            })
            .await;
        }
        for w in &self.watches {
            w.abort();
        }
        let lines = self.seen.lock().unwrap().clone();
        lines
            .into_iter()
            .filter(|l| !l.contains(SENTINEL))
            .collect()
    }
}
