-- dlq_replay.lua: put dead-lettered jobs back on their lane, each as it was first enqueued.
--
-- KEYS[1]: dead-letter stream  mf:{p}:dead
-- KEYS[2]: tx lane stream      mf:{p}:tx
-- KEYS[3]: bulk lane stream    mf:{p}:bulk
-- ARGV[1]: max replays: an entry already replayed this often stays dead
-- ARGV[2..]: dead-letter entry ids
-- Returns: { replayed, refused, missing }
--
-- The original fields (orig_*) are re-added to the lane recorded with the dead entry, so the job
-- keeps its id, payload and enqueue time, plus a `replays` count one higher than before. The
-- XADD and the XDEL of the dead entry are one atomic step: an entry is never both replayed and
-- still dead, and a second replay of the same id finds it missing. The `replays` count travels
-- with the job (a job that dies again is dead-lettered with `orig_replays`), so a job that keeps
-- dying cannot be replayed in a loop.
local max_replays = tonumber(ARGV[1])
if max_replays == nil then return redis.error_reply('dlq_replay: bad max replays') end
local replayed, refused, missing = 0, 0, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if not e[1] then
    missing = missing + 1
  else
    local f = e[1][2]
    local lane, replays, out = nil, 0, {}
    for j = 1, #f, 2 do
      local k, v = f[j], f[j + 1]
      if k == 'lane' then
        lane = v
      elseif k == 'orig_replays' then
        replays = tonumber(v) or 0
      elseif string.sub(k, 1, 5) == 'orig_' then
        out[#out + 1] = string.sub(k, 6)
        out[#out + 1] = v
      end
    end
    local target = nil
    if lane == 'tx' then target = KEYS[2] elseif lane == 'bulk' then target = KEYS[3] end
    if target == nil or #out == 0 or replays >= max_replays then
      refused = refused + 1
    else
      out[#out + 1] = 'replays'
      out[#out + 1] = tostring(replays + 1)
      redis.call('XADD', target, '*', unpack(out))
      redis.call('XDEL', KEYS[1], id)
      replayed = replayed + 1
    end
  end
end
return { replayed, refused, missing }
