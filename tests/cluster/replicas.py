"""Test helpers for replicated clusters: which replica copies which primary, stopping one
(SIGSTOP: alive, connected, silent, so WAIT gets no acknowledgement), reading from it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import redis as sync_redis
from redis.asyncio import Redis

from worker.redis_cluster import RedisClusterServers
from worker.redis_server import RedisServer


def replica_of(servers: RedisClusterServers, primary: RedisServer) -> RedisServer:
    """The live replica that replicates `primary` now (INFO replication's master_port)."""
    for server in servers.servers:
        if server is primary or server.pid is None:
            continue
        with sync_redis.Redis(port=server.port, socket_timeout=2) as client:
            info = client.info("replication")
        if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
            return server
    raise RuntimeError(f"no replica of :{primary.port}")


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """`server` paused (SIGSTOP) inside the block, resumed (SIGCONT) after, by its pid."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def on_replica(servers: RedisClusterServers, stream: str) -> list[str]:
    """The entry ids of `stream` as the replica of its primary holds them now (READONLY)."""
    replica = replica_of(servers, servers.primary_of(stream))
    with sync_redis.Redis(port=replica.port, socket_timeout=2) as client:
        client.execute_command("READONLY")
        return [entry_id.decode() for entry_id, _ in client.xrange(stream)]


async def entry_ids(redis: Redis, stream: str) -> list[str]:
    """The entry ids of `stream` on its primary."""
    return [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]
