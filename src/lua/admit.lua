-- Admission: XADD with backpressure, and the one definition of a partition's
-- unapplied backlog (docs/protocol.md §2a).
-- KEYS[1] partition stream <ns>:{p<N>}:in; KEYS[2] partition meta <ns>:{p<N>}:meta;
-- KEYS[3] (optional, batch form only) the caller's admission record
-- <ns>:{p<N>}:adm:<caller>, which makes a call that runs twice add its entries once.
-- ARGV[1] group; ARGV[2] bound; ARGV[3] the caller's partition count
-- (redis.partitions); ARGV[4..] entry fields (or '' and a batch, below).
-- With entry fields: refuses with 'BACKPRESSURE <unapplied>' when the backlog is
-- at or over the bound, else XADDs and returns the entry id. (Most admissions
-- check a kept upper bound in O(1) instead, and a stale count is decided
-- conservatively: room() below.)
-- Either write form refuses with 'PARTITIONS <recorded>', adding nothing, when
-- the partition's meta hash records another partition count (below).
-- With only ARGV[1..2] (the status form): returns {unapplied, pending,
-- undelivered, last-delivered-id, exact}, counting at most min(bound, 1024)
-- undelivered entries (bound 0: 1024) when it has to count them; `exact` is 0
-- when the count stopped there (the backlog is at least what it says), else 1.
--
-- unapplied = pending + undelivered, where undelivered is the number of stream
-- entries after the group's last-delivered-id. It is never taken from XINFO's
-- `lag` (wrong after an AOF reload on Redis 7.0). The daemon's fenced read keeps
-- `read` in the meta hash: the stream's entries-added count as of the entry
-- `at`, the group's last-delivered-id. While `at` is still the last-delivered-id
-- the count is entries-added - read (O(1)); otherwise the entries between `at`
-- and last-delivered-id are counted, when the pair can be carried over
-- (from_pair), or else the entries after last-delivered-id, in bounded steps;
-- an exact count is written back as `at`/`read`, so that the next call is
-- O(1) again while no daemon reads (writers keep writing through a daemon
-- outage). A count that stopped at its bound writes nothing back: the owning
-- daemon's housekeeping counts the rest in short steps and writes `at`/`read`
-- then (src/heal.rs). No count here reads the stream to its end: a script
-- holds Redis while it runs (1M entries took 6.4 s and 512 MB of Lua memory
-- on Redis 7.0), and cannot be killed once it wrote.

-- The most undelivered entries the status form counts, and the most entry
-- bytes (values) any count here reads, about.
local STATUS_CAP = 1024
local COUNT_BYTES = 4194304

-- Entries of KEYS[1] in (lo, hi] (hi '+': to the end): at most `cap` of them
-- counted and about `max_bytes` of their values read, in XRANGE steps sized
-- by the largest entry seen (the first step takes 4). Returns the count and
-- whether it is all of them (false: there are at least that many).
local function count_range(lo, hi, cap, max_bytes)
  local n, used, largest, step = 0, 0, 1, math.min(cap, 4)
  local from = '(' .. lo
  while step > 0 do
    local r = redis.call('XRANGE', KEYS[1], from, hi, 'COUNT', step)
    n = n + #r
    if #r < step then return n, true end
    if n >= cap then return n, false end
    for _, e in ipairs(r) do
      local b, f = 0, e[2]
      for j = 2, #f, 2 do b = b + #f[j] end
      used = used + b
      if b > largest then largest = b end
    end
    if used >= max_bytes then return n, false end
    from = '(' .. r[#r][1]
    step = math.min(cap - n, math.max(1, math.floor((max_bytes - used) / largest)))
  end
  return n, false
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

-- `read` as of the id `to`, from the meta hash's pair (`at`, `read`) for
-- another id, or nil. `read` as of an id is the entries-added count less the
-- entries after it, so read(to) = read(at) + |(at, to]| (or - |(to, at]|):
-- counted as above, at most STATUS_CAP entries. It holds only if none of the
-- entries between them was removed since the pair was written, so only when
-- none above the lower id ever was (an XDEL leaves max-deleted-entry-id;
-- trimming removes only entries below the first one left). So a meta hash
-- a few reads behind the group (a write-back refused at maxmemory, a small
-- XGROUP SETID) is mended by the next count.
local function from_pair(info, at, read, to)
  if not (at and read and string.match(at, '^%d+%-%d+$') and string.match(read, '^%d+$')) then
    return nil
  end
  local low = at
  if below(to, at) then low = to end
  local first = info['first-entry']
  if not first or below(low, first[1]) then return nil end
  local deleted = info['max-deleted-entry-id']
  if not deleted or below(low, deleted) then return nil end
  local ok, n, all
  if below(at, to) then
    ok, n, all = pcall(count_range, at, to, STATUS_CAP, COUNT_BYTES)
  else
    ok, n, all = pcall(count_range, to, at, STATUS_CAP, COUNT_BYTES)
    if ok then n = -n end
  end
  if not (ok and all) then return nil end
  local known = tonumber(read) + n
  if known < 0 or known > info['entries-added'] then return nil end
  return known
end

-- The backlog, counting at most `cap` undelivered entries and about
-- `max_bytes` of them when it has to count them: {unapplied, pending,
-- undelivered, last-delivered-id, exact} (exact 0: at least that many).
local function backlog(cap, max_bytes)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, 0, '', 1} end
  local s = redis.call('XINFO', 'STREAM', KEYS[1])
  local info = {}
  for i = 1, #s, 2 do info[s[i]] = s[i + 1] end
  if not info['entries-added'] then
    -- Redis before 7.0: say so, rather than fail on the arithmetic below.
    error('writ needs Redis 7.0 or newer: this server\'s XINFO STREAM has no entries-added (docs/operations.md, Requirements)')
  end
  local pending, last, found = 0, '', false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[1] then
      pending, last, found = f['pending'], f['last-delivered-id'], true
    end
  end
  local undelivered, exact = 0, 1
  local meta = redis.call('HMGET', KEYS[2], 'at', 'read')
  local read = tonumber(meta[2])
  if found and meta[1] == last and read then
    undelivered = info['entries-added'] - read
    if undelivered < 0 then undelivered = 0 end
    if undelivered > info['length'] then undelivered = info['length'] end
  elseif not found then
    undelivered = info['length']
  elseif last == '0-0' then
    -- Nothing delivered yet (the group was made from the start): every entry
    -- is undelivered, counted without reading them; recorded as below.
    undelivered = info['length']
    redis.pcall('HSET', KEYS[2], 'at', last, 'read', info['entries-added'] - undelivered)
  else
    local known = from_pair(info, meta[1], meta[2], last)
    if known then
      undelivered = info['entries-added'] - known
      if undelivered > info['length'] then undelivered = info['length'] end
    else
      local all
      undelivered, all = count_range(last, '+', cap, max_bytes)
      if all then known = info['entries-added'] - undelivered end
    end
    if known then
      -- Only a shortcut for the next count: if Redis refuses it (at its
      -- maxmemory), the count is still right. pcall, so that the daemon's
      -- status and trimming, which free memory, keep working then.
      redis.pcall('HSET', KEYS[2], 'at', last, 'read', known)
    else
      exact = 0
    end
  end
  return {pending + undelivered, pending, undelivered, last, exact}
end

local bound = tonumber(ARGV[2])
if #ARGV < 4 then
  local cap = STATUS_CAP
  if bound > 0 and bound < cap then cap = bound end
  return backlog(cap, COUNT_BYTES)
end

-- The caller's partition count against the one this partition's meta hash
-- records (field `partitions`): partition 0's is the namespace's record
-- (src/partition_count/), and each daemon tenure and `writ partitions --set`
-- copy it to the others. A writer still running on another count after the
-- count changed would put keys in streams no daemon reads, or one key's writes
-- in two streams: it is refused here, and nothing is added. A partition with
-- no count recorded (or one that is not a positive number) is not checked.
-- Also reads the floor (below).
local floor = nil
local function count_refused()
  local m = redis.call('HMGET', KEYS[2], 'partitions', 'floor')
  local recorded = tonumber(m[1])
  if recorded and recorded > 0 and recorded ~= tonumber(ARGV[3]) then
    return redis.error_reply('PARTITIONS ' .. recorded .. ' this namespace records ' .. recorded ..
      ' partitions and the caller is configured with ' .. ARGV[3] .. '; nothing was added')
  end
  if m[2] and m[2] ~= '' then floor = m[2] end
end

-- XADDs the entry of ARGV[first..last]. `writ partitions --set` records a
-- floor in each partition's meta hash (field `floor`, a stream id): the
-- newest id any of the namespace's streams had given out. A key that the new
-- count moves to this stream must get ids above the versions its earlier
-- stream gave it, whatever this node's clock says (a cluster node whose clock
-- is behind the other's, a clock stepped back): else its next write is taken
-- for an older one and acknowledged stale. So the first entry after the
-- floor gets the explicit id <max(floor's ms + 1, Redis's clock)>-0 (the
-- floor's ms + 1 when TIME is not allowed), which does not depend on which
-- time a script's `*` uses; if the stream is already at or past that id,
-- `*` is above it, and so above the floor. The floor is then cleared ('':
-- the writers' ACL has no HDEL); every later id is above this entry's.
local function xadd(first, last)
  if floor then
    local ms = string.match(floor, '^(%d+)-%d+$')
    local id
    if ms then
      local at = tonumber(ms) + 1
      local ok, t = pcall(redis.call, 'TIME')
      if ok then
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        if now > at then at = now end
      end
      local added
      added, id = pcall(redis.call, 'XADD', KEYS[1], string.format('%d', at) .. '-0',
        unpack(ARGV, first, last))
      if not added then id = nil end
    end
    if not id then id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, last)) end
    -- Only once an entry is in: a script that fails is not rolled back.
    floor = nil
    redis.call('HSET', KEYS[2], 'floor', '')
    return id
  end
  return redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, last))
end

-- How many more entries may be admitted now. Admission checks an upper bound
-- first: `est` (the backlog as an admission last counted it) plus `since`
-- (writes admitted after it). Only admissions grow the backlog, so while
-- est + since is under the bound, writes are admitted in O(1); at the bound
-- the backlog is counted again and `est`/`since` start over. A meta value
-- that is not a whole number (someone else wrote it: "1.5", "1e3" and "0x10"
-- would pass tonumber, and fail HINCRBY after the XADDs) counts as absent.
--
-- The recount is O(1) while the meta hash's pair agrees with the group;
-- otherwise it counts at most 1,024 undelivered entries (and about 4 MiB),
-- never `bound` of them (100,000 by default: 0.4 s of Redis per refused
-- write, every write, while the pair stayed stale). A count that stopped
-- there is a lower bound, and the decision is then:
--   * the lower bound is at or over the bound: refused (exact: it is over);
--   * est + since, an upper bound kept from an earlier count, is at the
--     bound: refused with BACKPRESSURE est+since, without knowing the
--     backlog is that large (conservative: until the owning daemon mends the
--     pair, within a housekeeping pass or a few, src/heal.rs, and the next
--     recount is exact; with no daemon reading, nothing shrinks the backlog,
--     and est + since is close to it);
--   * no kept upper bound (the meta hash lost it): admitted, and the lower
--     bound kept as `est`: at most bound - est more writes are admitted in
--     O(1) before the next recount, which refuses them if it is still not
--     exact. So with a lost meta hash the backlog can pass the bound by at
--     most what it held beyond 1,024 entries, once.
local function whole(v)
  if v and string.match(v, '^%d+$') then return tonumber(v) end
  return nil
end
local function room()
  local m = redis.call('HMGET', KEYS[2], 'est', 'since')
  local est, since = whole(m[1]), 0
  if m[2] then since = whole(m[2]) end
  if est and since and est + since < bound then
    return bound - est - since, nil
  end
  local cap = STATUS_CAP
  if bound < cap then cap = bound end
  local b = backlog(cap, COUNT_BYTES)
  if b[5] == 0 and b[1] < bound and est and since then
    return 0, est + since
  end
  redis.call('HSET', KEYS[2], 'est', b[1], 'since', 0)
  if b[1] >= bound then return 0, b[1] end
  return bound - b[1], nil
end

if ARGV[4] ~= '' then
  -- One entry: ARGV[4..] are its fields.
  local refused = count_refused()
  if refused then return refused end
  local free, counted = room()
  if free < 1 then return redis.error_reply('BACKPRESSURE ' .. counted) end
  redis.call('HINCRBY', KEYS[2], 'since', 1)
  return xadd(4, #ARGV)
end

-- A batch (ARGV[4] is ''): ARGV[5] the entry count n, then per entry its
-- argument count c and c arguments (field, value, ...). The clients send
-- the submits that queued while their previous call to the partition was in
-- flight, so one script run, one meta update and one AOF transaction carry
-- many XADDs. Returns the ids of the admitted entries in order; when the
-- bound stopped it early, one more element: the backlog, as an integer.
-- Entries are admitted while room() finds room; once the kept upper bound is
-- used up, room() counts the backlog again, so an entry is refused only on a
-- count at the bound, never on the estimate (except while the meta hash's
-- pair is stale and the recount stops at its cap: room() above).
--
-- With KEYS[3], ARGV[6] is the call's number, ARGV[7] a window and ARGV[8] a
-- deadline (below), and the entries start at ARGV[9]. A client library may
-- send a call again when its reply was lost (ioredis at a reconnect, redis-rs
-- in cluster mode after a timeout); without the record the entries would be added twice, and a
-- write of the key by another process in between would be overwritten by
-- the copy. A caller numbers its calls to a partition 1, 2, 3, ... in the
-- order it sends them (one record per caller and partition). The record
-- keeps `last`, the highest number that ran, and the replies of recent calls
-- in `window` slots (field r<number mod window>: "<number>:<reply>"), so it
-- never holds more than window + 1 fields. A call that ran already gets its
-- reply again and adds nothing; it still renews the record's expiry, a write,
-- so that a WAIT after it on its connection also covers the first run. A
-- number at or under `last` whose reply is not kept is refused with
-- DUPLICATE and adds nothing: it ran before and its reply was overwritten, or
-- a later call overtook it (adding it now would put it after that call). The
-- record expires an hour after the caller's last call.
--
-- ARGV[8] (with KEYS[3]) is the call's deadline, in Redis's clock (TIME, unix
-- ms), and the entries start at ARGV[9]; '0' is none. Once its deadline has
-- passed, a call that has not run is refused with EXPIRED and adds nothing.
-- A caller that gives up on a call tells its writers "may or may not have
-- been accepted", and a copy of the call still held somewhere (a paused or
-- overloaded Redis, a client library's queue or re-send) must not land after
-- that: after the writer read the key and decided what to write next, it
-- would put an older write over a newer one. The caller sets the deadline
-- before its own giving-up time, converted to Redis's clock (docs/protocol.md
-- §2a). A call that ran still gets its reply after its deadline.
local n = tonumber(ARGV[5])
local out, at, counted = {}, 6, nil
local seq, slot
if KEYS[3] then
  seq, at = tonumber(ARGV[6]), 9
  slot = 'r' .. string.format('%d', seq % tonumber(ARGV[7]))
  local rec = redis.call('HMGET', KEYS[3], 'last', slot)
  local ran, said = string.match(rec[2] or '', '^(%d+):(.*)$')
  if ran == ARGV[6] then
    for item in string.gmatch(said, '%S+') do
      if string.sub(item, 1, 1) == '#' then
        out[#out + 1] = tonumber(string.sub(item, 2))
      else
        out[#out + 1] = item
      end
    end
    redis.call('EXPIRE', KEYS[3], 3600)
    return out
  end
  local last = tonumber(rec[1])
  if last and seq <= last then
    return redis.error_reply('DUPLICATE admission call ' .. ARGV[6] .. ' is not after the last call that ran (' ..
      rec[1] .. ') and its reply is not kept: it ran before, or a later call overtook it; nothing was added now')
  end
  local deadline = tonumber(ARGV[8]) or 0
  if deadline > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now > deadline then
      return redis.error_reply('EXPIRED admission call ' .. ARGV[6] .. ' ran ' .. (now - deadline) ..
        ' ms after its deadline, when its caller had given up on it; nothing was added')
    end
  end
end
local refused = count_refused()
if refused then return refused end
while #out < n do
  local free
  free, counted = room()
  if free < 1 then break end
  local take = math.min(n - #out, free)
  for _ = 1, take do
    local c = tonumber(ARGV[at])
    out[#out + 1] = xadd(at + 1, at + c)
    at = at + 1 + c
  end
  redis.call('HINCRBY', KEYS[2], 'since', take)
end
if #out < n then out[#out + 1] = counted end
if seq then
  local said = {}
  for i, item in ipairs(out) do
    if type(item) == 'number' then said[i] = '#' .. item else said[i] = item end
  end
  redis.call('HSET', KEYS[3], 'last', ARGV[6], slot, ARGV[6] .. ':' .. table.concat(said, ' '))
  redis.call('EXPIRE', KEYS[3], 3600)
end
return out
