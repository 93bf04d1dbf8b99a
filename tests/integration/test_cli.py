"""The operations commands against a real redis-server: status, dlq, publish, prune, trim."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.admin.prune import delete_if_idle
from worker.cli import main
from worker.commands import dlq as dlq_command
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def consumers_of(r: sync_redis.Redis, stream: str, group: str) -> dict[str, int]:
    return {c["name"]: int(c["pending"]) for c in r.xinfo_consumers(stream, group)}


@pytest.mark.usefixtures("env")
class TestStatus:
    def test_json_reports_the_lag_and_pending_the_test_created(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Ten entries, four read by one consumer and one of those acked: lag 6, pending 3."""
        stream, group = names["stream"], names["group"]
        ids = [r.xadd(stream, {"type": "t", "n": str(n)}) for n in range(10)]
        r.xgroup_create(stream, group, id="0")
        r.xreadgroup(group, "alice", {stream: ">"}, count=4)
        r.xack(stream, group, ids[0])
        r.xadd(stream + ":dlq", {"type": "t", "dlq_error": "boom"})

        code = main(["status", "--stream", stream, "--group", group, "--json"])

        assert code == 0
        report = json.loads(capsys.readouterr().out)
        (row,) = report["streams"]
        assert row["stream"] == stream and row["group"] == group and row["exists"]
        assert (row["length"], row["lag"], row["pending"]) == (10, 6, 3)
        assert row["oldest_pending_id"] == ids[1]
        assert row["dead_letter_length"] == 1
        assert [(c["name"], c["pending"]) for c in row["consumers"]] == [("alice", 3)]

    def test_table_names_a_missing_group(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A stream without the group is shown as such rather than as an idle group."""
        r.xadd(names["stream"], {"type": "t"})
        assert main(["status", "--stream", names["stream"], "--group", names["group"]]) == 0
        assert "group does not exist" in capsys.readouterr().out


class TestErrors:
    def test_unreachable_redis_is_one_line_and_exit_2(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every Redis-bound command fails with exit code 2 and one line naming the URL."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", "redis://:secret@127.0.0.1:1/0")
        for argv in (
            ["status", "--stream", "s"],
            ["dlq", "list", "s"],
            ["dlq", "replay", "s", "--all"],
            ["publish", "s", "--type", "t", "--key", "k", "--data", "{}"],
            ["consumers", "prune", "--stream", "s"],
            ["trim", "s"],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "cannot reach Redis" in err[0], argv
            assert "secret" not in err[0]

    @pytest.mark.usefixtures("env")
    def test_bad_arguments_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Malformed ids, JSON and missing choices are usage errors."""
        with pytest.raises(SystemExit) as exc:
            main(["dlq", "show", "s", "not-an-id"])
        assert exc.value.code == 2
        with pytest.raises(SystemExit) as exc:
            main(["dlq", "replay", "s"])  # neither --id nor --all
        assert exc.value.code == 2
        assert main(["publish", "s", "--type", "t", "--key", "k", "--data", "{nope"]) == 2
        assert main(["status"]) == 2  # no --stream and no handlers configured
        assert "no stream given" in capsys.readouterr().err


@pytest.mark.usefixtures("env")
class TestPublish:
    def test_publish_writes_the_convention_fields(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The entry carries type, key, data exactly as given, event_id and version."""
        stream = names["stream"]
        argv = ["publish", stream, "--type", "order.created", "--key", "o-1"]
        argv += ["--data", '{"total": "9.90"}', "--event-id", "e-1", "--version", "3"]
        assert main(argv) == 0
        entry_id = capsys.readouterr().out.strip()
        [(found_id, fields)] = r.xrange(stream)
        assert found_id == entry_id
        assert fields == {
            "type": "order.created",
            "key": "o-1",
            "data": '{"total":"9.90"}',  # re-encoded compactly
            "event_id": "e-1",
            "version": "3",
        }

    def test_maxlen_trims_approximately(self, r: sync_redis.Redis, names: dict[str, str]) -> None:
        """--maxlen caps the stream length (approximately, so never below the cap)."""
        stream = names["stream"]
        for n in range(300):
            r.xadd(stream, {"n": str(n)})
        argv = ["publish", stream, "--type", "t", "--key", "k", "--data", "1", "--maxlen", "10"]
        assert main(argv) == 0
        assert 10 <= r.xlen(stream) < 301


class TestDeadLetters:
    async def test_replay_round_trips_into_a_successful_run(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        env: None,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A rejected message, replayed once the cause is fixed, is handled with its fields and
        the stream and id of the entry it replays."""
        stream, group = names["stream"], names["group"]
        broken = True
        handled: list[dict[bytes, bytes]] = []

        @handler(stream=stream)
        async def apply(msg: Message) -> None:
            if broken:
                raise Reject("downstream schema mismatch")
            handled.append(dict(msg.raw))

        entry_id = await Publisher(redis).publish(
            stream, "order.paid", {"id": 7}, key="o-7", version=2
        )
        async with running(make_settings(redis_server.url, group), [apply]):
            # Given the message was dead-lettered
            await eventually(lambda: _has_dead_letters(redis, stream))
            letters = await dead_letters(redis, stream)
            assert letters[0]["dlq_error"] == "downstream schema mismatch"

            # When the cause is fixed and the dead letter replayed
            broken = False
            assert await asyncio.to_thread(main, ["dlq", "replay", stream, "--all"]) == 0

            # Then the handler gets the original fields, and the DLQ is empty
            await eventually(lambda: len(handled) == 1)
            await eventually(lambda: _pending_is_zero(redis, stream, group))
        assert handled[0] == {
            b"type": b"order.paid",
            b"key": b"o-7",
            b"data": b'{"id":7}',
            b"version": b"2",
            b"replay_of_stream": stream.encode(),
            b"replay_of_id": entry_id.encode(),
        }
        assert await redis.xlen(stream + ":dlq") == 0
        assert "replayed 1 dead letter(s)" in capsys.readouterr().out

    def test_list_show_and_purge(
        self,
        r: sync_redis.Redis,
        names: dict[str, str],
        env: None,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """list and show present both halves of a dead letter; purge removes only those named."""
        dlq = names["stream"] + ":dlq"
        first = r.xadd(dlq, {"type": "t", "key": "a", "dlq_error_type": "E", "dlq_error": "x"})
        second = r.xadd(dlq, {"type": "t", "key": "b", "dlq_error_type": "E", "dlq_error": "y"})

        assert main(["dlq", "list", names["stream"], "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert listed["total"] == 2
        assert listed["entries"][0]["fields"] == {"type": "t", "key": "a"}
        assert listed["entries"][0]["meta"] == {"error_type": "E", "error": "x"}

        assert main(["dlq", "show", names["stream"], second]) == 0
        assert "error: y" in capsys.readouterr().out

        assert main(["dlq", "purge", names["stream"], "--id", first, "--id", "1-1"]) == 1
        assert [i for i, _ in r.xrange(dlq)] == [second]
        assert main(["dlq", "purge", names["stream"], "--all"]) == 0
        assert r.xlen(dlq) == 0 and r.exists(dlq)

    def test_long_replay_covers_every_page_once_and_shows_progress(
        self,
        r: sync_redis.Redis,
        names: dict[str, str],
        env: None,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Pages of a long replay cover every dead letter exactly once, in order, with progress."""
        monkeypatch.setattr(dlq_command, "PROGRESS_EVERY_S", 0.0)
        stream, dlq = names["stream"], names["stream"] + ":dlq"
        for n in range(450):  # more than two pages
            r.xadd(dlq, {"n": str(n), "dlq_error": "e"})
        assert main(["dlq", "replay", stream, "--all"]) == 0
        assert r.xlen(dlq) == 0
        assert [f["n"] for _, f in r.xrange(stream)] == [str(n) for n in range(450)]
        assert capsys.readouterr().err.splitlines() == [
            "replayed 200/450",
            "replayed 400/450",
            "replayed 450/450",
        ]


async def _has_dead_letters(redis: Redis, stream: str) -> bool:
    return bool(await redis.xlen(stream + ":dlq"))


async def _pending_is_zero(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


@pytest.mark.usefixtures("env")
class TestPrune:
    def test_never_deletes_a_consumer_with_pending_entries(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --idle 0, the consumer holding entries stays and the empty one goes."""
        stream, group = names["stream"], names["group"]
        for n in range(3):
            r.xadd(stream, {"n": str(n)})
        r.xgroup_create(stream, group, id="0")
        r.xreadgroup(group, "holder", {stream: ">"}, count=2)
        r.xreadgroup(group, "empty", {stream: ">"}, count=1)
        r.xack(stream, group, r.xrange(stream)[2][0])

        argv = ["consumers", "prune", "--stream", stream, "--group", group, "--idle", "0"]
        assert main(argv) == 0

        assert consumers_of(r, stream, group) == {"holder": 2}
        out = capsys.readouterr().out
        assert "holder" in out and "kept, holds 2 pending" in out
        assert "empty" in out and "deleted" in out

    async def test_check_and_delete_are_atomic(
        self, redis: Redis, r: sync_redis.Redis, names: dict[str, str]
    ) -> None:
        """A consumer that receives an entry after it was listed as empty is not deleted."""
        stream, group = names["stream"], names["group"]
        r.xadd(stream, {"n": "0"})
        r.xgroup_create(stream, group, id="$")
        r.xgroup_createconsumer(stream, group, "late")  # exists, holds nothing
        assert consumers_of(r, stream, group) == {"late": 0}
        r.xadd(stream, {"n": "1"})
        r.xreadgroup(group, "late", {stream: ">"})  # receives an entry before the delete

        assert await delete_if_idle(redis, stream, group, "late", 0) == "pending"
        assert consumers_of(r, stream, group) == {"late": 1}
        assert await delete_if_idle(redis, stream, group, "nobody", 0) == "gone"
        assert await delete_if_idle(redis, stream, group, "late", 3600) == "pending"
