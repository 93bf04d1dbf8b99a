"""A real worker reads events other frameworks published into Redis, and types payloads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from faststream.redis import RedisBroker
from pydantic import BaseModel
from redis.asyncio import Redis

from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class OrderCompleted(BaseModel):
    order_id: int
    total: float


async def _settled(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


class TestFastStream:
    async def test_entries_published_by_faststream_reach_the_typed_handler(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """FastStream's own publish: the handler of its `type` header gets type, data, id."""
        stream, group = names["stream"], names["group"]
        seen: list[tuple[Any, ...]] = []

        @handler(stream=stream, types=["order.completed"], envelope="faststream")
        async def completed(msg: Message) -> None:
            seen.append((msg.type, msg.data, msg.event_id, msg.key))

        broker = RedisBroker(redis_server.url)
        await broker.connect()
        try:
            await broker.publish(
                {"order_id": 7, "total": 19.9},
                stream=stream,
                headers={"type": "order.completed", "key": "order-7"},
                correlation_id="corr-7",
            )
            await broker.publish({"ignored": True}, stream=stream, headers={"type": "other"})
        finally:
            await broker.stop()

        async with running(make_settings(redis_server.url, group), [completed]):
            await eventually(lambda: _settled(redis, stream, group))
            await eventually(lambda: len(seen) == 1)
        assert seen == [("order.completed", {"order_id": 7, "total": 19.9}, "corr-7", "order-7")]
        assert await dead_letters(redis, stream) == []

    async def test_a_failed_attempt_is_retried_in_the_same_envelope(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The retry of a FastStream entry is opened again: same type and data on attempt 2."""
        stream, group = names["stream"], names["group"]
        seen: list[tuple[Any, ...]] = []

        @handler(stream=stream, types=["order.completed"], envelope="faststream")
        async def flaky(msg: Message) -> None:
            seen.append((msg.attempt, msg.type, msg.data))
            if msg.attempt == 1:
                raise ConnectionError("downstream unavailable")

        broker = RedisBroker(redis_server.url)
        await broker.connect()
        try:
            await broker.publish({"n": 1}, stream=stream, headers={"type": "order.completed"})
        finally:
            await broker.stop()
        async with running(make_settings(redis_server.url, group), [flaky]):
            await eventually(lambda: len(seen) == 2)
            await eventually(lambda: _settled(redis, stream, group))
        assert seen == [(1, "order.completed", {"n": 1}), (2, "order.completed", {"n": 1})]


class TestDapr:
    async def test_a_dapr_entry_reaches_the_handler_as_its_cloudevent(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Dapr's layout (field `data` = CloudEvent JSON): type, id and data come from it."""
        stream, group = names["stream"], names["group"]
        seen: list[tuple[Any, ...]] = []

        @handler(stream=stream, types=["com.shop.order"], envelope="dapr")
        async def orders(msg: Message) -> None:
            seen.append((msg.type, msg.event_id, msg.data))

        event = {
            "specversion": "1.0",
            "id": "5929aaac-a5e2-4ca1-859c-edfe73f11565",
            "source": "checkout",
            "type": "com.shop.order",
            "datacontenttype": "application/json",
            "data": {"order_id": 1},
            "topic": stream,
            "pubsubname": "redis-pubsub",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        }
        await redis.xadd(stream, {"data": json.dumps(event)})
        async with running(make_settings(redis_server.url, group), [orders]):
            await eventually(lambda: len(seen) == 1)
            await eventually(lambda: _settled(redis, stream, group))
        assert seen == [("com.shop.order", event["id"], {"order_id": 1})]


class TestCloudEvents:
    async def test_publisher_cloudevents_round_trip(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Publisher(envelope="cloudevents") writes what a cloudevents route reads back."""
        stream, group = names["stream"], names["group"]
        seen: list[tuple[Any, ...]] = []

        @handler(stream=stream, envelope="cloudevents")
        async def record(msg: Message) -> None:
            seen.append((msg.type, msg.key, msg.event_id, msg.version, msg.data))

        publisher = Publisher(redis, envelope="cloudevents", source="/tests")
        await publisher.publish(
            stream, "order.paid", {"n": 1}, key="o-1", event_id="e-1", version=2
        )
        async with running(make_settings(redis_server.url, group), [record]):
            await eventually(lambda: len(seen) == 1)
        assert seen == [("order.paid", "o-1", "e-1", 2, {"n": 1})]

    async def test_an_entry_that_is_not_a_cloudevent_is_dead_lettered_with_why(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A syncworker-layout entry on a cloudevents route: dead letter naming the reason."""
        stream, group = names["stream"], names["group"]
        calls: list[Message] = []

        @handler(stream=stream, envelope="cloudevents")
        async def record(msg: Message) -> None:
            calls.append(msg)

        await Publisher(redis).publish(stream, "order.paid", {"n": 1})
        async with running(make_settings(redis_server.url, group), [record]) as worker:
            await eventually(lambda: dead_letters(redis, stream))
            await eventually(lambda: _settled(redis, stream, group))
            assert worker.stats.undecodable[stream] == 1
        (letter,) = await dead_letters(redis, stream)
        assert letter["dlq_error_type"] == "MalformedMessage"
        assert letter["dlq_error"].startswith("not a CloudEvent: specversion is None")
        assert letter["dlq_handler"] == "envelope:cloudevents" and letter["dlq_attempts"] == "1"
        assert letter["type"] == "order.paid"  # the entry's own fields, unchanged
        assert calls == []


class TestOrdering:
    async def test_events_of_one_envelope_key_run_one_at_a_time_in_order(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """CloudEvents sharing a partitionkey never overlap and run in stream order, while
        another key runs beside them (concurrency 4)."""
        stream, group = names["stream"], names["group"]
        running_now: dict[str, int] = {}
        overlaps: list[str] = []
        order: list[tuple[str, int]] = []

        @handler(stream=stream, envelope="cloudevents")
        async def slow(msg: Message) -> None:
            key = msg.key or ""
            running_now[key] = running_now.get(key, 0) + 1
            if running_now[key] > 1:
                overlaps.append(key)
            order.append((key, msg.data["n"]))
            await asyncio.sleep(0.05)
            running_now[key] -= 1

        publisher = Publisher(redis, envelope="cloudevents", source="/tests")
        for n in range(4):
            await publisher.publish(stream, "order.paid", {"n": n}, key="order-1")
        await publisher.publish(stream, "order.paid", {"n": 9}, key="order-2")
        async with running(make_settings(redis_server.url, group, concurrency=4), [slow]):
            await eventually(lambda: len(order) == 5)
            await eventually(lambda: _settled(redis, stream, group))
        assert overlaps == []
        assert [n for key, n in order if key == "order-1"] == [0, 1, 2, 3]
        assert order.index(("order-2", 9)) < 3  # the other key did not wait behind order-1


class TestTypedEvents:
    async def test_invalid_payload_is_dead_lettered_with_the_validation_errors(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A valid payload is handled; an invalid one dead-letters on attempt 1 with paths."""
        stream, group = names["stream"], names["group"]
        seen: list[OrderCompleted] = []

        @handler(stream=stream, types=["order.completed"], model=OrderCompleted)
        async def typed(msg: Message) -> None:
            seen.append(msg.event)

        publisher = Publisher(redis)
        await publisher.publish(stream, "order.completed", {"order_id": 1, "total": 2.5})
        await publisher.publish(stream, "order.completed", {"order_id": "x"})
        async with running(make_settings(redis_server.url, group), [typed]):
            await eventually(lambda: dead_letters(redis, stream))
            await eventually(lambda: _settled(redis, stream, group))
        assert seen == [OrderCompleted(order_id=1, total=2.5)]
        (letter,) = await dead_letters(redis, stream)
        assert letter["dlq_error_type"] == "InvalidEvent" and letter["dlq_attempts"] == "1"
        assert "order_id: Input should be a valid integer" in letter["dlq_error"]
        assert "total: Field required" in letter["dlq_error"]
