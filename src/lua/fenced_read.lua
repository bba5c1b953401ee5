-- The daemon's fenced group read (src/source/mod.rs).
-- KEYS: stream, fence, partition meta. ARGV: token, group, consumer, count,
-- mode, cursor, bytes, size hint. Mode `claim`: XAUTOCLAIM from `cursor`
-- (see below); mode `read`: XREADGROUP `>`, returning {entries, last id,
-- delivered before, more, full}: `delivered before` is the group's
-- last-delivered-id before this read, so the reader can tell that an earlier
-- read delivered entries whose reply it never got.
--
-- Both take entries in steps: first as many as fit in the bytes (ARGV[7])
-- if they are as large as the hint (ARGV[8], the largest entry of the
-- reader's last read; without one, 4), then as many as fit in the bytes left
-- if they are as large as the largest seen so far, up to `count`.
-- So a read of small entries is one or two calls, and a read of large ones
-- never moves many more than fit through the script (which holds Redis while
-- it runs). Both return entries only while the bytes of those before stay
-- under ARGV[7] (the values' lengths; so at least one entry, and at most one
-- past it), even when entries grew within a step. The entries not returned
-- stay pending on this consumer; `more` (a read) or `next` (a claim) is the
-- first of them, where the reader's next claim starts.
-- Refused with a FENCED error unless ARGV[1] is the partition's current
-- fencing token.
--
-- A read also keeps the meta hash's `at`/`read` pair (the group's
-- last-delivered-id and the stream's entries-added count as of that entry),
-- from which src/lua/admit.lua counts the undelivered backlog in O(1). A
-- pair left behind the group is carried over to it before the read (below).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('FENCED the partition lease moved to another daemon')
end
local budget = tonumber(ARGV[7]) or math.huge
local want = tonumber(ARGV[4])
local function size(e)
  local n = 0
  if e and e[2] then
    local f = e[2]
    for j = 2, #f, 2 do n = n + #f[j] end
  end
  return n
end
-- ARGV[8]: the largest entry of the reader's last read, in bytes (0: none
-- yet, as at the start of a tenure).
local hint = tonumber(ARGV[8]) or 0
-- Entries from `step(n)` (up to n entries, and whether more may follow),
-- called while fewer than `want` were taken and their bytes are under the
-- budget, each time for as many as fit if they are as large as the largest
-- seen so far (the first time by the hint; with none, 4). Also says whether
-- it stopped on the budget with more perhaps to come.
local function gather(step)
  local out, used, largest = {}, 0, math.max(hint, 1)
  local n = math.min(want, 4)
  if hint > 0 then n = math.min(want, math.max(1, math.floor(budget / largest))) end
  while n > 0 do
    local got, more = step(n)
    for _, e in ipairs(got) do
      out[#out + 1] = e
      local b = size(e)
      used = used + b
      if b > largest then largest = b end
    end
    if not more or #out >= want then return out, false end
    if used >= budget then return out, true end
    n = math.min(want - #out, math.max(1, math.floor((budget - used) / largest)))
  end
  return out, false
end
-- How many of `entries` to return (a deleted entry of a claim, `false`,
-- counts nothing and never ends the list).
local function fit(entries)
  local used = 0
  for i, e in ipairs(entries) do
    if e and e[2] then
      if used >= budget then return i - 1 end
      used = used + size(e)
    end
  end
  return #entries
end
local function cut(entries, n)
  for i = #entries, n + 1, -1 do entries[i] = nil end
end
local function delivered()
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[2] then return f['last-delivered-id'] end
  end
  return '0-0'
end
if ARGV[5] == 'claim' then
  -- XAUTOCLAIM's reply {next, entries, deleted}, and once the pending list
  -- is done (next 0-0) the group's last-delivered-id: what the reader has
  -- received so far, for its next read's gap check.
  local cursor, deleted = ARGV[6], {}
  local entries = gather(function(n)
    local c = redis.call('XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], 0, cursor, 'COUNT', n)
    cursor = c[1]
    for _, id in ipairs(c[3] or {}) do deleted[#deleted + 1] = id end
    return c[2], cursor ~= '0-0'
  end)
  local n = fit(entries)
  if n < #entries then
    cursor = entries[n + 1][1]
    cut(entries, n)
  end
  local c = {cursor, entries, deleted}
  if cursor == '0-0' then c[4] = delivered() end
  return c
end
local before = delivered()
local meta = redis.call('HMGET', KEYS[3], 'at', 'read')
local function added()
  local s = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #s, 2 do if s[i] == 'entries-added' then return s[i + 1] end end
  return 0
end
-- Nothing after XREADGROUP may fail: the entries it delivers are pending on
-- this consumer at once, and a failed script would not return them. So an
-- unreadable `read` (written by someone else) is recounted, never added to.
local read = tonumber(meta[2])
-- When the meta's pair is for another id than the group's (a few reads
-- behind: a write-back refused at maxmemory; an XGROUP SETID), `read` as of
-- `before`, carried over from it before reading: read(before) = read(at) +
-- |(at, before]| (or - |(before, at]|), counted with XRANGE ... COUNT, at most
-- 1,024 entries and about 4 MiB of them. Only when none of the entries
-- above the lower id was ever removed (an XDEL leaves max-deleted-entry-id;
-- trimming removes only entries below the first one left): then the next
-- read mends the pair, however many entries follow it.
local function less(x, y)
  if #x ~= #y then return #x < #y end
  return x < y
end
local function below(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  return less(am, bm) or (am == bm and less(as, bs))
end
local function count_range(lo, hi, cap, max_bytes)
  local n, used, largest, step = 0, 0, 1, math.min(cap, 4)
  local from = '(' .. lo
  while step > 0 do
    local r = redis.call('XRANGE', KEYS[1], from, hi, 'COUNT', step)
    n = n + #r
    if #r < step then return n, true end
    if n >= cap then return n, false end
    for _, e in ipairs(r) do
      local b = size(e)
      used = used + b
      if b > largest then largest = b end
    end
    if used >= max_bytes then return n, false end
    from = '(' .. r[#r][1]
    step = math.min(cap - n, math.max(1, math.floor((max_bytes - used) / largest)))
  end
  return n, false
end
local function carried()
  local at = meta[1]
  if not (at and meta[2] and string.match(at, '^%d+%-%d+$') and string.match(meta[2], '^%d+$')) then
    return nil
  end
  local s = redis.call('XINFO', 'STREAM', KEYS[1])
  local info = {}
  for i = 1, #s, 2 do info[s[i]] = s[i + 1] end
  local low = at
  if below(before, at) then low = before end
  local first = info['first-entry']
  if not first or below(low, first[1]) then return nil end
  local deleted = info['max-deleted-entry-id']
  if not deleted or below(low, deleted) then return nil end
  local n, all
  if below(at, before) then
    n, all = count_range(at, before, 1024, 4194304)
  else
    n, all = count_range(before, at, 1024, 4194304)
    n = -n
  end
  if not all then return nil end
  local known = tonumber(meta[2]) + n
  if known < 0 or known > info['entries-added'] then return nil end
  return known
end
local known
if before ~= '0-0' and meta[1] ~= before then
  local ok, k = pcall(carried)
  if ok then known = k end
end
local entries, full = gather(function(n)
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', n, 'STREAMS', KEYS[1], '>')
  if not r then return {}, false end
  return r[1][2], #r[1][2] == n
end)
if #entries > 0 then
  local at = entries[#entries][1]
  if meta[1] == before and read then
    redis.call('HSET', KEYS[3], 'at', at, 'read', read + #entries)
  elseif before == '0-0' then
    -- The group had delivered nothing (made from the start, as at a first
    -- start behind writers): these are the stream's first entries, so the
    -- rest of the stream is after them, counted without reading it.
    redis.call('HSET', KEYS[3], 'at', at, 'read', added() - (redis.call('XLEN', KEYS[1]) - #entries))
  elseif known then
    -- The entries read are those in (before, at].
    redis.call('HSET', KEYS[3], 'at', at, 'read', known + #entries)
  else
    -- Counted in a bounded read: under a large backlog (a group moved back
    -- by hand, `XGROUP SETID`) reading the rest of the stream into Lua would
    -- hold Redis for seconds, in a script that cannot be killed once
    -- XREADGROUP wrote. Past the bound the meta stays as it was, counts say
    -- they are lower bounds, and the owning daemon's housekeeping counts
    -- outside any script and mends it (src/heal.rs).
    local after = redis.call('XRANGE', KEYS[1], '(' .. at, '+', 'COUNT', 128)
    if #after < 128 then
      redis.call('HSET', KEYS[3], 'at', at, 'read', added() - #after)
    end
  end
  local n, more = fit(entries), ''
  if n < #entries then
    more = entries[n + 1][1]
    cut(entries, n)
  end
  -- `full`: the bytes ran out before the entries did, so the stream may
  -- hold more: the reader reads again instead of waiting for new entries.
  return {entries, '', before, more, full and '1' or ''}
end
if meta[1] ~= before then
  redis.call('HSET', KEYS[3], 'at', before, 'read', added())
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then return {{}, last[1][1], before} end
return {{}, '0-0', before}
