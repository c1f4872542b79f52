-- unenqueue.lua: take back the jobs one enqueue.lua call added, when the batch they belong to
-- failed as a whole (Redis refused a later call of it, at maxmemory say): a batch the producer
-- reports as failed must enqueue nothing.
--
-- KEYS[1]: the stream the call wrote to (a lane's shared stream or a tenant's bulk stream)
-- KEYS[2]: the delayed zset of its lane (jobs due later went there)
-- KEYS[3..]: each job's dedup marker, in the order of ARGV's pairs
-- ARGV[1]: the consumer group
-- ARGV[2..]: per job: (job id, due time in unix ms or 0)
-- Returns: the ids of the jobs that could NOT be taken back because a worker had already
-- read them (they will be sent; their dedup markers stay, so a retry with the same
-- idempotency key is a duplicate, not a second email).
--
-- XDEL, ZREM and DEL free memory, so Redis runs this even at maxmemory. Only entries after the
-- group's last-delivered-id are taken back: nothing a worker read is removed under it.
local want, order = {}, {}
for i = 2, #ARGV, 2 do
  want[ARGV[i]] = tonumber(ARGV[i + 1]) or 0
  order[#order + 1] = ARGV[i]
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms) or 0, tonumber(seq) or 0
end
local last_ms, last_seq = -1, -1
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, delivered
    for k = 1, #g, 2 do
      if g[k] == 'name' then name = g[k + 1] end
      if g[k] == 'last-delivered-id' then delivered = g[k + 1] end
    end
    if name == ARGV[1] and delivered then last_ms, last_seq = parse(delivered) end
  end
end
local taken = {}
local kept = {}
if ok then
  local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 4 * #order + 1000)
  for _, e in ipairs(entries) do
    local f = e[2]
    for k = 1, #f, 2 do
      if f[k] == 'id' then
        local id = f[k + 1]
        if want[id] ~= nil and not taken[id] then
          local ms, seq = parse(e[1])
          if ms > last_ms or (ms == last_ms and seq > last_seq) then
            redis.call('XDEL', KEYS[1], e[1])
            taken[id] = true
          else
            kept[#kept + 1] = id
            taken[id] = false
          end
        end
        break
      end
    end
  end
end
-- Jobs due later wait in the delayed set, scored by their due time.
for _, id in ipairs(order) do
  local due = want[id]
  if taken[id] == nil and due > 0 then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], due, due)) do
      local good, d = pcall(cjson.decode, m)
      if good and d.id == id then
        redis.call('ZREM', KEYS[2], m)
        taken[id] = true
        break
      end
    end
  end
end
for i, id in ipairs(order) do
  local marker = KEYS[2 + i]
  if taken[id] == true and marker and redis.call('GET', marker) == id then
    redis.call('DEL', marker)
  end
end
return kept
