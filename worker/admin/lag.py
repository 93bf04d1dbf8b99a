"""An estimate of a group's lag for when Redis reports none.

After a restart from an AOF file, XINFO GROUPS reports `lag` (and `entries-read`) as null until
the group has read to the end of the stream, and also after an XDEL inside the undelivered
range. Lag gauges, the lag alert and autoscaling would go blind exactly when a backlog is most
likely, so the undelivered entries are counted instead: the entries after the group's
`last-delivered-id`, by a bounded XRANGE in a script (only a number crosses the network).
"""

from __future__ import annotations

from redis.asyncio import Redis

LAG_SCAN_LIMIT = 10_000
"""Most entries one count walks on the server (a few milliseconds); see `COUNT_AFTER`."""

COUNT_AFTER = """
-- KEYS[1] stream (one key: fine on Redis Cluster); ARGV[1] last-delivered-id, ARGV[2] limit.
-- The entries after the id, counted up to the limit. Past it, XLEN minus the entries up to
-- the id (exact while nothing was deleted with XDEL); when both sides pass the limit, the
-- limit itself, a lower bound.
local limit = tonumber(ARGV[2])
local after = #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', limit)
if after < limit then
  return after
end
local before = #redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', limit)
if before < limit then
  return redis.call('XLEN', KEYS[1]) - before
end
return limit
"""


async def estimate_lag(redis: Redis, stream: str, last_delivered_id: str) -> int:
    """Entries of `stream` after `last_delivered_id` (see `COUNT_AFTER` for the bounds)."""
    count = await redis.eval(COUNT_AFTER, 1, stream, last_delivered_id, LAG_SCAN_LIMIT)
    return int(count)
