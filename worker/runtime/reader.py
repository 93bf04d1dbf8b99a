"""The read loop: XREADGROUP over every routed stream, with room left for what it reads.

On one server a single XREADGROUP names every stream; on a Redis Cluster, where a command
may only name keys of one slot, each stream has a read loop of its own.

It survives everything but a shutdown: connection errors are retried with capped backoff,
and a missing group (NOGROUP, after a restart without persistence or a flush) is recreated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.connection import REDIS_DOWN, Reconnect, text
from worker.errors import GroupRefused
from worker.message import Message
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.readahead import ReadAhead
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings
from worker.topology import is_cluster, refresh_slots

log = structlog.get_logger("worker.runtime.reader")


class Reader:
    """Reads new entries for this consumer and hands them to `submit`."""

    def __init__(
        self,
        redis: Redis,
        settings: WorkerSettings,
        streams: tuple[str, ...],
        ledger: Ledger,
        submit: Callable[[Message], None],
        gate: ReadGate,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.streams = streams
        self.ledger = ledger
        self.submit = submit
        self.gate = gate
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self.connected = False
        self._stopping = False
        self._offsets: dict[Any, Any] = {stream: ">" for stream in streams}
        self._entry_bytes = 0
        """Bytes an entry is expected to take, from recent reads (0: none read yet)."""
        self.readahead = ReadAhead(settings.concurrency, settings.read_horizon, ledger, stats)
        self._turn = asyncio.Lock()
        """Held by a read loop while it waits for room and sizes its read (`_read_loop`)."""

    async def ensure_groups(self, *, recreated: bool = False) -> None:
        """Create the group on every stream where it is missing (with the stream itself).

        Raises:
            GroupRefused: Redis refused to create a missing group (ACL, OOM, ...).
        """
        for stream in self.streams:
            try:
                if not await self._create_if_missing(stream):
                    continue
            except ResponseError as exc:
                raise GroupRefused(stream, self.group, exc) from exc
            if recreated:
                self.stats.group_recreated[stream] += 1
                log.warning(
                    "group.recreated",
                    stream=stream,
                    group=self.group,
                    start_id=self.settings.start_id,
                    note="the group was missing (Redis restarted without persistence, "
                    "or was flushed); reading resumes from start_id",
                )
            else:
                log.info(
                    "group.created",
                    stream=stream,
                    group=self.group,
                    start_id=self.settings.start_id,
                )

    async def _create_if_missing(self, stream: str) -> bool:
        """Create the group on `stream` unless it exists; True if this call created it.

        XGROUP CREATE is ACL-checked and refused when Redis is full (it is `denyoom`) before
        it finds the group exists: ask XINFO GROUPS first, so that a user without XGROUP, or
        a full Redis, still starts where the group is already there.
        """
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
        else:
            if any(text(info["name"]) == self.group for info in groups):
                return False
        try:
            await self.redis.xgroup_create(
                stream, self.group, id=self.settings.start_id, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False  # another consumer created it meanwhile
        return True

    def exclude(self, streams: tuple[str, ...]) -> None:
        """Leave `streams` to another read loop (the partitions of ordered routes); their
        groups are still created here."""
        for stream in streams:
            self._offsets.pop(stream, None)

    def stop(self) -> None:
        """End `run` at its next turn (the caller also cancels it, to cut a blocking read)."""
        self._stopping = True

    async def run(self) -> None:
        streams = list(self._offsets)  # without those read elsewhere (`exclude`)
        if len(streams) > 1 and is_cluster(self.redis):
            # One XREADGROUP may only name keys of one slot: on a cluster each stream gets a
            # read loop of its own, all sharing the ledger's room and the read gate.
            async with asyncio.TaskGroup() as loops:
                for stream in streams:
                    loops.create_task(self._read_loop({stream: ">"}, len(streams)))
        else:
            await self._read_loop(self._offsets, 1)

    async def _read_loop(self, offsets: dict[Any, Any], loops: int) -> None:
        """Read `offsets` until stopped.

        Args:
            loops: the read loops sharing the ledger's room: one per stream on a cluster,
                else 1 (one read names every stream).
        """
        reconnect = Reconnect("read", self.stats)
        block_ms = max(int(self.settings.block * 1000), 1)
        batch = self.settings.batch_size
        least = smallest_read(batch, self.settings.concurrency)
        backlog = False
        """Whether the last read came back full: the stream has more to read at once."""
        while not self._stopping:
            self.stats.last_read_loop = time.monotonic()
            if not offsets:  # every stream is read elsewhere (`exclude`)
                await asyncio.sleep(self.settings.block)
                continue
            await self.gate.wait_open()
            # On a cluster the loops take turns at the room, first come first served (an
            # asyncio.Lock wakes its waiters in order), so that a loop with a backlog that
            # reads again at once cannot take every place freed before the others' turn.
            async with self._turn:
                if not self.gate.is_open:
                    continue  # it closed while this loop waited for its turn: park first
                if not await self._wait_for_room(least) or self._stopping:
                    continue  # the gate closed meanwhile (park before reading more), or stopping
                limit = max(min(batch, self.ledger.room(), self._fit_in_bytes()), 1)
                wanted = self.readahead.count(limit)
                if not wanted:  # slow handlers: leave the entries to idle peers until a lane frees
                    await self.readahead.wait_for_release(self.settings.block)
                    continue
                count = read_count(wanted, len(offsets), loops, backlog=backlog)
                asked = count * len(offsets)  # COUNT bounds each stream a read names
                self.ledger.reserve(asked)
            try:
                try:
                    reply = await self.redis.xreadgroup(
                        self.group, self.consumer, offsets, count=count, block=block_ms
                    )
                finally:  # before any back-off below; no await until the entries are held
                    self.ledger.unreserve(asked)
            except ResponseError as exc:
                if _group_gone(exc):
                    await self._recover_group(reconnect)
                    continue
                # Anything else (ACL denied, OOM, a replica read-only...) may clear up: say so
                # loudly and keep trying, rather than stop consuming for good.
                log.error("read.failed", error=str(exc))
                await reconnect.pause(exc)
                continue
            except REDIS_DOWN as exc:
                self.connected = False
                await reconnect.pause(exc)
                await refresh_slots(self.redis)  # a failover: see worker.topology
                continue
            self.connected = True
            reconnect.succeeded()
            backlog = _came_back_full(reply, count)
            if reply:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        group = self.group
        submit = self.submit
        for stream_name, entries in reply:
            stream = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
            messages = [
                Message(stream, entry_id.decode(), fields or {}, 1, group)
                for entry_id, fields in entries
            ]
            size = self.ledger.hold_many(stream, messages)  # held before any can finish
            if messages:
                self._learn_entry_bytes(size // len(messages))
            for msg in messages:
                submit(msg)

    def _fit_in_bytes(self) -> int:
        """Entries that fit in the byte budget left, at the expected size; XREADGROUP's COUNT
        is the only bound a read has, so a read overshoots only when the entries outgrow
        the expectation. The first read takes one entry, to learn their size."""
        if not self.settings.held_bytes_max:
            return self.settings.batch_size  # no byte budget: nothing to learn
        if not self._entry_bytes:
            return 1
        return self.ledger.bytes_room() // self._entry_bytes - self.ledger.reserved

    def _learn_entry_bytes(self, mean: int) -> None:
        """Follow larger entries at once, smaller ones by halves."""
        self._entry_bytes = max(mean, self._entry_bytes // 2, 1)

    async def _wait_for_room(self, wanted: int) -> bool:
        """Wait until `wanted` entries fit and the byte budget is not spent; False if the
        gate closed first.

        Bounded waits keep the liveness timestamp fresh while slow handlers fill the room,
        and let the reclaimer park this loop even when the room is full of entries waiting
        for their retry (which only the reclaimer can start).
        """
        while not self.ledger.fits(wanted) and not self._stopping:
            if not self.gate.is_open:
                return False
            try:
                async with asyncio.timeout(self.settings.block):
                    await self.ledger.wait_for_room(wanted)
            except TimeoutError:
                self.stats.last_read_loop = time.monotonic()
        return True

    async def _recover_group(self, reconnect: Reconnect) -> None:
        try:
            await self.ensure_groups(recreated=True)
        except REDIS_DOWN as exc:
            self.connected = False
            await reconnect.pause(exc)
        except GroupRefused as exc:  # may clear up (memory freed, ACL fixed): keep trying
            log.error("group.recreate_failed", stream=exc.stream, group=exc.group, error=str(exc))
            await reconnect.pause(exc)


def smallest_read(batch_size: int, concurrency: int) -> int:
    """The fewest free places worth a read: the reader refills once this many are free.

    Each read asks for as many entries as there is room for, up to `batch_size`. While the
    handlers keep up, the room is always larger and every read is a full batch. While they
    fall behind, the reader tops the queue up once half a batch has been freed, instead of
    waiting for a whole batch and then parsing it in one turn of the event loop, which delays
    every timer due meanwhile. Smaller top-ups are not always better: each read costs a round
    trip and its own CPU, and where round trips are slow every wake-up for a reply pushes back
    the timers of sleeping handlers (docs/performance.md, change 9, measured both ways). The
    lane floor keeps a small set batch from turning into a read per message.
    """
    return min(batch_size, max(concurrency, batch_size // 2))


def read_count(wanted: int, streams: int, loops: int, *, backlog: bool) -> int:
    """COUNT of the next XREADGROUP of a loop that may take `wanted` entries in all.

    One read naming `streams` streams may bring COUNT from each: it asks a share of
    `wanted` per stream. On a cluster, `loops` loops of one stream each share the room
    (`Ledger.reserve`): a loop whose last read came back full (`backlog`) asks for all
    that is left, so that a backlog costs one read per batch rather than one per
    loop-share of it; the others ask for their share of it, since a read that finds nothing
    holds its room while it blocks, and a loop with a backlog would have to wait for it.
    """
    if streams > 1:
        return max(wanted // streams, 1)
    return wanted if backlog or loops <= 1 else max(wanted // loops, 1)


def _came_back_full(reply: Any, count: int) -> bool:
    """Whether a read brought `count` entries of some stream: it likely has more."""
    return bool(reply) and any(len(entries) >= count for _, entries in reply)


def _group_gone(exc: ResponseError) -> bool:
    """NOGROUP, or a blocked read cut short because the stream (and its group) was deleted."""
    message = str(exc)
    return message.startswith("NOGROUP") or message.startswith("UNBLOCKED")
