-- The namespace's partition count (docs/protocol.md §1; src/partition_count/).
-- KEYS[1] <ns>:{p0}:meta; ARGV[1] the caller's count; ARGV[2] 'daemon' or 'client';
-- ARGV[3] (daemons only) when the daemon started, unix ms.
-- Records the count, who recorded it and, for a daemon, since when it runs
-- (field partitions_since), unless one is recorded; a daemon also replaces a
-- count a client recorded (or one that is not a number). Returns {recorded count,
-- the count it replaced or '', the recorder's start or '', the record's epoch or ''}.
local v = redis.call('HMGET', KEYS[1], 'partitions', 'partitions_by', 'partitions_since', 'partitions_epoch')
if tonumber(v[1]) and (v[2] == 'daemon' or ARGV[2] == 'client') then
  return {v[1], '', v[3] or '', v[4] or ''}
end
-- A client's record keeps whatever partitions_since was there: only a daemon's
-- record is ever compared by it, and a daemon replaces a client's record.
-- (No HDEL here or in the other partition-count scripts: the documented ACL
-- users do not have it.)
redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'partitions_by', ARGV[2])
if ARGV[3] then redis.call('HSET', KEYS[1], 'partitions_since', ARGV[3]) end
return {ARGV[1], v[1] or '', ARGV[3] or '', v[4] or ''}
