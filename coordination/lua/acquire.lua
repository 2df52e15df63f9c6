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
--   {fence, expired, kind, key, problem, ...}
--                        bad data was met (see checks.lua), one report per key; `fence` is 0
--                        when the lock was not taken, `expired` '' when none:
--                        'lock'  the lock key held no lease: quarantined for one TTL, or a
--                                lease without TTL given one; not acquired.
--                        'fence' the counter is not an integer >= 1 after INCR: nothing else is
--                                written, not acquired (the caller reseeds it from the ledger).
--                        'lease' the meta key held no lease value: replaced; the lock is ours,
--                                no expiry reported.
-- Appends lock.expired (when a lease had expired) and lock.acquired to the stream.
-- Needs Redis >= 6.2 (SET ... GET).
--#include checks
local ttl = tonumber(ARGV[2])
if not ttl or ttl <= 0 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. tostring(ARGV[2]))
end

local current = redis.pcall('GET', KEYS[1])
if current then
  local problem = check_lock(KEYS[1], current, ttl, true)
  if problem then
    return {0, '', 'lock', KEYS[1], problem}
  end
  return 0
end

local fence, fence_problem = next_fence(KEYS[2])
if not fence then
  return {0, '', 'fence', KEYS[2], fence_problem}
end
local worker_id, ts, maxlen, symbol = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local value = worker_id .. ':' .. fence
redis.call('SET', KEYS[1], value, 'PX', ttl)
local expired, lease_problem = swap_lease(KEYS[3], value)

-- The data objects hold only integers here, so plain concatenation is valid JSON and cheaper
-- than cjson; strings (worker ids may hold any non-space character) go through cjson.
if expired then
  local old_worker, old_fence = string.match(expired, '^(.*):(%d+)$')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.expired', 'worker_id', old_worker, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = tonumber(old_fence), taken_over_by = value}))
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = fence, ttl_ms = ttl, recovered_from = expired}))
  return {fence, expired}
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
  'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
  'data', '{"fence":' .. fence .. ',"ttl_ms":' .. ttl .. '}')
if lease_problem then
  return {fence, '', 'lease', KEYS[3], lease_problem}
end
return fence
