-- The namespace's partition count (docs/protocol.md §1; src/partition_count.rs).
-- KEYS[1] <ns>:{p0}:meta; ARGV[1] the caller's count; ARGV[2] 'daemon' or 'client'.
-- Records the count, and who recorded it, unless one is recorded; a daemon also
-- replaces a count a client recorded (or one that is not a number). Returns
-- {recorded count, the count it replaced or ''}.
local v = redis.call('HMGET', KEYS[1], 'partitions', 'partitions_by')
if tonumber(v[1]) and (v[2] == 'daemon' or ARGV[2] == 'client') then return {v[1], ''} end
redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'partitions_by', ARGV[2])
return {ARGV[1], v[1] or ''}
