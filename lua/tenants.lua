-- tenants.lua: one partition's fair ring at a glance, for `mailfleet status`, /admin and the
-- workers' gauges.
--
-- KEYS[1]: bulk ring   mf:{p}:bulk:ring
-- ARGV[1]: consumer group
-- ARGV[2]: the tenant streams' key prefix, mf:{p}:bulk:t:
-- ARGV[3]: how many of the busiest tenants to return
-- ARGV[4]: the most ring members to look at (a bound on the work of one call): with more in
--          the ring, half of them from each end (the least and the most served)
-- Returns: { active, waiting, in_flight, looked, spread, { tenant, waiting, in_flight,
--          oldest waiting entry id, ... } } where active counts the tenants in the ring (the
--          shared stream is not one), waiting the entries not yet read, in_flight those read
--          and not acked, looked how many members were summed (less than active when ARGV[4]
--          cut the walk short), spread the virtual-time gap between the most and least served
--          tenants that have entries waiting (0 when fewer than two: perfectly fair), and the
--          list the busiest tenants by entries waiting, most first.
local group, prefix = ARGV[1], ARGV[2]
local top, cap = tonumber(ARGV[3]) or 10, tonumber(ARGV[4]) or 10000
local active = redis.call('ZCARD', KEYS[1])
local members
if active <= cap then
  members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
else
  local half = math.max(1, math.floor(cap / 2))
  members = redis.call('ZRANGE', KEYS[1], 0, half - 1, 'WITHSCORES')
  local tail = redis.call('ZRANGE', KEYS[1], -half, -1, 'WITHSCORES')
  for i = 1, #tail do members[#members + 1] = tail[i] end
end
if redis.call('ZSCORE', KEYS[1], '') then active = active - 1 end
local waiting, in_flight, looked = 0, 0, 0
local low, high = nil, nil
local rows = {}
for i = 1, #members, 2 do
  local t, vt = members[i], tonumber(members[i + 1])
  if t ~= '' then
    local key = prefix .. t
    local len = redis.call('XLEN', key)
    local held = 0
    local p = redis.pcall('XPENDING', key, group)
    if type(p) == 'table' and not p.err then held = tonumber(p[1]) or 0 end
    local wait = math.max(0, len - held)
    waiting = waiting + wait
    in_flight = in_flight + held
    looked = looked + 1
    if wait > 0 then
      if low == nil or vt < low then low = vt end
      if high == nil or vt > high then high = vt end
      rows[#rows + 1] = { t, wait, held }
    end
  end
end
table.sort(rows, function(a, b) return a[2] > b[2] end)
local out = {}
for i = 1, math.min(top, #rows) do
  local t = rows[i][1]
  -- The oldest entry not yet read: the first after the group's last delivered id.
  local info = redis.pcall('XINFO', 'GROUPS', prefix .. t)
  local last = '0-0'
  if type(info) == 'table' and not info.err then
    for _, g in ipairs(info) do
      local name, delivered
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
      end
      if name == group and delivered then last = delivered end
    end
  end
  local first = redis.call('XRANGE', prefix .. t, '(' .. last, '+', 'COUNT', 1)
  local oldest = ''
  if first[1] then oldest = first[1][1] end
  out[#out + 1] = t
  out[#out + 1] = rows[i][2]
  out[#out + 1] = rows[i][3]
  out[#out + 1] = oldest
end
local spread = 0
if low and high then spread = high - low end
return { active, waiting, in_flight, looked, tostring(spread), out }
