"""Ledger: the entries this process holds, which bounds memory and feeds the heartbeat.

Beside it, the read gate: the capacity the ledger accounts for is what the gate guards when
takeover needs the process to itself.

An entry is *held* from the moment XREADGROUP (or a claim) hands it to us until it is acked,
dead-lettered or released. Held entries are refreshed by the heartbeat so that no other
consumer takes them over. An entry whose handler failed is *waiting*: still pending on this
consumer, due for another attempt at a known time. Both count towards the capacity, so a
backlog of millions, or a downstream outage that fails everything, never grows memory.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from worker.message import Message


@dataclass(slots=True)
class Waiting:
    """A failed entry waiting for its next attempt."""

    msg: Message
    due: float
    """time.monotonic() at which the next attempt may start."""
    touched_at: float
    """time.monotonic() at which its idle time was last reset in Redis (0: not yet)."""


class Ledger:
    """Held and waiting entries, with room accounting for the read loop.

    Args:
        capacity: most entries held plus waiting at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: dict[str, dict[str, Message]] = {}
        self.waiting: dict[tuple[str, str], Waiting] = {}
        self._count = 0
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._wanted = 0

    def __len__(self) -> int:
        return self._count

    def room(self) -> int:
        """How many more entries may be taken now."""
        return self.capacity - self._count

    async def wait_for_room(self, wanted: int) -> None:
        """Return once `wanted` more entries fit."""
        while self.capacity - self._count < wanted:
            self._wanted = wanted
            self._room.clear()
            await self._room.wait()

    async def wait_empty(self) -> None:
        """Return once nothing is held (waiting entries do not count)."""
        while self.held_count():
            self._empty.clear()
            await self._empty.wait()

    def held_count(self) -> int:
        return self._count - len(self.waiting)

    def hold(self, msg: Message) -> None:
        streams = self.held.get(msg.stream)
        if streams is None:
            streams = self.held[msg.stream] = {}
        if msg.id not in streams:
            self._count += 1
            self._empty.clear()
        streams[msg.id] = msg

    def hold_many(self, stream: str, messages: list[Message]) -> None:
        """Hold a batch of fresh entries of one stream (the read loop's hot path)."""
        held = self.held.get(stream)
        if held is None:
            held = self.held[stream] = {}
        before = len(held)
        for msg in messages:
            held[msg.id] = msg
        if len(held) > before:
            self._count += len(held) - before
            self._empty.clear()

    def is_held(self, stream: str, message_id: str) -> bool:
        held = self.held.get(stream)
        return held is not None and message_id in held

    def drop(self, msg: Message) -> None:
        """Forget an entry that was acked, dead-lettered or released."""
        held = self.held.get(msg.stream)
        if held is not None and held.pop(msg.id, None) is not None:
            self._count -= 1
            self._changed()

    def drop_many(self, stream: str, messages: list[Message]) -> None:
        held = self.held.get(stream)
        if held is None:
            return
        for msg in messages:
            if held.pop(msg.id, None) is not None:
                self._count -= 1
        self._changed()

    def wait_for_retry(self, msg: Message, delay: float) -> None:
        """Move a held entry whose handler failed to the waiting set, due in `delay` seconds."""
        held = self.held.get(msg.stream)
        if held is not None and held.pop(msg.id, None) is not None:
            self.waiting[(msg.stream, msg.id)] = Waiting(msg, time.monotonic() + delay, 0.0)
            self._changed()  # the count is unchanged, but the held set may now be empty

    def touched(self, stream: str, ids: list[str], at: float) -> None:
        """Record that the idle time of these waiting entries was reset at `at`."""
        for message_id in ids:
            entry = self.waiting.get((stream, message_id))
            if entry is not None:
                entry.touched_at = at

    def due(self, now: float) -> list[Waiting]:
        """Waiting entries whose next attempt may start, with a known touch time."""
        return [w for w in self.waiting.values() if w.due <= now and w.touched_at]

    def is_waiting(self, stream: str, message_id: str) -> bool:
        return (stream, message_id) in self.waiting

    def resume(self, entry: Waiting) -> None:
        """A waiting entry was claimed again for its next attempt: it is held once more."""
        if self.waiting.pop((entry.msg.stream, entry.msg.id), None) is not None:
            self._count -= 1
        self.hold(entry.msg)

    def forget_waiting(self, entry: Waiting) -> None:
        """A waiting entry is no longer ours (deleted, or taken over): stop tracking it."""
        if self.waiting.pop((entry.msg.stream, entry.msg.id), None) is not None:
            self._count -= 1
            self._changed()

    def held_ids(self) -> list[tuple[str, list[str]]]:
        """A snapshot of the held ids per stream: callers await between streams, and a read
        of a stream seen for the first time adds to `held` meanwhile."""
        return [(stream, list(held)) for stream, held in list(self.held.items()) if held]

    def _changed(self) -> None:
        if self.capacity - self._count >= self._wanted:
            self._room.set()
        if self._count == len(self.waiting):
            self._empty.set()


class ReadGate:
    """Lets takeover stop the read loop while suspected poison messages run alone."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.parked = asyncio.Event()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        if self._open.is_set():
            return
        self.parked.set()
        try:
            await self._open.wait()
        finally:
            self.parked.clear()
