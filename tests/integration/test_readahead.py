"""Read-ahead: slow handlers read only what their lanes start soon, so peers share a backlog."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, running
from worker import Message, handler
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

WORKERS = 3
LANES = 2
MESSAGES = 18
HANDLER_SECONDS = 0.8


class TestFairReadAhead:
    async def test_a_small_backlog_of_slow_messages_is_shared_by_the_workers(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Three workers on one group, slow handlers, a backlog of 18: each worker runs a
        fair part of it, instead of the first to read taking it all."""
        stream, group = names["stream"], names["group"]
        done: dict[str, list[str]] = {f"w{i}": [] for i in range(WORKERS)}
        for i in range(MESSAGES):
            await redis.xadd(stream, {"type": "slow", "data": str(i)})

        def slow(name: str) -> object:
            @handler(stream=stream, name=f"slow-{name}")
            async def run(msg: Message) -> None:
                await asyncio.sleep(HANDLER_SECONDS)
                done[name].append(msg.id)

            return run

        # Given workers started one after the other, as pods are
        async with contextlib.AsyncExitStack() as stack:
            for name in done:
                settings = make_settings(redis_server.url, group, consumer=name, concurrency=LANES)
                await stack.enter_async_context(running(settings, [slow(name)]))  # type: ignore[list-item]
            # When they work through the backlog
            await eventually(lambda: sum(map(len, done.values())) == MESSAGES, timeout=30)
        # Then each ran at least half of an even share, and none ran an entry twice
        shares = {name: len(ids) for name, ids in done.items()}
        assert min(shares.values()) >= MESSAGES // WORKERS // 2, shares
        assert len({i for ids in done.values() for i in ids}) == MESSAGES
