-- acquire_first.lua: walk a ranked list of candidate symbols and take the first free one,
-- with a fresh fence token, in one round trip. Same effects as acquire.lua on that symbol.
--
-- KEYS[1]  {prefix}:events            notice stream
-- ARGV[1]  worker_id
-- ARGV[2]  ttl in ms, integer > 0
-- ARGV[3]  ts for the notices: ISO 8601 UTC, milliseconds
-- ARGV[4]  approximate MAXLEN of the stream
-- ARGV[5]  {prefix}: the key prefix with its trailing colon
-- ARGV[6]  the candidate symbols in rank order, separated by single spaces (symbols never hold
--          whitespace, see coordination.keys)
--
-- Keys touched but not declared: {prefix}:lock:{s}, {prefix}:fence:{s}, {prefix}:lease:{s} for
-- the candidates s, built here from ARGV[5] and ARGV[6]. Passing one string instead of three
-- keys per candidate saves ~1 µs of client encoding per candidate (a ranked list has ~100).
-- Building key names inside a script is only safe on a single Redis (or a cluster slot holding
-- every fleet key), which is what the fleet runs on: do not run it on Redis Cluster.
--
-- Returns {i, fence} when candidate i (1-based) is now ours with that fence, {i, fence, expired}
-- when a previous lease on it had expired unreleased (as in acquire.lua), 0 when every
-- candidate is taken (then nothing is written).
local ttl = tonumber(ARGV[2])
if not ttl or ttl <= 0 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR ttl must be a positive integer of ms, got ' .. tostring(ARGV[2]))
end
local prefix = ARGV[5]
local lock_head = prefix .. 'lock:'

local symbols, locks = {}, {}
for symbol in string.gmatch(ARGV[6], '%S+') do
  symbols[#symbols + 1] = symbol
  locks[#locks + 1] = lock_head .. symbol
end

-- One MGET per chunk instead of one EXISTS per candidate (unpack has a stack limit).
local CHUNK = 200
local found = nil
for first = 1, #locks, CHUNK do
  local last = math.min(first + CHUNK - 1, #locks)
  local values = redis.call('MGET', unpack(locks, first, last))
  for j = 1, last - first + 1 do
    if not values[j] then
      found = first + j - 1
      break
    end
  end
  if found then break end
end
if not found then
  return 0
end

local worker_id, ts, maxlen, symbol = ARGV[1], ARGV[3], ARGV[4], symbols[found]
local events = KEYS[1]
local fence = redis.call('INCR', prefix .. 'fence:' .. symbol)
local value = worker_id .. ':' .. fence
redis.call('SET', locks[found], value, 'PX', ttl)
local expired = redis.call('SET', prefix .. 'lease:' .. symbol, value, 'GET')

if expired then
  local old_worker, old_fence = string.match(expired, '^(.*):(%d+)$')
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.expired', 'worker_id', old_worker or expired, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = tonumber(old_fence), taken_over_by = value}))
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = fence, ttl_ms = ttl, recovered_from = expired}))
  return {found, fence, expired}
end
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
  'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
  'data', '{"fence":' .. fence .. ',"ttl_ms":' .. ttl .. '}')
return {found, fence}
