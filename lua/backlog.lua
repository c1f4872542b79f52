-- backlog.lua: which entries of one stream its consumer group still has to be delivered, for
-- the reconciler, which must not re-enqueue a job whose entry is only waiting behind a backlog
-- (a deep campaign under a provider limit outlasts MAILFLEET_RECONCILE_AFTER_SECS without
-- anything being lost).
--
-- KEYS[1]: a stream        mf:{p}:tx | mf:{p}:bulk | mf:{p}:bulk:t:<tenant>
-- ARGV[1]: consumer group
-- Returns: { oldest ms, newest ms }: the time part of the id of the oldest entry not yet
--          delivered to the group, and of the stream's last-generated-id; { -1, -1 } when the
--          stream or the group does not exist or every entry has been delivered: nothing
--          waits there.
--
-- Read only. The entries waiting undelivered lie between those two times; the caller compares
-- them with a job's own.
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return { -1, -1 } end

local function ms(id)
  if not id then return -1 end
  return tonumber(string.match(id, '^(%d+)-')) or -1
end

local delivered
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then delivered = last end
end
if not delivered then return { -1, -1 } end

local next = redis.call('XRANGE', stream, '(' .. delivered, '+', 'COUNT', 1)
if #next == 0 then return { -1, -1 } end

local newest
local info = redis.call('XINFO', 'STREAM', stream)
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then newest = info[i + 1] end
end
return { ms(next[1][1]), ms(newest) }
