"""The PostgreSQL sink: upserts in one transaction with an inbox row and a version guard."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from handlers.sql import SqlSink
from tests.handlers.events import (
    Event,
    delivered,
    disorder,
    history,
    latest,
    publish,
    redelivered,
)
from tests.handlers.tcp_proxy import Proxy
from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, Reject
from worker.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def sink(dsn: str, table: str, **options: Any) -> SqlSink:
    return SqlSink(
        dsn=dsn,
        table=table,
        columns=["x", "y"],
        values={"item.merged": {"merged": True}},
        schema=(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(id text PRIMARY KEY, x integer, y text, merged boolean, version bigint)"
        ),
        connect_timeout=1.0,
        **options,
    )


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


async def opened(s: SqlSink) -> SqlSink:
    await s.open()
    return s


@pytest.fixture
async def closing() -> AsyncIterator[list[SqlSink]]:
    """Sinks appended here are closed after the test."""
    sinks: list[SqlSink] = []
    yield sinks
    for s in sinks:
        await s.on_shutdown()


def rows(pg: Any, table: str) -> dict[str, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in pg.execute(f"SELECT id, x, y, version FROM {table}").fetchall()}


def expected_rows(events: list[Event]) -> dict[str, tuple[Any, ...]]:
    return {k: (e.data["x"], e.data["y"], e.version) for k, e in latest(events).items()}


def inbox(pg: Any, stream: str) -> int:
    found = pg.execute("SELECT count(*) FROM syncworker_inbox WHERE stream = %s", [stream])
    return int(found.fetchone()[0])


class TestOrderIndependence:
    @PROPERTY
    @given(seed=st.integers(0, 2**32), redeliver=st.lists(st.integers(0, 10_000), max_size=10))
    async def test_reordered_and_repeated_delivery_ends_like_in_order_delivery(
        self, redis: Redis, pg_dsn: str, pg: Any, seed: int, redeliver: list[int]
    ) -> None:
        """Duplicates, reordering and redeliveries leave the rows in-order delivery leaves."""
        rng = random.Random(seed)
        events = history(rng, entities=4, deletes=False)
        noisy = disorder(rng, events)
        run = uuid.uuid4().hex[:8]
        await publish(redis, f"{run}:a", events)
        await publish(redis, f"{run}:b", noisy)
        in_order = await delivered(redis, f"{run}:a", "g", len(events))
        messages = await delivered(redis, f"{run}:b", "g", len(noisy))
        deliveries = redelivered(rng, messages, redeliver)
        reference = await opened(sink(pg_dsn, f"ref_{run}"))
        subject = await opened(sink(pg_dsn, f"sub_{run}"))
        try:
            for msg in in_order:
                await reference.handle(msg)
            for msg in deliveries:
                await subject.handle(msg)
        finally:
            await reference.on_shutdown()
            await subject.on_shutdown()
        assert rows(pg, f"sub_{run}") == rows(pg, f"ref_{run}") == expected_rows(events)
        assert inbox(pg, f"{run}:a") == len(events)
        assert reference.counts == {"applied": len(events)}
        assert inbox(pg, f"{run}:b") == len(noisy)
        assert subject.counts["duplicate"] == len(deliveries) - len(noisy)
        assert subject.counts["applied"] + subject.counts["stale"] == len(noisy)


class TestInbox:
    async def test_a_redelivery_after_commit_is_a_no_op(
        self, redis: Redis, pg_dsn: str, pg: Any, closing: list[SqlSink]
    ) -> None:
        """The second delivery of a committed message finds its inbox row and changes nothing."""
        run = uuid.uuid4().hex[:8]
        await publish(redis, f"{run}:s", [Event("item.set", "k", None, {"x": 1, "y": "a"})])
        (msg,) = await delivered(redis, f"{run}:s", "g", 1)
        s = await opened(sink(pg_dsn, f"t_{run}"))
        closing.append(s)
        await s.handle(msg)
        pg.execute(f"UPDATE t_{run} SET x = 99")  # would be overwritten by a second apply
        await s.handle(msg)
        assert rows(pg, f"t_{run}") == {"k": (99, "a", None)}
        assert s.counts == {"applied": 1, "duplicate": 1}
        assert inbox(pg, f"{run}:s") == 1

    async def test_concurrent_deliveries_of_one_message_apply_once(
        self, redis: Redis, pg_dsn: str, pg: Any, closing: list[SqlSink]
    ) -> None:
        """Two consumers running the same message at once serialise on the inbox key."""
        run = uuid.uuid4().hex[:8]
        await publish(redis, f"{run}:s", [Event("item.merged", "k", 1, {"x": 1, "y": "a"})])
        (msg,) = await delivered(redis, f"{run}:s", "g", 1)
        first = await opened(sink(pg_dsn, f"t_{run}"))
        second = await opened(sink(pg_dsn, f"t_{run}"))
        closing.extend([first, second])
        await first.handle(msg)  # creates the tables before the race
        pg.execute("DELETE FROM syncworker_inbox WHERE stream = %s", [f"{run}:s"])
        pg.execute(f"DELETE FROM t_{run}")
        await asyncio.gather(first.handle(msg), second.handle(msg), first.handle(msg))
        assert rows(pg, f"t_{run}") == {"k": (1, "a", 1)}
        assert pg.execute(f"SELECT merged FROM t_{run}").fetchone() == (True,)
        assert first.counts["applied"] + second.counts["applied"] == 2  # once before, once now
        assert inbox(pg, f"{run}:s") == 1

    async def test_values_take_the_column_types(
        self, redis: Redis, pg_dsn: str, pg: Any, closing: list[SqlSink]
    ) -> None:
        """JSON values land in timestamptz, numeric, jsonb and boolean columns as those types."""
        run = uuid.uuid4().hex[:8]
        data = {"at": "2026-01-05T09:30:00+00:00", "amount": 12.5, "meta": {"a": [1]}, "ok": True}
        await publish(redis, f"{run}:s", [Event("item.set", "k", 3, data)])
        (msg,) = await delivered(redis, f"{run}:s", "g", 1)
        s = SqlSink(
            dsn=pg_dsn,
            table=f"t_{run}",
            columns={"paid_at": "at", "amount": "amount", "meta": "meta", "ok": "ok"},
            schema=f"CREATE TABLE t_{run} (id text PRIMARY KEY, paid_at timestamptz, "
            "amount numeric(10, 2), meta jsonb, ok boolean, version bigint)",
        )
        await s.open()
        closing.append(s)
        await s.handle(msg)
        row = pg.execute(f"SELECT paid_at, amount, meta, ok, version FROM t_{run}").fetchone()
        assert row[0] == datetime.fromisoformat(data["at"])
        assert (float(row[1]), row[2], row[3], row[4]) == (12.5, {"a": [1]}, True, 3)

    def test_options_are_checked(self) -> None:
        """Table and column names must be plain identifiers, and the DSN must be known."""
        with pytest.raises(ValueError, match="plain SQL identifier"):
            SqlSink(dsn="x", table="t; drop table x", columns=["a"])
        with pytest.raises(ValueError, match="key or version column"):
            SqlSink(dsn="x", table="t", columns=["id", "a"])
        with pytest.raises(ValueError, match="SYNCWORKER_POSTGRES_DSN"):
            SqlSink(table="t", columns=["a"])


def versioned(run: str, n: int, version: int, x: int = 0) -> Message:
    """Entry `n` of stream `<run>:s`: an item.set of entity k at `version`."""
    raw = {
        b"type": b"item.set",
        b"key": b"k",
        b"version": str(version).encode(),
        b"data": f'{{"x": {x}, "y": "{version}"}}'.encode(),
    }
    return Message(f"{run}:s", f"{n}-0", raw, 1, "g")


class TestLargeVersions:
    """Versions are compared by PostgreSQL as exact integers, beyond 2^53 too."""

    @pytest.mark.parametrize(
        ("column", "older", "newer"),
        [
            ("bigint", 2**53 + 1, 2**53 + 2),
            ("bigint", 2**53, 2**53 + 1),  # equal as doubles
            ("bigint", 2**63 - 2, 2**63 - 1),  # the largest bigint
            ("numeric", 2**64 + 1, 2**64 + 2),  # past bigint: a numeric column holds any
        ],
    )
    async def test_the_newer_of_two_close_versions_wins(
        self, pg_dsn: str, pg: Any, closing: list[SqlSink], column: str, older: int, newer: int
    ) -> None:
        """The newer version is applied over the older one, and the older one after it is stale."""
        run = uuid.uuid4().hex[:8]
        s = SqlSink(
            dsn=pg_dsn,
            table=f"t_{run}",
            columns=["x", "y"],
            schema=f"CREATE TABLE t_{run} (id text PRIMARY KEY, x integer, y text, "
            f"version {column})",
        )
        await s.open()
        closing.append(s)
        for n, version in enumerate((older, newer, older)):
            await s.handle(versioned(run, n + 1, version))
        assert pg.execute(f"SELECT y, version FROM t_{run}").fetchall() == [(str(newer), newer)]
        assert s.counts == {"applied": 2, "stale": 1}

    async def test_a_version_the_column_cannot_hold_is_rejected(
        self, pg_dsn: str, pg: Any, closing: list[SqlSink]
    ) -> None:
        """2^63 does not fit a bigint version column: Reject (dead letter at once), not a retry,
        with PostgreSQL's reason; nothing is written, the inbox row included."""
        run = uuid.uuid4().hex[:8]
        s = await opened(sink(pg_dsn, f"t_{run}"))
        closing.append(s)
        await s.handle(versioned(run, 1, 2**63 - 1))
        with pytest.raises(Reject, match=f"t_{run}.*out of range for type bigint"):
            await s.handle(versioned(run, 2, 2**63, x=5))
        assert rows(pg, f"t_{run}") == {"k": (0, str(2**63 - 1), 2**63 - 1)}
        assert inbox(pg, f"{run}:s") == 1
        assert s.counts == {"applied": 1}

    async def test_a_value_a_column_cannot_hold_is_rejected(
        self, pg_dsn: str, pg: Any, closing: list[SqlSink]
    ) -> None:
        """Data PostgreSQL refuses as a data exception (here text in an integer column) is
        rejected at once: no retry can change it."""
        run = uuid.uuid4().hex[:8]
        s = await opened(sink(pg_dsn, f"t_{run}"))
        closing.append(s)
        raw = {b"type": b"item.set", b"key": b"k", b"version": b"1", b"data": b'{"x": "many"}'}
        with pytest.raises(Reject, match="invalid input syntax for type integer"):
            await s.handle(Message(f"{run}:s", "1-0", raw, 1, "g"))
        assert inbox(pg, f"{run}:s") == 0


class TestFailures:
    async def test_database_outages_are_retried_until_it_answers(
        self, redis: Redis, redis_server: RedisServer, pg_dsn: str, pg: Any, names: dict[str, str]
    ) -> None:
        """Messages fail while PostgreSQL is unreachable (pooled connections dropped too) and
        are retried; once it answers again each lands exactly once."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        stream, group, run = names["stream"], names["group"], names["suffix"]
        params = conninfo_to_dict(pg_dsn)
        proxy = Proxy(int(params.get("port") or 5432))
        params.update(host="127.0.0.1", port=str(proxy.port))
        events = history(random.Random(5), entities=40, deletes=False)
        half = len(events) // 2
        s = sink(make_conninfo("", **params), f"t_{run}").bind([stream])
        settings = make_settings(redis_server.url, group, max_attempts=1000)

        async def drained() -> bool:
            return await pending_count(redis, stream, group) == 0

        try:
            await proxy.start()
            async with running(settings, [s]) as worker:
                # Given: the first half applied, with connections open in the pool
                await publish(redis, stream, events[:half])
                await eventually(lambda: sum(s.counts.values()) == half)
                # When: the database goes away (open connections cut) while events arrive
                await proxy.stop()
                await publish(redis, stream, events[half:])
                await eventually(lambda: worker.stats.messages[(stream, s.name, "retry")] >= 3)
                # Then: once it is back, everything lands
                await proxy.start()
                await eventually(drained, timeout=20)
        finally:
            await proxy.stop()
        assert rows(pg, f"t_{run}") == expected_rows(events)
        assert inbox(pg, stream) == len(events)
        assert s.counts["applied"] + s.counts["stale"] == len(events)
