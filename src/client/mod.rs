//! The Rust client: append writes to the partition streams, wait for acks, read
//! from the cache with read-through to MongoDB.
//!
//! Guarantees (see docs/protocol.md):
//! - read-after-write: once [`Collection::write`] returns, a read of that key by
//!   any client returns that version or a newer one;
//! - read-your-writes: once [`Collection::submit`] returns, this handle's reads
//!   of that key never return an older version; they wait (bounded by
//!   `client.read_timeout_ms`) and fail with a timeout rather than go stale.

mod acks;
mod admission_reply;
pub(crate) mod admit;
mod batch;
mod clock;
mod letters;
mod overdue;
mod pending;
mod read;
mod sweep;
mod sync;
mod ticket;

pub use read::Record;
pub use ticket::Ticket;

use std::collections::{BTreeMap, HashMap};

use pending::{wait_key, Pending};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::redis_conn::{Confirmer, Conn, Replication};
use mongodb::bson::{Bson, Document};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::apply::{doc_version, is_live, Store, DOC_PAYLOAD, DOC_REMOVED};
use crate::cache::Cache;
use crate::config::{CollectionConfig, Config, Layout};
use crate::error::{Error, Result};
use crate::protocol::{self, Key, Names, Op, Reject, RejectReason, ReplyTo, Version};

type KeyId = (String, String);
type AckState = watch::Receiver<Option<acks::AckResult>>;
/// A request waiting for its ack: its key, the sender that wakes it, and
/// whether its ticket is still held ([`acks::settle`]).
type Waiter = (
    KeyId,
    watch::Sender<Option<acks::AckResult>>,
    std::sync::Weak<()>,
);

pub(crate) struct Inner {
    config: Arc<Config>,
    names: Names,
    conn: Conn,
    cache: Cache,
    store: Store,
    client_id: String,
    next_request: AtomicU64,
    /// Request id → (key, sender) for acks not yet seen.
    waiters: Mutex<HashMap<String, Waiter>>,
    /// This handle's unacked writes per key, by version.
    latest: Mutex<HashMap<KeyId, BTreeMap<Version, Pending>>>,
    /// Writes whose entry id Redis gave out again to a later write of this
    /// handle (their entries were lost): `latest` holds the later one, and
    /// the overdue sweep settles these ([`Inner::add_pending`]).
    displaced: Mutex<Vec<(KeyId, Version, Pending)>>,
    /// Requests settled from the cache whose ticket may still wait for the
    /// ack: their waiters go once no receiver is left ([`prune`]).
    settled: Mutex<Vec<String>>,
    /// Request → when a look first found its entry gone and MongoDB older
    /// than it ([`overdue`]); dropped once it is settled or no longer waited for.
    missing: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Request → the letter a look for its dead letter read up to without
    /// finding it ([`overdue`]); dropped as `missing` is.
    letters_read: Mutex<HashMap<String, Version>>,
    /// Admission calls, one in flight per partition (group commit).
    batcher: Arc<batch::Batcher>,
    /// Whether a cache fill failed for a reason other than memory (said
    /// once per handle: [`Inner::fill`]).
    fill_failed: std::sync::atomic::AtomicBool,
    /// Refusals no ticket received ([`Writ::unheard_refusals`]).
    unheard_refusals: AtomicU64,
    /// `redis.min_replicas_acked`: submits share `WAIT`s (group commit).
    confirmer: Confirmer,
    _stop: DropGuard,
}

/// A connected handle; cheap to clone.
#[derive(Clone)]
pub struct Writ {
    inner: Arc<Inner>,
}

impl Writ {
    /// Connects to Redis (and lazily to MongoDB for read-through) and starts
    /// the ack listener. Records `redis.partitions` as the namespace's count
    /// if no daemon or client did yet, and is refused ([`Error::Config`])
    /// when another count is recorded ([`crate::partition_count`]), or the
    /// daemons record another MongoDB database ([`crate::database_record`]).
    pub async fn connect(config: Config) -> Result<Writ> {
        let config = Arc::new(config);
        let mut conn = crate::redis_conn::connect(&config, std::time::Duration::ZERO).await?;
        let names = Names::new(&config.namespace);
        crate::partition_count::claim(&mut conn, &config, crate::partition_count::By::Client)
            .await?;
        crate::database_record::check(&mut conn, &config).await?;
        let store = Store::connect(&config).await?;
        let client_id = format!("c{:016x}", rand::random::<u64>());
        let stop = CancellationToken::new();
        // With replicas to confirm, admissions and their `WAIT`s get a
        // connection of their own: a `WAIT` blocks its connection until the
        // replicas answer (up to `redis.replica_ack_timeout_ms` when one is
        // down), and reads must not queue behind it; its reply timeout
        // allows for the `WAIT`.
        let replication = Replication::of(&config);
        let writes = if replication.wanted() {
            crate::redis_conn::connect(&config, replication.timeout).await?
        } else {
            conn.clone()
        };
        replication.check_permitted(&writes).await?;
        let confirmer = Confirmer::new(writes.clone(), replication);
        let batcher = batch::Batcher::new(
            (0..config.partitions)
                .map(|p| batch::Target {
                    stream: names.stream(p),
                    meta: names.meta(p),
                    record: names.admission(p, &client_id),
                })
                .collect(),
            writes,
            crate::redis_conn::script(admit::XADD_BOUNDED),
            names.group(),
            batch::Settings {
                bound: config.max_backlog,
                confirm: confirmer.wanted(),
                patience: batch::Settings::patience(&config, confirmer.wanted()),
            },
        );
        let inner = Arc::new(Inner {
            batcher,
            fill_failed: Default::default(),
            unheard_refusals: Default::default(),
            cache: Cache::new(conn.clone()),
            confirmer,
            names,
            conn,
            store,
            client_id,
            next_request: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            displaced: Mutex::new(Vec::new()),
            settled: Mutex::new(Vec::new()),
            missing: Mutex::new(HashMap::new()),
            letters_read: Mutex::new(HashMap::new()),
            _stop: stop.clone().drop_guard(),
            config,
        });
        acks::spawn_listener(Arc::downgrade(&inner), stop.clone()).await?;
        sweep::spawn(Arc::downgrade(&inner), stop);
        Ok(Writ { inner })
    }

    /// A collection declared in the config.
    pub fn collection(&self, name: &str) -> Result<Collection> {
        let coll = self.inner.config.collection(name).cloned().ok_or_else(|| {
            Reject::new(
                RejectReason::UnknownCollection,
                format!(
                    "collection {name:?} is not declared; add it to [[collections]] in the config"
                ),
            )
        })?;
        Ok(Collection {
            writ: self.clone(),
            coll,
        })
    }

    /// Closes this handle's MongoDB driver (read-through and the looks at
    /// overdue writes use it), within two seconds. Call it once, after the
    /// last use of every clone of the handle, before the runtime ends:
    /// otherwise the driver's own clean-up, left to a task when the last
    /// clone drops, can race the runtime's shutdown and panic inside the
    /// driver. Reads that need MongoDB fail afterwards.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }

    /// The handle's MongoDB side, for the bench's verification.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This handle's client id (its ack stream is `<ns>:ack:<id>`).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Writes of this handle whose ack has not arrived, less those a read,
    /// list or the overdue sweep settled that nobody waits for any more
    /// (their tickets dropped, then or later): lost acks do not pile up,
    /// even for keys never read again (`sweep`).
    pub fn unacked(&self) -> usize {
        self.inner.unacked()
    }
}

/// One collection of a [`Writ`] handle.
#[derive(Clone)]
pub struct Collection {
    writ: Writ,
    coll: CollectionConfig,
}

impl Collection {
    fn inner(&self) -> &Inner {
        &self.writ.inner
    }

    /// Checks a key: its fields ([`Error::Rejected`], `key_field`) and the
    /// size of its canonical form ([`Error::KeyTooLarge`]).
    fn key(&self, key: &Document) -> Result<Key> {
        let key = Key::from_document_any_size(key, &self.coll)?;
        key.check_size(&self.coll.name)?;
        Ok(key)
    }

    /// Appends a `put` to the stream; returns once Redis accepted it.
    ///
    /// Once called, the write is queued for its partition's next admission:
    /// dropping the future (a `timeout` around it, say) does not take it
    /// back, and it may still be appended. A call whose reply is lost (a
    /// dropped connection) is sent again under its number (for about 2 s),
    /// and answered from the admission record if it ran. Errors that leave
    /// it unknown say so ([`Error::accepted`] is `Unknown`:
    /// [`Error::AdmissionUnknown`], and with replicas to confirm,
    /// [`Error::NotReplicated`] and [`Error::ConfirmFailed`]). Retry those
    /// only when a lost write matters more than a duplicate (docs/protocol.md
    /// §5a).
    pub async fn submit(&self, key: &Document, doc: &Document) -> Result<Ticket> {
        self.submit_op(key, Op::Put, Some(doc)).await
    }

    /// Stores `doc` at `key`; returns the committed version once it is
    /// readable by every client.
    pub async fn write(&self, key: &Document, doc: &Document) -> Result<Version> {
        self.submit(key, doc).await?.wait().await
    }

    /// Soft delete: the key then reads as absent.
    pub async fn remove(&self, key: &Document) -> Result<Version> {
        self.submit_op(key, Op::Remove, None).await?.wait().await
    }

    /// Hard delete: the document is removed from MongoDB.
    pub async fn delete(&self, key: &Document) -> Result<Version> {
        self.submit_op(key, Op::Delete, None).await?.wait().await
    }

    /// Appends any op; returns its ticket. A `put` needs a document, the
    /// others take none ([`Error::Rejected`] before the stream, as the
    /// daemon would refuse it).
    pub async fn submit_op(
        &self,
        key: &Document,
        op: Op,
        doc: Option<&Document>,
    ) -> Result<Ticket> {
        protocol::check_write(op, doc, &self.coll, self.inner().config.max_document_bytes)?;
        let key = self.key(key)?;
        let inner = self.inner();
        let p = key.partition(&self.coll.name, inner.config.partitions);
        let request = format!("{:x}", inner.next_request.fetch_add(1, Ordering::Relaxed));
        let reply = ReplyTo {
            client: inner.client_id.clone(),
            request: request.clone(),
        };
        let fields = protocol::encode(&self.coll, &key, op, doc, Some(&reply))?;
        let id: KeyId = (self.coll.name.clone(), key.canonical());
        let (rx, held) = inner.waiter(&request, &id);
        // Until the write is pending, any way out (an error, or this future
        // dropped: a `timeout` around the submit) takes its waiter back, or
        // a write that was refused or never added would keep it for good.
        let mut waiter = WaiterGuard {
            inner,
            request: Some(request.clone()),
        };
        let (entry, client) = match inner.batcher.admit(p as usize, fields).await {
            Ok(admitted) => admitted,
            Err(refused) => return Err(refused.into_error(p, inner.config.max_backlog)),
        };
        // An ack settles the write, whatever the `WAIT` says: the daemon
        // applied it to MongoDB (and, confirming its own writes, waited for
        // the replicas), so "not confirmed" would be wrong, and a caller told
        // so would write it again.
        let confirmed = {
            let mut acked = rx.clone();
            let stream = inner.names.stream(p);
            tokio::select! {
                r = inner.confirmer.confirm(&stream, client, "the write") => r,
                Ok(_) = acked.wait_for(|a| a.is_some()) => Ok(()),
            }
        };
        if let Err(e) = confirmed {
            if rx.borrow().is_none() {
                // The write is on the master: a failed `WAIT` leaves it
                // unknown, not refused.
                return Err(match e {
                    Error::Redis(source) => Error::ConfirmFailed {
                        partition: p,
                        source,
                    },
                    other => other,
                });
            }
        }
        let version: Version = entry.parse().map_err(|_| Error::AdmissionUnknown {
            partition: p,
            source: redis::RedisError::from((
                redis::ErrorKind::Parse,
                "the admission returned an entry id this client cannot read",
                entry.clone(),
            )),
        })?;
        let pending = Pending {
            request: request.clone(),
            state: rx.clone(),
            key: Arc::new(key),
        };
        let cache_key = inner.names.cache(p, &self.coll.name, &id.1);
        inner.add_pending(id, version, pending.clone());
        waiter.request = None;
        let origin = ticket::Origin {
            inner: self.writ.inner.clone(),
            collection: self.coll.name.clone(),
            partition: p,
            cache_key,
            pending,
            _held: held,
        };
        Ok(Ticket::new(version, rx, inner.config.write_timeout, origin))
    }

    /// Reads the payload of `key`, or `None` if absent or deleted.
    pub async fn read(&self, key: &Document) -> Result<Option<Document>> {
        Ok(self.read_record(key).await?.and_then(|r| r.payload))
    }

    /// Whether `key` reads as present.
    pub async fn has(&self, key: &Document) -> Result<bool> {
        Ok(self.read(key).await?.is_some())
    }

    /// Reads `key` with its version (see [`Record`]); `None` if never written.
    /// Refused ([`Error::Config`]) when the key's partition records another
    /// partition count than this handle's: the count was changed while it
    /// ran, and the cache entries it would read are no longer updated.
    pub async fn read_record(&self, key: &Document) -> Result<Option<Record>> {
        let key = self.key(key)?;
        let inner = self.inner();
        let id: KeyId = (self.coll.name.clone(), key.canonical());
        let p = key.partition(&self.coll.name, inner.config.partitions);
        let cache_key = inner.names.cache(p, &self.coll.name, &id.1);
        // Every write of this key this handle submitted and has no ack for yet.
        let pending = inner
            .latest
            .lock()
            .expect("lock")
            .get(&id)
            .cloned()
            .unwrap_or_default();
        let mut cached = inner.cached_one(p, &cache_key).await?;
        if let Some(newest) = pending.keys().next_back().copied() {
            if let Some(c) = cached.as_ref().filter(|c| c.version >= newest) {
                // The copies of their ack receivers go first: `forget` drops
                // the waiters nobody else holds a receiver of.
                drop(pending);
                inner.forget(&id, c.version);
            } else {
                let states: Vec<AckState> =
                    pending.values().rev().map(|p| p.state.clone()).collect();
                let waited = wait_key(
                    states,
                    inner.config.read_timeout,
                    "this client's pending writes before reading",
                )
                .await;
                match waited {
                    // An ack overdue may have been lost: settled from the
                    // streams if the daemon is done with its write, within
                    // one more `client.read_timeout_ms` (as lists do).
                    Err(timeout @ Error::Timeout { .. }) => {
                        if !inner
                            .settle_within(&self.coll.name, p, &cache_key, pending)
                            .await?
                        {
                            return Err(timeout);
                        }
                    }
                    other => other?,
                }
                cached = inner.cached_one(p, &cache_key).await?;
            }
        }
        if let Some(c) = cached {
            return Ok(Some(Record {
                version: c.version,
                payload: c.doc.as_ref().and_then(|d| payload_of(&self.coll, d)),
            }));
        }
        // Miss: read through to MongoDB and fill the cache (never backwards).
        let Some(doc) = inner.store.find(&self.coll.name, &key).await? else {
            return Ok(None);
        };
        // A document from before writ managed the collection has no version:
        // it reads as version 0-0, older than any write.
        let version = doc_version(&doc).unwrap_or_default();
        inner.fill(&cache_key, version, &doc).await;
        Ok(Some(Record {
            version,
            payload: payload_of(&self.coll, &doc),
        }))
    }

    /// Live (not deleted) documents: key fields plus payload, in key order.
    pub async fn values(&self) -> Result<Vec<(Document, Document)>> {
        self.settle_pending().await?;
        let docs = self.inner().store.live_documents(&self.coll).await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let key: Document = self
                    .coll
                    .key
                    .iter()
                    .filter_map(|k| Some((k.clone(), d.get(k)?.clone())))
                    .collect();
                Some((key, payload_of(&self.coll, &d)?))
            })
            .collect())
    }

    /// Keys of the live documents, in key order.
    pub async fn keys(&self) -> Result<Vec<Document>> {
        Ok(self.values().await?.into_iter().map(|(k, _)| k).collect())
    }

    /// Number of live documents.
    pub async fn count(&self) -> Result<u64> {
        self.settle_pending().await?;
        self.inner().store.count_live(&self.coll.name).await
    }
}

/// What a reader sees of a stored document: `None` if soft-deleted; the
/// payload (`payload` layout) or the stored fields without writ's bookkeeping,
/// the timestamps and the key (`fields` layout).
/// Takes a submit's waiter back when the submit ends before its write is
/// pending (see `submit_op`).
struct WaiterGuard<'a> {
    inner: &'a Inner,
    request: Option<String>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            self.inner.waiters.lock().expect("lock").remove(&request);
        }
    }
}

fn payload_of(coll: &CollectionConfig, doc: &Document) -> Option<Document> {
    if !is_live(doc) {
        return None;
    }
    match coll.layout {
        Layout::Payload => match doc.get(DOC_PAYLOAD) {
            Some(Bson::Document(d)) => Some(d.clone()),
            _ => None,
        },
        Layout::Fields => Some(
            doc.iter()
                .filter(|(k, _)| {
                    !protocol::RESERVED_TOP_LEVEL.contains(&k.as_str())
                        && k.as_str() != DOC_REMOVED
                        && !coll.key.contains(k)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
    }
}
