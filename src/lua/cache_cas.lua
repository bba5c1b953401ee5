-- Cache compare-and-set (docs/protocol.md, "Reading").
-- KEYS[1] cache entry; ARGV[1] sortable version; ARGV[2] BSON document, or '' for a hard delete.
-- Optional fence: KEYS[2] fence key, ARGV[3] token (daemons only).
-- ARGV[4] = 'refresh' (writ rebuild-cache): the same version is replaced too,
-- with MongoDB's document (another program may have changed it there).
-- Returns 1 stored, 0 not newer, -1 fenced, 2 stored over a value that was not
-- a hash (another program's key in writ's namespace: the cache is a copy of
-- MongoDB, so the committed document replaces it).
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
local stored = 1
local got = redis.pcall('HMGET', KEYS[1], 'v', 'gone')
if got.err then
  if string.sub(got.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(got.err) end
  got, stored = {false, false}, 2
end
local cur, gone = got[1], got[2]
if cur and not (cur == ARGV[1] and ARGV[4] == 'refresh') then
  if cur == ARGV[1] then return 0 end
  local newer = false
  for i = 1, math.max(#cur, #ARGV[1]) do
    local a, b = string.byte(ARGV[1], i) or 0, string.byte(cur, i) or 0
    if a ~= b then newer = a > b; break end
  end
  if not newer then return 0 end
end
-- A document over a document is written in place. Deleting the key first
-- would leave it absent half-way through the script, and while its slot
-- moves to another Redis Cluster node the writes after that are refused
-- ("non local key") with the delete done. The key is deleted first only
-- where a field must go: a value that is not a hash, a hard delete, and a
-- document over a hard delete (all rare).
if stored == 2 or ARGV[2] == '' or gone then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'gone', '1')
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'doc', ARGV[2])
end
return stored
