"""Debezium change events, as Debezium Server's Redis sink writes them, applied by a real worker
to a Redis projection and a PostgreSQL table (fixtures: tests/fixtures/debezium)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from handlers.projection import Projection
from handlers.sql import SqlSink
from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

FIXTURES = Path(__file__).parent.parent / "fixtures" / "debezium"
CUSTOMERS = "inventory.customers"


def recorded(name: str) -> list[dict[str, str]]:
    return list(json.loads((FIXTURES / name).read_text()))


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


class TestCustomersTable:
    async def test_projection_and_sql_sink_apply_the_changes(
        self,
        redis: Redis,
        redis_server: RedisServer,
        pg_dsn: str,
        pg: Any,
        names: dict[str, str],
    ) -> None:
        """Snapshot, insert, updates and delete land in both read models once; the tombstone
        is skipped, the re-sent update changes nothing, a broken entry is dead-lettered."""
        stream, group, suffix = f"{names['stream']}.{CUSTOMERS}", names["group"], names["suffix"]
        table = f"customers_{suffix}"
        upsert = {f"{CUSTOMERS}.{op}": "set" for op in ("read", "created", "updated")}
        projection = Projection(
            prefix=f"{suffix}:customer:",
            events={**upsert, f"{CUSTOMERS}.deleted": "delete"},
            ack=False,
            batch=False,  # two handlers share the stream: per-message handlers
        ).bind([stream], envelope="debezium")
        sink = SqlSink(
            batch=False,
            dsn=pg_dsn,
            table=table,
            columns=["first_name", "last_name", "email"],
            values={f"{CUSTOMERS}.deleted": {"deleted": True}},
            schema=(
                f"CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, first_name text, "
                "last_name text, email text, deleted boolean NOT NULL DEFAULT false, "
                "version bigint)"
            ),
        ).bind([stream], envelope="debezium")
        # Given the entries Debezium Server wrote, and one that is no change event
        for fields in recorded("postgres_customers.json"):
            await redis.xadd(stream, fields)
        await redis.xadd(stream, {'{"id":1009}': "{truncated"})
        # When a worker runs both read models on the stream
        async with running(make_settings(redis_server.url, group), [projection, sink]):
            await eventually(lambda: _settled(redis, stream, group))
        # Then both hold the tables' final state
        sally = {"first_name": "Sally", "last_name": "Thomas", "email": "sally.t@example.com"}
        anne = {"first_name": "Anne", "last_name": "Marie", "email": "annek@noanswer.org"}
        got = {k: await redis.hgetall(f"{suffix}:customer:{k}") for k in ("1001", "1002", "1005")}
        assert got == {
            "1001": {k.encode(): v.encode() for k, v in {"id": "1001", **sally}.items()},
            "1002": {},
            "1005": {k.encode(): v.encode() for k, v in {"id": "1005", **anne}.items()},
        }
        rows = pg.execute(
            f"SELECT id, first_name, last_name, email, deleted, version FROM {table} ORDER BY id"
        ).fetchall()
        assert rows == [
            ("1001", *sally.values(), False, 34103712),
            ("1002", "George", "Bailey", "gbailey@foobar.com", True, 34104336),
            ("1005", *anne.values(), False, 34104024),
        ]
        # The re-sent update was stale for both; the tombstone reached neither
        assert projection.counts["stale"] == sink.counts["stale"] == 1
        assert sum(projection.counts.values()) == sum(sink.counts.values()) == 7
        letters = await dead_letters(redis, stream)
        assert [(d["dlq_handler"], d["dlq_error_type"]) for d in letters] == [
            ("envelope:debezium", "MalformedMessage")
        ]
        assert "not valid JSON" in letters[0]["dlq_error"]


async def _settled(redis: Redis, stream: str, group: str) -> bool:
    groups = await redis.xinfo_groups(stream)
    lag = next(g["lag"] for g in groups if g["name"].decode() == group)
    return lag == 0 and await pending_count(redis, stream, group) == 0


class TestExtendedFormat:
    async def test_mysql_orders_in_the_extended_format_reach_the_projection(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """`key`/`value` entries of the MySQL connector: the order is created, updated and
        deleted in the projection; the tombstone after the delete is skipped."""
        stream, group, suffix = (
            f"{names['stream']}.inventory.orders",
            names["group"],
            names["suffix"],
        )
        projection = Projection(
            prefix=f"{suffix}:order:",
            events={
                "inventory.orders.created": "set",
                "inventory.orders.updated": "set",
                "inventory.orders.deleted": "delete",
            },
        ).bind([stream], envelope="debezium")
        for fields in recorded("mysql_orders.json"):
            await redis.xadd(stream, fields)
        async with running(make_settings(redis_server.url, group), [projection]):
            await eventually(lambda: _settled(redis, stream, group))
        assert await redis.exists(f"{suffix}:order:10005") == 0
        assert dict(projection.counts) == {"applied": 3}  # the tombstone reached no handler
        assert await dead_letters(redis, stream) == []
