-- renew.lua: extend a batch of leases in one round trip, each only if it is still ours.
--
-- KEYS[i]      {prefix}:lock:{symbol_i}   i = 1..n
-- ARGV[2i-1]   expected value "{worker_id}:{fence}" of lease i
-- ARGV[2i]     new TTL of lease i in ms, integer > 0
--
-- The TTL is replaced (PEXPIRE sets it to exactly ARGV[2i]), never added to, so a renew can
-- never push expiry further than one TTL from now. Every TTL is checked before any key is
-- touched, so a bad argument changes nothing.
-- Returns a list of n integers: 1 = renewed, 0 = lost (key gone or holding another value).
local n = #KEYS
if #ARGV ~= 2 * n then
  return redis.error_reply('ERR expected 2 args per key, got ' .. #ARGV .. ' for ' .. n .. ' keys')
end
for i = 1, n do
  local ttl = tonumber(ARGV[2 * i])
  if not ttl or ttl <= 0 or ttl ~= math.floor(ttl) then
    return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. tostring(ARGV[2 * i]))
  end
end

local renewed = {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[2 * i - 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
