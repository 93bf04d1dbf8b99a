"""Cluster clients from `connect` pack commands with hiredis on every node they reach."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from worker.connection import connect
from worker.redis_cluster import RedisClusterServers
from worker.settings import WorkerSettings

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


async def test_every_nodes_connections_pack_with_hiredis(
    redis_cluster: RedisClusterServers, slotted: dict[str, str]
) -> None:
    """After the client learned the slot map (nodes made anew from its options), commands on
    every primary go through connections with the faster packer, and work."""
    client: Any = connect(WorkerSettings(redis_url=redis_cluster.url))
    try:
        for key in (slotted["a"], slotted["b"], slotted["c"]):  # one on each primary
            await client.xadd(key, {"n": 1})
            assert await client.xlen(key) == 1
        connections = [c for node in client.get_primaries() for c in node._connections]
        assert len({c.port for c in connections}) == 3
        for connection in connections:
            assert type(connection).pack_command is not Connection.pack_command
    finally:
        await client.aclose()
