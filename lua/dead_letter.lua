-- dead_letter.lua: move stream entries to the dead-letter stream with a reason, and ack them.
--
-- KEYS[1]: dead-letter stream  mf:{p}:dead
-- KEYS[2]: lane stream         mf:{p}:tx | mf:{p}:bulk | a tenant's bulk stream (the one the entries were read from)
-- ARGV[1]: consumer group
-- ARGV[2]: lane name, recorded with each dead entry
-- ARGV[3..]: quintuples of (stream entry id, reason, error class, last error, attempts)
-- Returns: the number of entries dead-lettered.
--
-- The original fields are copied from the lane stream (XRANGE of the one id), so a malformed
-- entry keeps whatever it had, byte for byte, for inspection and replay. XADD and XACK are one
-- atomic step: an entry is never acked without landing in the dead stream. An entry that is no
-- longer pending in the group is skipped, so a repeated call never dead-letters twice.
local group, lane = ARGV[1], ARGV[2]
if (#ARGV - 2) % 5 ~= 0 then return redis.error_reply('dead_letter: arguments must be quintuples') end
-- A drained tenant stream is deleted: its entries were acked (and dead-lettered) already.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local n = 0
for i = 3, #ARGV, 5 do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[2], group, id, id, 1)
  if pending[1] then
    local fields = { 'reason', ARGV[i + 1], 'class', ARGV[i + 2], 'error', ARGV[i + 3],
                     'attempts', ARGV[i + 4], 'lane', lane, 'source_id', id }
    local orig = redis.call('XRANGE', KEYS[2], id, id)
    if orig[1] then
      local f = orig[1][2]
      for j = 1, #f, 2 do
        fields[#fields + 1] = 'orig_' .. f[j]
        fields[#fields + 1] = f[j + 1]
      end
    end
    redis.call('XADD', KEYS[1], '*', unpack(fields))
    redis.call('XACK', KEYS[2], group, id)
    n = n + 1
  end
end
return n
