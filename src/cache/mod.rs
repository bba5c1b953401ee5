//! The Redis cache of committed documents.
//!
//! Each key's entry is a hash `{v: <sortable version>, doc: <BSON>}`, or
//! `{v, gone: 1}` after a hard delete. Entries are only ever replaced by a
//! strictly newer version, through one atomic compare-and-set script, so a
//! slow writer (the daemon retrying, a read-through on a miss) can never move
//! a key backwards.

use mongodb::bson::{self, Document};
use redis::aio::ConnectionManager;

use crate::error::{Error, Result};
use crate::protocol::Version;

/// Sets the entry if `ARGV[1]` is newer than the stored version. Byte-wise
/// comparison (not `<`, which follows the server's locale).
const CAS_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if cur then
  if cur == ARGV[1] then return 0 end
  local newer = false
  for i = 1, math.max(#cur, #ARGV[1]) do
    local a, b = string.byte(ARGV[1], i) or 0, string.byte(cur, i) or 0
    if a ~= b then newer = a > b; break end
  end
  if not newer then return 0 end
end
redis.call('DEL', KEYS[1])
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'gone', '1')
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'doc', ARGV[2])
end
return 1
"#;

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    /// Version of the cached state.
    pub version: Version,
    /// The committed document, or `None` after a hard delete.
    pub doc: Option<Document>,
}

/// The cache, on a shared connection.
#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    cas: redis::Script,
}

impl Cache {
    /// Wraps a connection.
    pub fn new(conn: ConnectionManager) -> Cache {
        Cache {
            conn,
            cas: redis::Script::new(CAS_SCRIPT),
        }
    }

    /// Stores `doc` (or a tombstone) at `version` unless the cache already
    /// holds that version or a newer one. Returns whether it stored.
    pub async fn put_if_newer(
        &self,
        key: &str,
        version: Version,
        doc: Option<&Document>,
    ) -> Result<bool> {
        let bytes = match doc {
            Some(d) => bson::to_vec(d).map_err(|e| Error::Encode(e.to_string()))?,
            None => Vec::new(),
        };
        let mut conn = self.conn.clone();
        let stored: i64 = self
            .cas
            .key(key)
            .arg(version.to_sortable())
            .arg(bytes)
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }

    /// Reads a key's entry; `None` on a miss.
    pub async fn get(&self, key: &str) -> Result<Option<Cached>> {
        let mut conn = self.conn.clone();
        let (v, doc, gone): (Option<String>, Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("doc")
            .arg("gone")
            .query_async(&mut conn)
            .await?;
        let Some(v) = v else { return Ok(None) };
        let Some(version) = Version::from_sortable(&v) else {
            tracing::warn!(
                key,
                "cache entry has an unreadable version; treating it as a miss"
            );
            return Ok(None);
        };
        let doc = match (doc, gone) {
            (Some(bytes), _) => Some(
                Document::from_reader(bytes.as_slice())
                    .map_err(|e| Error::Encode(e.to_string()))?,
            ),
            (None, Some(_)) => None,
            (None, None) => return Ok(None),
        };
        Ok(Some(Cached { version, doc }))
    }
}
