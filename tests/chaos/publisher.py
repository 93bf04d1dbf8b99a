"""Publishes the planned entries at a steady rate, straight to the server, through its restarts.

Each entry gets an explicit, increasing id. When a connection drops mid-batch the batch is sent
again: an entry the server already has is then refused ("equal or smaller than the target
stream top item") instead of being added twice, so every planned entry exists exactly once.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.chaos.events import Planned

DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class Publisher:
    """Adds `entries` to `stream` in batches, spread over `duration` seconds."""

    def __init__(self, redis: Redis, stream: str, entries: list[Planned], duration: float):
        self.redis = redis
        self.stream = stream
        self.entries = entries
        self.duration = duration
        self.ids: dict[int, str] = {}
        """seq -> entry id, for every entry the server has."""
        self.retried_batches = 0
        self._last_ms = 0

    def _next_id(self, seq: int) -> str:
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return f"{self._last_ms}-{seq + 1}"

    async def run(self, batch: int = 25) -> None:
        started = time.monotonic()
        per_entry = self.duration / max(len(self.entries), 1)
        for first in range(0, len(self.entries), batch):
            chunk = self.entries[first : first + batch]
            ids = [self._next_id(entry.seq) for entry in chunk]
            await self._add(chunk, ids)
            ahead = started + (first + len(chunk)) * per_entry - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def _add(self, chunk: list[Planned], ids: list[str]) -> None:
        """Add one batch, again and again until the server has every entry of it."""
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for entry, entry_id in zip(chunk, ids, strict=True):
                    pipe.xadd(self.stream, entry.fields, id=entry_id)  # type: ignore[arg-type]
                results = await pipe.execute(raise_on_error=False)
                landed = [await self._landed(r, i) for r, i in zip(results, ids, strict=True)]
                if all(landed):
                    for entry, entry_id in zip(chunk, ids, strict=True):
                        self.ids[entry.seq] = entry_id
                    return
            except DOWN:
                pass
            self.retried_batches += 1
            await asyncio.sleep(0.1)

    async def _landed(self, result: object, entry_id: str) -> bool:
        if not isinstance(result, Exception):
            return True
        if isinstance(result, ResponseError) and "equal or smaller" in str(result):
            return bool(await self.redis.xrange(self.stream, entry_id, entry_id))
        if isinstance(result, DOWN):
            return False
        raise result
