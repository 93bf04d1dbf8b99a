"""Messages flow from a stream through handlers and are acknowledged."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestHappyPath:
    async def test_every_message_is_handled_once_and_acked(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Each published event reaches the handler once, decoded, and nothing stays pending."""
        stream, group = names["stream"], names["group"]
        seen: list[tuple[str | None, str | None, object, int]] = []

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            seen.append((msg.type, msg.key, msg.data, msg.attempt))

        publisher = Publisher(redis)
        for n in range(50):
            await publisher.publish(stream, "order.created", {"n": n}, key=f"order-{n}")

        async with running(make_settings(redis_server.url, group), [record]):
            await eventually(lambda: len(seen) == 50)

            async def all_acked() -> bool:
                return await pending_count(redis, stream, group) == 0

            await eventually(all_acked)
        assert sorted(d["n"] for _, _, d, _ in seen) == list(range(50))  # type: ignore[index]
        assert {t for t, _, _, _ in seen} == {"order.created"}
        assert {a for _, _, _, a in seen} == {1}
        assert await pending_count(redis, stream, group) == 0
