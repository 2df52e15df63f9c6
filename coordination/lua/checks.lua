-- checks.lua: bad-data checks for the scripts that touch lock, lease and fence keys. Pasted in
-- where a script has the line `--#include checks` (coordination._wire.lua_source); it defines
-- locals only and uses no KEYS or ARGV.
--
-- Bad data (a key of the wrong type, a value that is not what the keyspace says) is reported,
-- never raised: a script that meets it repairs or skips that one key and appends a report
-- {kind, key, what was wrong} to its reply (kinds: 'lock', 'lease', 'fence'; see
-- coordination.bad_data). An error reply would fail the whole call, i.e. every symbol of a
-- batch, on every retry.

-- What a quarantined lock key holds. No lease has fence 0, so no holder's renew or release
-- matches it, and it still reads as "{worker_id}:{fence}" to the tools that list locks.
local QUARANTINE = 'quarantine:0'

local function shown(value)
  if #value > 40 then
    value = string.sub(value, 1, 40) .. '...'
  end
  return "'" .. value .. "'"
end

-- nil if `value` reads as a lease "{worker_id}:{fence}" with fence >= 1, else what is wrong.
local function bad_lease_value(value)
  local fence = tonumber(string.match(value, '^%S+:(%d+)$') or '')
  if fence and fence >= 1 then
    return nil
  end
  return 'value ' .. shown(value) .. ' is not "{worker_id}:{fence}"'
end

-- True if `value` is a counter INCR accepts and keeps exact: 0, or digits without a leading
-- zero, at most 15 of them (Lua numbers are doubles).
local function is_count(value)
  return value == '0' or (#value <= 15 and string.match(value, '^[1-9]%d*$') ~= nil)
end

local function wrong_type(key, expected)
  return 'a ' .. redis.call('TYPE', key)['ok'] .. ' where ' .. expected .. ' belongs'
end

-- Checks the lock key `key`, given what GET/MGET returned for it (a string; false when it is
-- absent or not a string; the error table of a pcall'd GET). Returns nil when it is absent or
-- holds a lease or the quarantine, else what was wrong, after repairing it:
--   not a string, or a string that is no lease: replaced by QUARANTINE for `ttl` ms. Deleting
--     it would let the symbol be taken at once, while the holder whose value it overwrote may
--     still act until its local deadline; a lease is valid at most one TTL past its last
--     renew, so after `ttl` ms nobody is.
--   a lease without a TTL (`with_ttl` only: it costs a PTTL): given `ttl`, the value kept (a
--     live holder renews it; a dead one's expires).
local function check_lock(key, value, ttl, with_ttl)
  if not value or type(value) == 'table' then
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
      return nil
    end
    redis.call('SET', key, QUARANTINE, 'PX', ttl)
    return 'a ' .. kind .. ' where a lease value belongs'
  end
  if value ~= QUARANTINE then
    local problem = bad_lease_value(value)
    if problem then
      redis.call('SET', key, QUARANTINE, 'PX', ttl)
      return problem
    end
  end
  if with_ttl and redis.call('PTTL', key) == -1 then
    redis.call('PEXPIRE', key, ttl)
    return shown(value) .. ' had no TTL'
  end
  return nil
end

-- INCR the fence counter `key`. Returns the new fence (>= 1), or nil and what is wrong with the
-- key (then INCR wrote nothing, unless the counter was negative). The caller skips the symbol;
-- the counter is repaired from the ledger's floor (reseed_fence.lua), never guessed here.
local function next_fence(key)
  local fence = redis.pcall('INCR', key)
  if type(fence) == 'number' then
    if fence >= 1 then
      return fence
    end
    return nil, 'counter at ' .. fence .. ' after INCR'
  end
  if redis.call('TYPE', key)['ok'] ~= 'string' then
    return nil, wrong_type(key, 'an integer')
  end
  return nil, 'value ' .. shown(redis.call('GET', key)) .. ' is not an integer'
end

-- SET the lease meta key `key` to `value`. Returns the previous value when it was a lease (false
-- when there was none), and what was wrong when the key held bad data (then it is replaced and
-- the previous value is dropped: it names no lease that can be reported as expired).
local function swap_lease(key, value)
  local previous = redis.pcall('SET', key, value, 'GET')
  if type(previous) == 'table' then -- SET ... GET refuses a non-string and writes nothing
    local problem = wrong_type(key, 'a lease value')
    redis.call('SET', key, value)
    return false, problem
  end
  if previous then
    local problem = bad_lease_value(previous)
    if problem then
      return false, problem
    end
  end
  return previous, nil
end
