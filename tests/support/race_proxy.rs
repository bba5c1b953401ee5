//! A MongoDB wire proxy that stages an insert race once.
//!
//! A guarded upsert races when another upsert of the same key inserts the
//! document between this one's match and its insert: the server then answers
//! E11000 although the stored version is older. A server that serialises its
//! operations (SecantusDB) never interleaves them, so the proxy stages the
//! race: the first `findAndModify` whose query has `field == marker` is not
//! forwarded; the proxy runs `inject` (which writes the other upsert's
//! document straight to the server) and answers that request with the
//! duplicate-key error the server would have given. Everything else passes
//! through untouched ([`super::mongo_proxy`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mongodb::bson::{doc, Document};

use super::mongo_proxy::{Act, MongoProxy};

pub struct RaceProxy {
    pub port: u16,
    /// Set once the race was staged.
    pub fired: Arc<AtomicBool>,
    _proxy: MongoProxy,
}

fn duplicate_key(cmd: &Document) -> Document {
    doc! {
        "ok": 0.0,
        "errmsg": format!("E11000 duplicate key error collection: {} (staged by the test's race proxy)",
            cmd.get_str("findAndModify").unwrap_or("?")),
        "code": 11000,
        "codeName": "DuplicateKey",
    }
}

impl RaceProxy {
    /// Forwards a loopback port to `target`, staging the race once for the
    /// first `findAndModify` whose query has `field` equal to `marker`.
    pub async fn start<F, Fut>(
        target: SocketAddr,
        field: &str,
        marker: &str,
        inject: F,
    ) -> RaceProxy
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let inject = Arc::new(inject);
        let fired = Arc::new(AtomicBool::new(false));
        let (field, marker) = (field.to_string(), marker.to_string());
        let f = fired.clone();
        let proxy = MongoProxy::start(target, move |cmd: Document| {
            let staged = cmd.contains_key("findAndModify")
                && cmd
                    .get_document("query")
                    .ok()
                    .and_then(|q| q.get_str(&field).ok())
                    == Some(marker.as_str())
                && !f.swap(true, Ordering::SeqCst);
            let inject = inject.clone();
            async move {
                if !staged {
                    return Act::Pass;
                }
                inject().await;
                Act::Answer(duplicate_key(&cmd))
            }
        })
        .await;
        RaceProxy {
            port: proxy.port,
            fired,
            _proxy: proxy,
        }
    }
}
