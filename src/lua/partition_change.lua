-- `writ partitions --set`'s last step (src/partition_count/change.rs): records a
-- new partition count in partition 0's meta hash, only over the value the
-- operator's command read, and only while partition 0 holds no unapplied write.
-- KEYS[1] <ns>:{p0}:meta; KEYS[2] <ns>:{p0}:in. ARGV[1] the count read ('' for
-- none); ARGV[2] the new count; ARGV[3] the run's epoch; ARGV[4] the partitions
-- that hold copies of it; ARGV[5] the daemons' group; ARGV[6] '1' to check that
-- partition 0 is drained ('0' when the count stays the same); ARGV[7] 'daemon'.
-- Returns 0 when recorded, 1 when the count is no longer the one read or a
-- later run took an epoch (`partitions_epochs` is past ARGV[3]: that run may
-- have written its copies over this one's), 2 when partition 0 holds an
-- unapplied write. The other partitions' copies are written
-- before this runs, so this one call is where the change takes effect: a writer
-- on the old count that was admitted to partition 0 before it is seen here.
-- "Unapplied" is the one definition of src/lua/admit.lua (pending entries plus
-- the entries after the group's last-delivered-id), asked here only whether it
-- is 0, which needs no count: no entry is pending, and none is after the
-- last-delivered-id (or the stream has entries and no group yet).
local cur = redis.call('HGET', KEYS[1], 'partitions')
if cur ~= (ARGV[1] ~= '' and ARGV[1] or false) then return 1 end
if tonumber(redis.call('HGET', KEYS[1], 'partitions_epochs')) ~= tonumber(ARGV[3]) then return 1 end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  local s = redis.call('XINFO', 'STREAM', KEYS[2])
  local info = {}
  for i = 1, #s, 2 do info[s[i]] = s[i + 1] end
  if info['length'] > 0 then
    local drained = false
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if f['name'] == ARGV[5] then
        drained = f['pending'] == 0 and (f['last-delivered-id'] == info['last-generated-id'] or
          #redis.call('XRANGE', KEYS[2], '(' .. f['last-delivered-id'], '+', 'COUNT', 1) == 0)
      end
    end
    if not drained then return 2 end
  end
end
redis.call('HSET', KEYS[1], 'partitions', ARGV[2], 'partitions_by', ARGV[7], 'partitions_upto', ARGV[4])
-- A new count, set by the operator: its epoch, and it stands before any
-- daemon's (a running daemon that finds it stops; src/partition_count/claim.rs).
-- The same count (daemons may be running) keeps the epoch they started under.
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'partitions_epoch', ARGV[3], 'partitions_since', '0')
end
return 0
