-- A writer's acks, in one call per ack stream, where they cannot ride in the
-- round's cache script (cache_cas_many.lua): on Redis Cluster, where ack
-- streams live in other slots, and when replicas must confirm the cache
-- first. Also the acks of dead letters.
-- KEYS[1] the ack stream <ns>:ack:<client>; ARGV[1] its MAXLEN (approximate);
-- ARGV[2] its TTL in seconds; then per ack: c, and c field and value
-- arguments.
-- Adds every ack and renews the stream's expiry. A key that holds another
-- type is another program's value: the first XADD fails before anything is
-- written, and the key is left exactly as it is (no ack, and no expiry
-- either); the call fails with that WRONGTYPE error, so the daemon skips
-- these acks and counts them. (No TYPE call: the daemon's ACL need not
-- allow it.)
local at = 3
while at <= #ARGV do
  local c = tonumber(ARGV[at])
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, at + 1, at + c))
  if type(added) == 'table' and added.err then return redis.error_reply(added.err) end
  at = at + 1 + c
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
