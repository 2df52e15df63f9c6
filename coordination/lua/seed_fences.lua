-- seed_fences.lua: raise fence counters to floors taken from the ledger, once per Redis server.
--
-- KEYS[1]      {prefix}:meta             hash run_id, seeded_at, floors
-- KEYS[1+i]    {prefix}:fence:{symbol_i}  i = 1..n
-- ARGV[1]      ts, ISO 8601 UTC
-- ARGV[1+i]    floor for symbol i: the counter is raised to it if lower, never lowered
--
-- The server's run_id is read here, inside the script, so "already seeded on this server" and
-- the seeding itself are one atomic step: when many workers detect a restart at once, the first
-- script to run seeds and records the run_id, the others change nothing.
-- Returns {raised, run_id}: how many counters were raised (-1: already seeded on this server).
-- A counter that is not an integer >= 0 (a wrong type, garbage) is set to its floor and counted
-- as raised; the reply is then {raised, run_id, 'fence', key, problem, ...}, one report per
-- such key (see checks.lua).
--#include checks
local n = #KEYS - 1
if #ARGV ~= n + 1 then
  return redis.error_reply('ERR expected one floor per fence key, got ' .. (#ARGV - 1) .. ' for ' .. n)
end
local info = redis.call('INFO', 'server')
local run_id = string.match(info, 'run_id:(%x+)') or ''
if run_id ~= '' and redis.call('HGET', KEYS[1], 'run_id') == run_id then
  return {-1, run_id}
end
for i = 1, n do
  local floor = tonumber(ARGV[1 + i])
  if not floor or floor < 0 or floor ~= math.floor(floor) then
    return redis.error_reply('ERR floor must be a non-negative integer, got ' .. tostring(ARGV[1 + i]))
  end
end
-- The reply is built in place: unpack() of thousands of reports would overflow Lua's stack.
local raised, reply = 0, {0, run_id}
for i = 1, n do
  local key, floor = KEYS[1 + i], tonumber(ARGV[1 + i])
  local current = redis.pcall('GET', key)
  local problem = nil
  if type(current) == 'table' then
    problem = wrong_type(key, 'an integer')
  elseif current and not is_count(current) then
    problem = 'value ' .. shown(current) .. ' is not an integer >= 0'
  end
  if problem then
    reply[#reply + 1] = 'fence'
    reply[#reply + 1] = key
    reply[#reply + 1] = problem
  end
  if problem or tonumber(current or '0') < floor then
    redis.call('SET', key, ARGV[1 + i])
    raised = raised + 1
  end
end
redis.call('HSET', KEYS[1], 'run_id', run_id, 'seeded_at', ARGV[1], 'floors', n)
reply[1] = raised
return reply
