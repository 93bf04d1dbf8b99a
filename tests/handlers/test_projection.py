"""The Redis projection: versioned, deduplicated, acknowledged in the same atomic step."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from handlers.projection import Projection
from tests.handlers.events import (
    PROJECTION_EVENTS,
    Event,
    delivered,
    disorder,
    expected_hashes,
    hashes,
    history,
    publish,
    redelivered,
)
from tests.helpers import eventually, make_settings, pending_count, running
from worker import ConfigError, MalformedMessage, Message, WorkerSettings, handler
from worker.batch import BatchHandler
from worker.redis_server import RedisServer
from worker.registry import handlers_from_settings

pytestmark = pytest.mark.redis

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def projection(prefix: str, *, ack: bool = True) -> Projection:
    return Projection(prefix=prefix, events=PROJECTION_EVENTS, ack=ack)


async def counts(redis: Redis, p: Projection) -> dict[str, int]:
    raw = await redis.hgetall(p.counts_key)
    return {k.decode(): int(v) for k, v in raw.items()}


class TestOrderIndependence:
    @PROPERTY
    @given(seed=st.integers(0, 2**32), redeliver=st.lists(st.integers(0, 10_000), max_size=15))
    async def test_reordered_and_repeated_delivery_ends_like_in_order_delivery(
        self, redis: Redis, seed: int, redeliver: list[int]
    ) -> None:
        """Duplicates, reordered versions and redeliveries leave the in-order final state."""
        rng = random.Random(seed)
        events = history(rng, entities=4)
        noisy = disorder(rng, events)
        run = uuid.uuid4().hex[:8]
        # Given: the in-order history on one stream, a disordered one on another
        in_order = await delivered(redis, *await _stream(redis, run, "a", events), len(events))
        messages = await delivered(redis, *await _stream(redis, run, "b", noisy), len(noisy))
        deliveries = redelivered(rng, messages, redeliver)
        reference, subject = projection(f"{run}:ref:"), projection(f"{run}:sub:")
        reference.use(redis)
        subject.use(redis)
        # When
        for msg in in_order:
            await reference.handle(msg)
        for msg in deliveries:
            await subject.handle(msg)
        # Then
        assert await hashes(redis, f"{run}:sub:") == await hashes(redis, f"{run}:ref:")
        assert await hashes(redis, f"{run}:ref:") == expected_hashes(events)
        assert (await counts(redis, reference)) == {"applied": len(events)}
        done = await counts(redis, subject)
        assert sum(done.values()) == len(deliveries)
        assert set(done) <= {"applied", "stale"}

    @PROPERTY
    @given(seed=st.integers(0, 2**32), redeliver=st.lists(st.integers(0, 10_000), max_size=15))
    async def test_versionless_events_are_deduplicated_by_message_id(
        self, redis: Redis, seed: int, redeliver: list[int]
    ) -> None:
        """Without versions, a redelivered entry changes nothing and counts as a duplicate."""
        rng = random.Random(seed)
        events = [
            Event(e.type, e.key, None, e.data) for e in history(rng, entities=3, deletes=False)
        ]
        run = uuid.uuid4().hex[:8]
        messages = await delivered(redis, *await _stream(redis, run, "s", events), len(events))
        deliveries = redelivered(rng, messages, redeliver)
        reference, subject = projection(f"{run}:ref:"), projection(f"{run}:sub:")
        reference.use(redis)
        subject.use(redis)
        for msg in messages:
            await reference.handle(msg)
        for msg in deliveries:
            await subject.handle(msg)
        assert await hashes(redis, f"{run}:sub:") == await hashes(redis, f"{run}:ref:")
        done = await counts(redis, subject)
        assert done.get("applied") == len(messages)
        assert done.get("duplicate", 0) == len(deliveries) - len(messages)


async def _stream(redis: Redis, run: str, name: str, events: list[Event]) -> tuple[str, str]:
    stream = f"{run}:{name}"
    await publish(redis, stream, events)
    return stream, f"g-{run}"


class TestGuards:
    async def test_a_delete_is_not_undone_by_an_older_event(self, redis: Redis) -> None:
        """After v3 deleted the entity, a late v2 set is stale and the entity stays gone."""
        run = uuid.uuid4().hex[:8]
        events = [
            Event("item.set", "k", 1, {"x": 1, "y": "a"}),
            Event("item.deleted", "k", 3, {}),
            Event("item.set", "k", 2, {"x": 2, "y": "b"}),
        ]
        msgs = await delivered(redis, *await _stream(redis, run, "s", events), 3)
        p = projection(f"{run}:p:")
        p.use(redis)
        for msg in msgs:
            await p.handle(msg)
        assert await hashes(redis, f"{run}:p:") == {}
        assert await counts(redis, p) == {"applied": 2, "stale": 1}
        assert p.counts == {"applied": 2, "stale": 1}

    async def test_the_script_acknowledges_the_message(self, redis: Redis) -> None:
        """With ack = true the entry leaves the pending list in the projection's own script."""
        run = uuid.uuid4().hex[:8]
        stream, group = await _stream(redis, run, "s", [Event("item.set", "k", 1, {"x": 1})])
        (msg,) = await delivered(redis, stream, group, 1)
        assert await pending_count(redis, stream, group) == 1
        p = projection(f"{run}:p:")
        p.use(redis)
        await p.handle(msg)
        assert await pending_count(redis, stream, group) == 0
        assert await redis.hgetall(f"{run}:p:k") == {b"x": b"1"}

    async def test_without_ack_the_message_stays_pending(self, redis: Redis) -> None:
        """With ack = false the runtime acknowledges, so the script leaves the entry pending."""
        run = uuid.uuid4().hex[:8]
        stream, group = await _stream(redis, run, "s", [Event("item.set", "k", 1, {"x": 1})])
        (msg,) = await delivered(redis, stream, group, 1)
        p = projection(f"{run}:p:", ack=False)
        p.use(redis)
        await p.handle(msg)
        assert await pending_count(redis, stream, group) == 1

    async def test_rules_pick_rename_and_add_constant_fields(self, redis: Redis) -> None:
        """`fields` renames and selects data fields; `values` adds constants such as a status."""
        run = uuid.uuid4().hex[:8]
        event = Event("order.paid", "o1", 2, {"amount": 12.5, "card": "4111", "meta": {"a": 1}})
        (msg,) = await delivered(redis, *await _stream(redis, run, "s", [event]), 1)
        p = Projection(
            prefix=f"{run}:pay:",
            events={
                "order.paid": {
                    "action": "set",
                    "fields": {"total": "amount", "meta": "meta", "missing": "nope"},
                    "values": {"status": "paid"},
                }
            },
        )
        p.use(redis)
        await p.handle(msg)
        assert await hashes(redis, f"{run}:pay:") == {
            "o1": {"total": "12.5", "meta": '{"a":1}', "status": "paid"}
        }

    async def test_null_fields_are_left_out_or_removed(self, redis: Redis) -> None:
        """A JSON null is not written by `set` and removes the field on `merge`."""
        run = uuid.uuid4().hex[:8]
        events = [
            Event("item.set", "k", 1, {"x": 1, "y": None}),
            Event("item.merged", "k", 2, {"y": "b"}),
            Event("item.merged", "k", 3, {"x": None}),
        ]
        msgs = await delivered(redis, *await _stream(redis, run, "s", events), 3)
        p = projection(f"{run}:p:")
        p.use(redis)
        await p.handle(msgs[0])
        assert await hashes(redis, f"{run}:p:") == {"k": {"x": "1"}}
        await p.handle(msgs[1])
        await p.handle(msgs[2])
        assert await hashes(redis, f"{run}:p:") == {"k": {"y": "b"}}

    async def test_malformed_data_is_rejected(self, redis: Redis) -> None:
        """An event whose data is not a JSON object raises MalformedMessage (dead-lettered)."""
        msg = Message("s", "1-0", {b"type": b"item.set", b"key": b"k", b"data": b"[1]"}, 1, "g")
        p = projection("unused:")
        p.use(redis)
        with pytest.raises(MalformedMessage):
            await p.handle(msg)

    async def test_types_without_a_rule_are_left_alone(self, redis: Redis) -> None:
        """An event type the projection has no rule for changes nothing."""
        msg = Message("s", "1-0", {b"type": b"other", b"key": b"k"}, 1, "g")
        p = projection("unused2:")
        p.use(redis)
        await p.handle(msg)
        assert p.counts == {"ignored": 1}


_EXP = st.integers(0, 90)
_SIGN = st.sampled_from([1, -1])


class TestLargeVersions:
    """Versions are compared as exact integers: Lua numbers are doubles, exact only to 2^53."""

    @pytest.mark.parametrize(
        ("older", "newer"),
        [
            (2**53, 2**53 + 1),  # equal as doubles
            (2**53 + 1, 2**53 + 2),
            (2**63 - 2, 2**63 - 1),  # nanosecond timestamps, snowflake ids
            (2**64 + 1, 2**64 + 2),  # past 64 bits
            (9, 10),  # more digits, yet "10" < "9" as text
            (-(2**53) - 2, -(2**53) - 1),
            (-1, 0),
            (-5, 3),
        ],
    )
    async def test_the_newer_of_two_close_versions_wins(
        self, redis: Redis, older: int, newer: int
    ) -> None:
        """The newer version applies and the older one is stale, in either delivery order."""
        for order in ((older, newer), (newer, older)):
            run = uuid.uuid4().hex[:8]
            events = [Event("item.set", "k", v, {"x": v, "y": str(v)}) for v in order]
            msgs = await delivered(redis, *await _stream(redis, run, "s", events), 2)
            p = projection(f"{run}:p:")
            p.use(redis)
            for msg in msgs:
                await p.handle(msg)
            assert await hashes(redis, f"{run}:p:") == {"k": {"x": str(newer), "y": str(newer)}}
            expected = {"applied": 2} if order[0] == older else {"applied": 1, "stale": 1}
            assert await counts(redis, p) == expected
            assert await redis.hget(p.versions_key, "k") == str(newer).encode()

    @PROPERTY
    @given(
        first=st.builds(lambda e, o, sign: sign * (2**e + o), _EXP, st.integers(-3, 3), _SIGN),
        delta=st.integers(-2, 2) | st.integers(),
    )
    async def test_stale_exactly_when_not_above_the_applied_version(
        self, redis: Redis, first: int, delta: int
    ) -> None:
        """After version `first`, version `second` applies if and only if it is larger."""
        second = first + delta
        run = uuid.uuid4().hex[:8]
        p = projection(f"{run}:p:", ack=False)
        p.use(redis)
        for n, version in enumerate((first, second)):
            raw = {b"type": b"item.set", b"key": b"k", b"version": str(version).encode()}
            await p.handle(Message("s", f"{n + 1}-0", raw, 1, "g"))
        assert p.counts == ({"applied": 2} if second > first else {"applied": 1, "stale": 1})
        assert await redis.hget(p.versions_key, "k") == str(max(first, second)).encode()

    async def test_a_repeated_large_version_is_stale(self, redis: Redis) -> None:
        """The same version twice, even when written differently (+0012), applies once."""
        run = uuid.uuid4().hex[:8]
        stream, group = await _stream(redis, run, "s", [])
        for version in (b"9007199254740993", b"+0009007199254740993"):
            await redis.xadd(stream, {"type": "item.set", "key": "k", "version": version})
        msgs = await delivered(redis, stream, group, 2)
        p = projection(f"{run}:p:")
        p.use(redis)
        for msg in msgs:
            await p.handle(msg)
        assert await counts(redis, p) == {"applied": 1, "stale": 1}


class TestConfiguration:
    def test_routes_build_projections_from_options(self, redis_server: RedisServer) -> None:
        """A [[routes]] entry naming `projection` builds the plugin through its entry point."""
        settings = WorkerSettings(
            redis_url=redis_server.url,
            routes=[
                {
                    "stream": "orders",
                    "handler": "projection",
                    "options": {"prefix": "payment:", "events": {"order.created": "set"}},
                }
            ],
        )
        (built,) = handlers_from_settings(settings)
        assert isinstance(built, Projection)
        assert built.streams == ("orders",) and built.acks_atomically

    def test_bad_options_are_a_configuration_error(self, redis_server: RedisServer) -> None:
        """An unknown action is reported as a configuration error naming the route."""
        settings = WorkerSettings(
            redis_url=redis_server.url,
            routes=[
                {
                    "stream": "orders",
                    "handler": "projection",
                    "options": {"prefix": "p:", "events": {"order.created": "upsert"}},
                }
            ],
        )
        with pytest.raises(ConfigError, match=r"routes\[0\]\.options.*action must be one of"):
            handlers_from_settings(settings)

    def test_an_acking_projection_cannot_share_its_stream(self) -> None:
        """With ack = true another handler on the stream is refused; with ack = false it is not."""
        from worker.registry import validate

        @handler(stream="orders")
        async def other(msg: Message) -> None:
            pass

        def shared(**options: Any) -> Projection:
            return Projection(prefix="p:", events=PROJECTION_EVENTS, batch=False, **options)

        with pytest.raises(ConfigError, match="acknowledges atomically"):
            validate([shared().bind(["orders"]), other])
        validate([shared(ack=False).bind(["orders"]), other])

    def test_a_batching_projection_cannot_share_its_stream(self) -> None:
        """By default the projection takes batches and must be alone on its stream; with
        batch = false it handles one message at a time beside other handlers."""
        from worker.registry import validate

        @handler(stream="orders")
        async def other(msg: Message) -> None:
            pass

        batching = Projection(prefix="p:", events=PROJECTION_EVENTS, ack=False)
        assert isinstance(batching, BatchHandler)
        with pytest.raises(ConfigError, match="batch handler"):
            validate([batching.bind(["orders"]), other])
        single = Projection(prefix="p:", events=PROJECTION_EVENTS, ack=False, batch=False)
        assert not isinstance(single.bind(["orders"]), BatchHandler)
        validate([single.bind(["orders"]), other])


class TestInTheWorker:
    async def test_worker_keeps_the_read_model_in_sync(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Run by the worker, the projection ends at the newest state and leaves nothing pending."""
        stream, group = names["stream"], names["group"]
        rng = random.Random(7)
        events = history(rng, entities=40)
        await publish(redis, stream, disorder(rng, events))
        p = projection(f"{names['suffix']}:p:").bind([stream])
        async with running(make_settings(redis_server.url, group), [p]):

            async def drained() -> bool:
                return await pending_count(redis, stream, group) == 0 and sum(
                    p.counts.values()
                ) == await redis.xlen(stream)

            await eventually(drained)
        assert await hashes(redis, f"{names['suffix']}:p:") == expected_hashes(events)
