"""The read loops on a Redis Cluster: one per stream, sharing the worker's room.

Each stream has a read loop of its own (one command may only name keys of one slot). A loop
with a backlog asks for a full batch, not a share of one, while all of them together never
ask for more than the worker may hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tests.helpers import eventually, make_settings, pending_count
from worker.keys import key_slot
from worker.message import Message
from worker.redis_cluster import RedisClusterServers
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.reader import Reader, smallest_read
from worker.runtime.stats import Stats

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

STREAMS = 6
ENTRIES = 150  # per stream


class CountingCluster(RedisCluster):
    """A cluster client that records, at each XREADGROUP, its COUNT and what was then held
    and asked for in all (`Ledger.reserve` runs before the call)."""

    ledger: Ledger
    reads: list[tuple[int, int]]

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.reads.append((kwargs["count"], len(self.ledger) + getattr(self.ledger, "reserved", 0)))
        return await super().xreadgroup(*args, **kwargs)


async def test_each_loop_reads_full_batches_within_the_workers_room(
    cluster: Redis, redis_cluster: RedisClusterServers, slotted: dict[str, str]
) -> None:
    """Six streams with a backlog, handlers that finish only when the test says so: every
    read stays within the room left (held plus asked for never above the capacity), reads
    of a stream with a backlog ask for a whole batch, and every entry of every stream is
    read once."""
    streams = [f"test:{slotted['suffix']}:r{n}" for n in range(STREAMS)]
    assert len({key_slot(s) for s in streams}) == STREAMS
    for stream in streams:
        pipe = cluster.pipeline(transaction=False)
        for n in range(ENTRIES):
            pipe.xadd(stream, {"n": n})
        await pipe.execute()
    settings = make_settings(
        redis_cluster.url, slotted["group"], batch_size=64, concurrency=4, read_horizon=0
    )
    ledger = Ledger(2 * settings.batch_size + settings.concurrency)
    client = CountingCluster(host="127.0.0.1", port=redis_cluster.primaries[0].port)
    client.ledger, client.reads = ledger, []
    running: list[Message] = []
    reader = Reader(
        client,  # type: ignore[arg-type]
        settings,
        tuple(streams),
        ledger,
        running.append,
        ReadGate(),
        Stats(),
    )
    await reader.ensure_groups()
    least = smallest_read(settings.batch_size, settings.concurrency)
    task = asyncio.create_task(reader.run())
    seen: list[tuple[str, str]] = []
    try:
        while len(seen) < STREAMS * ENTRIES:
            # the loops read until the room left is below a worthwhile read, and stop there
            # (with entries to finish: reads in flight alone may take the room for a moment)
            await eventually(
                lambda: (
                    (running and ledger.room() < least)
                    or len(seen) + len(running) == STREAMS * ENTRIES
                )
            )
            assert len(ledger) <= ledger.capacity
            batch, running[:] = list(running), []
            seen.extend((m.stream, m.id) for m in batch)
            for msg in batch:  # the handlers finish: room for the next reads
                ledger.drop(msg)
    finally:
        reader.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
    assert max(total for _, total in client.reads) <= ledger.capacity
    assert max(count for count, _ in client.reads) == settings.batch_size
    assert len(set(seen)) == len(seen) == STREAMS * ENTRIES
    for stream in streams:
        assert await pending_count(cluster, stream, slotted["group"]) == ENTRIES  # never acked
