-- Retention's trim of one partition stream (src/retention.rs), capped by the
-- group's watermark as it stands when the trim runs: the daemon computes its
-- trim point from a status read made moments (or, with a count bound, a
-- page-by-page search) earlier, and between the two the group may have moved
-- back (`XGROUP SETID` by an operator) or the master changed (a failover to
-- a replica that lacks entries the old master had applied, whose clock then
-- gives out ids below the old point). Trimming at the old point could then
-- delete entries not yet applied.
-- KEYS[1] the partition stream. ARGV[1] the consumer group, ARGV[2] the trim
-- point (`ms-seq`): entries below it may go.
-- Trims below the lower of the point and the oldest entry not yet applied
-- (the oldest pending entry, or the first after the group's
-- last-delivered-id), about 10,000 entries at most a call (below), and
-- returns how many entries went. No stream, or no group: trims nothing (0).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then last = f['last-delivered-id'] end
end
if not last then return 0 end
-- Ids compared exactly, as decimal strings (Lua's numbers are doubles):
-- the shorter number is the smaller, else the first to differ decides.
local function less(x, y)
  if #x ~= #y then return #x < #y end
  return x < y
end
local function below(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  return less(am, bm) or (am == bm and less(as, bs))
end
local point = ARGV[2]
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
if tonumber(summary[1]) > 0 and below(summary[2], point) then point = summary[2] end
local nxt = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if nxt[1] and below(nxt[1][1], point) then point = nxt[1][1] end
-- Trimmed in bounded steps. An exact XTRIM MINID removes everything below
-- the point in one command (about 1M entries after retention was held back:
-- 104 ms of Redis on 7.0). `XTRIM MINID ~ point LIMIT 10000` removes whole
-- macro nodes (stream-node-max-entries, 100 by default) whose entries are
-- all below the point, about 10,000 entries at most: approximate trimming
-- never removes an entry at or above the point, so the cap above holds. The
-- next pass goes on where it stopped. What it leaves below the point in the
-- node that holds the point is then trimmed exactly, once at most 1,000
-- entries (and about 1 MiB of them) are left below it, counted with XRANGE
-- ... COUNT: so a short stream still ends exactly at the point. A server set
-- up with nodes of more than 10,000 entries (stream-node-max-entries) lets
-- the approximate trim remove no node within its LIMIT: then, when it
-- removed nothing and more than that is left below the point, the entries
-- the count walked (about 1,000, about 1 MiB) are trimmed exactly, so every
-- call makes progress (helper-107: before, such a stream was never trimmed).
local removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', point, 'LIMIT', 10000)
-- Whether at most `cap` entries (and `max_bytes` of values) are left below
-- the point; if not, the id of the last entry the walk read (below it, the
-- walk's entries: at most about `cap`, about `max_bytes`).
local function few_below(cap, max_bytes)
  local n, used, largest, step, from = 0, 0, 1, 4, '-'
  while true do
    local r = redis.call('XRANGE', KEYS[1], from, '(' .. point, 'COUNT', step)
    n = n + #r
    if #r < step then return true end
    if n > cap then return false, r[#r][1] end
    for _, e in ipairs(r) do
      local b, f = 0, e[2]
      for j = 2, #f, 2 do b = b + #f[j] end
      used = used + b
      if b > largest then largest = b end
    end
    if used >= max_bytes then return false, r[#r][1] end
    from = '(' .. r[#r][1]
    step = math.min(cap + 1 - n, math.max(1, math.floor((max_bytes - used) / largest)))
  end
end
local few, reached = few_below(1000, 1048576)
if few then
  removed = removed + redis.call('XTRIM', KEYS[1], 'MINID', point)
elseif removed == 0 and reached then
  removed = redis.call('XTRIM', KEYS[1], 'MINID', reached)
end
return removed
