-- trim.lua: drop the entries of one lane stream that every consumer group is done with.
--
-- KEYS[1]: lane stream   mf:{p}:tx | mf:{p}:bulk
-- Returns: { entries removed, the MINID used ('' when nothing could be trimmed) }
--
-- An entry may go only once every group has had it delivered and acked it: below each group's
-- oldest pending entry (XPENDING) and at or below its last-delivered-id. XTRIM MINID removes the
-- entries with smaller ids, so a pending entry, or one no group has read yet, is never removed.
-- Job streams are never trimmed by length (MAXLEN would drop unacked work). One atomic step: no
-- read, claim or ack can slip between the look and the trim.
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return { 0, '' } end
local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then return { 0, '' } end  -- nobody reads it: nothing is known to be done

-- Stream ids compare as (ms, seq) pairs.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

local minid = nil
for _, g in ipairs(groups) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local bound = last
  local p = redis.call('XPENDING', stream, name)
  if tonumber(p[1]) > 0 and p[2] and less(p[2], bound) then bound = p[2] end
  if minid == nil or less(bound, minid) then minid = bound end
end
if minid == nil or minid == '0-0' then return { 0, '' } end
local n = redis.call('XTRIM', stream, 'MINID', minid)
return { n, minid }
