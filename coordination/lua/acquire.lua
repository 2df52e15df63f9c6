-- acquire.lua: take the lock on one symbol if nobody owns it, with a fresh fence token.
--
-- KEYS[1]  {prefix}:lock:{symbol}   string "{worker_id}:{fence}" with PX TTL
-- KEYS[2]  {prefix}:fence:{symbol}  integer, INCR per acquisition
-- KEYS[3]  {prefix}:lease:{symbol}  value of the last lease not yet released (meta, no TTL)
-- KEYS[4]  {prefix}:events          notice stream
-- ARGV[1]  worker_id
-- ARGV[2]  ttl in ms, integer > 0
-- ARGV[3]  ts for the notices: ISO 8601 UTC, milliseconds ("2026-01-05T00:00:00.000+00:00")
-- ARGV[4]  approximate MAXLEN of the stream
-- ARGV[5]  symbol, for the notices
--
-- Returns (kept minimal: the reply is parsed on the hot path)
--   fence > 0            the lock is ours with that fence; no previous lease had expired.
--   {fence, expired}     the lock is ours; `expired` is the value of the previous lease, which
--                        ran out without a release (its owner died or stalled).
--   0                    the lock is taken. Nothing is written and no fence is used.
-- Appends lock.expired (when a lease had expired) and lock.acquired to the stream.
-- Needs Redis >= 6.2 (SET ... GET).
local ttl = tonumber(ARGV[2])
if not ttl or ttl <= 0 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. tostring(ARGV[2]))
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end

local worker_id, ts, maxlen, symbol = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local fence = redis.call('INCR', KEYS[2])
local value = worker_id .. ':' .. fence
redis.call('SET', KEYS[1], value, 'PX', ttl)
local expired = redis.call('SET', KEYS[3], value, 'GET')

-- The data objects hold only integers here, so plain concatenation is valid JSON and cheaper
-- than cjson; strings (worker ids may hold any non-space character) go through cjson.
if expired then
  local old_worker, old_fence = string.match(expired, '^(.*):(%d+)$')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.expired', 'worker_id', old_worker or expired, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = tonumber(old_fence), taken_over_by = value}))
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = fence, ttl_ms = ttl, recovered_from = expired}))
  return {fence, expired}
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
  'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
  'data', '{"fence":' .. fence .. ',"ttl_ms":' .. ttl .. '}')
return fence
