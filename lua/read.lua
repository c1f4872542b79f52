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
--
-- The ring holds only streams with entries waiting to be read (and the shared stream, always):
-- a tenant whose visit leaves nothing unread leaves the ring, keeping its stream while its
-- deliveries are outstanding. Every ack path ends in settle.lua, which deletes an empty stream
-- (and the tenant's group with it) or puts the tenant back when entries wait; a tenant whose
-- stream is missing joins through enqueue.lua / promote.lua. Either way it (re)joins at the
-- ring's lowest time, neither ahead of the tenants waiting nor behind their history. So a read
-- costs O(batch), never O(tenants known), and a tenant with nothing to read costs no visits.
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
      if t ~= '' and #got < want then
        -- Fewer than asked for: nothing is left to read, so the tenant leaves the ring
        -- (its stream stays, with its deliveries; settle.lua brings it back when an ack
        -- finds entries waiting, or deletes the stream once it is empty).
        redis.call('ZREM', KEYS[3], t)
        card = card - 1
      else
        redis.call('ZADD', KEYS[3], 'XX', vt + #got / w, t)
      end
      if t ~= '' then
        if now == nil then
          local c = redis.call('TIME')
          now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000)
        end
        redis.call('ZADD', KEYS[4], 'NX', now, t)
      end
      idle = 0
    elseif t ~= '' then
      if redis.call('XLEN', key) == 0 then
        -- Drained: every entry was acked and deleted, so no delivery is outstanding either.
        redis.call('DEL', key)
        redis.call('ZREM', KEYS[4], t)
      end
      -- Either way nothing is waiting: out of the ring (see above).
      redis.call('ZREM', KEYS[3], t)
      card = card - 1
    else
      -- The shared stream is empty: parked two quanta behind the next member, so a tenant
      -- alone reads 48 entries a visit, and the shared stream is looked at again soon.
      if next_vt then
        redis.call('ZADD', KEYS[3], 'XX', math.max(vt, next_vt) + 2 * quantum, t)
      end
      idle = idle + 1
    end
  end
end
return { tx, bulk }
