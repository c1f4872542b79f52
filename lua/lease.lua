-- lease.lua: a leader lease with a fencing token (acquire, renew, release).
--
-- KEYS[1]: the lease        mf:lease:{<name>}        value "<token>:<owner>", expiring (PX)
-- KEYS[2]: the fence count  mf:lease:{<name>}:fence  INCR'd once per acquisition
-- ARGV[1]: 'acquire' | 'renew' | 'release'
-- ARGV[2]: owner: unique per process incarnation (consumer name + a random nonce)
-- ARGV[3]: TTL, ms (acquire, renew)
-- ARGV[4]: floor (acquire): the highest token Postgres has seen in leader_fence, or -1 to probe
-- Returns:
--   acquire: { 1, token, ttl } when won; { 0, holder_token, pttl } when another owner holds it;
--            { 2, 0, 0 } when probing (floor -1) found it free: read the floor, then acquire.
--            Candidates poll often; probing first keeps their polls off Postgres while the
--            lease is held.
--   renew:   { 1, token, ttl } while the owner still holds it; { 0, 0, -2 } when not
--   release: { 1 } when the owner's lease was deleted; { 0 } when it was not the owner's
--
-- The token is max(INCR counter, floor + 1): a Redis that restarted without its data starts the
-- counter again at 1, and the floor from Postgres keeps tokens increasing anyway. An owner that
-- acquires while it still holds the lease (its renewal answer was lost) gets a new token, so the
-- caller never acts on a token it cannot prove it won. Renew and release compare the owner
-- first: an expired holder can neither extend nor delete its successor's lease.
local op, owner = ARGV[1], ARGV[2]
if owner == nil or owner == '' then return redis.error_reply('lease: empty owner') end

local function parse(v)
  if not v then return nil, nil end
  local sep = string.find(v, ':', 1, true)
  if not sep then return nil, nil end
  return tonumber(string.sub(v, 1, sep - 1)), string.sub(v, sep + 1)
end

if op == 'acquire' then
  local ttl, floor = tonumber(ARGV[3]), tonumber(ARGV[4])
  if ttl == nil or ttl <= 0 or floor == nil or floor < -1 then
    return redis.error_reply('lease: bad ttl or floor')
  end
  local cur_token, cur_owner = parse(redis.call('GET', KEYS[1]))
  if cur_owner ~= nil and cur_owner ~= owner then
    return { 0, cur_token or 0, redis.call('PTTL', KEYS[1]) }
  end
  if floor == -1 then return { 2, 0, 0 } end
  local token = redis.call('INCR', KEYS[2])
  if token <= floor then
    token = floor + 1
    redis.call('SET', KEYS[2], token)
  end
  if cur_owner == owner then
    redis.call('SET', KEYS[1], token .. ':' .. owner, 'PX', ttl)
  elseif not redis.call('SET', KEYS[1], token .. ':' .. owner, 'NX', 'PX', ttl) then
    -- Unreachable in a script (nothing runs between GET and SET), kept as a guard.
    return { 0, 0, redis.call('PTTL', KEYS[1]) }
  end
  return { 1, token, ttl }
elseif op == 'renew' then
  local ttl = tonumber(ARGV[3])
  if ttl == nil or ttl <= 0 then return redis.error_reply('lease: bad ttl') end
  local cur_token, cur_owner = parse(redis.call('GET', KEYS[1]))
  if cur_owner ~= owner then return { 0, 0, -2 } end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return { 1, cur_token, ttl }
elseif op == 'release' then
  local _, cur_owner = parse(redis.call('GET', KEYS[1]))
  if cur_owner ~= owner then return { 0 } end
  redis.call('DEL', KEYS[1])
  return { 1 }
end
return redis.error_reply('lease: unknown op ' .. tostring(op))
