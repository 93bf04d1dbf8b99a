"""The SQL sink behind a worker on a Redis Cluster: rows written once, entries acked."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from handlers.sql import SqlSink
from tests.helpers import eventually, make_settings, pending_count, running
from worker.publish import Publisher
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.postgres]


async def test_events_of_streams_in_two_slots_become_rows_once(
    cluster: Redis, redis_cluster: RedisClusterServers, slotted: dict[str, str], pg_dsn: str
) -> None:
    """Every event of two streams on two primaries ends as its entity's newest row, each
    published version applied once (a repeat is skipped by the sink's own guard), and
    nothing stays pending."""
    import psycopg

    table = "cluster_" + uuid.uuid4().hex[:8]
    streams = [slotted["a"], slotted["b"]]
    sink = SqlSink(
        dsn=pg_dsn,
        table=table,
        columns=["x"],
        schema=f"CREATE TABLE {table} (id text PRIMARY KEY, x integer, version bigint)",
    ).bind(streams)
    publisher = Publisher(cluster)
    for n in range(40):
        stream = streams[n % 2]
        await publisher.publish(stream, "item.set", {"x": n}, key=f"e{n % 8}", version=n)
    await publisher.publish(streams[0], "item.set", {"x": 999}, key="e0", version=0)  # stale
    settings = make_settings(redis_cluster.url, slotted["group"])
    async with running(settings, [sink]):

        async def drained() -> bool:
            pending = [await pending_count(cluster, s, slotted["group"]) for s in streams]
            groups = [await cluster.xinfo_groups(s) for s in streams]
            read = [int(g[0]["entries-read"] or 0) for g in groups]
            return pending == [0, 0] and read == [21, 20]

        await eventually(drained, timeout=30)
    with psycopg.connect(pg_dsn) as conn:
        rows = dict(conn.execute(f"SELECT id, x FROM {table}").fetchall())
    assert rows == {f"e{k}": 32 + k for k in range(8)}
