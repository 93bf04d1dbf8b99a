"""Least privilege: each part of syncworker works with exactly the ACL docs/operations.md gives
it (`worker.acl`), and a missing permission fails at once with the NOPERM line."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from handlers.projection import Projection
from handlers.relay import Relay
from tests.helpers import WorkerProcess, eventually, make_settings, pending_count, running
from tests.integration.test_crash_recovery import processed, publish_many, started
from worker import Message, Publisher, acl, handler
from worker.cli import main
from worker.partitions import partition_names
from worker.publish import event_fields
from worker.redis_cluster import SentinelServers
from worker.redis_server import RedisServer
from worker.runtime.claims import handover_key
from worker.runtime.leases import lease_key, members_key

pytestmark = pytest.mark.redis

FAST_CLAIMS = {"SYNCWORKER_CLAIM_IDLE": 1.0, "SYNCWORKER_CLAIM_INTERVAL": 0.05}
ROLES = (
    "run",
    "status",
    "check",
    "dlq-read",
    "dlq-replay",
    "dlq-purge",
    "trim",
    "consumers-prune",
    "publish",
)


def ops_server() -> dict[str, object]:
    """The metrics and health server on a free port, refreshing its gauges often: its reads
    (XLEN, XPENDING, XINFO GROUPS) are part of what `run` needs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"SYNCWORKER_METRICS_PORT": port, "SYNCWORKER_STATS_INTERVAL": 0.1}


MakeUser = Callable[[str], str]
"""Rules -> the URL of a fresh user that has exactly those rules."""


@pytest.fixture
def user(redis_server: RedisServer) -> Iterator[MakeUser]:
    with users(redis_server.url) as make:
        yield make


@contextlib.contextmanager
def users(url: str) -> Iterator[MakeUser]:
    """Makes users on the server at `url`, and deletes them afterwards."""
    admin = sync_redis.Redis.from_url(url)
    made: list[str] = []
    port = admin.connection_pool.connection_kwargs["port"]

    def make(rules: str) -> str:
        name, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules.split())
        made.append(name)
        return f"redis://{name}:{password}@127.0.0.1:{port}/0"

    try:
        yield make
    finally:
        for name in made:
            admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def recorder_rules(stream: str) -> str:
    """What the tests' Recorder handler (tests/integration/plugins.py) writes on its own."""
    lists = " ".join(f"~{acl.pattern(stream)}:{name}" for name in ("started", "attempts"))
    lists += " " + " ".join(f"~{acl.pattern(stream)}:{name}" for name in ("spans", "processed"))
    return f"{lists} +rpush"


def run_user(user: MakeUser, stream: str) -> str:
    return user(acl.rules("run", stream) + " " + recorder_rules(stream))


class TestTheDocumentedRules:
    def test_operations_md_shows_the_rules_the_tests_grant(self) -> None:
        """Every role's rules for the stream `orders`, and the handlers', are in the docs."""
        text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
        for role in ROLES:
            assert acl.rules(role, "orders") in text, role
        assert acl.projection_rules("payment:") in text
        assert acl.rules("run", "orders", partitions=2, ordered=True) in text
        assert acl.rules("publish", "orders", partitions=2) in text
        assert acl.relay_rules(["audit"]) in text


class TestRun:
    async def test_retries_and_dead_letters_with_the_projection_rules(
        self, redis: Redis, user: MakeUser, names: dict[str, str]
    ) -> None:
        """A projection worker retries a failing entry, dead-letters it, applies the rest."""
        stream, group, run = names["stream"], names["group"], names["suffix"]
        url = user(acl.rules("run", stream) + " " + acl.projection_rules(f"p{run}:"))
        projection = Projection(prefix=f"p{run}:", events={"item.set": "set"}).bind([stream])
        await redis.set(f"p{run}:broken", "not a hash")  # every attempt fails: WRONGTYPE
        for key in ("good", "broken"):
            await redis.xadd(stream, event_fields("item.set", {"x": 1}, key=key, version=1))
        await redis.xadd(stream, {"type": "item.set", "key": "bad", "data": "{not json"})
        settings = make_settings(url, group, max_attempts=2)
        async with running(settings, [projection]):
            await eventually(lambda: _length(redis, stream + ":dlq", 2))
            await eventually(lambda: _pending_is(redis, stream, group, 0))
        assert await redis.hgetall(f"p{run}:good") == {b"x": b"1"}
        errors = [f[b"dlq_attempts"] for _, f in await redis.xrange(stream + ":dlq")]
        assert sorted(errors) == [b"1", b"2"]  # the malformed one at once, the broken one retried

    async def test_relays_with_the_relay_rules(
        self, redis: Redis, user: MakeUser, names: dict[str, str]
    ) -> None:
        """A relay worker forwards every entry to its target with the run and relay rules."""
        stream, group = names["stream"], names["group"]
        target = stream + "-out"
        url = user(acl.rules("run", stream) + " " + acl.relay_rules([target]))
        relay = Relay(to=target).bind([stream])
        await publish_many(redis, stream, 5)
        async with running(make_settings(url, group), [relay]):
            await eventually(lambda: _length(redis, target, 5))
            await eventually(lambda: _pending_is(redis, stream, group, 0))
        assert await redis.xlen(stream + ":dlq") == 0

    async def test_takeover_after_sigkill(
        self, redis: Redis, redis_server: RedisServer, user: MakeUser, names: dict[str, str]
    ) -> None:
        """A peer with the run rules takes over the entries of a SIGKILLed worker."""
        stream, group = names["stream"], names["group"]
        url = run_user(user, stream)
        ids = await publish_many(redis, stream, 20)
        victim = await WorkerProcess(
            url, group, stream, "victim", TEST_SLEEP=0.2, SYNCWORKER_CONCURRENCY=2, **ops_server()
        ).start()
        await eventually(lambda: _count(started(redis, stream), 2), timeout=20)
        await victim.kill()
        assert len(await processed(redis, stream)) < 20
        survivor = await WorkerProcess(
            url, group, stream, "survivor", **FAST_CLAIMS, **ops_server()
        ).start()
        try:
            await eventually(lambda: _all_done(redis, stream, group, ids), timeout=30)
        finally:
            survivor.signal(signal.SIGTERM)
            assert await survivor.wait() == 0, survivor.output()
        assert "no permissions" not in victim.output() + survivor.output()

    async def test_hand_over_after_sigterm(
        self, redis: Redis, user: MakeUser, names: dict[str, str]
    ) -> None:
        """A worker stopped with SIGTERM hands its unfinished entries back; a peer runs them."""
        stream, group = names["stream"], names["group"]
        url = run_user(user, stream)
        ids = await publish_many(redis, stream, 20)
        first = await WorkerProcess(
            url,
            group,
            stream,
            "first",
            TEST_SLEEP=0.3,
            SYNCWORKER_CONCURRENCY=2,
            SYNCWORKER_SHUTDOWN_TIMEOUT=0.1,
            **FAST_CLAIMS,
            **ops_server(),
        ).start()
        await eventually(lambda: _count(started(redis, stream), 2), timeout=20)
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0, first.output()
        assert await redis.exists(handover_key(stream)) == 1  # marks written under the ACL
        peer = await WorkerProcess(url, group, stream, "peer", **FAST_CLAIMS).start()
        try:
            await eventually(lambda: _all_done(redis, stream, group, ids), timeout=30)
        finally:
            peer.signal(signal.SIGTERM)
            assert await peer.wait() == 0, peer.output()
        assert "no permissions" not in first.output() + peer.output()


@pytest.fixture(params=["one server", "a primary with a replica"])
def primary_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    """Where an ordered worker runs: with a replica, every lease write is followed by WAIT."""
    if request.param == "one server":
        yield redis_server.url
        return
    with SentinelServers(replicas=1, sentinels=0) as group:
        group.wait_synced()
        yield group.primary.url


class TestOrderedPartitionedRoute:
    async def test_leases_and_runs_its_partitions_with_the_ordered_rules(
        self, primary_url: str, names: dict[str, str]
    ) -> None:
        """A worker on an ordered route over 2 partitions, with only the rendered rules, joins
        the group's members, leases both partitions (ROLE, and WAIT for the replica), runs
        every entry, and gives the leases back when it stops: no Redis call refused."""
        stream, group = names["stream"], names["group"]
        handled: list[str] = []

        @handler(stream=stream, partitions=2, ordered=True)
        async def record(msg: Message) -> None:
            handled.append(msg.id)

        parts = partition_names(stream, 2)
        async with Redis.from_url(primary_url) as redis:
            publisher = Publisher(redis, partitions={stream: 2})
            for k in range(10):
                await publisher.publish(stream, "t", {}, key=f"k{k}")
            assert all([await redis.xlen(p) for p in parts])  # both partitions have entries
            with users(primary_url) as user:
                url = user(acl.rules("run", stream, partitions=2, ordered=True))
                settings = make_settings(url, group, consumer="solo", lease_ttl=2.0)
                async with running(settings, [record]) as worker:
                    await eventually(lambda: len(handled) == 10)
                    await eventually(lambda: _none_pending(redis, parts, group))
                    assert worker.ordered is not None
                    assert set(worker.ordered.owned) == set(parts)
                    for p in parts:
                        assert await redis.get(lease_key(p, group)) == b"solo"
                    assert await redis.zrange(members_key(stream, group), 0, -1) == [b"solo"]
            assert await redis.exists(*(lease_key(p, group) for p in parts)) == 0  # given back
        assert not any(worker.stats.redis_errors.values()), dict(worker.stats.redis_errors)
        assert not any(worker.stats.task_restarts.values()), dict(worker.stats.task_restarts)


def run_as(
    url: str,
    argv: Sequence[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    """Run a command as the user of `url`: its exit code and what it printed."""
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


class TestCommands:
    def test_status_trim_and_dlq_with_their_rules(
        self,
        r: sync_redis.Redis,
        user: MakeUser,
        names: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """status, trim, dlq list/show/replay/purge and publish each work with their own rules."""
        stream, group = names["stream"], names["group"]
        monkeypatch.delenv("SYNCWORKER_HANDLERS", raising=False)
        r.xgroup_create(stream, group, id="0", mkstream=True)
        r.xadd(stream, {"type": "t"})
        r.xreadgroup(group, "alice", {stream: ">"})
        dead = [r.xadd(stream + ":dlq", {"type": "t", "dlq_stream": stream}) for _ in range(3)]

        def as_role(role: str, *argv: str) -> tuple[int, str]:
            return run_as(user(acl.rules(role, stream)), argv, monkeypatch, capsys)

        code, out = as_role("status", "status", "--stream", stream, "--group", group, "--json")
        assert code == 0, out
        assert json.loads(out)["streams"][0]["pending"] == 1
        assert (
            as_role("publish", "publish", stream, "--type", "t", "--key", "k", "--data", "{}")[0]
            == 0
        )
        assert as_role("trim", "trim", stream)[0] == 0
        code, out = as_role("dlq-read", "dlq", "list", stream)
        assert code == 0, out
        assert as_role("dlq-read", "dlq", "show", stream, dead[0])[0] == 0
        argv = ["dlq", "replay", stream, "--id", dead[0], "--group", group]
        code, out = as_role("dlq-replay", *argv)
        assert code == 0, out
        assert r.xrevrange(stream, count=1)[0][1]["replay_for_group"] == group
        assert as_role("dlq-purge", "dlq", "purge", stream, "--id", dead[1], "--dry-run")[0] == 0
        assert as_role("dlq-purge", "dlq", "purge", stream, "--all")[0] == 0
        assert as_role("consumers-prune", "consumers", "prune", "--stream", stream)[0] == 0
        assert r.xlen(stream + ":dlq") == 0

    def test_publish_and_status_of_a_partitioned_stream_with_their_rules(
        self,
        r: sync_redis.Redis,
        user: MakeUser,
        names: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`publish --partitions 2` appends to a key's partition, and `status` reads both
        partitions, each with its role's rules for the partitioned stream."""
        stream, group = names["stream"], names["group"]
        monkeypatch.delenv("SYNCWORKER_HANDLERS", raising=False)
        parts = partition_names(stream, 2)

        def as_role(role: str, *argv: str) -> tuple[int, str]:
            url = user(acl.rules(role, stream, partitions=2))
            return run_as(url, argv, monkeypatch, capsys)

        for key in ("a", "b", "c", "d"):
            argv = ["publish", stream, "--partitions", "2", "--type", "t", "--key", key]
            code, out = as_role("publish", *argv, "--data", "{}")
            assert code == 0, out
            assert out.split()[1] in parts
        assert r.xlen(parts[0]) + r.xlen(parts[1]) == 4
        for p in parts:
            r.xgroup_create(p, group, id="0")
        argv = ["status", "--stream", parts[0], "--stream", parts[1], "--group", group]
        code, out = as_role("status", *argv, "--json")
        assert code == 0, out
        (logical,) = json.loads(out)["logical_streams"]
        assert (logical["partitions"], logical["length"]) == (2, 4)


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


class TestMissingPermission:
    def test_status_without_xinfo_fails_at_once_with_the_noperm_line(
        self,
        r: sync_redis.Redis,
        user: MakeUser,
        names: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A user lacking XINFO gets exit 1 and one line that says NOPERM and names XINFO."""
        stream, group = names["stream"], names["group"]
        r.xgroup_create(stream, group, id="0", mkstream=True)
        rules = acl.rules("status", stream).replace(" +xinfo|groups", "")
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", user(rules))
        monkeypatch.delenv("SYNCWORKER_HANDLERS", raising=False)

        code = main(["status", "--stream", stream, "--group", group])

        captured = capsys.readouterr()
        assert code == 1, captured.out
        (line,) = captured.err.strip().splitlines()
        assert "NOPERM" in line and "xinfo|groups" in line
        assert captured.out == ""


async def _length(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) >= n


async def _pending_is(redis: Redis, stream: str, group: str, n: int) -> bool:
    return await pending_count(redis, stream, group) == n


async def _none_pending(redis: Redis, streams: tuple[str, ...], group: str) -> bool:
    return all([await pending_count(redis, s, group) == 0 for s in streams])


async def _count(items: object, n: int) -> bool:
    return len(await items) >= n  # type: ignore[misc]


async def _all_done(redis: Redis, stream: str, group: str, ids: list[str]) -> bool:
    return set(await processed(redis, stream)) == set(ids) and (
        await pending_count(redis, stream, group) == 0
    )
