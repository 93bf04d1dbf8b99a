"""An estimate of a group's lag for when Redis reports none.

After a restart from an AOF file, XINFO GROUPS reports `lag` (and `entries-read`) as null until
the group has read to the end of the stream, and also after an XDEL inside the undelivered
range. Lag gauges, the lag alert and autoscaling would go blind exactly when a backlog is most
likely, so the undelivered entries are counted instead: the entries after the group's
`last-delivered-id`, by a bounded XRANGE in a script (only a number crosses the network).
"""

from __future__ import annotations

from redis.asyncio import Redis

LAG_SCAN_LIMIT = 2_000
"""Most entries one count walks on the server per side: about 4 ms of Redis's time
(`python -m bench.lag_estimate`); see `COUNT_AFTER`."""

COUNT_AFTER = """
-- KEYS[1] stream (one key: fine on Redis Cluster); ARGV[1] last-delivered-id, ARGV[2] limit.
-- The entries after the id, counted up to the limit. Past it, XLEN minus the entries up to
-- the id (exact while nothing was deleted with XDEL); when both sides pass the limit, -1.
local limit = tonumber(ARGV[2])
local after = #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', limit)
if after < limit then
  return after
end
local before = #redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', limit)
if before < limit then
  return redis.call('XLEN', KEYS[1]) - before
end
return -1
"""


async def estimate_lag(redis: Redis, stream: str, last_delivered_id: str) -> int:
    """Entries of `stream` after `last_delivered_id`: counted when either side of it holds
    fewer than `LAG_SCAN_LIMIT` entries, else interpolated from the entries' timestamps."""
    count = int(await redis.eval(COUNT_AFTER, 1, stream, last_delivered_id, LAG_SCAN_LIMIT))
    if count >= 0:
        return count
    info = await redis.xinfo_stream(stream)
    first, last = info["first-entry"][0], info["last-entry"][0]
    return interpolate(int(info["length"]), _ms(first), _ms(last), _ms(last_delivered_id))


def interpolate(length: int, first_ms: int, last_ms: int, delivered_ms: int) -> int:
    """The share of `length` added after `delivered_ms`, assuming a steady write rate; never
    below the limit that both sides exceeded, nor above what is not delivered for sure."""
    share = (last_ms - delivered_ms) / (last_ms - first_ms) if last_ms > first_ms else 0.5
    return min(max(round(length * share), LAG_SCAN_LIMIT), length - LAG_SCAN_LIMIT)


def _ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])
