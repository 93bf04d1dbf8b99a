"""A worker behind Sentinel: it consumes through the primary the sentinels name, and after the
primary is killed and its replica promoted it reconnects on its own and goes on."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_cluster import SentinelServers

pytestmark = [
    pytest.mark.redis,
    pytest.mark.sentinel,
    # redis-py drops its connections to the killed primary unclosed (see conftest.py)
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture
def sentinels() -> Iterator[SentinelServers]:
    """Its own set-up: the test kills the primary."""
    try:
        servers = SentinelServers().start()
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)
    yield servers
    servers.cleanup()


@pytest.fixture
async def primary(sentinels: SentinelServers) -> AsyncIterator[Redis]:
    """A client that follows the primary through the sentinels, as producers would."""
    sentinel = Sentinel([("127.0.0.1", s.port) for s in sentinels.sentinels])  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(sentinels.service)
    yield client
    await client.aclose()
    for s in sentinel.sentinels:
        await s.aclose()


async def test_the_worker_follows_a_failover(
    sentinels: SentinelServers, primary: Redis, names: dict[str, str]
) -> None:
    """Entries published before and after the failover are all handled and acked."""
    stream, group = names["stream"], names["group"]
    seen: set[int] = set()

    @handler(stream=stream)
    async def record(msg: Message) -> None:
        seen.add(msg.data["n"])  # type: ignore[index]

    async def acked() -> bool:
        return await pending_count(primary, stream, group) == 0

    settings = make_settings(sentinels.url, group, redis_timeout=1.0)
    async with running(settings, [record]) as worker:
        publisher = Publisher(primary)
        for n in range(20):
            await publisher.publish(stream, "t", {"n": n})
        await eventually(lambda: len(seen) == 20)
        await eventually(acked)
        # Given every write has reached the replica
        assert await primary.execute_command("WAIT", 1, 5000) == 1

        # When the primary dies and the sentinels promote its replica
        old = sentinels.primary.port
        sentinels.primary.stop(signal.SIGKILL)
        await _promoted(sentinels, old)

        # Then the worker reconnects on its own and handles what comes next
        for n in range(20, 40):
            await _publish_retrying(publisher, stream, n)
        await eventually(lambda: len(seen) == 40, timeout=30)
        await eventually(acked, timeout=30)
        assert worker.stats.redis_errors, "the failover went unnoticed: nothing was tested"
    assert seen == set(range(40))


async def _promoted(sentinels: SentinelServers, old: int) -> None:
    def moved() -> bool:
        with sync_redis.Redis(port=sentinels.sentinels[0].port) as client:
            address: Any = client.sentinel_get_master_addr_by_name(sentinels.service)
        return address is not None and int(address[1]) != old

    await eventually(lambda: asyncio.to_thread(moved), timeout=30, interval=0.2)


async def _publish_retrying(publisher: Publisher, stream: str, n: int) -> None:
    for _ in range(100):
        try:
            await publisher.publish(stream, "t", {"n": n})
            return
        except (sync_redis.ConnectionError, sync_redis.TimeoutError, sync_redis.ReadOnlyError):
            await asyncio.sleep(0.1)
    raise AssertionError("could not publish after the failover")


async def test_check_names_the_primary_the_sentinels_chose(
    sentinels: SentinelServers, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`syncworker check` through Sentinel reports the service and where its primary is."""
    from worker.cli import main

    monkeypatch.setenv("SYNCWORKER_REDIS_URL", sentinels.url)
    monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")
    monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
    assert await asyncio.to_thread(main, ["check"]) == 0
    primary = f"127.0.0.1:{sentinels.primary.port}"
    out = capsys.readouterr().out
    assert f"(topology: Sentinel, service syncworker, primary at {primary})" in out
