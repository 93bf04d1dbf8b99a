"""A background task's surprise does not end the worker: it is restarted and counted."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import eventually, make_settings, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer
from worker.runtime.heartbeat import Heartbeat

pytestmark = pytest.mark.redis


class TestSupervisedTasks:
    async def test_a_heartbeat_that_dies_is_restarted_and_the_worker_goes_on(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The heartbeat's first beat raises a bug; the worker logs, restarts it and processes."""
        stream, group = names["stream"], names["group"]
        handled: list[int] = []
        beats = 0
        real_beat = Heartbeat.beat

        async def beat_with_a_bug(self: Heartbeat) -> None:
            nonlocal beats
            beats += 1
            if beats == 1:
                raise RuntimeError("a bug in the heartbeat")
            await real_beat(self)

        monkeypatch.setattr(Heartbeat, "beat", beat_with_a_bug)

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.append(msg.data["n"])

        settings = make_settings(redis_server.url, group, claim_idle=0.3)
        publisher = Publisher(redis)
        with capture_logs() as logs:
            async with running(settings, [record]) as worker:
                # Given: the heartbeat died once and was restarted
                await eventually(lambda: beats >= 2)
                # Then: the worker still reads and processes
                await publisher.publish(stream, "tick", {"n": 1})
                await eventually(lambda: handled == [1])
        assert worker.stats.task_restarts["heartbeat"] == 1
        [died] = [e for e in logs if e["event"] == "task.died"]
        assert died["task"] == "heartbeat" and died["exc_info"]
