-- reap.lua: declare one lease expired, if its lock key is gone and nobody touched it since.
--
-- KEYS[1]  {prefix}:lock:{symbol}   must be absent (the lease's TTL ran out)
-- KEYS[2]  {prefix}:lease:{symbol}  must still hold ARGV[1]
-- KEYS[3]  {prefix}:reaped          hash symbol -> value of the reaped lease
-- KEYS[4]  {prefix}:events          notice stream
-- ARGV[1]  the lease value "{worker_id}:{fence}" the caller saw
-- ARGV[2]  symbol
-- ARGV[3]  ts, ISO 8601 UTC
-- ARGV[4]  approximate MAXLEN of the stream
--
-- Both checks and the effects are one atomic step, so any number of reapers may race on the
-- same lease: exactly one deletes the meta key and appends lock.expired. An acquire that got
-- there first has replaced the meta key (and reported the expiry itself): nothing happens.
-- Returns 1 if reaped, 0 if the lease was live, released, or already taken over or reaped (or
-- the meta key holds bad data now: LeaseReaper.expired repairs that on its next pass).
local value = ARGV[1]
-- pcall: a meta key of the wrong type is an error table here, not an error of the script
if redis.call('EXISTS', KEYS[1]) == 1 or redis.pcall('GET', KEYS[2]) ~= value then
  return 0
end
local worker_id, fence = string.match(value, '^(.*):(%d+)$')
if not worker_id then
  return redis.error_reply('ERR not a lease value: ' .. value)
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], ARGV[2], value)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
  'type', 'lock.expired', 'worker_id', worker_id, 'symbol', ARGV[2], 'ts', ARGV[3],
  'data', '{"fence":' .. fence .. ',"reaped":true}')
return 1
