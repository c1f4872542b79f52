-- ratelimit.lua: a provider's sliding window, shared by every worker of the cluster, with two
-- classes of ask: transactional (tx) and bulk.
--
-- KEYS[1]: the provider's window       <prefix>:rl:{<provider>}:w     (ZSET, one member per permit)
-- KEYS[2]: member sequence             <prefix>:rl:{<provider>}:seq
-- KEYS[3]: back-off flag               <prefix>:rl:{<provider>}:block (set after a provider's 429)
-- KEYS[4]: tx demand flag              <prefix>:rl:{<provider>}:txd   (set for two windows by every tx ask)
-- KEYS[5]: tx permits waiting          <prefix>:rl:{<provider>}:txw   (HASH asker -> "count:expiry_us")
-- KEYS[6]: the tenant's window, when tenants have their own limit (optional)
--          <prefix>:rl:{<provider>}:t:<tenant>
-- ARGV[1]: permits wanted (n >= 1)
-- ARGV[2]: the provider's limit per window
-- ARGV[3]: window in ms
-- ARGV[4]: the tenant's limit per window (ignored without KEYS[6])
-- ARGV[5]: back-off in ms: when > 0, only extend the back-off flag to at least this long, and
--          grant nothing
-- ARGV[6]: spread in ms (0: none): also at most ARGV[7] permits in any spread-long window, so
--          a window's permits are spread over it instead of all granted at its start
-- ARGV[7]: the most permits in any spread-long window
-- ARGV[8]: the ask's class: 'tx' or 'bulk'
-- ARGV[9]: the asker (a worker's limiter and bucket): whose tx permits are waiting
-- ARGV[10], ARGV[11]: (optional) permits to give back first: the members numbered ARGV[10] to
--          ARGV[11], granted earlier and never used (a worker's stock that grew too old)
-- Returns: {granted, wait_ms, last}: granted permits (0..n); when fewer than n were granted,
--          how long until the next permit can be granted (0 otherwise); and the number of the
--          last permit granted (the permits are numbered last - granted + 1 .. last), which is
--          what the caller gives back if it cannot use them in time.
--
-- Sliding-window log: every permit is a member scored with the time it was granted, in
-- microseconds of Redis's own clock (TIME: no client clock is trusted). A grant first drops
-- members older than the window, then grants min(n, cap - members), so for every instant T
-- the permits granted in (T - window, T] never exceed the limit: exact, not an estimate
-- (docs/rate-limiting.md has the argument). The spread rule only ever grants less. A permit
-- given back was never used, so no request stands for it: removing it keeps the log equal to
-- what was sent. Every key shares the {<provider>} hash tag.
--
-- Two classes: a tx ask may fill every window to its limit. While any worker asked for a tx
-- permit in the last two windows (KEYS[4]), a bulk ask may fill each window (and each spread
-- window) only to its limit minus a headroom of ceil(limit / 200), at least 1; and the
-- provider's windows also less every tx permit still waiting on any worker (KEYS[5]: a tx
-- ask granted short records what it still wants, until it asks again or 100 ms after its
-- wait). So the next tx send finds room at
-- once, and the permits that free while tx sends wait are left for them: bulk gets nothing
-- until tx is served. Both classes are members of the same windows, so the bound above holds
-- for their sum: bulk only ever grants less.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[3]) * 1000

local n = tonumber(ARGV[1])
local tx = ARGV[8] == 'tx'
local window_ms = tonumber(ARGV[3])
-- The room bulk leaves while tx demand exists.
local function headroom(cap)
  return math.max(1, math.ceil(cap / 200))
end

local windows = {{KEYS[1], tonumber(ARGV[2])}}
if KEYS[6] then
  windows[2] = {KEYS[6], tonumber(ARGV[4])}
end

local give_from, give_to = tonumber(ARGV[10] or ''), tonumber(ARGV[11] or '')
if give_from and give_to and give_to >= give_from then
  for _, w in ipairs(windows) do
    local i = give_from
    while i <= give_to do
      local members = {}
      local j = i
      while j <= give_to and j < i + 500 do
        members[#members + 1] = j
        j = j + 1
      end
      redis.call('ZREM', w[1], unpack(members))
      i = j
    end
  end
end

local backoff = tonumber(ARGV[5])
if backoff > 0 then
  if redis.call('PTTL', KEYS[3]) < backoff then
    redis.call('SET', KEYS[3], '1', 'PX', backoff)
  end
  return {0, backoff, 0}
end
local blocked = redis.call('PTTL', KEYS[3])
if blocked > 0 then
  return {0, blocked, 0}
end

-- A bulk ask's caps are lowered while tx demand exists; a tx ask marks that demand.
local yield = false
local waiting = 0
if tx then
  redis.call('SET', KEYS[4], '1', 'PX', 2 * window_ms)
else
  yield = redis.call('EXISTS', KEYS[4]) == 1
  -- Tx permits waiting on every worker (whether or not the flag outlived them); entries past
  -- their expiry are dropped.
  local all = redis.call('HGETALL', KEYS[5])
  for i = 1, #all, 2 do
    local count, expiry = string.match(all[i + 1], '^(%d+):(%d+)$')
    if count and tonumber(expiry) > now then
      waiting = waiting + tonumber(count)
    else
      redis.call('HDEL', KEYS[5], all[i])
    end
  end
end
-- The provider's windows keep the headroom and the waiting tx permits; a tenant's window
-- keeps the headroom (the waiting permits may be other tenants').
local function cap(c, with_waiting)
  local keep = 0
  if with_waiting then
    keep = waiting
  end
  if yield then
    keep = keep + headroom(c)
  end
  return math.max(0, c - keep)
end
for i, w in ipairs(windows) do
  w[2] = cap(w[2], i == 1)
end

local granted = n
for _, w in ipairs(windows) do
  redis.call('ZREMRANGEBYSCORE', w[1], '-inf', now - window)
  local room = w[2] - redis.call('ZCARD', w[1])
  if room < granted then
    granted = room
  end
end
local spread = tonumber(ARGV[6] or '0') * 1000
local spread_cap = cap(tonumber(ARGV[7] or '0'), true)
if spread > 0 and spread < window then
  local room = spread_cap - redis.call('ZCOUNT', KEYS[1], '(' .. (now - spread), '+inf')
  if room < granted then
    granted = room
  end
end
if granted < 0 then
  granted = 0
end

local last = 0
if granted > 0 then
  last = redis.call('INCRBY', KEYS[2], granted)
  local ttl = math.floor(window / 1000) + 1000
  for _, w in ipairs(windows) do
    local i = 1
    while i <= granted do
      local args = {}
      local j = i
      while j <= granted and j < i + 500 do
        args[#args + 1] = now
        args[#args + 1] = last - granted + j
        j = j + 1
      end
      redis.call('ZADD', w[1], unpack(args))
      i = j
    end
    redis.call('PEXPIRE', w[1], ttl)
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
end

local wait = 0
if granted < n then
  -- The next permit needs one more member of the fullest window to leave: the member at
  -- index (count - limit), in score order, is the last that must go.
  -- {window, limit, length}: the windows that can hold the next permit back.
  local checks = {}
  for _, w in ipairs(windows) do
    checks[#checks + 1] = {w[1], w[2], window}
  end
  if spread > 0 and spread < window then
    checks[#checks + 1] = {KEYS[1], spread_cap, spread}
  end
  for _, c in ipairs(checks) do
    -- Members are in score order; within the last `length`, the one at index count - limit
    -- is the last that must leave for one more permit to fit.
    local idx = redis.call('ZCARD', c[1]) - c[2]
    if idx >= 0 then
      local m = redis.call('ZRANGE', c[1], idx, idx, 'WITHSCORES')
      if m[2] then
        local us = tonumber(m[2]) + c[3] - now
        local ms = math.floor(us / 1000) + 1
        if ms > wait then
          wait = ms
        end
      end
    end
  end
  -- A bulk ask held back by tx demand may also go once that demand ends (with a cap of 0, no
  -- member's leaving is enough).
  if yield and waiting == 0 then
    local f = redis.call('PTTL', KEYS[4])
    if f > 0 and (wait < 1 or f < wait) then
      wait = f
    end
  end
  if wait < 1 then
    wait = 1
  end
end
if tx then
  -- What this asker still wants holds bulk back until it asks again (or shortly after).
  if granted < n then
    local expiry = now + (wait + 100) * 1000
    redis.call('HSET', KEYS[5], ARGV[9], (n - granted) .. ':' .. string.format('%d', expiry))
    if redis.call('PTTL', KEYS[5]) < wait + 100 then
      redis.call('PEXPIRE', KEYS[5], wait + 100)
    end
  else
    redis.call('HDEL', KEYS[5], ARGV[9])
  end
end
return {granted, wait, last}
