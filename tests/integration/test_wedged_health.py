"""/healthz reports a process that holds work and makes no progress."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, running
from tests.ops_helpers import http_get
from worker import Message, handler
from worker.ops.server import OpsServer
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestWedgedLiveness:
    async def test_a_handler_that_never_returns_turns_healthz_503(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """No handler timeout, a call that never ends: liveness says wedged, with a reason."""
        stream, group = names["stream"], names["group"]
        entered = asyncio.Event()

        @handler(stream=stream)
        async def hangs(msg: Message) -> None:
            entered.set()
            await asyncio.Event().wait()

        settings = make_settings(
            redis_server.url, group, handler_timeout=0, progress_timeout=0.3, shutdown_timeout=0.1
        )
        ops = OpsServer(host="127.0.0.1", port=0)
        async with running(settings, [hangs], services=[ops]):
            # Given: a healthy worker
            assert (await http_get(ops.port, "/healthz"))[0] == 200
            # When: a handler call never returns
            await Publisher(redis).publish(stream, "tick", {"n": 1})
            await asyncio.wait_for(entered.wait(), 5)
            # Then: liveness turns 503 once no call has ended for progress_timeout
            answers: list[tuple[int, bytes]] = []

            async def wedged() -> bool:
                answers.append(await http_get(ops.port, "/healthz"))
                return answers[-1][0] == 503

            await eventually(wedged, timeout=5, interval=0.05)
        body = json.loads(answers[-1][1])
        assert body["status"] == "wedged"
        assert "no handler call has ended" in body["detail"]

    async def test_a_busy_worker_that_makes_progress_stays_healthy(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Handlers that keep finishing, each well inside the deadline: always 200."""
        stream, group = names["stream"], names["group"]
        done: list[str] = []

        @handler(stream=stream)
        async def slowish(msg: Message) -> None:
            await asyncio.sleep(0.05)
            done.append(msg.id)

        publisher = Publisher(redis)
        for n in range(40):
            await publisher.publish(stream, "tick", {"n": n})
        settings = make_settings(redis_server.url, group, concurrency=2, progress_timeout=0.3)
        ops = OpsServer(host="127.0.0.1", port=0)
        statuses: list[int] = []
        async with running(settings, [slowish], services=[ops]):
            while len(done) < 40:
                statuses.append((await http_get(ops.port, "/healthz"))[0])
                await asyncio.sleep(0.03)
            # and still healthy once idle, long after the last call ended
            await asyncio.sleep(0.5)
            statuses.append((await http_get(ops.port, "/healthz"))[0])
        assert len(statuses) > 10 and set(statuses) == {200}
