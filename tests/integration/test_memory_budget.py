"""The entries a worker keeps in memory are bounded in bytes, not only in number."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import Redis

from tests.helpers import WorkerProcess, eventually, make_settings, pending_count, running
from worker import Message, Worker, handler
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

MB = 1024 * 1024
BUDGET = 32 * MB
ENTRIES = 200


async def publish_large(redis: Redis, stream: str, count: int = ENTRIES) -> None:
    """`count` entries of one 1 MB field each, in pipelines of 10 (10 MB per round trip)."""
    payload = b"x" * MB
    for start in range(0, count, 10):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 10, count)):
            pipe.xadd(stream, {"type": b"blob", "key": f"k{n}", "payload": payload})
        await pipe.execute()


def kept_bytes(worker: Worker) -> int:
    """Bytes of the fields of every entry the ledger keeps, held or waiting, counted here."""
    ledger = worker.ledger
    messages = [m for held in ledger.held.values() for m in held.values()]
    messages += [w.msg for w in ledger.waiting.values()]
    return sum(len(k) + len(v) for m in messages for k, v in m.raw.items())


class TestHeldBytes:
    async def test_reading_pauses_while_the_budget_is_spent(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """200 entries of 1 MB with a 32 MB budget: the ledger never keeps more than the
        budget plus one read, and every entry is processed."""
        stream, group = names["stream"], names["group"]
        handled: set[str] = set()

        @handler(stream=stream)
        async def slow(msg: Message) -> None:
            await asyncio.sleep(0.02)
            handled.add(msg.id)

        await publish_large(redis, stream)
        settings = make_settings(redis_server.url, group, concurrency=4, held_bytes_max=BUDGET)
        peak = 0
        largest_read = 0
        try:
            async with running(settings, [slow]) as worker:
                reads: list[int] = []
                miscounted: list[tuple[int, int]] = []
                hold_many = worker.ledger.hold_many

                def watched(stream: str, messages: list[Message]) -> object:
                    nonlocal peak
                    reads.append(sum(len(k) + len(v) for m in messages for k, v in m.raw.items()))
                    added = hold_many(stream, messages)
                    kept = kept_bytes(worker)
                    peak = max(peak, kept)
                    if worker.ledger.bytes != kept:
                        miscounted.append((worker.ledger.bytes, kept))
                    return added

                worker.ledger.hold_many = watched  # type: ignore[method-assign]
                await eventually(lambda: len(handled) == ENTRIES, timeout=30)
                await eventually(lambda: _acked(redis, stream, group))
                largest_read = max(reads)
                await eventually(lambda: worker.ledger.bytes == 0)
        finally:
            await redis.delete(stream, stream + ":dlq")
        # Then the budget is overshot by one read at most, and by no more than one entry here:
        # reads are sized by the entries seen so far, and these are all alike
        assert peak <= BUDGET + largest_read, f"peak {peak / MB:.1f} MB"
        assert peak < BUDGET + 2 * MB, f"peak {peak / MB:.1f} MB"
        assert miscounted == []  # the ledger's own count, which the reader goes by

    async def test_an_entry_larger_than_the_budget_runs_alone(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Entries of 2 MB under a 1 MB budget are all processed, one at a time."""
        stream, group = names["stream"], names["group"]
        running_now: list[str] = []
        most_at_once = 0
        handled: list[str] = []

        @handler(stream=stream)
        async def slow(msg: Message) -> None:
            nonlocal most_at_once
            running_now.append(msg.id)
            most_at_once = max(most_at_once, len(running_now), len(worker.ledger))
            await asyncio.sleep(0.02)
            running_now.remove(msg.id)
            handled.append(msg.id)

        payload = b"x" * (2 * MB)
        for n in range(3):
            await redis.xadd(stream, {"type": b"blob", "key": f"k{n}", "payload": payload})
        settings = make_settings(redis_server.url, group, concurrency=4, held_bytes_max=MB)
        try:
            async with running(settings, [slow]) as worker:
                await eventually(lambda: len(handled) == 3)
                await eventually(lambda: _acked(redis, stream, group))
        finally:
            await redis.delete(stream)
        assert most_at_once == 1


class TestProcessMemory:
    async def test_peak_rss_of_a_worker_process(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A `syncworker run` process reading 200 MB with a 32 MB budget stays well below
        the 512 Mi container limit (its peak RSS, VmHWM, is printed)."""
        stream, group = names["stream"], names["group"]
        await publish_large(redis, stream)
        worker = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "budgeted",
            TEST_SLEEP=0.02,
            SYNCWORKER_CONCURRENCY=4,
            SYNCWORKER_HELD_BYTES_MAX=BUDGET,
        ).start()
        assert worker.process is not None
        status = f"/proc/{worker.process.pid}/status"
        try:

            async def all_processed() -> bool:
                return await redis.llen(f"{stream}:processed") == ENTRIES

            await eventually(all_processed, timeout=30)
            await eventually(lambda: _acked(redis, stream, group))
            peak_mb = _vm_hwm_kb(status) / 1024
            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0
        finally:
            await redis.delete(stream, stream + ":dlq")
        print(f"\nVmHWM of the worker process: {peak_mb:.0f} MB (budget {BUDGET // MB} MB)")
        assert peak_mb < 160, f"peak RSS {peak_mb:.0f} MB"  # 251 MB without the budget


def _vm_hwm_kb(status: str) -> int:
    with open(status) as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in {status}")


async def _acked(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0
