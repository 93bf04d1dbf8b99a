"""Every operations command through Sentinel: publish (with --wait-replicas), status, dlq list /
replay / purge, consumers prune, trim. Each finds the primary by asking the sentinels; on one
primary the key names are today's (`<stream>:dlq`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.cli import main
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


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_the_commands_work_through_the_sentinels(
    sentinels: SentinelServers,
    primary: Redis,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Entries published with the command (each confirmed by the replica) are dead-lettered;
    status, dlq list, replay and purge find them, prune keeps the live consumer, trim removes
    what the only group is done with."""
    suffix = uuid.uuid4().hex[:10]
    stream, group = f"test:{suffix}", f"group-{suffix}"
    dlq = f"{stream}:dlq"
    broken = True
    handled: list[Any] = []

    @handler(stream=stream)
    async def apply(msg: Message) -> None:
        if broken:
            raise Reject("schema mismatch")
        handled.append(msg.data)

    settings = make_settings(sentinels.url, group, consumer="c1")
    async with running(settings, [apply]):
        # Given two entries published through the sentinels, each held by the replica too
        for n in (1, 2):
            code = await cli("publish", stream, "--type", "t", "--data", json.dumps({"n": n}),
                             "--wait-replicas", "1", "--wait-timeout", "5")  # fmt: skip
            assert code == 0
        await eventually(lambda: _length_is(primary, dlq, 2))
        capsys.readouterr()

        assert await cli("status", "--stream", stream, "--group", group, "--json") == 0
        (row,) = json.loads(capsys.readouterr().out)["streams"]
        assert (row["length"], row["pending"], row["dead_letter_length"]) == (2, 0, 2)
        assert await cli("dlq", "list", stream, "--json") == 0
        listed = json.loads(capsys.readouterr().out)
        assert [e["fields"]["data"] for e in listed["entries"]] == ['{"n":1}', '{"n":2}']

        broken = False
        first, second = (e["id"] for e in listed["entries"])
        assert await cli("dlq", "replay", stream, "--id", first) == 0
        await eventually(lambda: handled == [{"n": 1}])
        assert await cli("dlq", "purge", stream, "--id", second) == 0
        assert await primary.xlen(dlq) == 0

        capsys.readouterr()
        assert await cli("consumers", "prune", "--stream", stream, "--group", group,
                         "--idle", "0") == 0  # fmt: skip
        assert "c1 (idle" in capsys.readouterr().out
        await eventually(lambda: _pending_is_zero(primary, stream, group))

    assert await cli("trim", stream) == 0
    assert await primary.xlen(stream) == 0


async def _length_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


async def _pending_is_zero(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0
