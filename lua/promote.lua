-- promote.lua: move due entries from the delayed set back onto their lane streams.
--
-- KEYS[1]: delayed zset  mf:{p}:delayed
-- KEYS[2]: tx stream     mf:{p}:tx
-- KEYS[3]: bulk stream   mf:{p}:bulk
-- KEYS[4]: tx delayed zset  mf:{p}:delayed:tx (optional): promoted first, so a tx retry or a
--          tx send_at never waits behind a campaign's due bulk entries
-- KEYS[5]: bulk ring      mf:{p}:bulk:ring (optional): a bulk member with a tenant goes back to
--          its tenant's stream, rejoining the ring as enqueue.lua does
-- KEYS[6]: ring bell      mf:{p}:bulk:bell (with KEYS[5]): rung when a tenant joins
-- ARGV[1]: the most entries to move in this call (bounded, so one call never blocks Redis long)
-- ARGV[2]: the tenant streams' key prefix mf:{p}:bulk:t: (with KEYS[5])
-- ARGV[3]: consumer group (with KEYS[5])
-- Returns: the number of entries moved.
--
-- Any worker may run it at any time: ZRANGEBYSCORE, XADD and ZREM happen in one script, so an
-- entry is moved exactly once. Time comes from Redis TIME. A member that does not decode is left
-- in place under a far-future score in the same set (never dropped) and counted by no one.
local limit = tonumber(ARGV[1])
if limit == nil or limit <= 0 then return redis.error_reply('promote: bad limit') end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
-- Move up to `room` due members of `set`; returns how many it looked at.
local function promote(set, room)
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, room)
  for _, member in ipairs(due) do
    local ok, m = pcall(cjson.decode, member)
    if ok and type(m) == 'table' and type(m.id) == 'string' and type(m.payload) == 'string' then
      local stream = KEYS[3]
      if m.lane == 'tx' then stream = KEYS[2] end
      local fields = { 'v', m.v or '1', 'id', m.id }
      if type(m.idem) == 'string' and m.idem ~= '' then
        fields[#fields + 1] = 'idem'; fields[#fields + 1] = m.idem
      end
      fields[#fields + 1] = 'enqueued_at'; fields[#fields + 1] = tostring(m.enqueued_at)
      fields[#fields + 1] = 'payload'; fields[#fields + 1] = m.payload
      -- A replayed job keeps its count, or --max-replays could never stop it.
      if type(m.replays) == 'string' and m.replays ~= '' then
        fields[#fields + 1] = 'replays'; fields[#fields + 1] = m.replays
      end
      if m.lane ~= 'tx' and KEYS[5] and type(m.tenant) == 'string' and m.tenant ~= '' then
        local key = ARGV[2] .. m.tenant
        if not redis.call('XADD', key, 'NOMKSTREAM', '*', unpack(fields)) then
          redis.call('XGROUP', 'CREATE', key, ARGV[3], '0', 'MKSTREAM')
          local low = redis.call('ZRANGE', KEYS[5], 0, 1, 'WITHSCORES')
          redis.call('ZADD', KEYS[5], 'NX', tonumber(low[2]) or 0, m.tenant)
          if not low[1] then redis.call('ZADD', KEYS[5], 'NX', 0, '') end
          redis.call('XADD', key, '*', unpack(fields))
          if not low[3] then redis.call('XADD', KEYS[6], 'MAXLEN', '~', 64, '*', 't', m.tenant) end
        end
      else
        redis.call('XADD', stream, '*', unpack(fields))
      end
      redis.call('ZREM', set, member)
      moved = moved + 1
    else
      -- park it where a person can find it: 2^52 ms is far beyond any real due time
      redis.call('ZADD', set, 4503599627370496, member)
    end
  end
  return #due
end
local looked = 0
if KEYS[4] then looked = promote(KEYS[4], limit) end
if looked < limit then promote(KEYS[1], limit - looked) end
return moved
