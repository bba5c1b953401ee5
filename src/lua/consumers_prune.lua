-- Removes the consumers of a partition's group that hold no pending entry,
-- except the caller's own. A daemon's consumer is named after it (by default
-- hostname-pid), so every restart or redeploy left one more consumer in every
-- partition's group, for ever. The new owner of a partition runs this once
-- its claim has moved every earlier consumer's pending entries to itself.
-- A consumer with pending entries is never removed (XGROUP DELCONSUMER would
-- drop them from the group's pending list): the check and the removal are one
-- script, so no read can add one in between.
-- KEYS[1] the partition stream, KEYS[2] its fencing counter; ARGV[1] the
-- group; ARGV[2] the caller's consumer name; ARGV[3] the most consumers to
-- remove in this call; ARGV[4] the caller's fencing token (a tenure that
-- lost the partition removes nothing: the new owner's consumer is its own).
-- Returns {removed, left}: consumers removed, and consumers with no pending
-- entry left for a later call (past ARGV[3]).
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return {0, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local removed, left, most = 0, 0, tonumber(ARGV[3])
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 then
    if removed < most then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
      removed = removed + 1
    else
      left = left + 1
    end
  end
end
return {removed, left}
