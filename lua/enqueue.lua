-- enqueue.lua: idempotent enqueue of one email job (wire format v1).
--
-- KEYS[1]: dedup marker   mf:{p}:dedup:<idem>, or mf:{p}:tdedup:<tenant>:<idem> for a tenant's
--          job (touched only when ARGV[2] ~= '')
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
-- ARGV[9]: consumer group, created with the stream when the stream is missing (optional for a
--          shared lane stream: without it the stream is made by XADD and the workers' start
--          creates the group)
-- ARGV[10..]: more jobs for the same stream, each (id, idem, enqueued_at, payload, due), with
--          its dedup marker as KEYS[6..] in the same order (KEYS[4] and KEYS[5] must then be
--          given, the ring and bell, even for a shared stream): one call for a batch
-- Returns: { id, added } per job, flat and in order, where id is the new job's id, or the first
--          job's id when the idempotency key was seen within its TTL (added = 0, nothing
--          written). Jobs are enqueued one after the other, so a key repeated in a batch is a
--          duplicate of its first use.
--
-- The dedup check, the write and the marker are one atomic step: two producers racing with one key
-- can never both add. Time for the due check comes from Redis TIME, never a client clock.
--
-- A tenant stream exists while the tenant has email waiting or in flight (settle.lua deletes
-- it once empty): the XADD is NOMKSTREAM, and only when the stream is missing does the tenant
-- join, with the group, at the ring's lowest virtual time (the shared stream, '', joins too if
-- the ring was lost, so read.lua may take a ring of one for the shared stream alone). A tenant
-- whose stream exists but is out of the ring (nothing was left to read) is brought back by the
-- settle.lua of its next ack. So the common case is one XADD.
local tenant = ARGV[8] or ''
local ttl = tonumber(ARGV[5])
if ttl == nil or ttl <= 0 then return redis.error_reply('enqueue: bad ttl or due') end
if (#ARGV > 9 and (#ARGV - 9) % 5 ~= 0) or (#ARGV > 9 and #KEYS ~= 5 + (#ARGV - 9) / 5) then
  return redis.error_reply('enqueue: more jobs need quintuples and a dedup key each')
end
-- Job k: { dedup key, id, idem, enqueued_at, payload, due }.
local jobs = { { KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6]) } }
for i = 10, #ARGV, 5 do
  jobs[#jobs + 1] = { KEYS[5 + #jobs], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]) }
end
for _, j in ipairs(jobs) do
  if j[2] == '' then return redis.error_reply('enqueue: empty job id') end
  if j[6] == nil then return redis.error_reply('enqueue: bad ttl or due') end
end

-- Only a job with a due time needs the clock: most are for now, and TIME is one more command.
local now = nil
local function clock()
  if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end
local joined = false
local out = {}
for _, j in ipairs(jobs) do
  local dedup, id, idem, enqueued_at, payload, due = j[1], j[2], j[3], j[4], j[5], j[6]
  local prev = false
  if idem ~= '' then prev = redis.call('GET', dedup) end
  if prev then
    out[#out + 1] = prev
    out[#out + 1] = 0
  else
    local later = due > 0 and due > clock()
    if later then
      local member = cjson.encode({ v = '1', id = id, idem = idem, enqueued_at = enqueued_at,
                                    payload = payload, lane = ARGV[7], tenant = tenant })
      redis.call('ZADD', KEYS[3], due, member)
    else
      local fields = { 'v', '1', 'id', id }
      if idem ~= '' then fields[#fields + 1] = 'idem'; fields[#fields + 1] = idem end
      fields[#fields + 1] = 'enqueued_at'; fields[#fields + 1] = enqueued_at
      fields[#fields + 1] = 'payload'; fields[#fields + 1] = payload
      if KEYS[4] and tenant ~= '' and not joined then
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
        -- The stream exists now: the batch's other jobs are plain XADDs.
        joined = true
      elseif ARGV[9] and ARGV[9] ~= '' then
        -- A shared lane stream is made with its group: a stream never exists without one, so
        -- a worker starting on a Redis at maxmemory (which refuses XGROUP CREATE) finds it.
        if not redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', unpack(fields)) then
          redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[9], '0', 'MKSTREAM')
          redis.call('XADD', KEYS[2], '*', unpack(fields))
        end
      else
        redis.call('XADD', KEYS[2], '*', unpack(fields))
      end
    end
    if idem ~= '' then
      local keep = ttl
      if later then keep = ttl + (due - clock()) end
      redis.call('SET', dedup, id, 'PX', keep)
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
return out
