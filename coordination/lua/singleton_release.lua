-- singleton_release.lua: give up a fleet-wide singleton lease, only if it is still ours.
--
-- KEYS[1]  {prefix}:singleton:{name}   string holder id, PX ttl
-- ARGV[1]  the caller's holder id
--
-- Returns 1 when the caller's lease was deleted, 0 when it was not the holder.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
