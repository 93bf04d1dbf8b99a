"""A handler that checks, in Redis, that each key's versions apply in increasing order.

Worker subprocesses load it by `module:attr`; it is configured by environment:
TEST_CHECK (prefix of the check keys), TEST_SLEEP (seconds per message), and a message whose
data has `"fail": n` fails its first n attempts.

`CHECK` runs in one step on the server: it compares the event's version with the last one
applied for its key, counts a violation when it goes backwards (an event applied before an
earlier one of its key), a duplicate when it is the same (a redelivery after a crash, which
at-least-once delivery allows), and records it otherwise. So the fleet's order is judged by
Redis, not by any one process.
"""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from worker import BatchHandler, Handler, HandlerContext, Message, Outcome

CHECK = """
-- KEYS[1] last applied version per key (hash), KEYS[2] counters (hash), KEYS[3] log (list)
-- ARGV[1] key, ARGV[2] version
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local v = tonumber(ARGV[2])
if v < last then
  redis.call('HINCRBY', KEYS[2], 'violations', 1)
  redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. ARGV[2] .. ' after ' .. last)
elseif v == last then
  redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
else
  redis.call('HSET', KEYS[1], ARGV[1], v)
  redis.call('HINCRBY', KEYS[2], 'applied', 1)
end
return last
"""


class VersionCheck(Handler):
    """Applies each event through `CHECK`, after an optional sleep."""

    name = "version-check"

    def __init__(self, prefix: str | None = None, sleep: float | None = None) -> None:
        self.prefix = prefix or os.environ.get("TEST_CHECK", "check")
        self.sleep = float(os.environ.get("TEST_SLEEP", "0")) if sleep is None else sleep
        self.redis: Redis | None = None
        self.cancelled: list[str] = []
        """Ids of calls that were cut off (in-process tests read it)."""

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.redis = ctx.redis
        self._check = ctx.redis.register_script(CHECK)

    async def handle(self, msg: Message) -> None:
        data = msg.data
        if isinstance(data, dict) and msg.attempt <= int(data.get("fail", 0)):
            raise RuntimeError(f"failing attempt {msg.attempt} on purpose")
        try:
            if self.sleep:
                await asyncio.sleep(self.sleep)
        except asyncio.CancelledError:
            self.cancelled.append(msg.id)
            raise
        p = self.prefix
        await self._check(
            keys=[f"{p}:last", f"{p}:counts", f"{p}:log"], args=[msg.key, msg.version]
        )


class BatchVersionCheck(BatchHandler):
    """`VersionCheck` as a batch handler: each batch's events go through `CHECK` in order."""

    name = "batch-version-check"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sizes: list[int] = []
        """Sizes of the batches it was called with (in-process tests read them)."""

    async def on_startup(self, ctx: HandlerContext) -> None:
        self._check = ctx.redis.register_script(CHECK)

    async def handle_batch(self, msgs: list[Message]) -> list[Outcome]:
        self.sizes.append(len(msgs))
        p = self.prefix
        for msg in msgs:
            await self._check(
                keys=[f"{p}:last", f"{p}:counts", f"{p}:log"], args=[msg.key, msg.version]
            )
        return [None] * len(msgs)
