-- fence_epoch.lua: were the fence counters seeded on the Redis server answering now?
--
-- KEYS[1]  {prefix}:meta   hash; field run_id = the server the fences were last seeded on
--
-- Returns {seeded_run_id or "", current run_id}. They differ after Redis restarted without
-- persistence or failed over to a replica: fence counters may have been lost or be behind.
local info = redis.call('INFO', 'server')
local run_id = string.match(info, 'run_id:(%x+)') or ''
return {redis.call('HGET', KEYS[1], 'run_id') or '', run_id}
