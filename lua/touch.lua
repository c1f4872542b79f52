-- touch.lua: keep a live consumer's in-flight entries from looking idle, so reclaim leaves a
-- long send alone.
--
-- KEYS[1]: lane stream   mf:{p}:tx | mf:{p}:bulk
-- ARGV[1]: consumer group
-- ARGV[2]: this consumer's name
-- ARGV[3..]: stream entry ids this consumer is still working on
-- Returns: the number of entries touched.
--
-- XCLAIM with min-idle 0 and JUSTID resets an entry's idle time without raising its delivery
-- count. It would also take an entry away from whichever consumer holds it, so each id is first
-- checked to be pending for this consumer: an entry that reclaim already gave to another
-- consumer stays with it.
local group, me = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1, me)
  if p[1] then
    redis.call('XCLAIM', KEYS[1], group, me, 0, id, 'JUSTID')
    n = n + 1
  end
end
return n
