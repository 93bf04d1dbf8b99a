"""Every operations command against a Redis Cluster: publish, status, dlq list / replay /
purge, trim, consumers prune, check."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from tests.commands_scenario import walk_the_commands
from worker.cli import main
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.fixture
def env(redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_cluster.url)
    monkeypatch.delenv("SYNCWORKER_HANDLERS", raising=False)
    monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
    monkeypatch.delenv("SYNCWORKER_ROUTES", raising=False)


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_the_commands_follow_the_cluster_layout(
    cluster: Redis,
    redis_cluster: RedisClusterServers,
    slotted: dict[str, str],
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The walk through the commands, with the dead letters in the stream's slot."""
    stream = slotted["a"]
    dlq = "{" + stream + "}:dlq"
    await walk_the_commands(cluster, redis_cluster.url, stream, slotted["group"], dlq, capsys)


async def test_check_reports_the_topology_and_targets_in_other_slots(
    slotted: dict[str, str], env: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """check names the cluster, passes, and notes a projection whose entities live elsewhere,
    and whether its ack waits for the effect's replicas."""
    route = {
        "stream": slotted["a"],
        "handler": "projection",
        "options": {"prefix": "item:", "events": {"item.set": "set"}},
    }
    waiting = {**route, "stream": slotted["b"]}
    waiting["options"] = {**route["options"], "wait_replicas": 1}  # type: ignore[dict-item]
    monkeypatch.setenv("SYNCWORKER_ROUTES", json.dumps([route, waiting]))
    assert await cli("check") == 0
    out = capsys.readouterr().out
    assert "topology: Redis Cluster, 3 primaries" in out
    assert f"note: projection on {slotted['a']}: the entity hashes item:<key>" in out
    [plain] = [line for line in out.splitlines() if f"projection on {slotted['a']}:" in line]
    [waits] = [line for line in out.splitlines() if f"projection on {slotted['b']}:" in line]
    assert "set wait_replicas = 1" in plain
    assert "the ack waits until 1 replica(s)" in waits


async def test_check_fails_for_a_stream_whose_keys_cannot_share_its_slot(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream name with a stray `}` cannot tag its dead-letter stream: check exits 1."""
    monkeypatch.setenv("SYNCWORKER_ROUTES", json.dumps([
        {"stream": "odd}name", "handler": "tests.integration.plugins:noop"}
    ]))  # fmt: skip
    assert await cli("check") == 1
    err = capsys.readouterr().err
    assert "stream odd}name: its dead-letter stream odd}name:dlq hashes to slot" in err
    assert "CROSSSLOT" in err
