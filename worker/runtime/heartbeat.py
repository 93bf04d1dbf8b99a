"""Heartbeat: keeps every entry this process holds from looking abandoned.

Every `heartbeat_interval` (a third of `claim_idle`) the idle time of each held entry is reset
in Redis, so no other consumer takes over live work, however long it waits or runs. The same
script hands entries back on shutdown (`release`) and restarts a failed entry's backoff clock
(the settler), always only for entries still pending on this consumer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from redis.asyncio import Redis

from worker.connection import tolerate
from worker.message import Message
from worker.runtime.ledger import Ledger
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

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

    async def run(self) -> None:
        """Beat until cancelled. On a task of its own: a suspect running alone may take longer
        than `claim_idle`, and must not lose its entry meanwhile."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await tolerate("heartbeat", self.stats, self.beat)

    async def beat(self) -> None:
        """Reset the idle time of every held entry that is still pending on this consumer."""
        for stream, ids in list(self.ledger.held_ids()):  # a snapshot: set_idle awaits
            await self.set_idle(stream, ids, 0)

    async def release(self, messages: list[Message]) -> None:
        """Hand entries this process will not finish to the fleet: mark them idle for
        `claim_idle` so the next scan of any consumer takes them over."""
        per_stream: defaultdict[str, list[str]] = defaultdict(list)
        for msg in messages:
            per_stream[msg.stream].append(msg.id)
        idle_ms = int(self.settings.claim_idle * 1000)
        for stream, ids in per_stream.items():
            await self.set_idle(stream, ids, idle_ms)

    async def set_idle(self, stream: str, ids: list[str], idle_ms: int) -> None:
        """Set the idle time of those of `ids` still pending on this consumer."""
        for start in range(0, len(ids), TOUCH_CHUNK):
            await self._touch(
                keys=[stream],
                args=[self.group, self.consumer, idle_ms, *ids[start : start + TOUCH_CHUNK]],
            )
