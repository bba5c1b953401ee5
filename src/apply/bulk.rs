//! The bulk apply: one MongoDB round trip for many writes to distinct keys.
//!
//! Each write becomes one statement of an unordered `update` command: the
//! same guarded upsert as [`Store::apply`] (same filter, same update
//! document), so per-key order and stale detection are unchanged. The
//! committed documents the cache needs come without a read where the write
//! determines them (a statement that inserted: [`super::post_image`]); the
//! rest are fetched with one `find` per command. Each write gets its own
//! outcome:
//!
//! - the statement succeeded and the document carries this version (or a
//!   newer one): applied;
//! - E11000 and the stored document is at this version or newer: stale;
//! - anything else (another write error, a write-concern error, a post-image
//!   that does not show the write): [`BulkOutcome::Single`], and the caller
//!   applies that one write on its own, with the single path's retries and
//!   dead-lettering. An error on one write never fails the others.
//!
//! Hard deletes are rare and are applied one by one. Rounds of fewer than
//! `BULK_MIN` writes use one findAndModify per write, side by side: one round
//! trip each instead of the bulk's two.

use std::collections::HashMap;

use mongodb::bson::{Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::options::ReadConcern;

use super::document::{doc_version, guard_filter, update_of};
use super::post_image;
use super::store::{Applied, Store};
use crate::bson_bytes;
use crate::config::CollectionConfig;
use crate::error::{Error, Result};
use crate::protocol::{Op, Version, Write};

/// Rounds smaller than this use one findAndModify per write, concurrently.
const BULK_MIN: usize = 4;
/// A write larger than this is applied on its own, outside any bulk.
const LARGE_BYTES: usize = 4 * 1024 * 1024;
/// Most statement bytes in one `update` command.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// One write of a command, ready to send: its item, its update document (for
/// the post-image) and its encoded statement.
struct Prepared {
    at: usize,
    update: Document,
    statement: RawDocumentBuf,
}

/// One write of a bulk.
pub struct BulkItem<'a> {
    /// Its collection.
    pub coll: &'a CollectionConfig,
    /// The write.
    pub write: &'a Write,
    /// Its version (the stream entry id).
    pub version: Version,
}

/// What the bulk did with one write.
#[derive(Debug, Clone, PartialEq)]
pub enum BulkOutcome {
    /// Applied or found stale, as the single path would say.
    Done(Applied),
    /// Not settled by the bulk: apply it on its own.
    Single,
}

/// The guarded upsert of one write, as a statement of an `update` command
/// (the same filter and update as [`Store::apply`]), encoded straight from
/// `update` (no copy of it). `None` if the write cannot be encoded: it then
/// stays out of the bulk and is applied on its own.
/// Splits `sized` (items with their encoded sizes), in order, into runs of
/// at most [`CHUNK_BYTES`] (an item larger than that alone).
fn by_bytes<T>(sized: impl IntoIterator<Item = (T, usize)>) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for (item, size) in sized {
        match chunks.last_mut() {
            Some(chunk) if bytes + size <= CHUNK_BYTES => chunk.push(item),
            _ => {
                chunks.push(vec![item]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    chunks
}

fn statement(it: &BulkItem<'_>, update: &Document) -> Option<RawDocumentBuf> {
    let q = guard_filter(it.coll, it.write, &it.version.to_sortable());
    let mut st = RawDocumentBuf::new();
    st.append("q", bson_bytes::to_raw(&q).ok()?);
    st.append("u", bson_bytes::to_raw(update).ok()?);
    st.append("upsert", true);
    Some(st)
}

/// `index → _id` of the statements that inserted (`upserted` of the reply).
fn upserted(reply: &Document) -> HashMap<usize, Bson> {
    let Ok(list) = reply.get_array("upserted") else {
        return HashMap::new();
    };
    list.iter()
        .filter_map(Bson::as_document)
        .filter_map(|u| {
            let index = match u.get("index")? {
                Bson::Int32(i) => usize::try_from(*i).ok()?,
                Bson::Int64(i) => usize::try_from(*i).ok()?,
                _ => return None,
            };
            Some((index, u.get("_id")?.clone()))
        })
        .collect()
}

impl Store {
    /// One unordered `update` command, built as raw BSON: the statements
    /// are already bytes, so nothing is copied or encoded twice.
    async fn update_command(&self, name: &str, statements: RawArrayBuf) -> Result<Document> {
        let mut cmd = RawDocumentBuf::new();
        cmd.append("update", name);
        cmd.append("updates", statements);
        cmd.append("ordered", false);
        let wc = bson_bytes::to_raw(&self.write_concern_doc())
            .map_err(|e| crate::error::Error::Encode(format!("write concern: {e}")))?;
        cmd.append("writeConcern", wc);
        cmd.append("maxTimeMS", self.max_time_ms());
        self.within("a bulk of MongoDB writes", async {
            Ok(self.database().run_raw_command(cmd).await?)
        })
        .await
    }

    /// The server's side of a bulk alone: one unordered `update` command of
    /// the guarded upserts of `items` (all of one collection), with no
    /// post-image fetch and no outcome per write. `writ bench --mode drain`
    /// measures the server's ceiling with it.
    pub async fn upsert_only(&self, items: &[BulkItem<'_>]) -> Result<()> {
        let Some(first) = items.first() else {
            return Ok(());
        };
        // In commands of at most CHUNK_BYTES, as the daemon's bulks are:
        // 128 large documents would pass MongoDB's message size limit.
        let sized = items.iter().filter_map(|it| {
            let update = update_of(it.coll, it.write, &it.version.to_sortable());
            let st = statement(it, &update)?;
            let size = st.as_bytes().len();
            Some((st, size))
        });
        for chunk in by_bytes(sized) {
            let mut statements = RawArrayBuf::new();
            for st in chunk {
                statements.push(st);
            }
            self.update_command(&first.coll.name, statements).await?;
        }
        Ok(())
    }

    /// Applies `items` (distinct keys) with one `update` command per
    /// collection, and one `find` for the writes that did not insert. An
    /// error of the whole command is returned; the caller then applies every
    /// write on its own. Each command is bounded on its own
    /// ([`Store::within`]), and the first that times out fails the whole
    /// bulk (a server that stopped answering fails a round within one
    /// command's bound, not one per delete).
    pub async fn apply_bulk(&self, items: &[BulkItem<'_>]) -> Result<Vec<BulkOutcome>> {
        if items.len() < BULK_MIN {
            // A bulk of existing keys costs two round trips (the update,
            // then the find); a few findAndModify calls side by side cost
            // one each.
            let each = items.iter().map(|it| {
                self.within("a MongoDB write", self.apply(it.coll, it.write, it.version))
            });
            let mut out = Vec::with_capacity(items.len());
            for r in futures::future::join_all(each).await {
                out.push(settled(r)?);
            }
            return Ok(out);
        }
        let mut out = vec![BulkOutcome::Single; items.len()];
        let mut by_coll: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if item.write.op == Op::Delete {
                let apply = self.apply(item.coll, item.write, item.version);
                out[i] = settled(self.within("a MongoDB delete", apply).await)?;
            } else {
                by_coll.entry(item.coll.name.as_str()).or_default().push(i);
            }
        }
        for (name, idx) in by_coll {
            // Each statement is encoded once, and its size decides: large
            // writes (and any that cannot be encoded) go on their own, the
            // rest in commands of at most CHUNK_BYTES, well below MongoDB's
            // 16 MiB command limit.
            let sized = idx.into_iter().filter_map(|at| {
                let it = &items[at];
                let update = update_of(it.coll, it.write, &it.version.to_sortable());
                let statement = statement(it, &update)?; // else stays Single
                let size = statement.as_bytes().len();
                let prepared = Prepared {
                    at,
                    update,
                    statement,
                };
                (size <= LARGE_BYTES).then_some((prepared, size)) // else stays Single
            });
            for chunk in by_bytes(sized) {
                self.bulk_one(name, items, chunk, &mut out).await?;
            }
        }
        Ok(out)
    }

    async fn bulk_one(
        &self,
        name: &str,
        items: &[BulkItem<'_>],
        chunk: Vec<Prepared>,
        out: &mut [BulkOutcome],
    ) -> Result<()> {
        // `idx[n]` is the item of statement n (the reply's indexes count
        // statements).
        let mut idx: Vec<usize> = Vec::with_capacity(chunk.len());
        let mut updates: Vec<Document> = Vec::with_capacity(chunk.len());
        let mut statements = RawArrayBuf::new();
        for p in chunk {
            idx.push(p.at);
            updates.push(p.update);
            statements.push(p.statement);
        }
        let idx = &idx[..];
        let reply = self.update_command(name, statements).await?;
        if reply.contains_key("writeConcernError") {
            // Applied on the primary perhaps, not yet as durable as asked:
            // every write goes the single way (re-applying is harmless).
            return Ok(());
        }
        let mut failed: HashMap<usize, i32> = HashMap::new();
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors.iter().filter_map(Bson::as_document) {
                let at = e.get_i32("index").ok().map(|i| i as usize);
                let code = e.get_i32("code").unwrap_or(0);
                if let Some(pos) = at.and_then(|a| idx.get(a)) {
                    failed.insert(*pos, code);
                }
            }
        }
        // Inserted documents are what the statement wrote: no read needed.
        let mut rest = Vec::new();
        let inserted = upserted(&reply);
        for (at, &i) in idx.iter().enumerate() {
            let it = &items[i];
            let derived = match (failed.contains_key(&i), inserted.get(&at)) {
                (false, Some(id)) => post_image::inserted(
                    id.clone(),
                    &it.write.key.to_document(),
                    std::mem::take(&mut updates[at]),
                ),
                _ => None,
            };
            match derived {
                Some(d) => out[i] = BulkOutcome::Done(Applied::Committed(d)),
                None => rest.push(i),
            }
        }
        if !rest.is_empty() {
            self.read_back(name, items, &rest, &failed, out).await?;
        }
        Ok(())
    }

    /// Settles the writes of `idx` from their stored documents, read in one
    /// query: applied or stale when the document shows it, else single.
    ///
    /// A statement applied in the bulk is as durable as the bulk's write
    /// concern. One refused as a duplicate (E11000) is stale only if the
    /// newer version is: with a write concern beyond one node, that is
    /// checked by a second read at `majority` of those keys alone (none in
    /// the usual round), as the single path does. The version found may be
    /// this write's own, applied on the primary by an attempt whose write
    /// concern never came; acknowledging it from a `local` read could hand
    /// out a write that a failover rolls back. What the majority does not
    /// hold yet goes to the single path, which retries it until it does.
    async fn read_back(
        &self,
        name: &str,
        items: &[BulkItem<'_>],
        idx: &[usize],
        failed: &HashMap<usize, i32>,
        out: &mut [BulkOutcome],
    ) -> Result<()> {
        let keys: Vec<crate::protocol::Key> =
            idx.iter().map(|&i| items[i].write.key.clone()).collect();
        let docs = self.find_many(name, &keys).await?;
        let mut found = by_key(items[idx[0]].coll, docs);
        let mut stale = Vec::new();
        for &i in idx {
            let it = &items[i];
            let stored = found.remove(&it.write.key.canonical());
            let version = stored.as_ref().and_then(doc_version);
            out[i] = match (failed.get(&i), stored, version) {
                (Some(11000), Some(d), Some(v)) if v >= it.version => {
                    stale.push(i);
                    BulkOutcome::Done(Applied::Stale(Some(d)))
                }
                (None, Some(d), Some(v)) if v >= it.version => {
                    BulkOutcome::Done(Applied::Committed(d))
                }
                _ => BulkOutcome::Single,
            };
        }
        if self.confirm_majority && !stale.is_empty() {
            self.confirm_stale(name, items, &stale, out).await?;
        }
        Ok(())
    }

    /// Keeps as stale only the writes of `idx` whose newer version a
    /// majority holds; the others go to the single path ([`Self::read_back`]).
    async fn confirm_stale(
        &self,
        name: &str,
        items: &[BulkItem<'_>],
        idx: &[usize],
        out: &mut [BulkOutcome],
    ) -> Result<()> {
        let keys: Vec<crate::protocol::Key> =
            idx.iter().map(|&i| items[i].write.key.clone()).collect();
        let majority = ReadConcern::majority();
        let docs = self.find_many_at(name, &keys, Some(&majority)).await?;
        let mut found = by_key(items[idx[0]].coll, docs);
        for &i in idx {
            let it = &items[i];
            out[i] = match found.remove(&it.write.key.canonical()) {
                Some(d) if doc_version(&d).is_some_and(|v| v >= it.version) => {
                    BulkOutcome::Done(Applied::Stale(Some(d)))
                }
                _ => BulkOutcome::Single,
            };
        }
        Ok(())
    }
}

/// A write of the bulk applied on its own: its outcome, or the single way
/// for an error of its own, a server's `MaxTimeMSExpired` included (a write
/// too slow by itself must not fail the others: poison isolation). No answer
/// within the local bound ([`Store::within`]) fails the whole bulk: the
/// server stopped answering, which is no write's fault.
fn settled(r: Result<Applied>) -> Result<BulkOutcome> {
    match r {
        Ok(a) => Ok(BulkOutcome::Done(a)),
        Err(e @ Error::Timeout { .. }) => Err(e),
        Err(_) => Ok(BulkOutcome::Single),
    }
}

/// Stored documents of `coll` by their key's canonical form (a query for
/// many keys may return others too: they are matched by key).
fn by_key(coll: &CollectionConfig, docs: Vec<Document>) -> HashMap<String, Document> {
    let mut found = HashMap::new();
    for d in docs {
        let key: Document = coll
            .key
            .iter()
            .filter_map(|k| Some((k.clone(), d.get(k)?.clone())))
            .collect();
        if let Ok(k) = crate::protocol::Key::from_document(&key, coll) {
            found.insert(k.canonical(), d);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{by_bytes, settled, BulkOutcome, CHUNK_BYTES};
    use crate::error::Error;

    /// A timed-out write of the bulk fails the whole bulk (the round then
    /// shrinks and counts the timeout); another error sends only it the
    /// single way.
    #[test]
    fn a_timeout_fails_the_bulk_and_another_error_only_its_write() {
        let timeout = Error::Timeout {
            after: std::time::Duration::from_secs(1),
            what: "a MongoDB delete",
            accepted: None,
        };
        assert!(settled(Err(timeout)).is_err_and(|e| e.is_timeout()));
        assert!(matches!(
            settled(Err(Error::Encode("x".into()))),
            Ok(BulkOutcome::Single)
        ));
    }

    #[test]
    fn runs_stay_within_the_chunk_bytes_in_order() {
        let half = CHUNK_BYTES / 2;
        let sized = [(1, half), (2, half), (3, 1), (4, CHUNK_BYTES + 1), (5, 1)];
        assert_eq!(by_bytes(sized), vec![vec![1, 2], vec![3], vec![4], vec![5]]);
        assert!(by_bytes(Vec::<(u8, usize)>::new()).is_empty());
    }
}
