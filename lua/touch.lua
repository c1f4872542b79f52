-- touch.lua: keep a live consumer's in-flight entries from looking idle, so reclaim leaves a
-- long send alone.
--
-- KEYS[1]: lane stream   mf:{p}:tx | mf:{p}:bulk | a tenant's bulk stream
-- ARGV[1]: consumer group
-- ARGV[2]: this consumer's name
-- ARGV[3]: the lowest id of ARGV[5..] (stream order)
-- ARGV[4]: the highest id of ARGV[5..]
-- ARGV[5..]: stream entry ids this consumer is still working on
-- Returns: the number of entries touched.
--
-- XCLAIM with min-idle 0 and JUSTID resets an entry's idle time without raising its delivery
-- count. It would also take an entry away from whichever consumer holds it, so only ids found
-- pending for this consumer are claimed: an entry that reclaim already gave to another consumer
-- stays with it. This consumer's pending list between the lowest and highest id is read in
-- pages (XPENDING with a consumer walks only that consumer's list) and every owned id goes into
-- one XCLAIM per 1,000 ids: a few commands per call, not two per id, so a worker holding
-- thousands of entries does not stall Redis for every other client while it refreshes them.
local group, me, low, high = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- A tenant stream is deleted once drained; an entry acked since the caller looked is not ours.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local want = {}
local wanted = 0
for i = 5, #ARGV do
  want[ARGV[i]] = true
  wanted = wanted + 1
end
if wanted == 0 then
  return 0
end

local page = wanted + 64
local owned = {}
local from = low
while true do
  local p = redis.call('XPENDING', KEYS[1], group, from, high, page, me)
  for _, e in ipairs(p) do
    if want[e[1]] then
      owned[#owned + 1] = e[1]
    end
  end
  if #p < page then
    break
  end
  from = '(' .. p[#p][1]
end

local i = 1
while i <= #owned do
  local args = {KEYS[1], group, me, 0}
  local j = math.min(i + 999, #owned)
  for k = i, j do
    args[#args + 1] = owned[k]
  end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
  i = j + 1
end
return #owned
