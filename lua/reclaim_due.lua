-- reclaim_due.lua: which tenant bulk streams of a partition reclaim should look at now.
--
-- KEYS[1]: held   mf:{p}:bulk:held (zset: tenant -> a time at or before the oldest delivery
--                 still outstanding on its stream, unix ms by Redis TIME; read.lua adds with NX)
-- ARGV[1]: consumer group
-- ARGV[2]: min idle time, ms (the visibility timeout)
-- ARGV[3]: recheck, ms (at most ARGV[2]): when to look at a returned stream again
-- ARGV[4]: the most tenants to return
-- ARGV[5]: the tenant streams' key prefix, mf:{p}:bulk:t:
-- Returns: { tenant, entries pending, ... } for the tenants whose streams may hold entries idle
--          past the min idle time (the count lets the caller take only that much room).
--
-- A stream is due once its score is at least the min idle time old: before that no entry on it
-- can have been idle that long. A due stream with nothing pending (or gone) leaves the set; one
-- still holding deliveries is returned and rescored to come due again `recheck` from now. Once
-- the caller has claimed whatever was idle past the min idle time, every entry left pending was
-- delivered or touched within it, so the new score stays at or before the oldest of them and no
-- crashed consumer's entry waits more than `recheck` past its visibility timeout. The work is
-- O(streams with deliveries outstanding), never O(tenants known).
local group = ARGV[1]
local min_idle, recheck, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if min_idle == nil or recheck == nil or limit == nil or limit <= 0 then
  return redis.error_reply('reclaim_due: bad arguments')
end
if recheck > min_idle then recheck = min_idle end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - min_idle, 'LIMIT', 0, limit)
local out = {}
for _, tenant in ipairs(due) do
  local key = ARGV[5] .. tenant
  local p = redis.pcall('XPENDING', key, group)
  if type(p) ~= 'table' or p.err or tonumber(p[1]) == 0 then
    redis.call('ZREM', KEYS[1], tenant)
  else
    redis.call('ZADD', KEYS[1], now - min_idle + recheck, tenant)
    out[#out + 1] = tenant
    out[#out + 1] = tonumber(p[1])
  end
end
return out
