"""`consumers prune` never deletes a live worker, however long its stream has been quiet."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, running
from worker import Message, handler
from worker.admin.prune import prune
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestPrunePresence:
    @pytest.mark.redis70
    async def test_live_worker_on_a_quiet_stream_is_kept(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A running worker whose idle time passed --idle is reported alive and kept."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream)
        async def noop(msg: Message) -> None:
            pass

        await redis.xadd(stream, {"type": "t"})  # read once, so that the consumer exists
        settings = make_settings(redis_server.url, group, consumer="live", claim_idle=1.5)
        async with running(settings, [noop]):
            # Given a quiet stream, on which Redis 7.0 lets the live consumer's idle time grow
            await eventually(lambda: _idle_over(redis, stream, group, "live", 0.8), timeout=5)
            # When consumers idle 0.5 s or more are pruned
            results = await prune(redis, stream, group, 0.5)
            dry = await prune(redis, stream, group, 0.5, dry_run=True)
            # Then the live one is kept, and a dry run says so too
            assert [(r.consumer.name, r.outcome) for r in results] == [("live", "alive")]
            assert [(r.consumer.name, r.outcome) for r in dry] == [("live", "alive")]
            rows = await redis.xinfo_consumers(stream, group)
            assert [r["name"] for r in rows] == [b"live"]

    async def test_dead_consumer_without_pending_is_pruned(
        self, redis: Redis, names: dict[str, str]
    ) -> None:
        """A consumer with no presence key and nothing pending goes once idle long enough."""
        stream, group = names["stream"], names["group"]
        await redis.xadd(stream, {"type": "t"})
        await redis.xgroup_create(stream, group, id="$")
        await redis.xgroup_createconsumer(stream, group, "dead")
        await eventually(lambda: _idle_over(redis, stream, group, "dead", 0.3), timeout=5)

        results = await prune(redis, stream, group, 0.2)

        assert [(r.consumer.name, r.outcome) for r in results] == [("dead", "deleted")]
        assert await redis.xinfo_consumers(stream, group) == []


async def _idle_over(redis: Redis, stream: str, group: str, consumer: str, s: float) -> bool:
    rows = await redis.xinfo_consumers(stream, group)
    return any(r["name"] == consumer.encode() and int(r["idle"]) > s * 1000 for r in rows)
