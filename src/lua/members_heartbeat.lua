-- Membership heartbeat (src/ownership/members.rs).
-- KEYS[1] <ns>:members; ARGV[1] the daemon's consumer name; ARGV[2] lease TTL (ms).
-- Returns Redis's time in ms: the score this daemon now has.
--
-- Scores are Redis's clock, not the daemon's, so that daemons on hosts whose
-- clocks disagree still see each other alive (and dead) on time. Needs
-- `+time` in a Redis ACL; without it the daemon heartbeats on its own clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return now
