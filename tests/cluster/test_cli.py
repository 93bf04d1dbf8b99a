"""Every operations command against a Redis Cluster: publish, status, dlq list / replay /
purge, trim, consumers prune, check."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, Publisher, Reject, handler
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
    """Published entries are dead-lettered to `{stream}:dlq`; status, dlq list, replay and purge
    find them there, prune keeps the live consumer, trim removes what every group is done with."""
    stream, group = slotted["a"], slotted["group"]
    dlq = "{" + stream + "}:dlq"
    broken = True
    handled: list[Any] = []

    @handler(stream=stream)
    async def apply(msg: Message) -> None:
        if broken:
            raise Reject("schema mismatch")
        handled.append(msg.data)

    settings = make_settings(redis_cluster.url, group, consumer="c1")
    async with running(settings, [apply]):
        # Given two entries published with the command, both dead-lettered
        for n in (1, 2):
            code = await cli("publish", stream, "--type", "t", "--data", json.dumps({"n": n}))
            assert code == 0
        await eventually(lambda: _length_is(cluster, dlq, 2))
        capsys.readouterr()

        # status and dlq list find them in the stream's slot
        assert await cli("status", "--stream", stream, "--group", group, "--json") == 0
        (row,) = json.loads(capsys.readouterr().out)["streams"]
        assert (row["length"], row["pending"], row["dead_letter_length"]) == (2, 0, 2)
        assert row["dead_letter_stream"] == dlq
        assert await cli("dlq", "list", stream, "--json") == 0
        listed = json.loads(capsys.readouterr().out)
        assert [e["fields"]["data"] for e in listed["entries"]] == ['{"n":1}', '{"n":2}']

        # replay one once the cause is fixed; purge the other
        broken = False
        first, second = (e["id"] for e in listed["entries"])
        assert await cli("dlq", "replay", stream, "--id", first) == 0
        await eventually(lambda: handled == [{"n": 1}])
        assert await cli("dlq", "purge", stream, "--id", second) == 0
        assert await cluster.xlen(dlq) == 0

        # the running consumer is kept: its presence key is found in the stream's slot
        capsys.readouterr()
        assert await cli("consumers", "prune", "--stream", stream, "--group", group,
                         "--idle", "0") == 0  # fmt: skip
        assert "c1 (idle" in capsys.readouterr().out
        await eventually(lambda: _pending_is_zero(cluster, stream, group))

    # trim removes the three entries the only group has read and acked
    assert await cli("trim", stream) == 0
    assert await cluster.xlen(stream) == 0


async def test_check_reports_the_topology_and_targets_in_other_slots(
    slotted: dict[str, str], env: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """check names the cluster, passes, and notes a projection whose entities live elsewhere."""
    route = {
        "stream": slotted["a"],
        "handler": "projection",
        "options": {"prefix": "item:", "events": {"item.set": "set"}},
    }
    monkeypatch.setenv("SYNCWORKER_ROUTES", json.dumps([route]))
    assert await cli("check") == 0
    out = capsys.readouterr().out
    assert "topology: Redis Cluster, 3 primaries" in out
    assert f"note: projection on {slotted['a']}: the entity hashes item:<key>" in out


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


async def _length_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


async def _pending_is_zero(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


async def test_publishing_with_wait_replicas_is_refused_on_a_cluster(cluster: Redis) -> None:
    """WAIT must follow the XADD on the primary's own connection: not promised on a cluster,
    so the option is refused with a reason instead of waiting on the wrong node."""
    with pytest.raises(ValueError, match="not supported with a Redis Cluster"):
        Publisher(cluster, wait_replicas=1)
