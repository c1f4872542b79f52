-- settle.lua: after a tenant stream's entries are acked (or retried, or dead-lettered), delete
-- them, and keep the stream and the ring in step.
--
-- KEYS[1]: the tenant's bulk stream  mf:{p}:bulk:t:<tenant>
-- KEYS[2]: bulk ring                 mf:{p}:bulk:ring
-- KEYS[3]: held                      mf:{p}:bulk:held
-- ARGV[1]: consumer group
-- ARGV[2]: the tenant
-- ARGV[3..]: entry ids now acked, to delete
-- Returns: the entries left on the stream (0: it is gone).
--
-- read.lua takes a tenant out of the ring once nothing on its stream is left to read, and the
-- stream stays while deliveries are outstanding. This is where that ends: a stream with nothing
-- left is deleted (with its group) and the tenant leaves the held set; a stream with entries
-- nobody has read yet (enqueued while the tenant was out of the ring) puts the tenant back in
-- the ring at its lowest virtual time. Entries are only ever deleted here after their ack, so
-- an empty stream has no delivery outstanding. One atomic step with the enqueues and reads of
-- the partition: a new entry either finds the stream (and this call sees it waiting) or finds
-- it gone (and enqueue.lua re-creates it and joins).
local group, tenant = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #ARGV > 2 then redis.call('XDEL', KEYS[1], unpack(ARGV, 3)) end
local len = redis.call('XLEN', KEYS[1])
if len == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], tenant)
  redis.call('ZREM', KEYS[3], tenant)
  return 0
end
if not redis.call('ZSCORE', KEYS[2], tenant) then
  local p = redis.pcall('XPENDING', KEYS[1], group)
  local pending = 0
  if type(p) == 'table' and not p.err then pending = tonumber(p[1]) or 0 end
  if len > pending then
    local low = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    redis.call('ZADD', KEYS[2], 'NX', tonumber(low[2]) or 0, tenant)
    if not low[1] then redis.call('ZADD', KEYS[2], 'NX', 0, '') end
  end
end
return len
