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
-- last-delivered-id), and returns how many entries went. No stream, or no
-- group: trims nothing (0).
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
return redis.call('XTRIM', KEYS[1], 'MINID', point)
