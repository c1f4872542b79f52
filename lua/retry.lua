-- retry.lua: reschedule failed sends in the delayed set and ack their stream entries, atomically.
--
-- KEYS[1]: delayed zset  mf:{p}:delayed
-- KEYS[2]: lane stream   mf:{p}:tx | mf:{p}:bulk | a tenant's bulk stream (the one the entries were read from)
-- ARGV[1]: consumer group
-- ARGV[2..]: triples of (stream entry id, delay in ms, delayed member)
-- Returns: the number of entries rescheduled.
--
-- The due time is Redis TIME + the delay: promote.lua compares scores with the same clock, so a
-- worker whose own clock is off can neither make a retry due at once nor park it for hours.
--
-- Either both the ZADD and the XACK happen or neither does: a crash can neither lose the job
-- (acked but not scheduled) nor leave it both pending and scheduled. An entry that is no longer
-- pending in the group (already acked, e.g. this call is a repeat after a lost reply) is skipped,
-- so repeating the call never schedules a job twice.
local group = ARGV[1]
if (#ARGV - 1) % 3 ~= 0 then return redis.error_reply('retry: arguments must be triples') end
for i = 2, #ARGV, 3 do
  local d = tonumber(ARGV[i + 1])
  if d == nil or d < 0 then return redis.error_reply('retry: bad delay') end
end
-- A drained tenant stream is deleted: its entries were acked (and rescheduled) already.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 2, #ARGV, 3 do
  local pending = redis.call('XPENDING', KEYS[2], group, ARGV[i], ARGV[i], 1)
  if pending[1] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i + 2])
    redis.call('XACK', KEYS[2], group, ARGV[i])
    n = n + 1
  end
end
return n
