"""Messages flow from a stream through handlers and are acknowledged."""

from __future__ import annotations

import asyncio

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


class TestBoundedReads:
    async def test_slow_handlers_hold_at_most_the_bound_and_get_topped_up(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Pending on the consumer never passes 2 x batch + concurrency, and freed places refill.

        With batch 40 and concurrency 4 the bound is 84. Once 16 handlers have finished, the
        reader tops the room up with 16 + 4 more entries (half a batch) at once, rather than
        waiting until a whole batch of 40 has been freed.
        """
        stream, group = names["stream"], names["group"]
        finish = asyncio.Semaphore(0)
        done: list[int] = []

        @handler(stream=stream)
        async def slow(msg: Message) -> None:
            await finish.acquire()
            done.append(msg.data["n"])  # type: ignore[index]

        publisher = Publisher(redis)
        for n in range(300):
            await publisher.publish(stream, "order.created", {"n": n}, key=f"order-{n}")
        # The entry bound alone (with a byte budget, the first read takes one entry, to learn
        # how large entries are; tests/integration/test_memory_budget.py covers that), and
        # without read-ahead, which would read no more than the lanes start while no handler
        # has finished (tests/integration/test_readahead.py covers that)
        settings = make_settings(
            redis_server.url,
            group,
            batch_size=40,
            concurrency=4,
            held_bytes_max=0,
            read_horizon=0,
        )
        highest = 0

        async def pending() -> int:
            nonlocal highest
            count = await pending_count(redis, stream, group)
            highest = max(highest, count)
            return count

        async def pending_is(expected: int) -> bool:
            return await pending() == expected

        async with running(settings, [slow]):
            await eventually(lambda: pending_is(80))  # two reads of 40; 4 places left
            for _ in range(16):
                finish.release()
            await eventually(lambda: len(done) == 16)
            await eventually(lambda: pending_is(84))  # 80 - 16 acked + 20 read
            for _ in range(284):
                finish.release()

            async def all_acked() -> bool:
                now = await pending()  # sampled on every poll, for the highest count
                return now == 0 and len(done) == 300

            await eventually(all_acked)
        assert highest <= 84
        assert sorted(done) == list(range(300))
