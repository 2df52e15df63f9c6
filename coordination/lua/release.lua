-- release.lua: give up a lock, only if this exact lease (owner and fence) still holds it.
--
-- KEYS[1]  {prefix}:lock:{symbol}   string "{worker_id}:{fence}"
-- KEYS[2]  {prefix}:lease:{symbol}  last unreleased lease value (meta)
-- KEYS[3]  {prefix}:events          notice stream
-- ARGV[1]  the lease's full value "{worker_id}:{fence}"
-- ARGV[2]  symbol, for the notice
-- ARGV[3]  ts for the notice: ISO 8601 UTC, milliseconds
-- ARGV[4]  approximate MAXLEN of the stream
-- ARGV[5]  the lease's TTL in ms: how long a lock key found holding bad data is quarantined
--
-- Returns 1 if released (and lock.released appended), 0 if the lock was no longer ours; then
-- nothing is written: a lease that expired stays in KEYS[2] for the next acquirer to report.
-- When bad data was met (see checks.lua) the reply is {1 or 0, kind, key, problem, ...}:
--   'lock'   the lock key held no lease (quarantined), or a lease without TTL (given one); the
--            lease was not ours any more.
--   'lease'  the meta key held no lease value: deleted (it can name no expired lease).
--#include checks
local value = ARGV[1]
local current = redis.pcall('GET', KEYS[1])
if current ~= value then
  local problem = check_lock(KEYS[1], current, ARGV[5], true)
  if problem then
    return {0, 'lock', KEYS[1], problem}
  end
  return 0
end
redis.call('DEL', KEYS[1])
local meta = redis.pcall('GET', KEYS[2])
local meta_problem = nil
if meta == value then
  redis.call('DEL', KEYS[2])
elseif type(meta) == 'table' then
  meta_problem = wrong_type(KEYS[2], 'a lease value')
elseif meta then
  meta_problem = bad_lease_value(meta)
end
if meta_problem then
  redis.call('DEL', KEYS[2])
end
local worker_id, fence = string.match(value, '^(.*):(%d+)$')
-- data is {"fence": <integer>}: concatenation is valid JSON and cheaper than cjson.
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'type', 'lock.released', 'worker_id', worker_id or value, 'symbol', ARGV[2], 'ts', ARGV[3],
  'data', fence and ('{"fence":' .. fence .. '}') or '{}')
if meta_problem then
  return {1, 'lease', KEYS[2], meta_problem}
end
return 1
