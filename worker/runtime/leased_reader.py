"""The read loop of ordered routes: XREADGROUP over the partitions this worker leases.

Separate from the common read loop (`worker.runtime.reader`), which leaves these partitions
out, because its reads must keep to the lease: a read includes only partitions whose lease
has more time left than the read can block for, so Redis never delivers an entry to this
consumer after its lease could have run out; and a release waits for the read in flight
(`Ordered.reading_now`), so that no entry lands here after the partition changed hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.connection import REDIS_DOWN, text
from worker.message import Message
from worker.runtime.reader import smallest_read
from worker.topology import is_cluster, refresh_slots

if TYPE_CHECKING:
    from worker.runtime.ordered import Ordered

log = structlog.get_logger("worker.runtime.leased_reader")


async def read_leased(ordered: Ordered) -> None:
    """Read the readable partitions of `ordered` and queue their entries, until stopped."""
    settings, ledger, stats = ordered.settings, ordered.ledger, ordered.stats
    block_s = ordered.block_s
    block_ms = max(int(block_s * 1000), 1)
    batch = settings.batch_size
    least = smallest_read(batch, settings.concurrency)
    while not ordered.stopping:
        stats.last_read_loop = time.monotonic()
        offsets = ordered.readable()
        if not offsets or not ordered.gate.is_open:
            await asyncio.sleep(min(block_s, 0.05))
            continue
        if not ledger.fits(least):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block_s):
                    await ledger.wait_for_room(least)
            continue
        count = leased_count(batch, ledger.room(), len(offsets), is_cluster(ordered.read_redis))
        asked = count * len(offsets)
        ordered.reading_now = frozenset(offsets)
        ledger.reserve(asked)  # the common read loops share the room meanwhile
        try:
            try:
                reply = await _read(ordered, offsets, count, block_ms)
            finally:  # before any wait below; no await until the entries are held
                ledger.unreserve(asked)
        except ResponseError as exc:
            if str(exc).startswith("NOGROUP"):
                await create_groups(ordered.redis, ordered.group, settings.start_id, offsets)
            else:
                log.error("read.failed", error=str(exc))
                await asyncio.sleep(block_s)
            continue
        except REDIS_DOWN as exc:
            log.warning("redis.unavailable", operation="ordered read", error=str(exc))
            await refresh_slots(ordered.read_redis)
            await asyncio.sleep(block_s)
            continue
        finally:
            ordered.reading_now = frozenset()
        # No await from here on: the entries are held before a release can look.
        for name, entries in reply or ():
            stream = text(name)
            msgs = [Message(stream, text(i), f or {}, 1, ordered.group) for i, f in entries]
            ledger.hold_many(stream, msgs)
            for msg in msgs:
                ordered.submit(msg)


def leased_count(batch: int, room: int, partitions: int, cluster: bool) -> int:
    """COUNT of each partition's read, all of them together within the room.

    On one server one XREADGROUP names every partition, and `batch` bounds that read. On a
    cluster each partition is a read of its own, so each may ask for up to `batch`: a share
    of the room rather than of one batch, so that partitions with a backlog take fewer,
    fuller reads.
    """
    if cluster:
        return max(min(batch, room // partitions), 1)
    return max(min(batch, room) // partitions, 1)


async def _read(ordered: Ordered, offsets: dict[str, str], count: int, block_ms: int) -> Any:
    """One XREADGROUP over `offsets`; on a cluster, where partitions sit in different slots
    (that is what their names are for), one per partition, all at once."""
    redis, group, consumer = ordered.read_redis, ordered.group, ordered.consumer
    if len(offsets) == 1 or not is_cluster(redis):
        return await redis.xreadgroup(group, consumer, offsets, count=count, block=block_ms)  # type: ignore[arg-type]
    replies: list[Any] = await asyncio.gather(
        *(
            redis.xreadgroup(group, consumer, {stream: offset}, count=count, block=block_ms)
            for stream, offset in offsets.items()
        ),
        return_exceptions=True,
    )
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return [item for reply in replies if reply for item in reply]


async def create_groups(redis: Redis, group: str, start_id: str, streams: Any) -> None:
    """Create the group on `streams` (after a flush); BUSYGROUP means another worker did."""
    for stream in streams:
        with contextlib.suppress(ResponseError):
            await redis.xgroup_create(stream, group, id=start_id, mkstream=True)
