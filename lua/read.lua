-- read.lua: one non-blocking read that serves the tx lane strictly before the bulk lane.
--
-- KEYS[1]: tx stream    mf:{p}:tx
-- KEYS[2]: bulk stream  mf:{p}:bulk
-- ARGV[1]: consumer group
-- ARGV[2]: consumer name
-- ARGV[3]: batch size n (> 0)
-- ARGV[4]: '0' when the tx lane is paused (not read), else '1'
-- ARGV[5]: '0' when the bulk lane is paused, else '1'
-- Returns: { tx_entries, bulk_entries }, each a list of { entry_id, { field, value, ... } };
--          bulk is read only for the room tx left in the batch, so a tx backlog is never
--          starved by bulk and one round trip fills the batch.
-- The caller falls back to a blocking XREADGROUP on both streams when both lists are empty.
local n = tonumber(ARGV[3])
if n == nil or n <= 0 then return redis.error_reply('read: bad batch size') end

local function read(key, count)
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS', key, '>')
  if r and r[1] then return r[1][2] end
  return {}
end

local tx = {}
if ARGV[4] ~= '0' then tx = read(KEYS[1], n) end
local bulk = {}
if #tx < n and ARGV[5] ~= '0' then bulk = read(KEYS[2], n - #tx) end
return { tx, bulk }
