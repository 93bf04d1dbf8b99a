"""One walk through the operations commands, run on each topology (cluster, Sentinel): the
commands must behave the same wherever the keys live."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.cli import main


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def walk_the_commands(
    redis: Redis,
    url: str,
    stream: str,
    group: str,
    dlq: str,
    capsys: pytest.CaptureFixture[str],
    publish_options: tuple[str, ...] = (),
) -> None:
    """Entries published with the command are dead-lettered to `dlq`; status, dlq list,
    replay and purge find them there, prune keeps the live consumer, trim removes what the
    only group is done with.

    Args:
        redis: a client of the topology, to check the keys with.
        url: `SYNCWORKER_REDIS_URL` of the worker (the commands read it from the environment).
        publish_options: more options for `syncworker publish` (`--wait-replicas 1`, ...).
    """
    broken = True
    handled: list[Any] = []

    @handler(stream=stream)
    async def apply(msg: Message) -> None:
        if broken:
            raise Reject("schema mismatch")
        handled.append(msg.data)

    settings = make_settings(url, group, consumer="c1")
    async with running(settings, [apply]):
        # Given two entries published with the command, both dead-lettered
        for n in (1, 2):
            data = json.dumps({"n": n})
            assert (
                await cli("publish", stream, "--type", "t", "--data", data, *publish_options) == 0
            )
        await eventually(lambda: _length_is(redis, dlq, 2))
        capsys.readouterr()

        # status and dlq list find them where the dead letters live
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
        assert await redis.xlen(dlq) == 0

        # the running consumer is kept: its presence key is found
        capsys.readouterr()
        assert await cli("consumers", "prune", "--stream", stream, "--group", group,
                         "--idle", "0") == 0  # fmt: skip
        assert "c1 (idle" in capsys.readouterr().out
        await eventually(lambda: _pending_is_zero(redis, stream, group))

    # trim removes the three entries the only group has read and acked
    assert await cli("trim", stream) == 0
    assert await redis.xlen(stream) == 0


async def _length_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


async def _pending_is_zero(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0
