-- release.lua: give up a lock, only if this exact lease (owner and fence) still holds it.
--
-- KEYS[1]  {prefix}:lock:{symbol}   string "{worker_id}:{fence}"
-- KEYS[2]  {prefix}:lease:{symbol}  last unreleased lease value (meta)
-- KEYS[3]  {prefix}:events          notice stream
-- ARGV[1]  the lease's full value "{worker_id}:{fence}"
-- ARGV[2]  symbol, for the notice
-- ARGV[3]  ts for the notice: ISO 8601 UTC, milliseconds
-- ARGV[4]  approximate MAXLEN of the stream
--
-- Returns 1 if released (and lock.released appended), 0 if the lock was no longer ours; then
-- nothing is written: a lease that expired stays in KEYS[2] for the next acquirer to report.
local value = ARGV[1]
if redis.call('GET', KEYS[1]) ~= value then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == value then
  redis.call('DEL', KEYS[2])
end
local worker_id, fence = string.match(value, '^(.*):(%d+)$')
-- data is {"fence": <integer>}: concatenation is valid JSON and cheaper than cjson.
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'type', 'lock.released', 'worker_id', worker_id or value, 'symbol', ARGV[2], 'ts', ARGV[3],
  'data', fence and ('{"fence":' .. fence .. '}') or '{}')
return 1
