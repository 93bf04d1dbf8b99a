"""A full Redis (OOM under noeviction) is an outage: nothing is dead-lettered, no attempt spent.

Each test starts its own small redis-server (maxmemory 4 MB, noeviction), publishes first
(XADD is refused once Redis is full), holds the handlers until Redis is full, then frees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError
from structlog.testing import capture_logs

from handlers.idempotent import Effects, IdempotentHandler
from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def small_redis() -> AsyncIterator[tuple[RedisServer, Redis]]:
    server = RedisServer(extra_args=("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"))
    server.start()
    client = Redis.from_url(server.url)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.cleanup()


async def fill(redis: Redis) -> None:
    """Grow one key until Redis refuses even a tiny write. Small, shrinking steps: a single
    huge write would be refused for its own query buffer, leaving room for smaller ones."""
    size = 256 * 1024
    for _ in range(500):
        try:
            await redis.append("ballast", b"x" * size)
        except OutOfMemoryError:
            if size <= 64:
                return
            size //= 4
    raise AssertionError("Redis never filled up")


async def deliveries(redis: Redis, stream: str, group: str) -> list[int]:
    rows: Any = await redis.xpending_range(stream, group, "-", "+", 100)
    return [int(r["times_delivered"]) for r in rows]


class Counting(IdempotentHandler):
    """Counts each event once, in Redis, after the test lets it go."""

    name = "counting"

    def __init__(self, stream: str, gate: asyncio.Event) -> None:
        self.streams = (stream,)
        self.gate = gate
        self.attempts: list[int] = []

    async def effects(self, msg: Message, tx: Effects) -> None:
        await self.gate.wait()
        self.attempts.append(msg.attempt)
        tx.incr(f"{msg.stream}:count:{msg.id}")


class TestFullRedis:
    async def test_refused_effects_wait_for_memory_without_spending_attempts(
        self, small_redis: tuple[RedisServer, Redis], names: dict[str, str]
    ) -> None:
        """Effects refused with OOM are retried on the same attempt until Redis has room."""
        server, redis = small_redis
        stream, group = names["stream"], names["group"]
        gate = asyncio.Event()
        counting = Counting(stream, gate)
        settings = make_settings(server.url, group, max_attempts=2)
        with capture_logs() as logs:
            async with running(settings, [counting]) as worker:
                ids = [await redis.xadd(stream, {"n": str(n)}) for n in range(10)]
                await eventually(lambda: _pending(redis, stream, group, 10))
                # Given Redis is full while the handlers write
                await fill(redis)
                gate.set()
                await eventually(lambda: len(counting.attempts) >= 40)
                # Then nothing was dead-lettered, and no attempt was spent
                assert set(counting.attempts) == {1}
                assert max(await deliveries(redis, stream, group)) <= 1
                # When memory is freed, every event is applied once
                await redis.delete("ballast")
                await eventually(lambda: _pending(redis, stream, group, 0))
                refusals = worker.stats.redis_errors["handler"]
        assert set(counting.attempts) == {1}
        for entry_id in ids:
            assert await redis.get(f"{stream}:count:{entry_id.decode()}") == b"1"
        assert await dead_letters(redis, stream) == []
        assert refusals >= 30
        [outage] = [e for e in logs if e["event"] == "redis.unavailable"]
        assert outage["operation"] == "handler" and outage["error_type"] == "OutOfMemoryError"
        assert not [e for e in logs if e["event"] in ("message.retry", "message.dead_lettered")]

    async def test_a_refused_dead_letter_waits_and_keeps_its_reason(
        self, small_redis: tuple[RedisServer, Redis], names: dict[str, str]
    ) -> None:
        """A dead letter refused with OOM is written once Redis has room, with the handler's
        own reason, and no attempt is spent meanwhile."""
        server, redis = small_redis
        stream, group = names["stream"], names["group"]
        gate = asyncio.Event()
        calls: list[int] = []

        @handler(stream=stream)
        async def rejecting(msg: Message) -> None:
            await gate.wait()
            calls.append(msg.attempt)
            raise Reject("unknown currency")

        settings = make_settings(server.url, group, max_attempts=2)
        async with running(settings, [rejecting]):
            await redis.xadd(stream, {"n": "1"})
            await eventually(lambda: _pending(redis, stream, group, 1))
            await fill(redis)
            gate.set()
            await asyncio.sleep(1.0)  # several flushes refused meanwhile
            assert calls == [1]
            assert await redis.xlen(stream + ":dlq") == 0
            await redis.delete("ballast")
            await eventually(lambda: _pending(redis, stream, group, 0))
        [letter] = await dead_letters(redis, stream)
        assert calls == [1]
        assert letter["dlq_error_type"] == "Reject" and letter["dlq_error"] == "unknown currency"


async def _pending(redis: Redis, stream: str, group: str, count: int) -> bool:
    return await pending_count(redis, stream, group) == count
