"""Heartbeat: keeps every entry this process holds from looking abandoned.

Every `heartbeat_interval` (a third of `claim_idle`) the idle time of each held entry, and of
each failed entry waiting for its next attempt, is reset in Redis, so no other consumer takes
over live work, however long it waits or runs: a requested retry delay longer than
`claim_idle` is kept by the whole fleet while this process lives. The same script restarts a
failed entry's backoff clock (the settler), always only for entries still pending on this
consumer. On shutdown `release` hands entries back, marked so that the next consumer runs
them as ordinary work (see `worker.runtime.claims`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from worker.connection import tolerate
from worker.message import Message
from worker.runtime.claims import handover_key, handover_mark
from worker.runtime.ledger import Ledger, Waiting
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

RETRY_S = 0.25
"""Seconds before the next beat after one failed."""

TOUCH_CHUNK = 500
"""Ids per script call, to keep each call short on the server."""

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

RELEASE_OWNED = """
-- KEYS[1] stream; KEYS[2] its hand-over hash, in the same hash slot (see handover_key).
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] idle ms to set, ARGV[4] seconds the hash lives,
-- then pairs: id, mark. Of the entries still pending on this consumer, marks each handed back
-- and sets its idle time, in one step: no scan sees one without the other.
local released = 0
for i = 5, #ARGV, 2 do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    released = released + 1
  end
end
if released > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return released
"""

MARK_TTL_S = 7 * 24 * 3600
"""Seconds a stream's hand-over marks outlive the last release. Should no consumer run for
that long, the entries are still taken over, but as suspects (one attempt each)."""


class Heartbeat:
    """Refreshes held entries on a timer of its own, and hands entries back on shutdown."""

    def __init__(
        self, redis: Redis, settings: WorkerSettings, ledger: Ledger, stats: Stats
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.ledger = ledger
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self._touch = redis.register_script(TOUCH_OWNED)
        self._release = redis.register_script(RELEASE_OWNED)

    async def run(self) -> None:
        """Beat until cancelled. On a task of its own: a suspect running alone may take longer
        than `claim_idle`, and must not lose its entry meanwhile.

        After a failed beat the next one comes soon (`RETRY_S`), not a whole interval later:
        while Redis was away nothing was refreshed, and the entries must be refreshed as soon
        as it answers again, before peers' scans take them for abandoned (takeover gives them
        a heartbeat interval for that).
        """
        interval = self.settings.heartbeat_interval
        pause = interval
        while True:
            await asyncio.sleep(pause)
            beaten = await tolerate("heartbeat", self.stats, self.beat)
            pause = interval if beaten else min(RETRY_S, interval)

    async def beat(self) -> None:
        """Reset the idle time of every held or waiting entry still pending on this consumer."""
        owned = list(self.ledger.held_ids()) + self.ledger.waiting_ids()  # snapshot, then await
        for stream, ids in owned:
            await self.set_idle(stream, ids, 0)

    async def release(self, messages: list[Message], waiting: Sequence[Waiting] = ()) -> None:
        """Hand entries this process will not finish to the fleet.

        Each is marked handed back and made idle for `claim_idle`, so the next scan of any
        consumer (or this name's next process) takes it over at once, as ordinary work: an
        entry that never started, or that the shutdown interrupted, goes back to the delivery
        count it was read with; a failed entry waiting for its retry keeps its due time.
        """
        now_ms = int(time.time() * 1000)
        per_stream: defaultdict[str, list[Any]] = defaultdict(list)
        for msg in messages:
            per_stream[msg.stream] += [msg.id, handover_mark(msg.attempt, 0)]
        clock = time.monotonic()
        for entry in waiting:
            due_ms = now_ms + int(max(entry.due - clock, 0.0) * 1000)
            per_stream[entry.msg.stream] += [
                entry.msg.id,
                handover_mark(entry.msg.attempt + 1, due_ms),
            ]
        idle_ms = int(self.settings.claim_idle * 1000)
        for stream, pairs in per_stream.items():
            for start in range(0, len(pairs), 2 * TOUCH_CHUNK):
                await self._release(
                    keys=[stream, handover_key(stream)],
                    args=[
                        self.group,
                        self.consumer,
                        idle_ms,
                        MARK_TTL_S,
                        *pairs[start : start + 2 * TOUCH_CHUNK],
                    ],
                )

    async def set_idle(self, stream: str, ids: list[str], idle_ms: int) -> None:
        """Set the idle time of those of `ids` still pending on this consumer."""
        for start in range(0, len(ids), TOUCH_CHUNK):
            await self._touch(
                keys=[stream],
                args=[self.group, self.consumer, idle_ms, *ids[start : start + TOUCH_CHUNK]],
            )
