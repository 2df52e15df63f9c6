-- alert_admit.lua: may the fleet send this alert now? Deduplication and the rate limit in one
-- atomic step, so any number of senders racing on one alert send it once.
--
-- KEYS[1]  {prefix}:alert:seen:{digest}   string, PX dedup window: admitted recently
-- KEYS[2]  {prefix}:alert:rate            integer, PX period: admitted in the current window
-- KEYS[3]  {prefix}:alert:suppressed      integer: refused by the rate limit since the last
--                                         admitted alert
-- ARGV[1]  dedup window in ms, integer > 0
-- ARGV[2]  alerts admitted per period at most, integer > 0
-- ARGV[3]  period in ms, integer > 0
--
-- Returns {1, n} admitted (send it; n alerts were refused by the rate limit before it),
-- {0, 0} a duplicate (an identical alert was admitted within the window), {-1, 0} refused by
-- the rate limit (not marked seen: reported again after the window, it may go out then).
-- A key of another type (bad data) is replaced, never an error.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, 0}
end
local count = redis.pcall('INCR', KEYS[2])
if type(count) == 'table' then
  redis.call('DEL', KEYS[2])
  count = redis.call('INCR', KEYS[2])
end
if redis.call('PTTL', KEYS[2]) < 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if count > tonumber(ARGV[2]) then
  if type(redis.pcall('INCR', KEYS[3])) == 'table' then
    redis.call('DEL', KEYS[3])
    redis.call('INCR', KEYS[3])
  end
  return {-1, 0}
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
-- GET then DEL (the script is atomic): the ACL user has no GETDEL
local suppressed = redis.pcall('GET', KEYS[3])
redis.call('DEL', KEYS[3])
if type(suppressed) ~= 'string' then
  suppressed = '0'
end
return {1, tonumber(suppressed) or 0}
