-- acquire_first.lua: walk a ranked list of candidate symbols and take the first free one,
-- with a fresh fence token, in one round trip. Same effects as acquire.lua on that symbol.
--
-- KEYS[1]        {prefix}:events            notice stream
-- KEYS[3i-1]     {prefix}:lock:{symbol_i}   for candidate i = 1..n, in rank order
-- KEYS[3i]       {prefix}:fence:{symbol_i}
-- KEYS[3i+1]     {prefix}:lease:{symbol_i}
-- ARGV[1]        worker_id
-- ARGV[2]        ttl in ms, integer > 0
-- ARGV[3]        ts for the notices: ISO 8601 UTC, milliseconds
-- ARGV[4]        approximate MAXLEN of the stream
-- ARGV[4+i]      symbol_i, for the notices
--
-- Returns {i, fence, expired}: candidate i (1-based) is now ours with that fence; `expired` as in
-- acquire.lua. {0, 0, ""} when every candidate is taken (nothing is written).
local ttl = tonumber(ARGV[2])
if not ttl or ttl <= 0 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. tostring(ARGV[2]))
end
local n = #ARGV - 4
if #KEYS ~= 1 + 3 * n then
  return redis.error_reply('ERR expected 1 + 3 keys per candidate, got ' .. #KEYS .. ' keys')
end

local worker_id, ts, maxlen = ARGV[1], ARGV[3], ARGV[4]
for i = 1, n do
  local lock, fence_key, lease = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  if redis.call('EXISTS', lock) == 0 then
    local symbol = ARGV[4 + i]
    local fence = redis.call('INCR', fence_key)
    local value = worker_id .. ':' .. fence
    redis.call('SET', lock, value, 'PX', ttl)

    local expired = redis.call('GET', lease) or ''
    redis.call('SET', lease, value)
    if expired ~= '' then
      local old_worker, old_fence = string.match(expired, '^(.*):(%d+)$')
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
        'type', 'lock.expired', 'worker_id', old_worker or expired, 'symbol', symbol, 'ts', ts,
        'data', cjson.encode({fence = tonumber(old_fence), taken_over_by = value}))
    end

    local data = {fence = fence, ttl_ms = ttl}
    if expired ~= '' then data.recovered_from = expired end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
      'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
      'data', cjson.encode(data))
    return {i, fence, expired}
  end
end
return {0, 0, ''}
