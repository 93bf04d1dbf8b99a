"""A worker's reads after a failover of the node its cluster client asks where keys are.

redis-py finds XREADGROUP's keys by asking one node (COMMAND GETKEYS) before it picks the
slot's node. When that node's primary dies, every read fails right there, before redis-py's
own error handling could refresh the slot map; the read loop must refresh it itself
(`worker.topology.refresh_slots`), or the worker stops consuming streams served by healthy
primaries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from tests.helpers import eventually, make_settings, running
from worker import Message, handler
from worker.connection import connect
from worker.redis_cluster import RedisClusterServers
from worker.redis_server import RedisServer
from worker.settings import WorkerSettings

pytestmark = [
    pytest.mark.redis,
    pytest.mark.cluster,
    # redis-py drops its connections to the killed primary unclosed
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


async def test_reads_go_on_after_the_key_lookup_node_fails_over(
    replicated_cluster: RedisClusterServers,
) -> None:
    """Streams on the other shards keep being consumed after the primary the reader's client
    looks keys up on is killed and its replica promoted. None of the routed streams lives on
    that primary, so no read in flight fails there and no command error makes redis-py read
    the slot map again by itself."""
    run = uuid.uuid4().hex[:8]
    settings = make_settings(replicated_cluster.url, f"g-{run}", consumer="c1")
    lookup = await _lookup_node(settings)
    doomed = next(s for s in replicated_cluster.primaries if s.port == lookup)
    streams = _one_stream_per_shard(replicated_cluster, run, but=doomed)
    handled: list[str] = []

    @handler(streams=streams)
    async def apply(msg: Message) -> None:
        handled.append(msg.fields["n"])

    nodes = [ClusterNode("127.0.0.1", s.port) for s in replicated_cluster.primaries]
    producer = RedisCluster(startup_nodes=nodes)
    try:
        async with running(settings, [apply]) as worker:
            assert worker.reader is not None
            node = worker.reader.redis.commands_parser.node  # type: ignore[attr-defined]
            assert node.port == lookup, "the reader looks keys up on another node than probed"
            for stream in streams:
                await producer.xadd(stream, {"n": "before"})
            await eventually(lambda: len(handled) == len(streams))

            await asyncio.to_thread(replicated_cluster.fail_over, doomed)
            for stream in streams:
                await _add(producer, stream, "after")
            await eventually(lambda: handled.count("after") == len(streams), timeout=20)
    finally:
        await producer.aclose()


async def _lookup_node(settings: WorkerSettings) -> int:
    """The port of the node a client built from `settings` asks where keys are."""
    client: Any = connect(settings, blocking_reads=True)
    try:
        await client.initialize()
        return int(client.commands_parser.node.port)
    finally:
        await client.aclose()


def _one_stream_per_shard(servers: RedisClusterServers, run: str, but: RedisServer) -> list[str]:
    streams: dict[int, str] = {}
    n = 0
    while len(streams) < len(servers.primaries) - 1:
        name = f"{run}:{n}"
        owner = servers.primary_of(name)
        if owner is not but:
            streams.setdefault(owner.port, name)
        n += 1
    return list(streams.values())


async def _add(producer: RedisCluster, stream: str, value: str) -> None:
    for _ in range(50):
        try:
            await producer.xadd(stream, {"n": value})
            return
        except RedisError:
            await asyncio.sleep(0.1)
    raise AssertionError("could not publish after the failover")
