-- recover.lua: announce that a live worker took over a symbol whose previous lease expired.
--
-- KEYS[1]  {prefix}:reaped   hash symbol -> value of a reaped lease not yet taken over
-- KEYS[2]  {prefix}:events   notice stream
-- ARGV[1]  symbol
-- ARGV[2]  the new owner's worker_id
-- ARGV[3]  the new owner's fence
-- ARGV[4]  the expired lease the acquire itself reported (Lease.recovered_from), or ""
-- ARGV[5]  ts, ISO 8601 UTC
-- ARGV[6]  approximate MAXLEN of the stream
--
-- A reaped entry older than the new fence is removed in the same step as lock.recovered is
-- appended, so that announcement happens once however many callers race. Without a reaped
-- entry, ARGV[4] (if set) is announced as is.
-- A reaped entry or ARGV[4] that is no lease value (bad data: it names no lease to announce)
-- is dropped, not an error: one bad entry must not fail every mirror pass that reaches it.
-- Returns the previous lease value announced, or "" when there was nothing to announce.
local fence = tonumber(ARGV[3])
local previous = ''
local reaped = redis.call('HGET', KEYS[1], ARGV[1])
if reaped then
  local old_fence = tonumber(string.match(reaped, '^.+:(%d+)$') or '')
  if not old_fence then
    redis.call('HDEL', KEYS[1], ARGV[1])
  elseif fence and old_fence < fence then
    redis.call('HDEL', KEYS[1], ARGV[1])
    previous = reaped
  end
end
if previous == '' then
  previous = ARGV[4]
end
local old_worker, old_fence = string.match(previous, '^(.+):(%d+)$')
if not old_worker then
  return ''
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'type', 'lock.recovered', 'worker_id', ARGV[2], 'symbol', ARGV[1], 'ts', ARGV[5],
  'data', cjson.encode({fence = fence, from_worker = old_worker, from_fence = tonumber(old_fence)}))
return previous
