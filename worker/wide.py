"""Stream entries too wide for a Lua script: read them exactly, write them without `unpack`.

A Lua script can only pass a variable number of arguments to `redis.call` through `unpack`,
which refuses more than about 8,000 values: an XADD of an entry with more than ~4,000 fields
cannot run inside a script at all. Such entries are written by a plain XADD inside MULTI/EXEC,
followed in the same transaction by a script that checks whether the write should stand and,
if not, deletes the entry just added. Nothing runs between the commands of a transaction, so
the newest entry of the stream is the one this transaction added; the script still checks its
length and last fields before deleting it, in case the XADD itself failed (a WRONGTYPE key).

WATCH is not used: XCLAIM and XACK by another consumer do not mark the stream key as modified
(Redis's t_stream.c calls no signalModifiedKey for them), so WATCH cannot see an entry change
hands. The check script asks XPENDING instead.

All keys of one transaction must live on one server (Redis Cluster: one hash slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from worker.connection import text
from worker.topology import is_cluster

LUA_ITEMS = 7000
"""Most values a script passes to one `redis.call` (Lua's `unpack` stops near 8,000)."""

TAIL = 4
"""Trailing field items a check script compares to recognise the entry it may delete."""

READ_RANGE = """
-- KEYS[1] stream; ARGV[1] start, ARGV[2] end, ARGV[3] count.
-- XRANGE as Redis stores it: each entry's fields as a flat list, repeated names kept
-- (redis-py turns them into a dict, which keeps only the last value of a repeated name).
return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
"""

DROP_NEWEST = """
-- Deletes the newest entry of `key` if it has `count` field items ending with the items
-- ARGV[tail .. tail+3]: the entry the XADD before this script added in the same MULTI.
local function drop_newest(key, count, tail)
  if redis.call('TYPE', key).ok ~= 'stream' then
    return false
  end
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if not newest or #newest[2] ~= count then
    return false
  end
  for i = 0, 3 do
    if newest[2][count - 3 + i] ~= ARGV[tail + i] then
      return false
    end
  end
  redis.call('XDEL', key, newest[1])
  return true
end
"""


def fits(items: int) -> bool:
    """Whether a script may pass `items` values to one command."""
    return items <= LUA_ITEMS


def tail(fields: Sequence[bytes | str]) -> list[bytes | str]:
    """The items a check script compares (see DROP_NEWEST)."""
    return list(fields[-TAIL:])


async def read_range(
    redis: Redis, stream: str, start: str, end: str, count: int
) -> list[tuple[str, list[bytes]]]:
    """Entries from `start` to `end` with their exact fields as flat lists, oldest first.

    EVAL_RO (Redis 7.0+) declares the key read-only, so a user with only read access to the
    stream (`%R~`) may run it, which plain EVAL would refuse.
    """
    found: Any = await redis.eval_ro(READ_RANGE, 1, stream, start, end, count)
    return [(text(entry_id), list(fields)) for entry_id, fields in found or ()]


async def read_fields(redis: Redis, stream: str, entry_id: str) -> list[bytes] | None:
    """One entry's exact fields as a flat list, or None when it no longer exists."""
    found = await read_range(redis, stream, entry_id, entry_id, 1)
    return found[0][1] if found else None


async def add_then_check(
    redis: Redis,
    adds: Sequence[Sequence[bytes | str | int]],
    check: Any,
    keys: Sequence[str],
    args: Sequence[bytes | str | int],
) -> tuple[list[Any], Any]:
    """MULTI, each XADD in `adds` (its arguments after the command name), the `check` script,
    EXEC: the script sees the new entries as the newest of their streams.

    Returns:
        (the XADD replies, the script's reply); a failed command's reply is its exception.

    Raises:
        ResponseError: the transaction was refused as a whole (OOM, READONLY, ...).
    """
    pipe = redis.pipeline(transaction=True)
    for command in adds:
        pipe.execute_command("XADD", *command)
    if is_cluster(redis):  # redis-py refuses EVALSHA in a cluster pipeline, not EVAL
        pipe.execute_command("EVAL", check.script, len(keys), *keys, *args)
    else:
        await check(keys=list(keys), args=list(args), client=pipe)
    results = list(await pipe.execute(raise_on_error=False))
    return results[:-1], results[-1]
