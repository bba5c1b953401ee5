-- Cache compare-and-set of a whole round in one call (docs/protocol.md,
-- "Reading"): the same rule as cache_cas.lua, applied to each entry; on one
-- server with no replicas to confirm, the round's acks and XACK too.
-- KEYS[1] fence key; KEYS[2..n+1] cache entries (all in the partition's slot).
-- ARGV[1] token; ARGV[2] n, the entry count; then per entry i (1-based):
-- ARGV[2i+1] sortable version, ARGV[2i+2] BSON document, or '' for a hard
-- delete.
-- Returns one outcome per entry: 1 stored, 0 not newer, 2 stored over a value
-- that was not a hash (as in cache_cas.lua); every entry -1 (at least one -1)
-- when the token is not the current one: nothing is written then, and no ack
-- is added.
--
-- The acks (optional; src/ack/send.rs sends them itself on Redis Cluster,
-- where ack streams live in other slots, and after the WAIT when replicas
-- must confirm the cache): KEYS[n+2] the partition stream, KEYS[n+3..] the
-- writers' ack streams. After the entries: ARGV group, ack stream MAXLEN
-- (approximate), ack stream TTL in seconds, m (acks), then per ack the index
-- s of its stream (KEYS[n+2+s]), c, and c field and value arguments; then k
-- and the k entry ids to XACK. Run only once every entry is set, so a writer
-- never sees an ack before the cache holds its write. An ack stream key that
-- holds another type is skipped (acks are at-least-once; that writer's wait
-- times out); the answer then has one more element, the acks skipped.
local out = {}
local n = tonumber(ARGV[2])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  for i = 1, math.max(n, 1) do out[i] = -1 end
  return out
end
for i = 1, n do
  local key, v, doc = KEYS[i + 1], ARGV[2 * i + 1], ARGV[2 * i + 2]
  local got, stored = redis.pcall('HMGET', key, 'v', 'gone'), 1
  if got.err then
    if string.sub(got.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(got.err) end
    got, stored = {false, false}, 2
  end
  local cur, gone = got[1], got[2]
  local newer = true
  if cur then
    newer = false
    for j = 1, math.max(#cur, #v) do
      local a, b = string.byte(v, j) or 0, string.byte(cur, j) or 0
      if a ~= b then newer = a > b; break end
    end
  end
  if newer then
    -- In place unless a field must go, as in cache_cas.lua.
    if stored == 2 or doc == '' or gone then redis.call('DEL', key) end
    if doc == '' then
      redis.call('HSET', key, 'v', v, 'gone', '1')
    else
      redis.call('HSET', key, 'v', v, 'doc', doc)
    end
    out[i] = stored
  else
    out[i] = 0
  end
end
local at = 2 * n + 3
if ARGV[at] == nil then return out end
local group, maxlen, ttl, m = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
at = at + 4
local skipped, expire = 0, {}
for _ = 1, m do
  local stream, c = KEYS[n + 2 + tonumber(ARGV[at])], tonumber(ARGV[at + 1])
  local added = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, at + 2, at + 1 + c))
  if type(added) == 'table' and added.err then
    if string.sub(added.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(added.err) end
    skipped = skipped + 1
  else
    expire[stream] = true
  end
  at = at + 2 + c
end
for stream in pairs(expire) do redis.call('EXPIRE', stream, ttl) end
local k = tonumber(ARGV[at])
-- In chunks: Lua's unpack refuses about 8000 values.
for j = at + 1, at + k, 1000 do
  redis.call('XACK', KEYS[n + 2], group, unpack(ARGV, j, math.min(j + 999, at + k)))
end
out[n + 1] = skipped
return out
