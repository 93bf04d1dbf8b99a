"""Faults at seeded random times: worker SIGKILL/SIGTERM with restarts, server restarts from
AOF, and cut or stalled links between one worker and the server.

Faults run one after another at their scheduled times; what takes long (a worker's drain and
restart, a stall) runs in a task of its own, so the next fault is not held up. Every choice
(which slot, which signal, how long, which consumer name after a restart) comes from the
scenario's seeded random generator.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from tests.chaos.fleet import Slot
from worker.redis_server import RedisServer

KINDS = ("sigkill", "sigterm", "redis_restart", "cut", "stall")
Fault = tuple[float, str]
"""(seconds after the start, kind)"""


class Chaos:
    """Runs a schedule of faults against a fleet and the server it talks to."""

    def __init__(
        self,
        rng: random.Random,
        slots: list[Slot],
        server: RedisServer,
        redis: Redis,
        stream: str,
        group: str,
    ) -> None:
        self.rng = rng
        self.slots = slots
        self.server = server
        self.redis = redis
        self.stream = stream
        self.group = group
        self.done: Counter[str] = Counter()
        self.same_name_restarts = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._generation = 0

    def schedule(
        self, kinds: tuple[str, ...], count: int, within: float
    ) -> list[tuple[float, str]]:
        """`count` faults drawn from `kinds`, at sorted random times in (2.5 s, `within`):
        from when the workers have started until a little after the last entry."""
        times = sorted(self.rng.uniform(2.5, within) for _ in range(count))
        return [(t, self.rng.choice(kinds)) for t in times]

    async def run(self, schedule: list[Fault]) -> None:
        started = time.monotonic()
        actions: dict[str, Callable[[], Awaitable[bool]]] = {
            "sigkill": lambda: self._stop_worker(signal.SIGKILL),
            "sigterm": lambda: self._stop_worker(signal.SIGTERM),
            "redis_restart": self._restart_server,
            "cut": self._cut,
            "stall": self._stall,
        }
        for at, kind in schedule:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if await actions[kind]():
                self.done[kind] += 1

    async def settle(self) -> None:
        """Wait for the restarts and stalls still under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pick(self) -> Slot | None:
        free = [slot for slot in self.slots if slot.alive and not slot.busy]
        return self.rng.choice(free) if free else None

    async def _stop_worker(self, sig: signal.Signals) -> bool:
        slot = self._pick()
        if slot is None:
            return False
        slot.busy = True
        pending = await self._pending_of(slot.life.consumer)
        # Down for 0 to 3 s: around claim_idle (2 s), so some restarts come back before the
        # others take the dead consumer's entries over, and some after.
        delay = self.rng.uniform(0.0, 3.0)
        same_name = self.rng.random() < 0.5
        self._generation += 1
        name = slot.life.consumer if same_name else f"w{slot.index}-{self._generation}"
        self.same_name_restarts += same_name
        self._spawn(self._replace(slot, sig, pending, delay, name))
        return True

    async def _replace(
        self, slot: Slot, sig: signal.Signals, pending: list[str], delay: float, name: str
    ) -> None:
        try:
            await slot.stop(sig, sig.name.lower(), pending)
            await asyncio.sleep(delay)
            await slot.start(name)
        finally:
            slot.busy = False

    async def _pending_of(self, consumer: str) -> list[str]:
        """The ids pending on `consumer` right now (empty when the server cannot say)."""
        try:
            rows = await self.redis.xpending_range(
                self.stream, self.group, "-", "+", 100_000, consumername=consumer
            )
        except Exception:
            return []
        return [row["message_id"].decode() for row in rows]

    async def _restart_server(self) -> bool:
        """kill -9 the server, keep it down a moment, start it again on the same port."""
        await asyncio.to_thread(self.server.stop, signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))
        await asyncio.to_thread(self.server.start)
        return True

    async def _cut(self) -> bool:
        slot = self.rng.choice(self.slots)
        await slot.proxy.cut()
        return True

    async def _stall(self) -> bool:
        slot = self.rng.choice(self.slots)
        if slot.stalled:
            return False
        self._spawn(self._stall_slot(slot, self.rng.uniform(0.3, 1.5)))
        return True

    async def _stall_slot(self, slot: Slot, seconds: float) -> None:
        slot.stalled = True
        try:
            await slot.proxy.stall(seconds)
        finally:
            slot.stalled = False
