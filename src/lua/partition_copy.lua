-- A copy of the namespace's partition count in one partition's meta hash
-- (src/partition_count/copies.rs), where the admission script checks writers'
-- counts. KEYS[1] <ns>:{p<N>}:meta. Fields `partitions` and `partitions_epoch`
-- (the epoch of the change run that wrote it; absent: 0).
-- ARGV[1] 'write': writes count ARGV[2] with epoch ARGV[3], unless the copy's
--   epoch is above ARGV[4]. A `writ partitions --set` run passes its own epoch
--   minus one (it never overwrites a later run's copy); a daemon tenure passes
--   partition 0's epoch (it never overwrites the copy of a run in progress).
--   Returns {1} when written, else {0, the copy's count, its epoch}.
-- ARGV[1] 'back': where the copy still carries epoch ARGV[2] (the run that
--   failed), puts back count ARGV[3] with epoch ARGV[4] (what partition 0
--   records), or, for ARGV[3] '', no count ('' reads as none: the documented ACL
--   users have no HDEL). Returns {1} when it did, else {0}.
local have = redis.call('HMGET', KEYS[1], 'partitions', 'partitions_epoch')
local epoch = tonumber(have[2]) or 0
if ARGV[1] == 'write' then
  if epoch > tonumber(ARGV[4]) then return {0, have[1] or '', epoch} end
  redis.call('HSET', KEYS[1], 'partitions', ARGV[2], 'partitions_epoch', ARGV[3])
  return {1}
end
if epoch ~= tonumber(ARGV[2]) then return {0} end
redis.call('HSET', KEYS[1], 'partitions', ARGV[3], 'partitions_epoch', ARGV[4])
return {1}
