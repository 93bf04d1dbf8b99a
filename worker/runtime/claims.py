"""Claims: taking pending entries, each under its own guard, for the retry scan and takeover.

A claim carries the guard of each entry as the caller saw it: the consumer holding it, how
long it had been idle, and whether a graceful shutdown had handed it back. In the same script
the entry is claimed only if all of that still holds. A consumer that took the entry over in
the meantime has moved it or reset its idle time, and keeps it: one min-idle for a batch, or
min-idle 0, would take live work away from a peer that is running it.

Entries a graceful shutdown hands back carry a *mark* in a small hash beside their stream
(`handover_key`): the delivery count they go back to (so the hand-over costs no attempt) and
the wall-clock time before which they must not run (a requested retry delay still counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from worker.connection import text
from worker.runtime.stats import Stats

log = structlog.get_logger("worker.runtime.claims")

CLAIM_CHUNK = 200
"""Entries per script call (four arguments each), to keep each call short on the server."""

HANDOVER_SUFFIX = ":handover"

CLAIM_GUARDED = """
-- KEYS[1] stream; KEYS[2] its hand-over hash, in the same hash slot (see handover_key).
-- ARGV[1] group, ARGV[2] this consumer, then four values per entry: its id, the consumer the
-- caller saw holding it, the idle ms the caller saw, and 1 if the caller saw it handed back.
-- Claims each entry only if it is still pending on that consumer, idle at least that long,
-- and (if handed back) still marked. A handed-back entry gets back the delivery count saved
-- in its mark; any other claim counts one more delivery. One XCLAIM per entry, so Lua's
-- unpack limit never applies. Returns {id, delivery count, fields or 0 if deleted} for each
-- claimed entry.
local out = {}
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  local seen = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if seen and seen[2] == ARGV[i + 1] and seen[3] >= tonumber(ARGV[i + 2]) then
    local count = seen[4] + 1
    local mark = redis.call('HGET', KEYS[2], id)
    if ARGV[i + 3] == '1' and mark then
      count = tonumber(string.match(mark, '^%d+'))
    end
    if ARGV[i + 3] ~= '1' or mark then
      if mark then
        redis.call('HDEL', KEYS[2], id)
      end
      local entry = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', count)[1]
      if entry and entry[2] then
        out[#out + 1] = {id, count, entry[2]}
      else
        out[#out + 1] = {id, count, 0}
      end
    end
  end
end
return out
"""


def handover_key(stream: str) -> str:
    """The hash of `stream`'s handed-back entries, in the stream's Redis Cluster hash slot.

    A stream with a hash tag (`orders{eu}`) keeps it; any other name becomes the tag, since a
    key without a tag hashes on its whole name. (A name with a stray `}` cannot be a tag; its
    hash may then live in another slot, which only matters on Redis Cluster.)
    """
    start = stream.find("{")
    if start >= 0 and stream.find("}", start + 1) > start + 1:
        return stream + HANDOVER_SUFFIX
    if "}" in stream:
        return stream + HANDOVER_SUFFIX
    return "{" + stream + "}" + HANDOVER_SUFFIX


def handover_mark(deliveries: int, due_ms: int) -> str:
    """A mark's value: the delivery count to restore, and the earliest run time (epoch ms)."""
    return f"{deliveries} {due_ms}"


def mark_due_ms(mark: bytes | str) -> int:
    """The earliest run time (epoch ms) of a mark."""
    parts = text(mark).split()
    return int(parts[1]) if len(parts) > 1 else 0


@dataclass(frozen=True, slots=True)
class Guard:
    """A pending entry as the caller saw it; claimed only if it is still so."""

    id: str
    owner: str
    idle_ms: int
    handed_back: bool = False


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry now pending on this consumer; `fields` is None if it was deleted."""

    id: str
    deliveries: int
    fields: dict[bytes, bytes] | None


class Claims:
    """Claims entries under their guards, for one group and consumer."""

    def __init__(self, redis: Redis, group: str, consumer: str, stats: Stats) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.stats = stats
        self._claim = redis.register_script(CLAIM_GUARDED)

    async def claim(self, stream: str, guards: list[Guard]) -> list[Claimed]:
        """Claim those of `guards` whose guard still holds."""
        claimed: list[Claimed] = []
        for start in range(0, len(guards), CLAIM_CHUNK):
            args: list[Any] = [self.group, self.consumer]
            for g in guards[start : start + CLAIM_CHUNK]:
                args += [g.id, g.owner, g.idle_ms, 1 if g.handed_back else 0]
            reply = await self._claim(keys=[stream, handover_key(stream)], args=args)
            claimed.extend(_claimed(item) for item in reply)
        return claimed

    async def marks(self, stream: str, ids: list[str]) -> dict[str, bytes | str]:
        """The hand-over marks of those of `ids` that have one."""
        if not ids:
            return {}
        values = await self.redis.hmget(handover_key(stream), ids)
        return {i: v for i, v in zip(ids, values, strict=True) if v is not None}

    async def forget_deleted(self, stream: str, message_id: str, owner: str) -> None:
        """An entry deleted or trimmed while pending: drop it from the pending list for good.

        Redis 7 drops it on XCLAIM already; the XACK covers older servers. Either way it is
        never looped over again.
        """
        await self.redis.xack(stream, self.group, message_id)
        self.stats.deleted_pending[stream] += 1
        log.warning("pending.deleted", stream=stream, message_id=message_id, owner=owner)


def _claimed(item: list[Any]) -> Claimed:
    entry_id, count, flat = item
    fields = None
    if flat:
        fields = {flat[n]: flat[n + 1] for n in range(0, len(flat), 2)}
    return Claimed(text(entry_id), int(count), fields)
