"""Strict order: a message waiting for its retry holds back the later messages of its key.

Without it (the default, also for `ordered = true`), a failed message waits for its retry
while the later messages of its key run on. With `ordered = "strict"`, the key is *blocked*
by the failed message: later messages of the key are parked (still held, and refreshed by
the heartbeat, so they stay pending on this consumer) until the blocker succeeds or is
dead-lettered; then they run in stream order, in the lane that ran the blocker.

The blocker is the one message of its key allowed to run. When it leaves without running
again (dead-lettered by the retry scan once its attempts are spent, or deleted), `sweep`
makes the first parked message the blocker and queues it: whatever of the key is queued
behind it parks, so order holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from worker.message import Message
from worker.runtime.ledger import Ledger

Process = Callable[[Message], Awaitable[None]]


class StrictKeys:
    """Blocked keys and their parked messages, per partition stream."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._blocker: dict[tuple[str, bytes], str] = {}
        self._parked: dict[tuple[str, bytes], deque[Message]] = {}

    def parked_count(self, stream: str) -> int:
        return sum(len(q) for (s, _), q in self._parked.items() if s == stream)

    def blocked(self) -> int:
        return len(self._blocker)

    async def run(
        self, msg: Message, process: Process, current: Callable[[Message], bool]
    ) -> list[Message]:
        """Run `msg` unless its key is blocked by another message (then park it); after a
        blocker succeeds, run its parked followers in order. Returns the messages that were
        found stale (`current` false) and not run."""
        key = msg.lane_key
        if key is None:
            await process(msg)
            return []
        slot = (msg.stream, key)
        blocker = self._blocker.get(slot)
        if blocker is not None and blocker != msg.id:
            self._parked.setdefault(slot, deque()).append(msg)
            return []
        stale: list[Message] = []
        while True:
            await process(msg)
            if self.ledger.is_waiting(msg.stream, msg.id):
                self._blocker[slot] = msg.id  # failed: it holds the key until it is done
                return stale
            self._blocker.pop(slot, None)
            parked = self._parked.get(slot)
            if not parked:
                self._parked.pop(slot, None)
                return stale
            msg = parked.popleft()
            while not current(msg):
                stale.append(msg)
                if not parked:
                    self._parked.pop(slot, None)
                    return stale
                msg = parked.popleft()
            self._blocker[slot] = msg.id

    def sweep(self, submit: Callable[[Message], None]) -> int:
        """Hand each key whose blocker left without running again to its first parked
        message; return how many keys were handed on."""
        moved = 0
        for slot, blocker in list(self._blocker.items()):
            stream = slot[0]
            if self.ledger.is_waiting(stream, blocker) or self.ledger.is_held(stream, blocker):
                continue
            parked = self._parked.get(slot)
            if not parked:
                self._blocker.pop(slot, None)
                self._parked.pop(slot, None)
                continue
            first = parked.popleft()
            if not parked:
                self._parked.pop(slot, None)
            self._blocker[slot] = first.id
            submit(first)
            moved += 1
        return moved

    def forget(self, stream: str) -> list[Message]:
        """The partition was lost or released: unblock its keys, return the parked messages."""
        dropped: list[Message] = []
        for slot in [s for s in self._blocker if s[0] == stream]:
            del self._blocker[slot]
        for slot in [s for s in self._parked if s[0] == stream]:
            dropped.extend(self._parked.pop(slot))
        return dropped
