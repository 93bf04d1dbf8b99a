"""Lanes: bounded concurrency with per-key order, and no task per message.

Each lane is one long-lived coroutine that runs its queue in order. A message with a key
always goes to the lane its key hashes to, so two messages of one entity never run at once and
keep their stream order; messages without a key are spread round-robin. Creating an asyncio
task per message would cost more than a no-op handler; a lane whose handlers do not suspend
runs a whole batch in one go.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from worker.message import Message

Process = Callable[[Message], Awaitable[None]]


class _Lane:
    __slots__ = ("closed", "current", "queue", "task", "waiter")

    def __init__(self) -> None:
        self.queue: deque[Message] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.current: Message | None = None
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    async def run(self, process: Process) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()
        while True:
            while queue:
                msg = queue.popleft()
                self.current = msg
                await process(msg)  # never raises: the dispatcher settles every outcome
                self.current = None
            if self.closed:
                return
            self.waiter = loop.create_future()
            await self.waiter

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.waiter = None


class Lanes:
    """A fixed set of lanes that run `process` on submitted messages.

    Args:
        size: number of lanes, which is the most messages processed at once.
        process: the per-message coroutine; it must settle every outcome itself.
    """

    def __init__(self, size: int, process: Process) -> None:
        self._lanes = [_Lane() for _ in range(size)]
        self._process = process
        self._next = 0

    def start(self) -> None:
        for index, lane in enumerate(self._lanes):
            lane.task = asyncio.create_task(
                lane.run(self._process), name=f"syncworker-lane-{index}"
            )

    def submit(self, msg: Message) -> None:
        """Queue a message on its key's lane (or the next lane, when it has no key)."""
        lanes = self._lanes
        key = msg.raw.get(b"key")
        if key is None:
            self._next = index = (self._next + 1) % len(lanes)
        else:
            index = hash(key) % len(lanes)
        lane = lanes[index]
        lane.queue.append(msg)
        if lane.waiter is not None:
            lane.wake()

    def busy(self) -> int:
        """Messages running right now."""
        return sum(1 for lane in self._lanes if lane.current is not None)

    def close(self) -> list[Message]:
        """Stop taking work; return the queued messages that never started."""
        unstarted: list[Message] = []
        for lane in self._lanes:
            lane.closed = True
            unstarted.extend(lane.queue)
            lane.queue.clear()
            lane.wake()
        return unstarted

    async def wait(self, timeout: float) -> list[Message]:
        """Wait up to `timeout` seconds for running messages; cancel and return the rest."""
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        else:
            pending = set()
        interrupted = [
            lane.current for lane in self._lanes if lane.task in pending and lane.current
        ]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return interrupted

    def cancel(self) -> None:
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
