"""The relay: transformed fan-out with exactly one downstream entry per source message."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from handlers.relay import Relay
from tests.handlers.events import Event, delivered, history, publish
from tests.helpers import eventually, make_settings, pending_count, running
from worker import ConfigError, WorkerSettings, event_fields
from worker.redis_server import RedisServer
from worker.registry import handlers_from_settings

pytestmark = pytest.mark.redis


async def entries(redis: Redis, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


class TestExactlyOnce:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(seed=st.integers(0, 2**32), redeliver=st.lists(st.integers(0, 10_000), max_size=20))
    async def test_redeliveries_add_no_downstream_entries(
        self, redis: Redis, seed: int, redeliver: list[int]
    ) -> None:
        """However often and in whatever order entries are redelivered, each is forwarded once."""
        rng = random.Random(seed)
        events = history(rng, entities=4)
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:src", f"g-{run}"
        await publish(redis, source, events)
        messages = await delivered(redis, source, group, len(events))
        deliveries = list(messages)
        for n in redeliver:
            deliveries.insert(rng.randint(0, len(deliveries)), messages[n % len(messages)])
        relay = Relay(to=[f"{run}:a", f"{run}:b"], rename={"item.set": "thing.set"})
        relay.use(redis)
        for msg in deliveries:
            await relay.handle(msg)
        for target in (f"{run}:a", f"{run}:b"):
            out = await entries(redis, target)
            assert Counter(e["source_id"] for e in out) == Counter(m.id for m in messages)
            assert {e["source_stream"] for e in out} == {source}
        assert relay.counts == Counter(
            forwarded=len(messages), duplicate=len(deliveries) - len(messages)
        )
        assert await pending_count(redis, source, group) == 0


class TestTransformations:
    async def test_filter_rename_and_pick_per_target(self, redis: Redis) -> None:
        """order.completed becomes payment.requested with picked fields; others are filtered."""
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:orders", f"g-{run}"
        await publish(
            redis,
            source,
            [
                Event("order.created", "o1", 1, {"amount": 5, "note": "x"}),
                Event("order.completed", "o1", 2, {"amount": 5, "note": "x", "currency": "EUR"}),
            ],
        )
        created, completed = await delivered(redis, source, group, 2)
        relay = Relay(
            to=[
                {
                    "stream": f"{run}:payments",
                    "types": ["order.completed"],
                    "rename": {"order.completed": "payment.requested"},
                    "fields": {"total": "amount", "currency": "currency"},
                },
                f"{run}:audit",
            ],
        )
        relay.use(redis)
        await relay.handle(created)
        await relay.handle(completed)
        (payment,) = await entries(redis, f"{run}:payments")
        assert payment["type"] == "payment.requested"
        assert json.loads(payment["data"]) == {"total": 5, "currency": "EUR"}
        assert (payment["key"], payment["version"]) == ("o1", "2")
        assert payment["source_id"] == completed.id
        audit = await entries(redis, f"{run}:audit")
        assert [e["type"] for e in audit] == ["order.created", "order.completed"]
        assert json.loads(audit[0]["data"]) == {"amount": 5, "note": "x"}

    async def test_event_id_dedup_drops_events_published_twice(self, redis: Redis) -> None:
        """With dedup = "event_id" a second entry carrying the same event id is not forwarded."""
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:orders", f"g-{run}"
        for event_id in ("e1", "e1", "e2", None):
            await redis.xadd(
                source, event_fields("order.completed", {}, key="o", event_id=event_id)
            )  # type: ignore[arg-type]
        messages = await delivered(redis, source, group, 4)
        relay = Relay(to=f"{run}:out", dedup="event_id")
        relay.use(redis)
        for msg in messages:
            await relay.handle(msg)
        out = await entries(redis, f"{run}:out")
        assert [e.get("event_id") for e in out] == ["e1", "e2", None]
        assert relay.counts == Counter(forwarded=3, duplicate=1)

    async def test_unwanted_types_are_filtered_without_writes(self, redis: Redis) -> None:
        """A relay-wide type filter forwards nothing for other types."""
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:orders", f"g-{run}"
        await publish(redis, source, [Event("order.created", "o1", 1, {})])
        (msg,) = await delivered(redis, source, group, 1)
        relay = Relay(to=f"{run}:out", types=["order.completed"])
        relay.use(redis)
        await relay.handle(msg)
        assert await redis.exists(f"{run}:out") == 0
        assert relay.counts == Counter(filtered=1)

    async def test_a_target_of_the_wrong_type_fails_before_any_write(self, redis: Redis) -> None:
        """When one target is not a stream the script writes nothing, so a retry cannot double."""
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:orders", f"g-{run}"
        await publish(redis, source, [Event("order.created", "o1", 1, {})])
        (msg,) = await delivered(redis, source, group, 1)
        await redis.set(f"{run}:b", "not a stream")
        relay = Relay(to=[f"{run}:a", f"{run}:b"])
        relay.use(redis)
        with pytest.raises(Exception, match="WRONGTYPE"):
            await relay.handle(msg)
        assert await redis.exists(f"{run}:a") == 0
        await redis.delete(f"{run}:b")
        await relay.handle(msg)
        assert await redis.xlen(f"{run}:a") == 1 and await redis.xlen(f"{run}:b") == 1

    def test_a_target_needs_a_stream(self, redis_server: RedisServer) -> None:
        """A target table without a stream is a configuration error naming the route."""
        settings = WorkerSettings(
            redis_url=redis_server.url,
            routes=[{"stream": "orders", "handler": "relay", "options": {"to": [{"types": []}]}}],
        )
        with pytest.raises(ConfigError, match=r"routes\[0\]\.options.*stream must not be empty"):
            handlers_from_settings(settings)


class TestWideEntries:
    """Entries of more fields than a Lua script can pass to XADD (about 4,000)."""

    async def test_an_entry_of_thousands_of_fields_is_forwarded_once(self, redis: Redis) -> None:
        """5,000 fields reach every target once, in order; a redelivery adds nothing."""
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:orders", f"g-{run}"
        fields = [item for n in range(5000) for item in (f"f{n}", f"v{n}")]
        await redis.execute_command("XADD", source, "*", "type", "order.created", *fields)
        (msg,) = await delivered(redis, source, group, 1)
        relay = Relay(to=[f"{run}:a", f"{run}:b"], maxlen=1000)
        relay.use(redis)
        await relay.handle(msg)
        await relay.handle(msg)
        for target in (f"{run}:a", f"{run}:b"):
            [(_, out)] = await redis.xrange(target)
            assert len(out) == 5003 and out[b"f4999"] == b"v4999"
            assert out[b"source_id"] == msg.id.encode()
        assert relay.counts == Counter(forwarded=1, duplicate=1)
        assert await pending_count(redis, source, group) == 0

    async def test_a_wrong_type_target_leaves_no_entry_behind(self, redis: Redis) -> None:
        """A target that is not a stream fails the wide write as a whole, so a retry cannot
        double; once fixed, every target gets its entry."""
        run = uuid.uuid4().hex[:8]
        source, group = f"{run}:orders", f"g-{run}"
        fields = [item for n in range(5000) for item in (f"f{n}", f"v{n}")]
        await redis.execute_command("XADD", source, "*", *fields)
        (msg,) = await delivered(redis, source, group, 1)
        await redis.set(f"{run}:b", "not a stream")
        relay = Relay(to=[f"{run}:a", f"{run}:b"])
        relay.use(redis)
        with pytest.raises(Exception, match="WRONGTYPE"):
            await relay.handle(msg)
        assert await redis.xlen(f"{run}:a") == 0
        assert await pending_count(redis, source, group) == 1
        await redis.delete(f"{run}:b")
        await relay.handle(msg)
        assert await redis.xlen(f"{run}:a") == 1 and await redis.xlen(f"{run}:b") == 1


class TestInTheWorker:
    async def test_worker_relays_every_entry_once(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Through the worker, each source entry yields exactly one downstream entry."""
        stream, group = names["stream"], names["group"]
        await publish(redis, stream, history(random.Random(3), entities=30))
        relay = Relay(to=stream + ":out").bind([stream])
        async with running(make_settings(redis_server.url, group), [relay]):

            async def drained() -> bool:
                return await pending_count(redis, stream, group) == 0 and await redis.xlen(
                    stream + ":out"
                ) == await redis.xlen(stream)

            await eventually(drained)
        assert relay.counts == Counter(forwarded=await redis.xlen(stream))
