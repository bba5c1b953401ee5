-- Cache compare-and-set (docs/protocol.md, "Reading").
-- KEYS[1] cache entry; ARGV[1] sortable version; ARGV[2] BSON document, or '' for a hard delete.
-- Optional fence: KEYS[2] fence key, ARGV[3] token (daemons only).
-- Returns 1 stored, 0 not newer, -1 fenced, 2 stored over a value that was not
-- a hash (another program's key in writ's namespace: the cache is a copy of
-- MongoDB, so the committed document replaces it).
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
local stored = 1
local cur = redis.pcall('HGET', KEYS[1], 'v')
if type(cur) == 'table' and cur.err then
  if string.sub(cur.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(cur.err) end
  cur, stored = false, 2
end
if cur then
  if cur == ARGV[1] then return 0 end
  local newer = false
  for i = 1, math.max(#cur, #ARGV[1]) do
    local a, b = string.byte(ARGV[1], i) or 0, string.byte(cur, i) or 0
    if a ~= b then newer = a > b; break end
  end
  if not newer then return 0 end
end
-- In place: a DEL first would leave the key absent mid-script, and while its
-- slot migrates to another Redis Cluster node, the writes after that are
-- refused ("non local key") with the DEL done. Only a value that is not a
-- hash is deleted first.
if stored == 2 then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'gone', '1')
  redis.call('HDEL', KEYS[1], 'doc')
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'doc', ARGV[2])
  redis.call('HDEL', KEYS[1], 'gone')
end
return stored
