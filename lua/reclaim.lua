-- reclaim.lua: take over entries that a crashed or stalled consumer left pending too long.
--
-- KEYS[1]: lane stream         mf:{p}:tx | mf:{p}:bulk
-- KEYS[2]: dead-letter stream  mf:{p}:dead
-- ARGV[1]: consumer group
-- ARGV[2]: this consumer's name
-- ARGV[3]: min idle time, ms (the visibility timeout: longer than any legitimate send)
-- ARGV[4]: cursor to start from ('0-0' for the beginning)
-- ARGV[5]: most entries to claim in this call
-- ARGV[6]: max deliveries: an entry delivered more often is dead-lettered instead of retried
-- ARGV[7]: lane name, recorded with dead entries
-- ARGV[8]: '1' when KEYS[1] is a tenant stream: a dead-lettered entry is deleted after its ack
--          (the caller then runs settle.lua)
-- Returns: { next_cursor, { {entry_id, {field, value, ...}}, ... }, { job id of each entry
--          dead-lettered ('' when it had none) }, deleted }
--
-- XAUTOCLAIM raises each claimed entry's delivery count; entries over the limit go to the dead
-- stream (with their delivery count and last idle time) and are acked in the same step, so a
-- poison entry that crashes every worker that reads it stops circulating. The caller marks the
-- returned jobs dead in Postgres, so the reconciler does not start the circle again. Entries
-- deleted from the stream while pending are dropped from the PEL by XAUTOCLAIM itself (Redis 7)
-- and counted.
local group, me = ARGV[1], ARGV[2]
local min_idle, count, max_deliveries = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
if min_idle == nil or count == nil or count <= 0 or max_deliveries == nil then
  return redis.error_reply('reclaim: bad arguments')
end
-- A tenant stream is deleted once drained (settle.lua): nothing to take over.
if redis.call('EXISTS', KEYS[1]) == 0 then return { '0-0', {}, {}, 0 } end
local r = redis.call('XAUTOCLAIM', KEYS[1], group, me, min_idle, ARGV[4], 'COUNT', count)
local next_cursor, claimed, deleted = r[1], r[2], r[3] or {}
local keep, dead = {}, {}
for _, entry in ipairs(claimed) do
  local id, fields = entry[1], entry[2]
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  local deliveries = (p[1] and p[1][4]) or 1
  if deliveries > max_deliveries then
    local out = { 'reason', 'max_deliveries', 'class', 'no_outcome',
                  'error', 'delivered ' .. deliveries .. ' times without an outcome',
                  'attempts', tostring(deliveries), 'lane', ARGV[7], 'source_id', id }
    local job = ''
    if type(fields) == 'table' then
      for j = 1, #fields, 2 do
        out[#out + 1] = 'orig_' .. fields[j]
        out[#out + 1] = fields[j + 1]
        if fields[j] == 'id' then job = fields[j + 1] end
      end
    end
    redis.call('XADD', KEYS[2], '*', unpack(out))
    redis.call('XACK', KEYS[1], group, id)
    if ARGV[8] == '1' then redis.call('XDEL', KEYS[1], id) end
    dead[#dead + 1] = job
  else
    keep[#keep + 1] = entry
  end
end
return { next_cursor, keep, dead, #deleted }
