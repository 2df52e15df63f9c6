-- register.lua: write a worker's registry entry and reset its TTL, atomically, as one command
-- (MULTI/HSET/PEXPIRE/EXEC is four: this is the idle worker's steady Redis load).
--
-- KEYS[1]  {prefix}:worker:{worker_id}  hash
-- ARGV[1]  TTL in ms, integer > 0
-- ARGV[2..] field, value, field, value, ...
-- Returns 1.
local ttl = tonumber(ARGV[1])
if not ttl or ttl <= 0 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. tostring(ARGV[1]))
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
