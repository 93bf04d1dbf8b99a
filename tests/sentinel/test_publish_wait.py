"""Publishing with `wait_replicas`: an entry the publisher was told about is on the replicas.

Redis replication is asynchronous: without WAIT, a primary that dies right after XADD can
take an acknowledged event along. These tests run a real primary and replica (no sentinels).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from worker import NotReplicated, Publisher
from worker.redis_cluster import SentinelServers

pytestmark = pytest.mark.redis


@pytest.fixture
def replicated() -> Iterator[SentinelServers]:
    with SentinelServers(replicas=1, sentinels=0) as group:
        group.wait_synced()
        yield group


@pytest.fixture
async def primary(replicated: SentinelServers) -> AsyncIterator[Redis]:
    client = Redis.from_url(replicated.primary.url)
    yield client
    await client.aclose()


async def test_a_confirmed_entry_is_on_the_replica(
    replicated: SentinelServers, primary: Redis
) -> None:
    publisher = Publisher(primary, wait_replicas=1, wait_timeout=5)
    entry_id = await publisher.publish("orders", "order.created", {"id": 1}, key="o-1")

    async with Redis.from_url(replicated.replicas[0].url) as replica:
        entries = await replica.xrange("orders")
    assert [e[0].decode() for e in entries] == [entry_id]
    assert entries[0][1][b"type"] == b"order.created"


async def test_an_unconfirmed_entry_raises_with_its_id(
    replicated: SentinelServers, primary: Redis
) -> None:
    replica = replicated.replicas[0]
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)  # alive but silent: WAIT gets no acknowledgement
    try:
        publisher = Publisher(primary, wait_replicas=1, wait_timeout=0.3)
        with pytest.raises(NotReplicated) as raised:
            await publisher.publish("orders", "order.created", {"id": 2})
    finally:
        os.kill(replica.pid, signal.SIGCONT)

    assert raised.value.acknowledged == 0 and raised.value.wanted == 1
    assert "could lose it" in str(raised.value)
    # The entry is on the primary: the id in the error lets the caller decide.
    assert [e[0].decode() for e in await primary.xrange("orders")] == [raised.value.entry_id]


def test_the_command_waits_and_fails_clearly(replicated: SentinelServers) -> None:
    env = {**os.environ, "SYNCWORKER_REDIS_URL": replicated.primary.url}
    command = [sys.executable, "-m", "worker", "publish", "orders", "--type", "t", "--data", "{}"]

    ok = subprocess.run(
        [*command, "--wait-replicas", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().count("-") == 1  # the entry id

    short = subprocess.run(
        [*command, "--wait-replicas", "2", "--wait-timeout", "0.2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 1
    assert "1 of 2 replicas confirmed" in short.stderr
    entry_id = short.stdout.strip()
    assert entry_id and entry_id != ok.stdout.strip()


def test_wait_options_are_checked() -> None:
    with pytest.raises(ValueError):
        Publisher(None, wait_replicas=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Publisher(None, wait_replicas=1, wait_timeout=0)  # type: ignore[arg-type]
