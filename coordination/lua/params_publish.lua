-- params_publish.lua: replace the fleet's live parameters and their version, atomically, unless
-- Redis already holds that version or a newer one (two publishers racing never go backwards).
--
-- KEYS[1]  {prefix}:params          hash   setting name -> value text
-- KEYS[2]  {prefix}:params:version  string integer version
-- ARGV[1]  version, integer > 0
-- ARGV[2..] name, value, name, value, ... (the whole live set; none: every setting from the
--           environment)
-- Returns 1 when published, 0 when Redis already holds ARGV[1] or newer. A version key that
-- holds no integer (bad data) is overwritten.
local version = tonumber(ARGV[1])
if not version or version <= 0 or version ~= math.floor(version) then
  return redis.error_reply('ERR version must be a positive integer, got ' .. tostring(ARGV[1]))
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current and current >= version then
  return 0
end
redis.call('DEL', KEYS[1])
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
end
redis.call('SET', KEYS[2], ARGV[1])
return 1
