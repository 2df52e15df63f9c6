-- dead_letter.lua: acknowledge stream entries no consumer can read, and count them.
--
-- KEYS[1]  {prefix}:events       notice stream
-- KEYS[2]  {prefix}:events:dead  hash consumer group -> entries dead-lettered by that group
-- ARGV[1]  the consumer group
-- ARGV[2..] entry ids
--
-- Each entry is counted only if this call acknowledged it (it was pending in the group), so an
-- entry handled by two consumers in a race is counted once.
-- Returns one character per id, in order: "1" acknowledged and counted, "0" was not pending.
local flags = {}
local counted = 0
for i = 2, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    flags[i - 1] = '1'
    counted = counted + 1
  else
    flags[i - 1] = '0'
  end
end
if counted > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], counted)
end
return table.concat(flags)
