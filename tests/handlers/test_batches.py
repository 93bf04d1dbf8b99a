"""The built-in sinks given whole batches: the same effects as one message at a time, and one
bad message fails only itself."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from handlers import _batch
from handlers.projection import Projection
from handlers.relay import Relay
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
from tests.handlers.test_relay import entries
from tests.handlers.test_sql import expected_rows, inbox, opened, rows, sink
from tests.helpers import pending_count
from worker import MalformedMessage, Message, Reject
from worker.batch import Outcome

pytestmark = pytest.mark.redis

PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def batches(rng: random.Random, msgs: list[Message]) -> list[list[Message]]:
    """`msgs` cut into consecutive batches of random sizes (1 to 12)."""
    out, start = [], 0
    while start < len(msgs):
        size = rng.randint(1, 12)
        out.append(msgs[start : start + size])
        start += size
    return out


def kinds(outcomes: list[Outcome]) -> list[str]:
    return ["ok" if o is None else type(o).__name__ for o in outcomes]


async def stream_of(redis: Redis, events: list[Event]) -> tuple[str, str, list[Message]]:
    run = uuid.uuid4().hex[:8]
    stream, group = f"{run}:s", f"g-{run}"
    await publish(redis, stream, events)
    return stream, group, await delivered(redis, stream, group, len(events))


class TestProjectionBatches:
    @PROPERTY
    @given(seed=st.integers(0, 2**32), redeliver=st.lists(st.integers(0, 10_000), max_size=15))
    async def test_batches_end_like_in_order_delivery(
        self, redis: Redis, seed: int, redeliver: list[int]
    ) -> None:
        """Reordered and redelivered events, applied in batches, leave the in-order state and
        every entry acknowledged."""
        rng = random.Random(seed)
        events = history(rng, entities=4)
        stream, group, messages = await stream_of(redis, disorder(rng, events))
        deliveries = redelivered(rng, messages, redeliver)
        prefix = f"{uuid.uuid4().hex[:8]}:"
        p = Projection(prefix=prefix, events=PROJECTION_EVENTS)
        p.use(redis)
        for batch in batches(rng, deliveries):
            assert await p.handle_batch(batch) == [None] * len(batch)
        assert await hashes(redis, prefix) == expected_hashes(events)
        assert await pending_count(redis, stream, group) == 0
        assert p.counts["applied"] + p.counts["stale"] == len(deliveries)

    async def test_a_bad_event_fails_alone(self, redis: Redis) -> None:
        """A malformed event is rejected and an event on a non-hash key fails; the events
        around them are applied and acknowledged, the failed one stays pending."""
        good = [Event("item.set", f"k{n}", 1, {"x": n, "y": "a"}) for n in range(3)]
        stream, group, messages = await stream_of(
            redis, [good[0], Event("item.set", "broken", 1, {}), good[1], good[2]]
        )
        prefix = f"{uuid.uuid4().hex[:8]}:"
        await redis.set(prefix + "broken", "not a hash")
        bad = Message(stream, "0-1", {b"type": b"item.set", b"data": b"[1]"}, 1, group)
        p = Projection(prefix=prefix, events=PROJECTION_EVENTS)
        p.use(redis)
        outcomes = await p.handle_batch([messages[0], bad, *messages[1:]])
        assert kinds(outcomes) == ["ok", "MalformedMessage", "ResponseError", "ok", "ok"]
        assert "WRONGTYPE" in str(outcomes[2])
        assert await hashes(redis, prefix + "k") == {
            str(n): {"x": str(n), "y": "a"} for n in range(3)
        }
        pending = await redis.xpending_range(stream, group, "-", "+", 10)
        assert [e["message_id"].decode() for e in pending] == [messages[1].id]

    async def test_an_event_wider_than_a_script_call_is_applied(self, redis: Redis) -> None:
        """An event with 9,000 fields (more values than Lua's unpack takes) is written whole,
        and a merge whose nulls remove as many fields removes them all."""
        wide = {f"f{n}": n for n in range(9_000)}
        _, _, messages = await stream_of(
            redis,
            [
                Event("item.set", "w", 1, wide),
                Event("item.merged", "w", 2, {**dict.fromkeys(wide, None), "f0": "kept"}),
            ],
        )
        prefix = f"{uuid.uuid4().hex[:8]}:"
        p = Projection(prefix=prefix, events=PROJECTION_EVENTS)
        p.use(redis)
        await p.handle(messages[0])
        assert await redis.hlen(prefix + "w") == 9_000
        await p.handle(messages[1])
        assert await redis.hgetall(prefix + "w") == {b"f0": b"kept"}

    async def test_a_batch_larger_than_one_script_call(
        self, redis: Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A batch split over several script calls applies and acknowledges every event."""
        monkeypatch.setattr(_batch, "SCRIPT_EVENTS", 7)
        events = [Event("item.set", f"k{n % 9}", n, {"x": n, "y": "a"}) for n in range(50)]
        stream, group, messages = await stream_of(redis, events)
        prefix = f"{uuid.uuid4().hex[:8]}:"
        p = Projection(prefix=prefix, events=PROJECTION_EVENTS)
        p.use(redis)
        assert await p.handle_batch(messages) == [None] * 50
        assert await hashes(redis, prefix) == expected_hashes(events)
        assert await pending_count(redis, stream, group) == 0


class TestRelayBatches:
    async def test_each_event_is_forwarded_once_in_order(self, redis: Redis) -> None:
        """Events forwarded in one batch, with a repeat inside it and an entry too wide for a
        script in the middle, reach the target once each and in stream order."""
        events = [Event("item.set", f"k{n}", n, {"x": n}) for n in range(6)]
        events[3] = Event("item.set", "k3", 3, {f"f{n}": n for n in range(4_500)})
        stream, group, messages = await stream_of(redis, events)
        target = f"{stream}:out"
        relay = Relay(to=target)
        relay.use(redis)
        batch = [*messages[:3], messages[1], *messages[3:]]
        assert await relay.handle_batch(batch) == [None] * 7
        assert await relay.handle_batch(messages) == [None] * 6  # a redelivery
        out = await entries(redis, target)
        assert [e["source_id"] for e in out] == [m.id for m in messages]
        assert relay.counts == Counter(forwarded=6, duplicate=7)
        assert await pending_count(redis, stream, group) == 0

    async def test_a_bad_target_fails_only_the_events_it_wants(self, redis: Redis) -> None:
        """Events bound for a key that is not a stream fail; the others are forwarded and
        acknowledged."""
        events = [Event(t, f"k{n}", n, {"x": n}) for n, t in enumerate(["a", "b", "a", "b"])]
        stream, group, messages = await stream_of(redis, events)
        await redis.set(f"{stream}:b", "not a stream")
        relay = Relay(to=[{"stream": f"{stream}:a", "types": ["a"]}, f"{stream}:b"], types=["b"])
        relay.use(redis)
        outcomes = await relay.handle_batch(messages)
        assert kinds(outcomes) == ["ok", "ResponseError", "ok", "ResponseError"]
        assert [e["source_id"] for e in await entries(redis, f"{stream}:a")] == [
            messages[0].id,
            messages[2].id,
        ]
        assert await pending_count(redis, stream, group) == 2


@pytest.mark.postgres
class TestSqlBatches:
    @PROPERTY
    @given(seed=st.integers(0, 2**32), redeliver=st.lists(st.integers(0, 10_000), max_size=10))
    async def test_batches_end_like_in_order_delivery(
        self, redis: Redis, pg_dsn: str, pg: Any, seed: int, redeliver: list[int]
    ) -> None:
        """Reordered and redelivered events, in batches of one transaction each, leave the
        rows of in-order delivery and one inbox row per entry."""
        rng = random.Random(seed)
        events = history(rng, entities=4, deletes=False)
        noisy = disorder(rng, events)
        stream, _, messages = await stream_of(redis, noisy)
        deliveries = redelivered(rng, messages, redeliver)
        table = f"t_{uuid.uuid4().hex[:8]}"
        s = await opened(sink(pg_dsn, table))
        try:
            for batch in batches(rng, deliveries):
                assert await s.handle_batch(batch) == [None] * len(batch)
        finally:
            await s.on_shutdown()
        assert rows(pg, table) == expected_rows(events)
        assert inbox(pg, stream) == len(noisy)
        assert s.counts["duplicate"] == len(deliveries) - len(noisy)

    async def test_a_value_the_column_cannot_hold_rejects_only_its_event(
        self, redis: Redis, pg_dsn: str, pg: Any
    ) -> None:
        """Text in an integer column and a version past bigint are rejected with PostgreSQL's
        reason; the rest of the batch commits, and a redelivery of it is a duplicate."""
        events = [Event("item.set", f"k{n}", 1, {"x": n, "y": "a"}) for n in range(4)]
        events[1] = Event("item.set", "k1", 1, {"x": "many", "y": "a"})
        events[3] = Event("item.set", "k3", 2**63, {"x": 3, "y": "a"})
        stream, _, messages = await stream_of(redis, events)
        table = f"t_{uuid.uuid4().hex[:8]}"
        s = await opened(sink(pg_dsn, table))
        try:
            outcomes = await s.handle_batch(messages)
            again = await s.handle_batch([messages[0], messages[2]])
        finally:
            await s.on_shutdown()
        assert kinds(outcomes) == ["ok", "Reject", "ok", "Reject"]
        assert isinstance(outcomes[1], Reject)
        assert "invalid input syntax for type integer" in str(outcomes[1])
        assert "out of range for type bigint" in str(outcomes[3])
        assert again == [None, None]
        assert rows(pg, table) == {"k0": (0, "a", 1), "k2": (2, "a", 1)}
        assert inbox(pg, stream) == 2
        assert s.counts == {"applied": 2, "duplicate": 2}

    async def test_one_statement_batch_keeps_the_newest_version_of_each_row(
        self, redis: Redis, pg_dsn: str, pg: Any
    ) -> None:
        """A batch of events with the same columns (one statement for the batch) leaves each
        row at its newest version, keeps a newer row already there, and counts each event:
        the write that landed as applied, the others as stale; redelivered, all duplicates."""
        events = [
            Event("item.set", "a", 1, {"x": 1, "y": "a1"}),
            Event("item.set", "a", 3, {"x": 3, "y": "a3"}),
            Event("item.set", "b", 4, {"x": 4, "y": "b4"}),
            Event("item.set", "a", 2, {"x": 2, "y": "a2"}),
            Event("item.set", "c", None, {"x": 7, "y": "c-first"}),
        ]
        stream, _, messages = await stream_of(redis, events)
        table = f"t_{uuid.uuid4().hex[:8]}"
        s = await opened(sink(pg_dsn, table))
        try:
            await s.handle(messages[4])  # creates the table; the rest goes as one batch
            pg.execute(f"INSERT INTO {table} (id, x, y, version) VALUES ('b', 5, 'b5', 5)")
            first = await s.handle_batch(messages[:4])
            again = await s.handle_batch(messages)
        finally:
            await s.on_shutdown()
        assert first == [None] * 4
        assert again == [None] * 5
        assert rows(pg, table) == {
            "a": (3, "a3", 3),
            "b": (5, "b5", 5),
            "c": (7, "c-first", None),
        }
        assert s.counts == {"applied": 2, "stale": 3, "duplicate": 5}
        assert inbox(pg, stream) == 5

    async def test_a_malformed_event_is_rejected_alone(
        self, redis: Redis, pg_dsn: str, pg: Any
    ) -> None:
        """An event without a key is rejected before the transaction; its neighbour commits."""
        stream, group, (msg,) = await stream_of(redis, [Event("item.set", "k", 1, {"x": 1})])
        keyless = Message(stream, "1-1", {b"type": b"item.set", b"data": b"{}"}, 1, group)
        table = f"t_{uuid.uuid4().hex[:8]}"
        s = await opened(sink(pg_dsn, table))
        try:
            outcomes = await s.handle_batch([keyless, msg])
        finally:
            await s.on_shutdown()
        assert isinstance(outcomes[0], MalformedMessage)
        assert outcomes[1] is None
        assert rows(pg, table) == {"k": (1, None, 1)}


def test_chunks_keep_order_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks cover every item once, in order, within the bounds (a wide item alone)."""
    monkeypatch.setattr(_batch, "SCRIPT_ITEMS", 10)
    monkeypatch.setattr(_batch, "SCRIPT_EVENTS", 3)
    parts = list(_batch.chunks([4, 4, 4, 30, 1, 1, 1, 1]))
    assert parts == [slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 7), slice(7, 8)]


def test_a_response_error_keeps_the_scripts_text() -> None:
    """A per-event error text becomes the ResponseError a script would have raised."""
    assert str(_batch.failure(b"WRONGTYPE x")) == "WRONGTYPE x"
    assert isinstance(_batch.failure("ERR y"), ResponseError)


def test_pack_frames_each_item_by_its_length() -> None:
    """Items of any bytes (colons, non-ASCII, empty) are framed so that none runs into the next."""
    assert _batch.pack([b"a:b", "é", 12, b""]) == b"3:a:b2:\xc3\xa92:120:"
