-- Mending a partition's backlog bookkeeping outside any long script
-- (src/heal.rs, docs/protocol.md §2a). The meta hash's `at`/`read` pair lets
-- the backlog be counted in O(1) while `at` is the group's last-delivered-id;
-- when it is not (an XGROUP SETID by hand, the meta hash lost, a write-back
-- refused at maxmemory), counts stop after a bound. The owning daemon then
-- counts the entries between a pair it knows and the group, page by page
-- with XRANGE ... COUNT from outside, and has this script write the pair.
--
-- `read` as of an id is the stream's entries-added count less the entries
-- after that id. Two facts give it without counting the whole stream in a
-- script: as of the stream's last-generated-id it is entries-added (nothing
-- is after it), and between two ids it changes by the entries between them:
-- read(b) = read(a) + |(a, b]| for a < b, as long as none of those entries
-- was removed since they were counted.
--
-- KEYS[1] the partition stream, KEYS[2] its meta hash. ARGV[1] the group,
-- ARGV[2] the mode:
--   'look': {last-delivered-id ('' without a group), entries-added,
--     last-generated-id, removed}, as of one moment; `removed` is
--     entries-added - length (entries XDELed or trimmed, ever).
--   'count': below.
--   'mend': ARGV[3] an id `at`, ARGV[4] `read` as of it, ARGV[5] `removed`
--     as of the look the caller's counts started from, ARGV[6] the lowest id
--     of an entry the caller counted ('' none). Writes `at`/`read` for the
--     group's last-delivered-id, counting the entries between `at` and it
--     (at most 10,000 and about 2 MiB of them), and returns
--     {'mended', last-delivered-id, undelivered}. Or, writing nothing:
--     {'fresh'} (the pair already agrees with the group, or the group has
--     delivered nothing: counted in O(1) anyway), {'moved', last-delivered-id}
--     (the group is further from `at` than this script counts: count up to
--     it and call again), {'removed'} (entries the caller may have counted
--     were removed since: start over), {'gone'} (no stream or no group),
--     {'refused', error} (Redis refused the write, at its maxmemory).
local function stream_info()
  local s = redis.call('XINFO', 'STREAM', KEYS[1])
  local info = {}
  for i = 1, #s, 2 do info[s[i]] = s[i + 1] end
  return info
end
local function group_last()
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[1] then return f['last-delivered-id'] end
  end
  return nil
end

if ARGV[2] == 'look' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'', 0, '0-0', 0} end
  local info = stream_info()
  return {group_last() or '', info['entries-added'], info['last-generated-id'],
    info['entries-added'] - info['length']}
end

-- Ids compared exactly, as decimal strings (Lua's numbers are doubles):
-- the shorter number is the smaller, else the first to differ decides.
local function less(x, y)
  if #x ~= #y then return #x < #y end
  return x < y
end
local function below(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  return less(am, bm) or (am == bm and less(as, bs))
end
-- Entries in (lo, hi]: at most `cap` counted and about `max_bytes` of their
-- values read, in XRANGE steps sized by the largest entry seen; whether that
-- is all of them; the last and first ids counted ('' none).
local function count_range(lo, hi, cap, max_bytes)
  local n, used, largest, step = 0, 0, 1, math.min(cap, 4)
  local from, lastid, firstid = '(' .. lo, '', ''
  while step > 0 do
    local r = redis.call('XRANGE', KEYS[1], from, hi, 'COUNT', step)
    n = n + #r
    if #r > 0 then
      lastid = r[#r][1]
      if firstid == '' then firstid = r[1][1] end
    end
    if #r < step then return n, true, lastid, firstid end
    if n >= cap then return n, false, lastid, firstid end
    for _, e in ipairs(r) do
      local b, f = 0, e[2]
      for j = 2, #f, 2 do b = b + #f[j] end
      used = used + b
      if b > largest then largest = b end
    end
    if used >= max_bytes then return n, false, lastid, firstid end
    from = '(' .. lastid
    step = math.min(cap - n, math.max(1, math.floor((max_bytes - used) / largest)))
  end
  return n, false, lastid, firstid
end

if ARGV[2] == 'count' then
  -- One short step of the caller's count: the entries in (ARGV[3], ARGV[4]],
  -- at most 2,000 of them and about 1 MiB of their values read (a few ms of
  -- Redis; no entry is sent back). Returns {count, the last id counted (''
  -- none), 1 if that is all of the range else 0, the first id counted}.
  local n, all, lastid, firstid = count_range(ARGV[3], ARGV[4], 2000, 1048576)
  return {n, lastid, all and 1 or 0, firstid}
end

if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local last = group_last()
if not last then return {'gone'} end
local info = stream_info()
if info['entries-added'] - info['length'] ~= tonumber(ARGV[5]) then
  -- Entries went since the look (retention, an XDEL). The caller's counts
  -- hold only if none of the entries it counted went: trimming removes the
  -- oldest entries (all of them below the first one left), and an XDEL
  -- leaves the newest id it removed behind.
  local lowest = ARGV[6]
  if lowest ~= '' then
    local first = info['first-entry']
    if not first or below(lowest, first[1]) then return {'removed'} end
    local deleted = info['max-deleted-entry-id']
    if deleted ~= '0-0' and not below(deleted, lowest) then return {'removed'} end
  end
end
if last == '0-0' then return {'fresh'} end
local meta = redis.call('HMGET', KEYS[2], 'at', 'read')
if meta[1] == last and meta[2] and string.match(meta[2], '^%d+$') then return {'fresh'} end
local at, read = ARGV[3], tonumber(ARGV[4])
local known
if at == last then
  known = read
elseif below(at, last) then
  local n, all = count_range(at, last, 10000, 2097152)
  if all then known = read + n end
else
  local n, all = count_range(last, at, 10000, 2097152)
  if all then known = read - n end
end
if not known then return {'moved', last} end
if known < 0 or known > info['entries-added'] then return {'removed'} end
local w = redis.pcall('HSET', KEYS[2], 'at', last, 'read', known)
if type(w) == 'table' and w['err'] then return {'refused', w['err']} end
return {'mended', last, info['entries-added'] - known}
