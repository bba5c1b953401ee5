-- Lease acquisition (src/ownership/lease.rs).
-- KEYS[1] lease <ns>:{p<N>}:lease; KEYS[2] fence <ns>:{p<N>}:fence;
-- KEYS[3] last acquisition <ns>:{p<N>}:acquired.
-- ARGV[1] the daemon's consumer name; ARGV[2] TTL (ms); ARGV[3] this call's id
-- (random per call); ARGV[4] the step (random per call, 2 to 2^20+1).
-- Returns the new fencing token (as a string, exact at any size), or, when
-- the lease is held, minus its remaining time to live in ms (at most -1):
-- a daemon that polls leases others hold need not ask again before the
-- lease could have expired (src/ownership/tries.rs).
--
-- The fence moves by a random step, not by one: a Redis failover that lost
-- an acquisition rolls the fence back, and with a step of one the next
-- acquisition would hand out the lost one's token again, so two daemons
-- would hold the same current token (both pass every fence check). With a
-- random step that takes two acquisitions drawing the same step (1 in 2^20).
--
-- Takes a free lease. A lease key without an expiry was not set by writ
-- (writ always sets one): it is taken over, or the partition would never be
-- owned again; the new token fences whoever set it. A fence that is not a
-- plain number is refused before anything is set, as a key of another type
-- is (WRONGTYPE): that partition stays unowned, the others are taken. The
-- fence goes before the lease, so a failing fence write leaves no lease behind.
--
-- Sent twice, taken once: redis-rs in cluster mode sends a call again after
-- a timeout or a dropped connection. When the lease names this daemon and
-- the last acquisition is this call's, with the token still current, the
-- second run returns that token (as a string, exact at any size). Another call from a daemon of the same
-- name (a replacement started while the old one drains) has another id and
-- is refused, as any daemon is while the lease is held.
local fence = redis.call('GET', KEYS[2])
if fence and not (string.match(fence, '^%d+$') and #fence <= 18) then
  return redis.error_reply('WRONGTYPE the fence key holds a value writ did not write (not a number)')
end
local cur = redis.call('GET', KEYS[1])
if cur == false or redis.call('PTTL', KEYS[1]) == -1 then
  -- With SET rather than INCRBY, so that a daemon user set up before
  -- random steps (`+incr +set`) still takes leases. Lua's numbers are exact
  -- below 2^53; a fence that near the top moves by INCR (exact in Redis).
  local token
  local stepped = tonumber(fence or '0') + tonumber(ARGV[4])
  if stepped < 2^53 then
    token = string.format('%.0f', stepped)
    redis.call('SET', KEYS[2], token)
  else
    -- INCR's reply reaches Lua as a number, inexact up here: read the string.
    redis.call('INCR', KEYS[2])
    token = redis.call('GET', KEYS[2])
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[3], ARGV[3] .. ' ' .. token, 'PX', ARGV[2])
  return token
end
if cur == ARGV[1] and fence then
  local last = redis.call('GET', KEYS[3])
  if last and last == ARGV[3] .. ' ' .. fence then
    -- A write, so that a WAIT after this run on its connection also covers
    -- the first run's fence write (Redis 7 moves a connection's replication offset
    -- only for commands that write).
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
    return fence
  end
end
return -math.max(1, redis.call('PTTL', KEYS[1]))
