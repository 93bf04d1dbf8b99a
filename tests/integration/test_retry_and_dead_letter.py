"""Failures are retried with backoff on durable attempt counts, then dead-lettered."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Reject, Retry, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def _all_acked(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


class TestRetry:
    async def test_failing_handler_is_retried_until_it_succeeds(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A handler that fails twice sees attempts 1, 2, 3 and the message is then acked."""
        stream, group = names["stream"], names["group"]
        attempts: list[int] = []

        @handler(stream=stream)
        async def flaky(msg: Message) -> None:
            attempts.append(msg.attempt)
            if msg.attempt < 3:
                raise ConnectionError("downstream unavailable")

        await Publisher(redis).publish(stream, "order.paid", {"id": 1}, key="1")
        async with running(make_settings(redis_server.url, group), [flaky]):
            await eventually(lambda: attempts == [1, 2, 3])
            await eventually(lambda: _all_acked(redis, stream, group))
        assert await dead_letters(redis, stream) == []

    async def test_retry_delay_requested_by_the_handler_is_respected(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """`Retry(delay=0.6)` postpones the next attempt by at least that long."""
        stream, group = names["stream"], names["group"]
        seen_at: list[float] = []

        @handler(stream=stream)
        async def later(msg: Message) -> None:
            seen_at.append(time.monotonic())
            if msg.attempt == 1:
                raise Retry("rate limited", delay=0.6)

        await Publisher(redis).publish(stream, "order.paid", {"id": 1})
        async with running(make_settings(redis_server.url, group), [later]):
            await eventually(lambda: len(seen_at) == 2)
        assert seen_at[1] - seen_at[0] >= 0.6

    async def test_attempt_count_survives_a_worker_restart(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A new process continues from the pending list's delivery count, not from 1."""
        stream, group = names["stream"], names["group"]
        attempts: list[int] = []

        @handler(stream=stream)
        async def failing(msg: Message) -> None:
            attempts.append(msg.attempt)
            raise RuntimeError("still broken")

        await Publisher(redis).publish(stream, "order.paid", {"id": 1})
        settings = make_settings(redis_server.url, group, max_attempts=4, consumer="first")
        async with running(settings, [failing]):
            await eventually(lambda: attempts == [1, 2])
        # The same consumer name restarted: it must resume at attempt 3, not start over.
        settings = make_settings(redis_server.url, group, max_attempts=4, consumer="first")
        async with running(settings, [failing]):
            await eventually(lambda: len(attempts) >= 4)
            await eventually(lambda: _all_acked(redis, stream, group))
        assert attempts[:4] == [1, 2, 3, 4]
        letters = await dead_letters(redis, stream)
        assert len(letters) == 1 and letters[0]["dlq_attempts"] == "4"


class TestDeadLetter:
    async def test_exhausted_attempts_are_dead_lettered_with_metadata(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """After max_attempts failures the entry moves to <stream>:dlq with why, and is acked."""
        stream, group = names["stream"], names["group"]
        calls: list[int] = []

        @handler(stream=stream, name="always-fails")
        async def always_fails(msg: Message) -> None:
            calls.append(msg.attempt)
            raise ValueError("payment service said no")

        entry_id = await Publisher(redis).publish(
            stream, "order.paid", {"id": 7}, key="7", event_id="e-7", version=3
        )
        settings = make_settings(redis_server.url, group, max_attempts=3, consumer="c1")
        async with running(settings, [always_fails]):
            await eventually(lambda: len(calls) == 3)
            await eventually(lambda: _all_acked(redis, stream, group))
        [letter] = await dead_letters(redis, stream)
        assert calls == [1, 2, 3]
        assert letter["type"] == "order.paid" and letter["key"] == "7"
        assert letter["data"] == '{"id":7}' and letter["event_id"] == "e-7"
        assert letter["version"] == "3"
        assert letter["dlq_stream"] == stream and letter["dlq_id"] == entry_id
        assert letter["dlq_group"] == group and letter["dlq_consumer"] == "c1"
        assert letter["dlq_attempts"] == "3" and letter["dlq_handler"] == "always-fails"
        assert letter["dlq_error_type"] == "ValueError"
        assert letter["dlq_error"] == "payment service said no"
        assert letter["dlq_failed_at"].endswith("+00:00")

    async def test_reject_dead_letters_at_once(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """`Reject` skips the retries: one call, one dead letter, nothing pending."""
        stream, group = names["stream"], names["group"]
        calls: list[int] = []

        @handler(stream=stream)
        async def rejecting(msg: Message) -> None:
            calls.append(msg.attempt)
            raise Reject("unknown currency XYZ")

        await Publisher(redis).publish(stream, "order.paid", {"currency": "XYZ"})
        async with running(make_settings(redis_server.url, group), [rejecting]):
            await eventually(lambda: _all_acked(redis, stream, group))
        [letter] = await dead_letters(redis, stream)
        assert calls == [1]
        assert letter["dlq_error_type"] == "Reject"
        assert letter["dlq_error"] == "unknown currency XYZ"

    async def test_undecodable_json_is_dead_lettered_without_retry(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Bad JSON in `data` cannot improve with retries: one attempt, then the DLQ."""
        stream, group = names["stream"], names["group"]
        calls: list[int] = []
        good: list[object] = []

        @handler(stream=stream)
        async def reads_data(msg: Message) -> None:
            calls.append(msg.attempt)
            good.append(msg.data)

        await redis.xadd(stream, {"type": "order.paid", "data": "{not json"})
        await redis.xadd(stream, {"type": "order.paid", "data": '{"ok": true}'})
        async with running(make_settings(redis_server.url, group), [reads_data]):
            await eventually(lambda: _all_acked(redis, stream, group))
            await eventually(lambda: len(good) == 1)
        [letter] = await dead_letters(redis, stream)
        assert calls == [1, 1]
        assert good == [{"ok": True}]
        assert letter["dlq_error_type"] == "MalformedMessage"
        assert letter["data"] == "{not json"

    async def test_deeply_nested_json_is_dead_lettered_without_retry(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """JSON nested past the recursion limit is dead-lettered after one attempt, with why."""
        stream, group = names["stream"], names["group"]
        calls: list[int] = []

        @handler(stream=stream)
        async def reads_data(msg: Message) -> None:
            calls.append(msg.attempt)
            _ = msg.data

        await redis.xadd(stream, {"type": "order.paid", "data": "[" * 100_000})
        async with running(make_settings(redis_server.url, group), [reads_data]):
            await eventually(lambda: _all_acked(redis, stream, group))
        [letter] = await dead_letters(redis, stream)
        assert calls == [1]
        assert letter["dlq_error_type"] == "MalformedMessage"
        assert "nested too deeply" in letter["dlq_error"]


class TestHandlerTimeout:
    async def test_a_handler_over_its_time_limit_counts_as_failed(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """With handler_timeout set, a hung handler is cancelled and its message retried."""
        stream, group = names["stream"], names["group"]
        attempts: list[int] = []

        @handler(stream=stream)
        async def hangs_once(msg: Message) -> None:
            attempts.append(msg.attempt)
            if msg.attempt == 1:
                await asyncio.sleep(30)

        await Publisher(redis).publish(stream, "order.paid", {"id": 1})
        settings = make_settings(redis_server.url, group, handler_timeout=0.2)
        with capture_logs() as logs:
            async with running(settings, [hangs_once]):
                await eventually(lambda: attempts == [1, 2])
                await eventually(lambda: _all_acked(redis, stream, group))
        [retry] = [e for e in logs if e["event"] == "message.retry"]
        assert retry["error_type"] == "TimeoutError" and retry["error"] == "handler timed out"
