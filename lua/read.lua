-- read.lua: one non-blocking read that serves the tx lane strictly before bulk, and bulk
-- fairly across the tenants that have a backlog.
--
-- KEYS[1]: tx stream        mf:{p}:tx
-- KEYS[2]: shared bulk      mf:{p}:bulk (email without a tenant; plain-XADD producers)
-- KEYS[3]: bulk ring        mf:{p}:bulk:ring (zset: tenant -> virtual time; '' = KEYS[2])
-- KEYS[4]: held             mf:{p}:bulk:held (zset: tenant -> at or before its oldest delivery)
-- KEYS[5]: weights          mf:{p}:bulk:weights (hash: tenant -> weight; absent = 1)
-- ARGV[1]: consumer group
-- ARGV[2]: consumer name
-- ARGV[3]: batch size n (> 0)
-- ARGV[4]: '0' when the tx lane is paused (not read), else '1'
-- ARGV[5]: '0' when the bulk lane is paused, else '1'
-- ARGV[6]: the tenant streams' key prefix, mf:{p}:bulk:t: (a member t's stream is prefix .. t)
-- ARGV[7]: quantum: the most entries one visit reads, times the tenant's weight
-- Returns: { tx_entries, { tenant, entries, tenant, entries, ... } } where entries are lists of
--          { entry_id, { field, value, ... } } and tenant '' is the shared bulk stream. Bulk is
--          read only for the room tx left in the batch, so a tx backlog is never starved.
--
-- Fairness (docs/fairness.md): start-time fair queueing over the ring. Each visit takes the
-- member with the lowest virtual time, reads up to quantum x weight new entries from its stream
-- and advances its time by entries / weight; a tenant alone gets everything (work-conserving).
-- A member with nothing new is parked a quantum behind the next one. A tenant stream found empty (every
-- entry acked and deleted) is deleted with its group and leaves the ring in the same step, so
-- the ring holds only tenants with work and a read costs O(batch), never O(tenants known).
-- enqueue.lua and promote.lua re-create the stream and rejoin at the ring's lowest time, so a
-- returning tenant neither jumps ahead of the others nor waits behind their history.
local n = tonumber(ARGV[3])
if n == nil or n <= 0 then return redis.error_reply('read: bad batch size') end
local quantum = tonumber(ARGV[7]) or 16
local group, me = ARGV[1], ARGV[2]

local function read(key, count)
  local r = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', key, '>')
  if r and r[1] then return r[1][2] end
  return {}
end

-- A tenant stream may be gone (a stale member) or, written by hand, lack the group.
local function read_tenant(key, count)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', key, '>')
  if type(r) == 'table' and r.err then
    if redis.call('EXISTS', key) == 0 then return {} end
    redis.call('XGROUP', 'CREATE', key, group, '0')
    return read(key, count)
  end
  if r and r[1] then return r[1][2] end
  return {}
end

local tx = {}
if ARGV[4] ~= '0' then tx = read(KEYS[1], n) end
local room = n - #tx
local bulk = {}
if room > 0 and ARGV[5] ~= '0' then
  -- The shared stream is always a member: every join adds it too, and a new partition (or a
  -- ring lost with Redis) starts with it.
  local card = redis.call('ZCARD', KEYS[3])
  if card == 0 then
    redis.call('ZADD', KEYS[3], 0, '')
    card = 1
  end
  if card == 1 then
    -- No tenant has work: the shared stream alone, as cheaply as before there were tenants.
    local got = read(KEYS[2], room)
    if #got > 0 then
      bulk[1] = ''
      bulk[2] = got
    end
    return { tx, bulk }
  end
  local weighted = redis.call('EXISTS', KEYS[5]) == 1
  local now = nil
  local idle = 0
  while room > 0 and idle < card do
    -- The member with the lowest virtual time, and the one after it.
    local head = redis.call('ZRANGE', KEYS[3], 0, 1, 'WITHSCORES')
    if not head[1] then break end
    local t, vt = head[1], tonumber(head[2])
    local next_vt = tonumber(head[4])
    local w = 1
    if weighted and t ~= '' then
      local x = tonumber(redis.call('HGET', KEYS[5], t))
      if x and x > 0 then w = x end
    end
    local key = KEYS[2]
    if t ~= '' then key = ARGV[6] .. t end
    -- A quantum, or as much as keeps it within a quantum past the next member: the same as
    -- visiting it again and again while it stays the lowest, in one read.
    local ahead = 0
    if next_vt and next_vt > vt then ahead = next_vt - vt end
    local want = math.min(room, math.max(1, math.floor((quantum + ahead) * w + 0.5)))
    local got
    if t == '' then got = read(key, want) else got = read_tenant(key, want) end
    if #got > 0 then
      bulk[#bulk + 1] = t
      bulk[#bulk + 1] = got
      room = room - #got
      redis.call('ZADD', KEYS[3], 'XX', vt + #got / w, t)
      if t ~= '' then
        if now == nil then
          local c = redis.call('TIME')
          now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000)
        end
        redis.call('ZADD', KEYS[4], 'NX', now, t)
      end
      idle = 0
    elseif t ~= '' and redis.call('XLEN', key) == 0 then
      -- Drained: every entry was acked and deleted, so no delivery is outstanding either.
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[3], t)
      redis.call('ZREM', KEYS[4], t)
      card = card - 1
    else
      -- Nothing new (the shared stream is empty, or the tenant's entries are all in flight):
      -- parked a quantum behind the next member, so an idle member costs a visit per round.
      if next_vt then
        redis.call('ZADD', KEYS[3], 'XX', math.max(vt, next_vt) + quantum, t)
      end
      idle = idle + 1
    end
  end
end
return { tx, bulk }
