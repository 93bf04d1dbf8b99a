"""What the publisher writes in each envelope, a worker's route of that envelope reads back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Versions, handler
from worker.cli import main
from worker.publish import PublishEnvelope, Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

ROUND_TRIPS = [
    ("cloudevents", "cloudevents"),
    ("cloudevents-binary", "cloudevents"),
    ("cloudevents", "dapr"),
]


async def _consume(url: str, stream: str, group: str, envelope: str, count: int) -> list[Any]:
    seen: list[tuple[Any, ...]] = []

    @handler(stream=stream, envelope=envelope)  # type: ignore[arg-type]
    async def record(msg: Message) -> None:
        seen.append((msg.type, msg.key, msg.event_id, msg.version, msg.schema_version, msg.data))

    async with running(make_settings(url, group), [record]):
        await eventually(lambda: len(seen) == count)
    return seen


class TestPublisherRoundTrip:
    @pytest.mark.parametrize(("written", "route"), ROUND_TRIPS)
    async def test_the_route_reads_every_part_the_publisher_wrote(
        self,
        written: PublishEnvelope,
        route: str,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
    ) -> None:
        """type, key, event id, version, schema version and data survive the round trip."""
        stream, group = names["stream"], names["group"]
        publisher = Publisher(redis, envelope=written, source="/checkout")
        await publisher.publish(
            stream,
            "order.paid",
            {"order_id": 1, "total": "9.90"},
            key="o-1",
            event_id="e-1",
            version=3,
            schema_version=2,
        )
        await publisher.publish(stream, "order.created", [1, "two"])

        seen = await _consume(redis_server.url, stream, group, route, 2)

        assert seen[0] == ("order.paid", "o-1", "e-1", 3, 2, {"order_id": 1, "total": "9.90"})
        assert seen[1][0] == "order.created" and seen[1][5] == [1, "two"]
        assert seen[1][1:5] == (None, seen[1][2], None, None)
        assert await dead_letters(redis, stream) == []

    async def test_binary_mode_writes_one_field_per_attribute(
        self, redis: Redis, names: dict[str, str]
    ) -> None:
        """Binary mode: ce_* attributes, the payload as JSON in data, its content type."""
        stream = names["stream"]
        publisher = Publisher(redis, envelope="cloudevents-binary", source="/checkout")
        await publisher.publish(stream, "order.paid", {"n": 1}, key="o-1", event_id="e-1")
        ((_, raw),) = await redis.xrange(stream)
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        assert fields.pop("ce_time").endswith("Z")
        assert fields == {
            "ce_specversion": "1.0",
            "ce_id": "e-1",
            "ce_source": "/checkout",
            "ce_type": "order.paid",
            "ce_partitionkey": "o-1",
            "content-type": "application/json",
            "data": '{"n":1}',
        }

    async def test_a_dapr_route_dead_letters_binary_mode_with_the_reason(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Dapr reads structured CloudEvents only: a binary entry is refused, saying why."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream, envelope="dapr")
        async def record(msg: Message) -> None:
            raise AssertionError("must not run")

        await Publisher(redis, envelope="cloudevents-binary").publish(stream, "t", {"n": 1})
        async with running(make_settings(redis_server.url, group), [record]):
            await eventually(lambda: _has_dead_letter(redis, stream))
            await eventually(lambda: _settled(redis, stream, group))
        (letter,) = await dead_letters(redis, stream)
        assert letter["dlq_error_type"] == "MalformedMessage"
        assert letter["dlq_error"].startswith("not a Dapr CloudEvent")


async def _settled(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


async def _has_dead_letter(redis: Redis, stream: str) -> bool:
    return len(await dead_letters(redis, stream)) == 1


class TestPublishCommand:
    @pytest.mark.parametrize("envelope", ["cloudevents", "cloudevents-binary"])
    async def test_publish_envelope_is_read_by_a_cloudevents_route(
        self,
        envelope: str,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`syncworker publish --envelope ...` writes what a cloudevents route reads."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
        stream, group = names["stream"], names["group"]
        args = [
            "publish",
            stream,
            "--envelope",
            envelope,
            "--source",
            "/cli",
            "--type",
            "order.paid",
        ]
        args += ["--key", "o-9", "--data", '{"n": 9}', "--version", "4", "--schema-version", "2"]
        assert await asyncio.to_thread(main, args) == 0, capsys.readouterr().err

        seen = await _consume(redis_server.url, stream, group, "cloudevents", 1)

        assert seen[0][:2] == ("order.paid", "o-9")
        assert seen[0][3:] == (4, 2, {"n": 9})


class OrderV1(BaseModel):
    id: int


class OrderV2(BaseModel):
    order_id: int
    currency: str


class TestSchemaVersionsInAWorker:
    @pytest.mark.parametrize("envelope", ["syncworker", "cloudevents", "cloudevents-binary"])
    async def test_v1_and_v2_entries_reach_the_v2_handler_and_v3_is_dead_lettered(
        self,
        envelope: PublishEnvelope,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
    ) -> None:
        """A real worker upcasts v1, takes v2 as is, and dead-letters v3 with the reason."""
        stream, group = names["stream"], names["group"]
        seen: list[OrderV2] = []
        versions = Versions(
            {1: OrderV1, 2: OrderV2},
            upcast={1: lambda v1: OrderV2(order_id=v1.id, currency="EUR")},
        )
        route = "syncworker" if envelope == "syncworker" else "cloudevents"

        @handler(stream=stream, envelope=route, model=versions)  # type: ignore[arg-type]
        async def orders(msg: Message) -> None:
            seen.append(msg.event)

        publisher = Publisher(redis, envelope=envelope)
        await publisher.publish(stream, "order", {"id": 1}, key="o-1")  # no schema version: v1
        await publisher.publish(stream, "order", {"id": 2}, key="o-2", schema_version=1)
        await publisher.publish(
            stream, "order", {"order_id": 3, "currency": "USD"}, key="o-3", schema_version=2
        )
        await publisher.publish(stream, "order", {"order_id": 4}, key="o-4", schema_version=3)

        async with running(make_settings(redis_server.url, group), [orders]):
            await eventually(lambda: _has_dead_letter(redis, stream))
            await eventually(lambda: _settled(redis, stream, group))

        assert sorted(seen, key=lambda o: o.order_id) == [
            OrderV2(order_id=1, currency="EUR"),
            OrderV2(order_id=2, currency="EUR"),
            OrderV2(order_id=3, currency="USD"),
        ]
        (letter,) = await dead_letters(redis, stream)
        assert letter["dlq_error_type"] == "InvalidEvent"
        assert letter["dlq_error"] == "schema version 3 of OrderV2 has no model (known: 1, 2)"
