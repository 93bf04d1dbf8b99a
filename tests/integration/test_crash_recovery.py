"""Crashed, killed and stopped workers lose nothing: their entries are taken over or finished."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import pytest
from redis.asyncio import Redis

from tests.helpers import WorkerProcess, dead_letters, eventually, pending_count
from worker.publish import event_fields
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def publish_many(redis: Redis, stream: str, count: int, **special: int) -> list[str]:
    """`count` events; `special` maps a data flag (e.g. poison) to the index that carries it."""
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        data: dict[str, object] = {"n": n}
        for flag, index in special.items():
            if index == n:
                data[flag] = True
        pipe.xadd(stream, event_fields("order.paid", data, key=f"order-{n % 17}"))
    return [i.decode() for i in await pipe.execute()]


async def processed(redis: Redis, stream: str) -> list[str]:
    return [i.decode() for i in await redis.lrange(f"{stream}:processed", 0, -1)]


async def started(redis: Redis, stream: str) -> list[str]:
    return [i.decode() for i in await redis.lrange(f"{stream}:started", 0, -1)]


class TestKilledWorker:
    async def test_entries_of_a_worker_killed_mid_batch_are_taken_over(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """After SIGKILL mid-batch, another consumer processes every entry; none stay pending."""
        stream, group = names["stream"], names["group"]
        ids = await publish_many(redis, stream, 300)
        victim = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "victim",
            TEST_SLEEP=0.005,
            SYNCWORKER_CONCURRENCY=4,
            SYNCWORKER_BATCH_SIZE=50,
        ).start()

        async def some_done() -> bool:
            return len(await processed(redis, stream)) >= 40

        await eventually(some_done, timeout=20)
        await victim.kill()
        assert len(await processed(redis, stream)) < 300, "killed too late to test anything"
        assert await pending_count(redis, stream, group) > 0

        survivor = await WorkerProcess(
            redis_server.url, group, stream, "survivor", SYNCWORKER_CLAIM_IDLE=1.0
        ).start()
        try:

            async def all_done() -> bool:
                return set(await processed(redis, stream)) == set(ids) and (
                    await pending_count(redis, stream, group) == 0
                )

            await eventually(all_done, timeout=30)
        finally:
            survivor.signal(signal.SIGTERM)
            assert await survivor.wait() == 0
        assert await dead_letters(redis, stream) == []
        assert '"event": "message.reclaimed"' in survivor.output()


class TestPoisonMessage:
    async def test_only_the_message_that_kills_the_worker_is_dead_lettered(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A message that SIGKILLs every worker ends in the DLQ alone; its neighbours succeed."""
        stream, group = names["stream"], names["group"]
        ids = await publish_many(redis, stream, 30, poison=7)
        poison_id = ids[7]
        restarts = 0

        async def done() -> bool:
            handled = len(set(await processed(redis, stream)))
            return handled == 29 and await pending_count(redis, stream, group) == 0

        while not await done():
            # Like a supervisor: each crash is followed by a fresh process (new consumer name).
            restarts += 1
            assert restarts <= 8, "the poison message was never dead-lettered"
            worker = await WorkerProcess(
                redis_server.url,
                group,
                stream,
                f"w{restarts}-{uuid.uuid4().hex[:6]}",
                SYNCWORKER_MAX_ATTEMPTS=3,
                SYNCWORKER_CLAIM_IDLE=0.5,
                SYNCWORKER_CLAIM_INTERVAL=0.05,
                SYNCWORKER_CONCURRENCY=8,
            ).start()
            await worker.wait_started()  # the 4 s below are for handling, not start-up
            try:
                code = await asyncio.wait_for(worker.wait(), timeout=4)
                assert code == -signal.SIGKILL, worker.output()
            except TimeoutError:
                worker.signal(signal.SIGTERM)
                assert await worker.wait() == 0
        letters = await dead_letters(redis, stream)
        assert [letter["dlq_id"] for letter in letters] == [poison_id]
        assert letters[0]["dlq_error_type"] == "PoisonMessage"
        assert json.loads(letters[0]["data"]) == {"n": 7, "poison": True}
        assert set(await processed(redis, stream)) == set(ids) - {poison_id}


class TestLiveConsumerKeepsItsWork:
    async def test_slow_handler_is_not_taken_over(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A handler running 3x longer than claim_idle keeps its message; it runs exactly once."""
        stream, group = names["stream"], names["group"]
        [entry_id] = await publish_many(redis, stream, 1)
        slow = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "slow",
            TEST_SLEEP=3.0,
            SYNCWORKER_CLAIM_IDLE=1.0,
            SYNCWORKER_CLAIM_INTERVAL=0.05,
        ).start()

        async def begun() -> bool:
            return len(await started(redis, stream)) == 1

        await eventually(begun)
        rival = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "rival",
            SYNCWORKER_CLAIM_IDLE=1.0,
            SYNCWORKER_CLAIM_INTERVAL=0.05,
        ).start()
        # Scanning while the handler still runs (and safe to SIGTERM: its handler is up)
        await rival.wait_started()
        try:

            async def finished() -> bool:
                return await processed(redis, stream) == [entry_id]

            await eventually(finished, timeout=10)
            await asyncio.sleep(1.5)  # give the rival every chance to steal it afterwards
        finally:
            for proc in (slow, rival):
                proc.signal(signal.SIGTERM)
            assert await slow.wait() == 0 and await rival.wait() == 0
        assert await started(redis, stream) == [entry_id]
        assert await processed(redis, stream) == [entry_id]
        assert await pending_count(redis, stream, group) == 0


class TestGracefulShutdown:
    async def test_sigterm_finishes_in_flight_work_and_hands_over_the_rest(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """SIGTERM: running handlers finish and are acked, exit 0; the rest goes on elsewhere."""
        stream, group = names["stream"], names["group"]
        ids = await publish_many(redis, stream, 12)
        first = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "first",
            TEST_SLEEP=1.0,
            SYNCWORKER_CONCURRENCY=2,
            SYNCWORKER_BATCH_SIZE=12,
        ).start()

        async def two_running() -> bool:
            return len(await started(redis, stream)) >= 2

        await eventually(two_running)
        first.signal(signal.SIGTERM)
        assert await first.wait(timeout=10) == 0
        finished_by_first = await processed(redis, stream)
        assert len(finished_by_first) == len(await started(redis, stream)) >= 2
        assert '"event": "worker.drained"' in first.output()

        second = await WorkerProcess(redis_server.url, group, stream, "second").start()
        try:

            async def all_done() -> bool:
                return sorted(await processed(redis, stream)) == sorted(ids) and (
                    await pending_count(redis, stream, group) == 0
                )

            await eventually(all_done, timeout=20)
        finally:
            second.signal(signal.SIGTERM)
            assert await second.wait() == 0
        # Exactly once each: the first worker's finished messages were acked before it exited.
        assert len(await processed(redis, stream)) == len(ids)


class TestTakeoverUnderPressure:
    async def test_takeover_while_the_room_is_full_of_waiting_retries(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Retries filling every slot do not stall the takeover of a dead consumer's entry."""
        from tests.helpers import make_settings, running
        from worker import Message, Retry, handler

        stream, group = names["stream"], names["group"]
        handled: set[str] = set()

        @handler(stream=stream)
        async def fails_first(msg: Message) -> None:
            if msg.attempt == 1 and msg.raw.get(b"who") != b"ghost":
                raise Retry("first attempt always fails", delay=2.0)
            handled.add(msg.id)

        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        ghost_id = (await redis.xadd(stream, {"who": "ghost"})).decode()
        await redis.xreadgroup(group, "dead-consumer", {stream: ">"}, count=1)
        ids = await publish_many(redis, stream, 8)
        settings = make_settings(
            redis_server.url,
            group,
            batch_size=2,
            concurrency=1,
            claim_idle=0.5,
            retry_base=0.2,
            retry_max=0.2,
        )
        async with running(settings, [fails_first]):
            await eventually(lambda: handled == {*ids, ghost_id}, timeout=20)

    async def test_second_signal_exits_at_once(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A second SIGTERM during the drain exits immediately; the entry stays pending."""
        stream, group = names["stream"], names["group"]
        await publish_many(redis, stream, 1)
        worker = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "stubborn",
            TEST_SLEEP=30,
            SYNCWORKER_SHUTDOWN_TIMEOUT=60,
        ).start()

        async def begun() -> bool:
            return len(await started(redis, stream)) == 1

        await eventually(begun)
        worker.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=5) == 128 + signal.SIGTERM
        assert '"event": "worker.killed"' in worker.output()
        assert await pending_count(redis, stream, group) == 1
