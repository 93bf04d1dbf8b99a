"""The outbox relay publishing to a Redis Cluster: rows for streams on three primaries, one
pipelined batch split by the cluster client, each stream's events in commit order."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.outbox.conftest import outbox_dsn as outbox_dsn  # the relay's database
from tests.outbox.conftest import table as table
from tests.outbox.helpers import entries, relaying
from worker.outbox import add

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.cluster]


async def test_the_relay_publishes_to_streams_on_every_primary_in_order(
    cluster: Redis, outbox_dsn: str, table: str, slotted: dict[str, str]
) -> None:
    """Two transactions interleave rows for three streams in three slots: every row reaches
    its stream, each stream holds its key's versions in order, and the table is emptied."""
    import psycopg

    streams = [slotted["a"], slotted["b"], slotted["c"]]
    async with relaying(cluster, outbox_dsn, table, batch_size=7):
        async with await psycopg.AsyncConnection.connect(outbox_dsn) as conn:
            for version in range(1, 6):
                for stream in streams:
                    await add(conn, stream, "step", {"v": version}, key="k", version=version,
                              table=table)  # fmt: skip
                if version == 3:
                    await conn.commit()  # a second transaction from here on
            await conn.commit()

        async def all_published() -> bool:
            return all([await cluster.xlen(s) == 5 for s in streams])

        def table_empty() -> bool:
            with psycopg.connect(outbox_dsn) as check:
                left: Any = check.execute(f"SELECT count(*) FROM {table}").fetchone()
            return bool(left == (0,))

        await eventually(all_published, timeout=10)
        await eventually(table_empty, timeout=10)
    for stream in streams:
        assert [int(e["version"]) for e in await entries(cluster, stream)] == [1, 2, 3, 4, 5]
