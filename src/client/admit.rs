//! Admission: `XADD` to a partition stream through a script that first checks
//! the partition's unapplied backlog (undelivered + pending entries of the
//! daemon's consumer group). Over the bound, the write is refused with a
//! backpressure error instead of growing the stream without limit; nothing
//! already accepted is ever evicted.

/// `KEYS[1]` stream; `ARGV[1]` group; `ARGV[2]` bound; `ARGV[3..]` fields.
pub(super) const XADD_BOUNDED: &str = r#"
local unapplied = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  unapplied = redis.call('XLEN', KEYS[1])
  local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[1] then
      local lag = f['lag']
      if type(lag) ~= 'number' then lag = 0 end
      unapplied = lag + f['pending']
    end
  end
end
if unapplied >= tonumber(ARGV[2]) then
  return redis.error_reply('BACKPRESSURE ' .. unapplied)
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
"#;
