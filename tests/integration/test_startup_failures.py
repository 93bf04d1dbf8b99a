"""Start-up failures end `syncworker run` with one clear line and a non-zero exit, never a hang.

XGROUP CREATE is ACL-checked and refused when Redis is full (denyoom) even when the group
exists, so the worker only creates a group it found missing.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from tests.helpers import WorkerProcess, eventually
from worker.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis


def events(output: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def start_failed(output: str) -> dict[str, object]:
    [line] = events(output, "worker.start_failed")
    assert not events(output, "worker.crashed")
    return line


@pytest.fixture
async def no_xgroup_url(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> AsyncIterator[str]:
    """The URL of an ACL user allowed everything but XGROUP."""
    user, password = f"noxgroup-{names['suffix']}", f"pw-{uuid.uuid4().hex}"
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-xgroup"]
    )
    yield f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0"
    await redis.acl_deluser(user)


async def run_worker(url: str, names: dict[str, str], tag: str) -> WorkerProcess:
    return await WorkerProcess(
        url,
        names["group"],
        names["stream"],
        f"{tag}-{names['suffix']}",
        SYNCWORKER_METRICS_PORT=free_port(),  # the metrics server on, as by default
        SYNCWORKER_METRICS_HOST="127.0.0.1",
    ).start()


class TestGroupCreationRefused:
    async def test_a_user_without_xgroup_ends_the_process_with_one_line(
        self, no_xgroup_url: str, names: dict[str, str]
    ) -> None:
        """NOPERM on XGROUP CREATE of a missing group: exit non-zero, one clear log line."""
        worker = await run_worker(no_xgroup_url, names, "noperm")
        code = await worker.wait(timeout=10)
        assert code != 0
        line = start_failed(worker.output())
        assert line["error_type"] == "NoPermissionError"
        assert line["stream"] == names["stream"]

    async def test_a_user_without_xgroup_runs_when_the_group_exists(
        self, redis: Redis, no_xgroup_url: str, names: dict[str, str]
    ) -> None:
        """The group already exists: no XGROUP CREATE is sent, and the worker processes."""
        stream = names["stream"]
        await redis.xgroup_create(stream, names["group"], id="0", mkstream=True)
        await redis.xadd(stream, {"type": "tick", "data": "{}"})
        worker = await run_worker(no_xgroup_url, names, "noperm-ok")
        await eventually(lambda: redis.llen(f"{stream}:processed"), timeout=10)
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=10) == 0


class TestRedisFull:
    @pytest.fixture
    async def full_redis(self) -> AsyncIterator[tuple[RedisServer, Redis]]:
        server = RedisServer(extra_args=("--maxmemory-policy", "noeviction"))
        server.start()
        client = Redis.from_url(server.url)
        # A limit 1 MB above what the empty server uses (Valkey starts above a fixed 1 MB).
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory", used + 1024 * 1024)
        yield server, client
        await client.aclose()
        server.cleanup()

    @staticmethod
    async def fill(client: Redis) -> None:
        for n in range(1000):
            try:
                await client.set(f"ballast:{n}", b"x" * 50_000)
            except OutOfMemoryError:
                # Just at the limit, memory the server frees a moment later (Valkey's client
                # buffers, say) can let the next write through; well below it, none can.
                used = int((await client.info("memory"))["used_memory"])
                await client.config_set("maxmemory", used // 2)
                return
        raise AssertionError("redis never filled up")

    async def test_a_full_redis_ends_the_process_with_one_line(
        self, full_redis: tuple[RedisServer, Redis], names: dict[str, str]
    ) -> None:
        """OOM on XGROUP CREATE of a missing group: exit non-zero, one clear log line."""
        server, client = full_redis
        await self.fill(client)
        worker = await run_worker(server.url, names, "oom")
        code = await worker.wait(timeout=10)
        assert code != 0
        line = start_failed(worker.output())
        assert line["error_type"] == "OutOfMemoryError"
        assert "maxmemory" in str(line["error"])

    async def test_a_full_redis_runs_when_the_group_exists(
        self, full_redis: tuple[RedisServer, Redis], names: dict[str, str]
    ) -> None:
        """The group already exists: the worker starts although Redis refuses writes."""
        server, client = full_redis
        await client.xgroup_create(names["stream"], names["group"], id="0", mkstream=True)
        await self.fill(client)
        worker = await run_worker(server.url, names, "oom-ok")
        await eventually(lambda: bool(events(worker.output(), "worker.started")), timeout=10)
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=10) == 0
