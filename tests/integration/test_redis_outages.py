"""Redis restarts, flushes and deleted entries: the worker recovers and nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.publish import Publisher, event_fields
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestRedisRestart:
    async def test_no_message_is_lost_across_a_restart_with_persistence(
        self, names: dict[str, str]
    ) -> None:
        """Redis (appendonly) restarts mid-run: every published message is still handled."""
        stream, group = names["stream"], names["group"]
        handled: set[str] = set()

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.add(msg.id)

        with RedisServer(appendonly=True) as server:
            client = Redis.from_url(server.url, socket_timeout=2)
            published: list[str] = []

            async def produce(count: int) -> None:
                n = 0
                while n < count:
                    try:
                        entry_id = await client.xadd(stream, event_fields("tick", {"n": n}))
                    except (RedisConnectionError, ConnectionError, OSError):
                        await asyncio.sleep(0.05)  # the producer retries, like a real one
                        continue
                    published.append(entry_id.decode())
                    n += 1
                    await asyncio.sleep(0.002)

            settings = make_settings(server.url, group)
            async with running(settings, [record]) as worker:
                producer = asyncio.create_task(produce(400))
                await eventually(lambda: len(handled) >= 100)
                # appendfsync everysec: give the AOF a second to contain what was acked.
                await asyncio.sleep(1.1)
                server.restart()
                await asyncio.wait_for(producer, 30)
                await eventually(lambda: handled >= set(published), timeout=20)

                async def nothing_pending() -> bool:
                    with contextlib.suppress(RedisConnectionError):
                        return await pending_count(client, stream, group) == 0
                    return False

                await eventually(nothing_pending, timeout=10)
                assert worker.stats.redis_errors, "the outage was not noticed"
            await client.aclose()
        assert len(published) == 400
        assert handled >= set(published)


class TestGroupLoss:
    async def test_flushed_redis_recreates_the_group_and_goes_on(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """After FLUSHALL drops the group, the worker recreates it, warns, and keeps handling."""
        stream, group = names["stream"], names["group"]
        handled: list[int] = []

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.append(msg.data["n"])

        publisher = Publisher(redis)
        with capture_logs() as logs:
            async with running(make_settings(redis_server.url, group), [record]) as worker:
                await publisher.publish(stream, "tick", {"n": 1})
                await eventually(lambda: handled == [1])
                await redis.delete(stream)  # like a flush: the stream and its group are gone
                await eventually(lambda: worker.stats.group_recreated[stream] >= 1)
                await publisher.publish(stream, "tick", {"n": 2})
                await eventually(lambda: handled == [1, 2])
        assert any(
            entry["event"] == "group.recreated" and entry["log_level"] == "warning"
            for entry in logs
        )


class TestDeletedWhilePending:
    async def test_deleted_entries_are_cleared_from_the_pending_list(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """An entry deleted while pending on a dead consumer is cleared, not looped over."""
        stream, group = names["stream"], names["group"]
        handled: list[str] = []

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.append(msg.id)

        ids = [(await redis.xadd(stream, {"n": str(n)})).decode() for n in range(3)]
        await redis.xgroup_create(stream, group, id="0")
        await redis.xreadgroup(group, "dead-consumer", {stream: ">"}, count=3)
        await redis.xdel(stream, ids[1])
        settings = make_settings(redis_server.url, group, claim_idle=0.3)
        async with running(settings, [record]) as worker:

            async def cleared() -> bool:
                return await pending_count(redis, stream, group) == 0

            await eventually(cleared)
            await asyncio.sleep(0.3)  # later scans must not find anything to loop over
            assert worker.stats.deleted_pending[stream] == 1
        assert sorted(handled) == [ids[0], ids[2]]
