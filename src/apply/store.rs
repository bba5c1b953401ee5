//! MongoDB access: the connection and the guarded upsert of one write, with
//! its stale check. The stored document's shape is in `document`, the reads
//! in `reads`, the bulk in `bulk`, the key indexes in `indexes`.

use std::future::IntoFuture;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{Collection, Database};

use super::document::{
    doc_version, guard_filter, is_tombstone, revive_filter, revive_of, update_of, DOC_REMOVED,
    DOC_WRIT,
};
use crate::config::{redact_url, CollectionConfig, Config, WriteConcernW, WriteMode};
use crate::error::{mongo_code, Error, Result};
use crate::protocol::{Key, Op, Reject, RejectReason, Version, Write};

/// What applying a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The write committed; this is the post-image.
    Committed(Document),
    /// A hard delete replaced the document (or its absence) with a versioned
    /// tombstone `{key, removed: true, _writ: {v, at, deleted: true}}`.
    Deleted,
    /// The stored document is already at this version or newer: skipped.
    /// Carries that newer document, or `None` if it is gone.
    Stale(Option<Document>),
}

impl Applied {
    /// What readers may see after this write of version `id`: the version and
    /// document the cache must hold (`None`: deleted), and whether the write
    /// itself was skipped as stale.
    pub fn into_readable(self, id: Version) -> (Version, Option<Document>, bool) {
        match self {
            Applied::Committed(d) => (doc_version(&d).unwrap_or(id), Some(d), false),
            Applied::Deleted => (id, None, false),
            // A hard delete's tombstone is cached as gone, as a read-through
            // fills it.
            Applied::Stale(Some(d)) if is_tombstone(&d) => {
                (doc_version(&d).unwrap_or(id), None, true)
            }
            Applied::Stale(Some(d)) => (doc_version(&d).unwrap_or(id), Some(d), true),
            Applied::Stale(None) => (id, None, true),
        }
    }
}

/// How long [`Store::close`] waits for the driver: an `endSessions` to a
/// server that stopped answering must not hold up the process's exit.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// [`Store::close`] for a driver client of its own (the bench's baseline).
pub(crate) async fn close_client(client: mongodb::Client) {
    if tokio::time::timeout(CLOSE_WITHIN, client.shutdown().immediate(true))
        .await
        .is_err()
    {
        tracing::debug!("the MongoDB driver did not close within {CLOSE_WITHIN:?}");
    }
}

/// MongoDB, with writ's write concern, a server-side time limit on every
/// operation and the daemon-wide concurrency limiter.
#[derive(Clone)]
pub struct Store {
    db: Database,
    wc: WriteConcern,
    /// `wc` as the `writeConcern` field of a command run by hand.
    wc_doc: Document,
    /// Whether the write concern asks for more than one node: the stale
    /// check then reads at `majority` ([`Store::stale_or_conflict`]).
    pub(super) confirm_majority: bool,
    pub(super) max_time: Duration,
    limiter: super::Limiter,
    /// Per collection, the operations MongoDB answered so far (applied,
    /// stale or refused for good) and those that timed out. A write that
    /// keeps timing out while the others on its collection are answered, and
    /// none of them times out, is slow by itself, not the server.
    answers: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Answers>>>,
    /// For error messages only (redacted when shown).
    uri: String,
}

/// The write concern of `mongodb.write_concern`, `journal` and `op_timeout_ms`
/// (also the benchmark baseline's, so that both sides wait for the same).
pub fn write_concern(config: &Config) -> WriteConcern {
    let w = match config.write_concern {
        WriteConcernW::Majority => Acknowledgment::Majority,
        WriteConcernW::Nodes(n) => Acknowledgment::Nodes(n),
    };
    WriteConcern::builder()
        .w(w)
        .journal(config.journal)
        .w_timeout(config.op_timeout)
        .build()
}

impl Store {
    /// Connects (lazily: the driver retries in the background) and checks the
    /// URI parses.
    pub async fn connect(config: &Config) -> Result<Store> {
        let mut opts = ClientOptions::parse(&config.mongodb_uri)
            .await
            .map_err(|e| match *e.kind {
                // A mongodb+srv:// URI is resolved here (SRV and TXT
                // records): a DNS failure is the network's, not the URI's.
                mongodb::error::ErrorKind::DnsResolve { ref message, .. } => Error::Connect {
                    what: "mongodb",
                    url: redact_url(&config.mongodb_uri),
                    detail: format!("cannot resolve the mongodb+srv:// host: {message}"),
                    hint: "check DNS from this host and the host name in mongodb.uri / WRIT_MONGODB_URI",
                    retry: crate::error::RetryClass::Transient,
                },
                _ => Error::Config(format!(
                    "`mongodb.uri` {} does not parse: {e}",
                    redact_url(&config.mongodb_uri)
                )),
            })?;
        opts.app_name.get_or_insert_with(|| "writ".into());
        // Every read writ makes goes to the primary ([`super::primary`]).
        opts.selection_criteria = Some(super::primary::criteria(opts.direct_connection));
        // And at `local` unless a read asks for `majority` (a stale check, a
        // lost-ack look): on the current primary `local` never answers older
        // than an acknowledged write, and a `readConcernLevel=majority` in
        // the URI would make every read-through and list a read that can
        // (docs/protocol.md §6).
        opts.read_concern = Some(ReadConcern::local());
        opts.server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        opts.connect_timeout.get_or_insert(Duration::from_secs(3));
        // The limiter admits at most `max_concurrency` operations; the pool has
        // room for them plus reads and pings, so nothing queues in the driver.
        opts.max_pool_size = Some(config.max_concurrency as u32 + 4);
        let client = mongodb::Client::with_options(opts)?;
        let wc = write_concern(config);
        // Computed once, so a bulk can never go out with an empty write
        // concern (the server's default) in place of the configured one.
        let wc_doc = mongodb::bson::to_document(&wc).map_err(|e| {
            Error::Config(format!(
                "mongodb.write_concern, journal and op_timeout_ms make no write concern: {e}"
            ))
        })?;
        Ok(Store {
            wc_doc,
            db: client.database(&config.database),
            wc,
            confirm_majority: !matches!(config.write_concern, WriteConcernW::Nodes(0 | 1)),
            max_time: config.op_timeout,
            limiter: super::Limiter::new(config.max_concurrency, config.op_timeout),
            answers: Default::default(),
            uri: config.mongodb_uri.clone(),
        })
    }

    pub(super) fn database(&self) -> &Database {
        &self.db
    }

    /// The write concern as a command field.
    pub(super) fn write_concern_doc(&self) -> Document {
        self.wc_doc.clone()
    }

    /// The server-side time limit, in ms, for commands run by hand.
    pub(super) fn max_time_ms(&self) -> i64 {
        self.max_time.as_millis() as i64
    }

    /// What MongoDB has done with the operations on `collection` so far.
    pub fn answers(&self, collection: &str) -> Answers {
        let answers = self.answers.lock().expect("answers lock");
        answers.get(collection).copied().unwrap_or_default()
    }

    /// Counts answered operations, one per collection named.
    pub fn note_answered<'a>(&self, collections: impl IntoIterator<Item = &'a str>) {
        self.note(collections, |a| a.answered += 1);
    }

    /// Counts operations that timed out, one per collection named.
    pub fn note_timed_out<'a>(&self, collections: impl IntoIterator<Item = &'a str>) {
        self.note(collections, |a| a.timed_out += 1);
    }

    fn note<'a>(&self, collections: impl IntoIterator<Item = &'a str>, f: impl Fn(&mut Answers)) {
        let mut answers = self.answers.lock().expect("answers lock");
        for c in collections {
            match answers.get_mut(c) {
                Some(a) => f(a),
                None => {
                    let mut a = Answers::default();
                    f(&mut a);
                    answers.insert(c.to_string(), a);
                }
            }
        }
    }

    /// After a write timed out: whether MongoDB holds its version (or a newer
    /// one) all the same, read as [`Store::stale_or_conflict`] does. `Ok(Some)`:
    /// it does (a commit whose reply was lost); `Ok(None)`: it does not.
    pub async fn holds(
        &self,
        coll: &CollectionConfig,
        write: &Write,
        version: Version,
    ) -> Result<Option<Applied>> {
        self.stale_or_conflict(&self.coll(&coll.name), &write.key, version)
            .await
    }

    /// The daemon-wide limiter of MongoDB operations in flight.
    pub fn limiter(&self) -> &super::Limiter {
        &self.limiter
    }

    /// Ends the driver's server sessions and closes its connections, giving
    /// it at most two seconds. A process calls it once it is done with
    /// MongoDB, before its runtime ends. Without it, dropping the last handle
    /// leaves that clean-up to a task of its own, which can still be running
    /// while the runtime shuts down; the driver then panics inside that task
    /// (`connection_requester.rs`: `SendError`), and the process prints a panic
    /// after a run that went well. Every clone of this store (and of the
    /// driver's client) fails afterwards.
    pub async fn close(&self) {
        close_client(self.db.client().clone()).await;
    }

    /// Pings the server. Wrong credentials are one clear, permanent
    /// [`Error::Connect`] (the URL redacted) instead of a driver dump.
    pub async fn ping(&self) -> Result<()> {
        match self.db.run_command(doc! {"ping": 1}).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Authentication { .. }) => {
                Err(Error::Connect {
                    what: "mongodb",
                    url: redact_url(&self.uri),
                    detail: "authentication failed".into(),
                    hint: "check the user, password and authSource in mongodb.uri / WRIT_MONGODB_URI; the user needs the readWrite role on mongodb.database",
                    retry: crate::error::RetryClass::Permanent,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// A collection handle, for tools that scan whole collections.
    pub fn raw_collection(&self, name: &str) -> Collection<Document> {
        self.coll(name)
    }

    /// Applies one write at `version`. See the module docs for the guard.
    pub async fn apply(
        &self,
        coll: &CollectionConfig,
        write: &Write,
        version: Version,
    ) -> Result<Applied> {
        let c = self.coll(&coll.name);
        let v = version.to_sortable();
        let filter = guard_filter(coll, write, &v);
        if write.op == Op::Delete {
            return self.delete(&c, &write.key, filter, version).await;
        }
        let update = update_of(coll, write, &v);
        let op = || {
            c.find_one_and_update(filter.clone(), update.clone())
                .upsert(true)
                .return_document(ReturnDocument::After)
                .write_concern(self.wc.clone())
                .max_time(self.max_time)
                .into_future()
        };
        let written = match self.guarded(&c, &write.key, version, op).await {
            // An `insert_once` put whose key is an older tombstone: its
            // filter leaves the tombstone out, so the upsert met the key.
            Err(Error::Mongo(e))
                if mongo_code(&e) == Some(11000)
                    && write.op == Op::Put
                    && coll.mode == WriteMode::InsertOnce =>
            {
                match self.revive(&c, coll, write, &v).await? {
                    Some(doc) => Guarded::Written(Some(doc)),
                    None => return Err(Error::Mongo(e)),
                }
            }
            other => other?,
        };
        match written {
            Guarded::Written(Some(doc)) => Ok(Applied::Committed(doc)),
            Guarded::Written(None) => Err(Error::MissingPostImage {
                collection: coll.name.clone(),
            }),
            Guarded::Stale(stale) => Ok(stale),
        }
    }

    /// An `insert_once` put over an older tombstone: the key was deleted, so
    /// the put writes what its insert would have. `None`: no older tombstone
    /// holds the key now (a newer write came first, or it was another
    /// conflict); the caller's error stands and the write is tried again.
    async fn revive(
        &self,
        c: &Collection<Document>,
        coll: &CollectionConfig,
        write: &Write,
        v: &str,
    ) -> Result<Option<Document>> {
        Ok(
            c.find_one_and_update(revive_filter(write, v), revive_of(coll, write, v))
                .return_document(ReturnDocument::After)
                .write_concern(self.wc.clone())
                .max_time(self.max_time)
                .await?,
        )
    }

    async fn delete(
        &self,
        c: &Collection<Document>,
        key: &Key,
        filter: Document,
        version: Version,
    ) -> Result<Applied> {
        // The document is replaced by a versioned tombstone, not removed: a
        // later re-apply of an older write (replay, `dlq retry`) meets the
        // guard and is stale, instead of bringing the deleted key back.
        let mut tombstone = key.to_document();
        tombstone.insert(DOC_REMOVED, true);
        tombstone.insert(
            DOC_WRIT,
            doc! {"v": version.to_sortable(), "at": DateTime::now(), "deleted": true},
        );
        let op = || {
            c.find_one_and_replace(filter.clone(), tombstone.clone())
                .upsert(true)
                .return_document(ReturnDocument::After)
                .write_concern(self.wc.clone())
                .max_time(self.max_time)
                .into_future()
        };
        match self.guarded(c, key, version, op).await? {
            Guarded::Written(Some(_)) => Ok(Applied::Deleted),
            Guarded::Written(None) => Err(Error::MissingPostImage {
                collection: c.name().to_string(),
            }),
            Guarded::Stale(stale) => Ok(stale),
        }
    }

    /// Runs a guarded upsert `op` and reads a duplicate-key error: stale when
    /// the key already holds this version or a newer one; with an older (or
    /// no) document it is an insert race (another upsert of the key inserted
    /// it between our match and our insert), re-run once at once; a second one
    /// is a real conflict (another unique index).
    async fn guarded<F, Fut>(
        &self,
        c: &Collection<Document>,
        key: &Key,
        version: Version,
        op: F,
    ) -> Result<Guarded>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = mongodb::error::Result<Option<Document>>>,
    {
        let mut raced = false;
        loop {
            match op().await {
                Ok(doc) => return Ok(Guarded::Written(doc)),
                Err(e) if mongo_code(&e) == Some(11000) => {
                    match self.stale_or_conflict(c, key, version).await? {
                        Some(stale) => return Ok(Guarded::Stale(stale)),
                        None if !raced => raced = true,
                        None => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// After a duplicate-key error: `Some(Stale)` when the key already holds
    /// this version or a newer one, `None` when it holds an older one or none
    /// (an insert race, or a clash on another unique index). A stored
    /// `_writ.v` that is not a version writ writes (another program changed
    /// it) is a permanent refusal that says so: the guard cannot order the
    /// write against it.
    ///
    /// With a write concern beyond one node, the key is read at read concern
    /// `majority`: the version found may be this write's own, committed by an
    /// earlier attempt whose write concern timed out, and the driver drops a
    /// failed command's `writeConcernError`. Acknowledging it from a `local`
    /// read could hand out a write that a failover rolls back. If only the
    /// primary holds the version, the write is [`Error::NotYetConfirmed`]
    /// (retried).
    async fn stale_or_conflict(
        &self,
        c: &Collection<Document>,
        key: &Key,
        version: Version,
    ) -> Result<Option<Applied>> {
        let mut find = c.find_one(key.to_document()).max_time(self.max_time);
        if self.confirm_majority {
            find = find.read_concern(ReadConcern::majority());
        }
        match find.await? {
            Some(doc) if doc_version(&doc).is_some_and(|v| v >= version) => {
                Ok(Some(Applied::Stale(Some(doc))))
            }
            Some(doc) if doc_version(&doc).is_none() => match doc
                .get_document(DOC_WRIT)
                .ok()
                .and_then(|w| w.get("v"))
            {
                Some(v) => Err(Error::Rejected(Reject::new(
                    RejectReason::MongoRejected,
                    format!("the stored document of this key has _writ.v = {v}, which is not a version writ wrote (another program changed it?), so writ cannot order this write against it; remove that document's _writ field (it then reads as version 0) and `writ dlq retry` the write"),
                ))),
                None => self.unconfirmed(c, key, version).await,
            },
            _ => self.unconfirmed(c, key, version).await,
        }
    }

    /// After a `majority` read found the key older than `version`, or absent:
    /// [`Error::NotYetConfirmed`] if the primary holds `version` or newer,
    /// else `None` (an insert race, or a clash on another unique index).
    async fn unconfirmed(
        &self,
        c: &Collection<Document>,
        key: &Key,
        version: Version,
    ) -> Result<Option<Applied>> {
        if !self.confirm_majority {
            return Ok(None);
        }
        let local = c
            .find_one(key.to_document())
            .max_time(self.max_time)
            .await?;
        match local {
            Some(doc) if doc_version(&doc).is_some_and(|v| v >= version) => {
                Err(Error::NotYetConfirmed {
                    collection: c.name().to_string(),
                })
            }
            _ => Ok(None),
        }
    }
}

/// Per collection: operations MongoDB answered, and operations that timed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answers {
    /// Applied, stale or refused for good.
    pub answered: u64,
    /// Ran out of time (writ's bound or the server's `maxTimeMS`).
    pub timed_out: u64,
}

/// How a guarded upsert ended (see [`Store::guarded`]).
enum Guarded {
    /// It wrote; the post-image, if the server returned one.
    Written(Option<Document>),
    /// The key already holds this version or a newer one.
    Stale(Applied),
}
