-- dlq_replay.lua: put dead-lettered jobs back on their lane, each as it was first enqueued.
--
-- KEYS[1]: dead-letter stream  mf:{p}:dead
-- KEYS[2]: tx lane stream      mf:{p}:tx
-- KEYS[3]: bulk lane stream    mf:{p}:bulk
-- KEYS[4]: bulk delayed zset   mf:{p}:delayed (optional): a bulk job whose payload names a
--          tenant goes there, due at once (scored by its first enqueue), so promote.lua puts it
--          on its tenant's stream and in the ring, as it does a retry: a replayed backlog keeps
--          each tenant's fair share instead of crowding the shared bulk stream
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
    local lane, replays, out, orig = nil, 0, {}, {}
    for j = 1, #f, 2 do
      local k, v = f[j], f[j + 1]
      if k == 'lane' then
        lane = v
      elseif k == 'orig_replays' then
        replays = tonumber(v) or 0
      elseif string.sub(k, 1, 5) == 'orig_' then
        out[#out + 1] = string.sub(k, 6)
        out[#out + 1] = v
        orig[string.sub(k, 6)] = v
      end
    end
    local target = nil
    if lane == 'tx' then target = KEYS[2] elseif lane == 'bulk' then target = KEYS[3] end
    if target == nil or #out == 0 or replays >= max_replays then
      refused = refused + 1
    else
      local tenant = nil
      if lane == 'bulk' and KEYS[4] and orig.id and orig.payload then
        local ok, p = pcall(cjson.decode, orig.payload)
        if ok and type(p) == 'table' and type(p.tenant) == 'string' and p.tenant ~= '' then
          tenant = p.tenant
        end
      end
      if tenant then
        local member = cjson.encode({ v = orig.v or '1', id = orig.id, idem = orig.idem or '',
                                      enqueued_at = orig.enqueued_at or '0', payload = orig.payload,
                                      lane = 'bulk', tenant = tenant,
                                      replays = tostring(replays + 1) })
        redis.call('ZADD', KEYS[4], tonumber(orig.enqueued_at) or 0, member)
      else
        out[#out + 1] = 'replays'
        out[#out + 1] = tostring(replays + 1)
        redis.call('XADD', target, '*', unpack(out))
      end
      redis.call('XDEL', KEYS[1], id)
      replayed = replayed + 1
    end
  end
end
return { replayed, refused, missing }
