"""Every operations command through Sentinel: publish (with --wait-replicas), status, dlq list /
replay / purge, consumers prune, trim. Each finds the primary by asking the sentinels; on one
primary the key names are today's (`<stream>:dlq`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.commands_scenario import walk_the_commands
from worker.redis_cluster import SentinelServers

pytestmark = [pytest.mark.redis, pytest.mark.sentinel]


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelServers]:
    """One set-up for the module: nothing here kills the primary."""
    try:
        servers = SentinelServers().start()
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)
    servers.wait_synced()
    yield servers
    servers.cleanup()


@pytest.fixture
async def primary(sentinels: SentinelServers) -> AsyncIterator[Redis]:
    client = Redis(port=sentinels.primary.port)
    yield client
    await client.aclose()


@pytest.fixture
def env(sentinels: SentinelServers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", sentinels.url)
    monkeypatch.delenv("SYNCWORKER_HANDLERS", raising=False)
    monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
    monkeypatch.delenv("SYNCWORKER_ROUTES", raising=False)


async def test_the_commands_work_through_the_sentinels(
    sentinels: SentinelServers,
    primary: Redis,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The walk through the commands, each publish confirmed by the replica."""
    suffix = uuid.uuid4().hex[:10]
    stream, group = f"test:{suffix}", f"group-{suffix}"
    wait = ("--wait-replicas", "1", "--wait-timeout", "5")
    await walk_the_commands(primary, sentinels.url, stream, group, f"{stream}:dlq", capsys, wait)
