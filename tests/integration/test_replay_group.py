"""`dlq replay --group`: a replay runs again for one consumer group only; `dlq purge --dry-run`
deletes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.admin import deadletters
from worker.cli import main
from worker.redis_server import RedisServer
from worker.wide import read_fields

pytestmark = pytest.mark.redis


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.mark.usefixtures("env")
class TestReplayForOneGroup:
    async def test_only_the_named_group_runs_the_replay(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Replayed with --group billing, the entry runs again in billing; search, which had
        handled it, acks the replay without running its handler."""
        stream = names["stream"]
        billing_broken = True
        billing_runs: list[str] = []
        search_runs: list[str] = []

        @handler(stream=stream, name="billing")
        async def billing(msg: Message) -> None:
            if billing_broken:
                raise Reject("billing down")
            billing_runs.append(msg.origin[1])

        @handler(stream=stream, name="search")
        async def search(msg: Message) -> None:
            search_runs.append(msg.origin[1])

        entry_id = await redis.xadd(stream, {"type": "t", "key": "k"})
        async with (
            running(make_settings(redis_server.url, "billing"), [billing]),
            running(make_settings(redis_server.url, "search"), [search]),
        ):
            # Given billing dead-lettered the entry and search handled it
            await eventually(lambda: redis.xlen(stream + ":dlq"))
            await eventually(lambda: len(search_runs) == 1)

            # When the dead letter is replayed for billing only
            billing_broken = False
            argv = ["dlq", "replay", stream, "--all", "--group", "billing"]
            assert await asyncio.to_thread(main, argv) == 0

            # Then billing runs it, search acks the new entry without running its handler
            await eventually(lambda: len(billing_runs) == 1)
            await eventually(lambda: _all_acked(redis, stream, "search"))
            await eventually(lambda: _all_acked(redis, stream, "billing"))
        assert billing_runs == [entry_id.decode()]
        assert search_runs == [entry_id.decode()]
        assert await redis.xlen(stream + ":dlq") == 0

    def test_a_group_the_stream_does_not_have_is_refused(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A typo in --group would make every group skip the replay: refused, nothing moved."""
        stream = names["stream"]
        r.xgroup_create(stream, "billing", id="0", mkstream=True)
        dead_id = r.xadd(stream + ":dlq", {"type": "t", "dlq_stream": stream, "dlq_id": "1-0"})

        assert main(["dlq", "replay", stream, "--id", dead_id, "--group", "biling"]) == 1

        assert "no consumer group biling on" in capsys.readouterr().err
        assert r.xlen(stream + ":dlq") == 1 and r.xlen(stream) == 0

    def test_dry_run_names_the_group(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dry-run with --group says which group would run the replay."""
        stream = names["stream"]
        r.xgroup_create(stream, "billing", id="0", mkstream=True)
        r.xadd(stream + ":dlq", {"type": "t", "dlq_stream": stream, "dlq_id": "1-0"})

        assert main(["dlq", "replay", stream, "--all", "--group", "billing", "--dry-run"]) == 0

        assert "for group billing" in capsys.readouterr().out
        assert r.xlen(stream + ":dlq") == 1 and r.xlen(stream) == 0


@pytest.mark.usefixtures("env")
class TestPurgeDryRun:
    def test_says_what_it_would_delete_and_deletes_nothing(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """purge --dry-run lists the dead letters it would delete; all of them stay."""
        stream = names["stream"]
        dlq = stream + ":dlq"
        first = r.xadd(dlq, {"type": "a", "key": "k1", "dlq_error": "x"})
        second = r.xadd(dlq, {"type": "b", "key": "k2", "dlq_error": "y"})

        assert main(["dlq", "purge", stream, "--all", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"would purge {first}" in out and f"would purge {second}" in out
        assert "dry run: 2 dead letter(s) would be purged" in out

        assert main(["dlq", "purge", stream, "--id", first, "--id", "1-1", "--dry-run"]) == 1
        captured = capsys.readouterr()
        assert f"would purge {first}" in captured.out and "1-1" in captured.err
        assert r.xlen(dlq) == 2


async def _all_acked(redis: Redis, stream: str, group: str) -> bool:
    infos = {i["name"].decode(): i for i in await redis.xinfo_groups(stream)}
    info = infos[group]
    return info["lag"] == 0 and await pending_count(redis, stream, group) == 0


class TestWideReplay:
    async def test_an_entry_too_wide_for_a_script_carries_the_group_too(
        self, redis: Redis, names: dict[str, str]
    ) -> None:
        """The MULTI/EXEC path of a replay (entries too wide for Lua) ends with the same
        replay_for_group field as the script path."""
        stream = names["stream"]
        items: list[bytes | str] = []
        for n in range(4000):
            items += [f"f{n}", "v"]
        items += ["dlq_stream", stream, "dlq_id", "1-0", "dlq_fields", "4000"]
        dead_id = (await redis.execute_command("XADD", stream + ":dlq", "*", *items)).decode()

        [new_id] = await deadletters.replay(redis, stream + ":dlq", stream, [dead_id], "billing")

        assert new_id is not None
        flat = await read_fields(redis, stream, new_id)
        assert flat is not None and flat[-6:] == [
            b"replay_of_stream",
            stream.encode(),
            b"replay_of_id",
            b"1-0",
            b"replay_for_group",
            b"billing",
        ]
        assert await redis.xlen(stream + ":dlq") == 0
