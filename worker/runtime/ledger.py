"""Ledger: the entries this process holds, which bounds memory and feeds the heartbeat.

Beside it, the read gate: the capacity the ledger accounts for is what the gate guards when
takeover needs the process to itself.

An entry is *held* from the moment XREADGROUP (or a claim) hands it to us until it is acked,
dead-lettered or released. Held entries are refreshed by the heartbeat so that no other
consumer takes them over. An entry whose handler failed is *waiting*: still pending on this
consumer, due for another attempt at a known time. Both count towards the capacity, so a
backlog of millions, or a downstream outage that fails everything, never grows memory.

The capacity is a number of entries and a number of bytes (the entries' field names and
values: what a read costs in memory). A count alone let 400 entries of 1 MB take 430 MB. No
read can be bounded in bytes beforehand, so the byte budget is checked between reads: once it
is spent, the read loop waits until it is not. While nothing is kept at all, a read may
always take one entry, so that an entry larger than the whole budget still runs, alone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
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


def entry_size(raw: Mapping[bytes, bytes]) -> int:
    """Bytes of an entry's field names and values (what its fields cost in memory, give or
    take Python's per-object overhead)."""
    size = 0
    for name, value in raw.items():
        size += len(name) + len(value)
    return size


class Ledger:
    """Held and waiting entries, with room accounting for the read loop.

    Args:
        capacity: most entries held plus waiting at once.
        bytes_max: most bytes (`entry_size`) held plus waiting before reading pauses;
            0 for no byte bound.
    """

    def __init__(self, capacity: int, bytes_max: int = 0) -> None:
        self.capacity = capacity
        self.bytes_max = bytes_max or sys.maxsize
        self.bytes = 0
        """Bytes of the entries held and waiting (see `entry_size`)."""
        self.held: dict[str, dict[str, Message]] = {}
        self.waiting: dict[tuple[str, str], Waiting] = {}
        self._count = 0
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._wanted = 0
        self.reserved = 0
        """Entries asked for by reads in flight (`reserve`): room they may fill on return."""

    def __len__(self) -> int:
        return self._count

    def room(self) -> int:
        """How many more entries may be taken now, net of the reads in flight."""
        return self.capacity - self._count - self.reserved

    def bytes_room(self) -> int:
        """How many more bytes may be taken now (a read may overshoot it: see `fits`)."""
        return max(self.bytes_max - self.bytes, 0)

    def fits(self, wanted: int) -> bool:
        """Whether a read of `wanted` entries may start: room for them, and bytes to spare
        (always true when nothing is kept, even if one entry outweighs the budget)."""
        return self.room() >= wanted and self.bytes < self.bytes_max

    async def wait_for_room(self, wanted: int) -> None:
        """Return once `wanted` more entries fit, and the byte budget is not spent."""
        while not self.fits(wanted):
            self._wanted = wanted
            self._room.clear()
            await self._room.wait()

    async def wait_empty(self) -> None:
        """Return once nothing is held (waiting entries do not count)."""
        while self.held_count():
            self._empty.clear()
            await self._empty.wait()

    def reserve(self, count: int) -> None:
        """Set room aside for a read of up to `count` entries about to be sent.

        On a cluster every stream has a read loop of its own (`worker.runtime.reader`), all
        in flight at once: what each may ask for is what the others have not asked for
        already, so that the entries held plus those asked for never exceed the capacity.
        """
        self.reserved += count

    def unreserve(self, count: int) -> None:
        """A read returned (or failed): release its room; what it brought is held by now."""
        self.reserved -= count
        self._changed()

    def held_count(self) -> int:
        return self._count - len(self.waiting)

    def hold(self, msg: Message) -> None:
        streams = self.held.get(msg.stream)
        if streams is None:
            streams = self.held[msg.stream] = {}
        previous = streams.get(msg.id)
        if previous is None:
            self._count += 1
            self._empty.clear()
        else:
            self.bytes -= previous.size
        msg.size = entry_size(msg.raw)
        self.bytes += msg.size
        streams[msg.id] = msg

    def hold_many(self, stream: str, messages: list[Message]) -> int:
        """Hold a batch of fresh entries of one stream (the read loop's hot path); return
        their bytes."""
        held = self.held.get(stream)
        if held is None:
            held = self.held[stream] = {}
        before = len(held)
        added = 0
        for msg in messages:
            # entry_size, inlined: a call per entry costs as much as the sum (measured, a plain
            # loop is also cheaper here than two sum(map(len, ...)), ~220 against ~350 ns)
            size = 0
            for name, value in msg.raw.items():
                size += len(name) + len(value)
            msg.size = size
            added += size
            held[msg.id] = msg
        if len(held) > before:
            self._count += len(held) - before
            self._empty.clear()
        if len(held) - before == len(messages):
            self.bytes += added
        else:  # some were held already (never so for fresh reads): count from scratch
            self._recount_bytes()
        return added

    def is_held(self, stream: str, message_id: str) -> bool:
        held = self.held.get(stream)
        return held is not None and message_id in held

    def drop(self, msg: Message) -> None:
        """Forget an entry that was acked, dead-lettered or released."""
        held = self.held.get(msg.stream)
        if held is not None and (kept := held.pop(msg.id, None)) is not None:
            self._count -= 1
            self.bytes -= kept.size
            self._changed()

    def drop_many(self, stream: str, messages: list[Message]) -> None:
        held = self.held.get(stream)
        if held is None:
            return
        pop = held.pop
        dropped = freed = 0
        for msg in messages:
            kept = pop(msg.id, None)
            if kept is not None:
                dropped += 1
                freed += kept.size
        self._count -= dropped
        self.bytes -= freed
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
        if (kept := self.waiting.pop((entry.msg.stream, entry.msg.id), None)) is not None:
            self._count -= 1
            self.bytes -= kept.msg.size
        self.hold(entry.msg)

    def forget_waiting(self, entry: Waiting) -> None:
        """A waiting entry is no longer ours (deleted, or taken over): stop tracking it."""
        if (kept := self.waiting.pop((entry.msg.stream, entry.msg.id), None)) is not None:
            self._count -= 1
            self.bytes -= kept.msg.size
            self._changed()

    def waiting_ids(self) -> list[tuple[str, list[str]]]:
        """Waiting entries by stream (a snapshot: safe to await while going through it)."""
        per_stream: dict[str, list[str]] = {}
        for stream, message_id in self.waiting:
            per_stream.setdefault(stream, []).append(message_id)
        return list(per_stream.items())

    def held_ids(self) -> list[tuple[str, list[str]]]:
        """A snapshot of the held ids per stream: callers await between streams, and a read
        of a stream seen for the first time adds to `held` meanwhile."""
        return [(stream, list(held)) for stream, held in list(self.held.items()) if held]

    def _recount_bytes(self) -> None:
        kept = [m for held in self.held.values() for m in held.values()]
        self.bytes = sum(m.size for m in kept) + sum(w.msg.size for w in self.waiting.values())

    def _changed(self) -> None:
        if self.fits(self._wanted):
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
