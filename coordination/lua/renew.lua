-- renew.lua: extend a batch of leases in one round trip, each only if it is still ours.
--
-- Compact form (what RedisSymbolLock sends when every lease has the same TTL), no KEYS:
--   ARGV[1]  the new TTL in ms, integer > 0, for every lease
--   ARGV[2]  the leases as "{lock key} {value} " pairs, each field followed by one space, where
--            value is the lease's full expected value "{worker_id}:{fence}" (key names and
--            worker ids never hold whitespace, see coordination.keys)
--   One string instead of two arguments per lease saves ~0.7 µs of client encoding per lease (a
--   worker renews every lease it holds in one batch). The lock keys then travel undeclared,
--   which is only safe on a single Redis (or a cluster slot holding every fleet key): do not
--   use this form on Redis Cluster.
-- Declared-keys form (leases with different TTLs, tools), n >= 1 KEYS:
--   KEYS[i]      {prefix}:lock:{symbol_i}
--   ARGV[2i-1]   expected value "{worker_id}:{fence}" of lease i
--   ARGV[2i]     new TTL of lease i in ms, integer > 0
--
-- The TTL is replaced (PEXPIRE sets it to exactly the given ms), never added to, so a renew can
-- never push expiry further than one TTL from now. Every TTL is checked before any key is
-- touched, so a bad argument changes nothing.
-- Returns a string with one character per lease, in order: "1" renewed, "0" lost (key gone or
-- holding another value). When the key of a lost lease held bad data (see checks.lua: no lease
-- there, quarantined for its lease's TTL; a lease without TTL, given one), the reply is
-- {flags, kind, key, problem, ...} with one 'lock' report per such key.
--#include checks
local function bad_ttl(ttl)
  local ms = tonumber(ttl)
  return not ms or ms <= 0 or ms ~= math.floor(ms)
end

local keys, values, ttls = {}, {}, {}
local n = 0
if #KEYS == 0 then
  if #ARGV ~= 2 then
    return redis.error_reply('ERR expected 2 args without keys, got ' .. #ARGV)
  end
  local ttl = ARGV[1]
  if bad_ttl(ttl) then
    return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. ttl)
  end
  for key, value in string.gmatch(ARGV[2], '(%S+) (%S+) ') do
    n = n + 1
    keys[n], values[n], ttls[n] = key, value, ttl
  end
else
  n = #KEYS
  if #ARGV ~= 2 * n then
    return redis.error_reply('ERR expected 2 args per key, got ' .. #ARGV .. ' for ' .. n .. ' keys')
  end
  for i = 1, n do
    keys[i], values[i], ttls[i] = KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]
    if bad_ttl(ttls[i]) then
      return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. ttls[i])
    end
  end
end

-- One MGET per chunk rather than one GET per lease (unpack has a stack limit). MGET answers
-- nil for a key that is not a string: such a lease is lost, and the key is checked.
-- reports: the reply when bad data was met, built in place (unpack() of thousands of reports
-- would overflow Lua's stack); its first element, the flags, is filled in at the end.
local flags, reports = {}, {''}
local CHUNK = 200
for first = 1, n, CHUNK do
  local last = math.min(first + CHUNK - 1, n)
  local current = redis.call('MGET', unpack(keys, first, last))
  for i = first, last do
    if current[i - first + 1] == values[i] then
      redis.call('PEXPIRE', keys[i], ttls[i])
      flags[i] = '1'
    else
      flags[i] = '0'
      local problem = check_lock(keys[i], current[i - first + 1], ttls[i], true)
      if problem then
        reports[#reports + 1] = 'lock'
        reports[#reports + 1] = keys[i]
        reports[#reports + 1] = problem
      end
    end
  end
end
if #reports > 1 then
  reports[1] = table.concat(flags)
  return reports
end
return table.concat(flags)
