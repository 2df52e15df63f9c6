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
-- When bad data was met (see checks.lua): {i, fence, expired, kind, key, problem, ...}, one
-- report per bad key, i and fence 0 when no candidate was taken, expired '' when none. A
-- candidate whose lock key holds no lease is quarantined and skipped, one whose fence counter is
-- not an integer is skipped (the caller reseeds it from the ledger), and the walk goes on to the
-- next candidate. Lock values of taken candidates are checked cheaply (see below) and their
-- TTLs not at all (a PTTL per candidate): acquire.lua repairs a lease without TTL.
--#include checks
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

-- The reply with bad-data reports, built in place: unpack() of thousands of reports would
-- overflow Lua's stack. Its first three elements are filled in at the end.
local reports = {0, 0, ''}
local function report(kind, key, problem)
  reports[#reports + 1] = kind
  reports[#reports + 1] = key
  reports[#reports + 1] = problem
end

-- One MGET per chunk instead of one GET per candidate (unpack has a stack limit). MGET answers
-- nil for a key that is not a string, so a nil is checked before it counts as free. A taken
-- candidate's value is checked in full only if its last byte is no digit (a lease value ends in
-- its fence): the full check costs ~0.5 µs per candidate, this one ~0.05 µs, and it catches
-- all garbage but a string that happens to end in a digit (acquire.lua and renew.lua catch
-- that one when they meet it).
local CHUNK = 200
local byte = string.byte
local found, fence = nil, nil
for first = 1, #locks, CHUNK do
  local last = math.min(first + CHUNK - 1, #locks)
  local values = redis.call('MGET', unpack(locks, first, last))
  for j = 1, last - first + 1 do
    local i = first + j - 1
    local value = values[j]
    local tail = value and byte(value, -1) or 0
    if tail < 48 or tail > 57 then
      local problem = check_lock(locks[i], value, ttl, false)
      if problem then
        report('lock', locks[i], problem)
      elseif not value then
        local fence_key = prefix .. 'fence:' .. symbols[i]
        local fence_problem
        fence, fence_problem = next_fence(fence_key)
        if fence then
          found = i
          break
        end
        report('fence', fence_key, fence_problem)
      end
    end
  end
  if found then break end
end
if not found then
  if #reports == 3 then
    return 0
  end
  return reports
end

local worker_id, ts, maxlen, symbol = ARGV[1], ARGV[3], ARGV[4], symbols[found]
local events = KEYS[1]
local value = worker_id .. ':' .. fence
redis.call('SET', locks[found], value, 'PX', ttl)
local lease_key = prefix .. 'lease:' .. symbol
local expired, lease_problem = swap_lease(lease_key, value)
if lease_problem then
  report('lease', lease_key, lease_problem)
end

if expired then
  local old_worker, old_fence = string.match(expired, '^(.*):(%d+)$')
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.expired', 'worker_id', old_worker, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = tonumber(old_fence), taken_over_by = value}))
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
    'data', cjson.encode({fence = fence, ttl_ms = ttl, recovered_from = expired}))
else
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'type', 'lock.acquired', 'worker_id', worker_id, 'symbol', symbol, 'ts', ts,
    'data', '{"fence":' .. fence .. ',"ttl_ms":' .. ttl .. '}')
end
if #reports > 3 then
  reports[1], reports[2], reports[3] = found, fence, expired or ''
  return reports
end
if expired then
  return {found, fence, expired}
end
return {found, fence}
