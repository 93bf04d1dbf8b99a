"""Lua scripts: the steps that must be atomic on the server."""

from __future__ import annotations

DEAD_LETTER = """
-- KEYS[1] dead-letter stream, KEYS[2] source stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3..] field/value pairs for the dead letter.
-- XADD first: if it fails the script stops and the entry stays pending; the ack follows
-- only a dead letter that exists.
local dead_id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return dead_id
"""

TOUCH_OWNED = """
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] idle ms to set, ARGV[4..] ids.
-- Resets the idle time of the entries that are still pending on this consumer, and only
-- those: a plain XCLAIM would take back an entry another consumer has since taken over.
local args = {KEYS[1], ARGV[1], ARGV[2], 0}
for i = 4, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] then
    args[#args + 1] = ARGV[i]
  end
end
local owned = #args - 4
if owned > 0 then
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[3]
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return owned
"""
