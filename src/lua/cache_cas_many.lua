-- Cache compare-and-set of a whole round in one call (docs/protocol.md,
-- "Reading"): the same rule as cache_cas.lua, applied to each entry.
-- KEYS[1] fence key; KEYS[2..n+1] cache entries (all in the partition's slot).
-- ARGV[1] token; then per entry i (1-based): ARGV[2i] sortable version,
-- ARGV[2i+1] BSON document, or '' for a hard delete.
-- Returns one outcome per entry: 1 stored, 0 not newer, 2 stored over a value
-- that was not a hash (as in cache_cas.lua); every entry -1 when the token is
-- not the current one (nothing is written then).
local out = {}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  for i = 2, #KEYS do out[i - 1] = -1 end
  return out
end
for i = 2, #KEYS do
  local key, v, doc = KEYS[i], ARGV[2 * (i - 1)], ARGV[2 * (i - 1) + 1]
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
    out[i - 1] = stored
  else
    out[i - 1] = 0
  end
end
return out
