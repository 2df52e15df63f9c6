-- singleton_renew.lua: take or extend a fleet-wide singleton lease, only if it is free or ours.
--
-- KEYS[1]  {prefix}:singleton:{name}   string holder id, PX ttl
-- ARGV[1]  the caller's holder id
-- ARGV[2]  the TTL in ms, integer > 0 (replaces the TTL: expiry is never more than one TTL away)
--
-- Returns 1 when the caller holds the lease afterwards (taken now or extended), 0 when another
-- holder has it.
local current = redis.pcall('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if type(current) == 'table' then
  -- another type at the key: nobody's lease; replaced
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
