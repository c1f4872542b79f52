-- enqueue.lua: idempotent enqueue of one email job (wire format v1).
--
-- KEYS[1]: dedup marker   mf:{p}:dedup:<idem>   (touched only when ARGV[2] ~= '')
-- KEYS[2]: lane stream    mf:{p}:tx | mf:{p}:bulk | a tenant's bulk stream mf:{p}:bulk:t:<tenant>
-- KEYS[3]: delayed zset   mf:{p}:delayed        (used when ARGV[6] is in the future)
-- KEYS[4]: bulk ring      mf:{p}:bulk:ring      (only with a tenant stream as KEYS[2])
-- KEYS[5]: ring bell      mf:{p}:bulk:bell      (with KEYS[4]): rung when the tenant joins
-- ARGV[1]: job id (UUIDv7, producer-made)
-- ARGV[2]: idempotency key, or '' for none
-- ARGV[3]: enqueued_at, unix ms
-- ARGV[4]: payload (JSON text)
-- ARGV[5]: dedup TTL, ms (for a future send, counted from its due time: the marker outlives
--          the wait, so a resubmission before the send, or within the TTL after it, is a duplicate)
-- ARGV[6]: due time, unix ms, or '0' to send now
-- ARGV[7]: lane name ('tx' | 'bulk'), recorded in a delayed member so promote.lua knows its stream
-- ARGV[8]: the tenant whose stream KEYS[2] is ('' for a shared lane stream), also recorded in a
--          delayed member
-- ARGV[9]: consumer group (created with a tenant stream)
-- Returns: { id, added } where id is the new job's id, or the first job's id when the idempotency
--          key was seen within its TTL (added = 0, nothing written).
--
-- The dedup check, the write and the marker are one atomic step: two producers racing with one key
-- can never both add. Time for the due check comes from Redis TIME, never a client clock.
--
-- A tenant stream exists exactly while its tenant is in the ring (read.lua deletes both when the
-- stream drains): the XADD is NOMKSTREAM, and only when the stream is missing does the tenant
-- join, with the group, at the ring's lowest virtual time (the shared stream, '', joins too if
-- the ring was lost, so read.lua may take a ring of one for the shared stream alone). So the
-- common case is one XADD.
local id, idem, tenant = ARGV[1], ARGV[2], ARGV[8] or ''
if id == '' then return redis.error_reply('enqueue: empty job id') end
local ttl = tonumber(ARGV[5])
local due = tonumber(ARGV[6])
if ttl == nil or ttl <= 0 or due == nil then return redis.error_reply('enqueue: bad ttl or due') end

if idem ~= '' then
  local prev = redis.call('GET', KEYS[1])
  if prev then return { prev, 0 } end
end

-- Only a job with a due time needs the clock: most are for now, and TIME is one more command each.
local now = 0
if due > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if due > now then
  local member = cjson.encode({ v = '1', id = id, idem = idem, enqueued_at = ARGV[3],
                                payload = ARGV[4], lane = ARGV[7], tenant = tenant })
  redis.call('ZADD', KEYS[3], due, member)
else
  local fields = { 'v', '1', 'id', id }
  if idem ~= '' then fields[#fields + 1] = 'idem'; fields[#fields + 1] = idem end
  fields[#fields + 1] = 'enqueued_at'; fields[#fields + 1] = ARGV[3]
  fields[#fields + 1] = 'payload'; fields[#fields + 1] = ARGV[4]
  if KEYS[4] and tenant ~= '' then
    if not redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', unpack(fields)) then
      redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[9], '0', 'MKSTREAM')
      local low = redis.call('ZRANGE', KEYS[4], 0, 1, 'WITHSCORES')
      redis.call('ZADD', KEYS[4], 'NX', tonumber(low[2]) or 0, tenant)
      -- An empty ring was lost (or is new): the shared stream is always a member.
      if not low[1] then redis.call('ZADD', KEYS[4], 'NX', 0, '') end
      redis.call('XADD', KEYS[2], '*', unpack(fields))
      -- Readers block only when no stream in the ring has work: ring the bell only then.
      if not low[3] then redis.call('XADD', KEYS[5], 'MAXLEN', '~', 64, '*', 't', tenant) end
    end
  else
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
end
if idem ~= '' then
  local keep = ttl
  if due > now then keep = ttl + (due - now) end
  redis.call('SET', KEYS[1], id, 'PX', keep)
end
return { id, 1 }
