"""A handler's own CancelledError (or other BaseException) is a failure like any other."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import (
    WorkerProcess,
    dead_letters,
    eventually,
    make_settings,
    pending_count,
    running,
)
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestHandlerCancelledError:
    async def test_a_handler_raising_cancelled_error_is_retried_and_its_key_goes_on(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The message is retried and acked, later messages of its key run, and reading goes on."""
        stream, group = names["stream"], names["group"]
        seen: list[tuple[int, int]] = []

        @handler(stream=stream)
        async def cancels_once(msg: Message) -> None:
            n = msg.data["n"]
            seen.append((n, msg.attempt))
            if n == 1 and msg.attempt == 1:
                raise asyncio.CancelledError()

        publisher = Publisher(redis)
        # Given: a message whose first attempt raises CancelledError, and one more of its key
        await publisher.publish(stream, "tick", {"n": 1}, key="k")
        await publisher.publish(stream, "tick", {"n": 2}, key="k")
        settings = make_settings(redis_server.url, group, concurrency=1)
        with capture_logs() as logs:
            async with running(settings, [cancels_once]):
                # Then: the key's follower runs, the message is retried, and everything is acked
                await eventually(lambda: {(1, 1), (1, 2), (2, 1)} <= set(seen))
                await eventually(lambda: _acked(redis, stream, group))
                # And: the worker keeps reading
                await publisher.publish(stream, "tick", {"n": 3}, key="k")
                await eventually(lambda: (3, 1) in seen)
        [retry] = [e for e in logs if e["event"] == "message.retry"]
        assert retry["error_type"] == "CancelledError"

    async def test_a_handler_always_raising_cancelled_error_is_dead_lettered(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Once its attempts are spent, the message goes to the dead-letter stream."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream)
        async def always_cancels(msg: Message) -> None:
            raise asyncio.CancelledError()

        await Publisher(redis).publish(stream, "tick", {"n": 1}, key="k")
        settings = make_settings(redis_server.url, group, max_attempts=2)
        async with running(settings, [always_cancels]):
            await eventually(lambda: _acked(redis, stream, group))
        [letter] = await dead_letters(redis, stream)
        assert letter["dlq_error_type"] == "CancelledError"


class TestInAWorkerProcess:
    @pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt", "CancelledError"])
    async def test_a_handler_raising_it_neither_ends_nor_stalls_the_process(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str], raised: str
    ) -> None:
        """`syncworker run` retries the message, processes the rest and keeps running."""
        stream, group = names["stream"], names["group"]
        publisher = Publisher(redis)
        first = await publisher.publish(stream, "tick", {"raise": raised}, key="k")
        second = await publisher.publish(stream, "tick", {"n": 2}, key="k")
        worker = await WorkerProcess(
            redis_server.url, group, stream, f"raise-{names['suffix']}"
        ).start()

        async def both_processed() -> bool:
            processed = {i.decode() for i in await redis.lrange(f"{stream}:processed", 0, -1)}
            return {first, second} <= processed

        await eventually(both_processed, timeout=10)
        await eventually(lambda: _acked(redis, stream, group))
        assert worker.process is not None and worker.process.returncode is None
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=10) == 0


async def _acked(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0
