-- drop_bad_lease.lua: delete a lease meta key that holds bad data, if it still does.
--
-- KEYS[1]  {prefix}:lease:{symbol}  meta: "{worker_id}:{fence}" of the last unreleased lease
--
-- The check and the delete are one step, so a valid lease an acquire wrote after the caller
-- read the bad one is never deleted. A meta key holding no lease value names no lease that could
-- be reported expired: deleting it loses nothing.
-- Returns what was wrong (see checks.lua) if it was deleted, '' if it was absent or valid.
--#include checks
local value = redis.pcall('GET', KEYS[1])
local problem = nil
if type(value) == 'table' then
  problem = wrong_type(KEYS[1], 'a lease value')
elseif value then
  problem = bad_lease_value(value)
end
if not problem then
  return ''
end
redis.call('DEL', KEYS[1])
return problem
