-- reseed_fence.lua: repair one symbol's fence counter from a floor taken from the ledger.
--
-- KEYS[1]  {prefix}:fence:{symbol}  integer, INCR per acquisition
-- ARGV[1]  floor: the ledger's highest fence for the symbol plus headroom, integer >= 0
--
-- A counter that is not an integer >= 0 (a wrong type, garbage) is replaced by the floor; a
-- valid one is raised to the floor if lower, never lowered, so the fence never goes backwards.
-- Returns {counter now, what was wrong or ''}.
--#include checks
local floor = tonumber(ARGV[1])
if not floor or floor < 0 or floor ~= math.floor(floor) then
  return redis.error_reply('ERR floor must be a non-negative integer, got ' .. tostring(ARGV[1]))
end
local current = redis.pcall('GET', KEYS[1])
local problem = ''
if type(current) == 'table' then
  problem = wrong_type(KEYS[1], 'an integer')
elseif current and not is_count(current) then
  problem = 'value ' .. shown(current) .. ' is not an integer >= 0'
end
local count = floor
if problem == '' and current and tonumber(current) >= floor then
  count = tonumber(current)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return {count, problem}
