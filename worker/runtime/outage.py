"""A handler's Redis refusing writes (OOM, READONLY, ...) is an outage, not a bad message.

Such an entry waits on this consumer and runs again later, like a retry, but without spending
an attempt: its delivery count is set back by one (XCLAIM RETRYCOUNT, only while it is still
pending on this consumer), so the claim that starts the next run brings it back to where it
was. A full Redis therefore never dead-letters valid events, however long it stays full.
"""

from __future__ import annotations

REWIND_OWNED = """
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] pairs of entry id, delivery count.
-- Sets the delivery count (and resets the idle time) of the entries still pending on this
-- consumer, and only those: a peer that has taken one over keeps it as it is.
local rewound = 0
for i = 3, #ARGV, 2 do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
      'IDLE', 0, 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    rewound = rewound + 1
  end
end
return rewound
"""

OUTAGE_CAP_S = 5.0
"""Longest wait between runs of an entry whose Redis refused it (less if `retry_max` is)."""
