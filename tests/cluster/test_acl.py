"""Least-privilege users on a Redis Cluster: the rules `worker.acl` renders with
`cluster=True`, granted on every primary (ACL users are per node), are enough for a worker
that retries and dead-letters into `{stream}:dlq`, and for `syncworker status`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, running
from worker import Message, Reject, acl, handler
from worker.cli import main
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@contextlib.contextmanager
def user_on_every_primary(servers: RedisClusterServers, rules: str) -> Iterator[str]:
    """A `redis+cluster://` URL for a fresh user with exactly `rules`; deleted afterwards."""
    name, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    for server in servers.primaries:
        with sync_redis.Redis(port=server.port) as admin:
            admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules.split())
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers.primaries)
    try:
        yield f"redis+cluster://{name}:{password}@{hosts}"
    finally:
        for server in servers.primaries:
            with sync_redis.Redis(port=server.port) as admin:
                admin.execute_command("ACL", "DELUSER", name)


async def test_a_worker_and_status_with_the_cluster_rules(
    redis_cluster: RedisClusterServers,
    cluster: Redis,
    slotted: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Handled entries are acked, a rejected one lands in `{stream}:dlq`, and status reads
    both; without the cluster client's own commands, the worker could not even connect."""
    stream, group = slotted["a"], slotted["group"]
    dlq = "{" + stream + "}:dlq"
    handled: list[str] = []

    @handler(stream=stream)
    async def apply(msg: Message) -> None:
        if msg.fields.get("bad") == "1":
            raise Reject("bad")
        handled.append(msg.id)

    with user_on_every_primary(redis_cluster, acl.rules("run", stream, cluster=True)) as url:
        async with running(make_settings(url, group), [apply]):
            await cluster.xadd(stream, {"n": "1"})
            await cluster.xadd(stream, {"bad": "1"})
            await eventually(lambda: len(handled) == 1)
            await eventually(lambda: _length_is(cluster, dlq, 1))
    with user_on_every_primary(redis_cluster, acl.rules("status", stream, cluster=True)) as url:
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
        monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
        capsys.readouterr()
        code = await asyncio.to_thread(
            main, ["status", "--stream", stream, "--group", group, "--json"]
        )
        assert code == 0, capsys.readouterr().err
    (row,) = json.loads(capsys.readouterr().out)["streams"]
    assert (row["length"], row["pending"], row["dead_letter_length"]) == (2, 0, 1)


async def _length_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n
