"""A real Redis Cluster for the session, on free ports, and fresh names in different slots.

CI starts 3 primaries without replicas (about 2 s); `SYNCWORKER_CHAOS_LONG=1` starts the
full 3 primaries + 3 replicas. Either way the servers are the session's binary
(`SYNCWORKER_TEST_SERVER=valkey` works too), and they are stopped by pid at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from worker.keys import key_slot
from worker.redis_cluster import RedisClusterServers

LONG = os.environ.get("SYNCWORKER_CHAOS_LONG") == "1"


def started_cluster(replicas: int) -> Iterator[RedisClusterServers]:
    """3 primaries with `replicas` each, every replica synced; stopped by pid at the end. A
    missing server binary ends the session with the fix (never a silent skip)."""
    try:
        servers = RedisClusterServers(3, replicas=replicas).start()
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)
    try:
        servers.wait_synced()
        yield servers
    finally:
        servers.cleanup()


@contextlib.asynccontextmanager
async def client_of(servers: RedisClusterServers) -> AsyncIterator[Redis]:
    """A cluster client (typed as the plain client, as the runtime types it)."""
    nodes = [ClusterNode("127.0.0.1", s.port) for s in servers.primaries]
    client = RedisCluster(startup_nodes=nodes)
    try:
        yield client  # type: ignore[misc]
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """One cluster for the session: 3 primaries (+ 3 replicas in the long mode)."""
    yield from started_cluster(1 if LONG else 0)


@pytest.fixture
def replicated_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of its own for a test that fails a primary over: 3 primaries, a replica each.
    About 2 s to start."""
    yield from started_cluster(1)


@pytest.fixture
async def cluster(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    async with client_of(redis_cluster) as client:
        yield client


@pytest.fixture
def slotted() -> dict[str, str]:
    """Fresh names: three streams in three different slots (on different primaries), a group."""
    suffix = uuid.uuid4().hex[:10]
    streams: list[str] = []
    n = 0
    while len(streams) < 3:  # a third of the slots per primary: pick one stream in each
        name = f"test:{suffix}:{n}"
        n += 1
        if key_slot(name) // 5462 not in {key_slot(s) // 5462 for s in streams}:
            streams.append(name)
    return {
        "a": streams[0],
        "b": streams[1],
        "c": streams[2],
        "group": f"group-{suffix}",
        "suffix": suffix,
    }


from tests.handlers.conftest import pg_dsn as pg_dsn  # noqa: E402  the SQL sink's database
