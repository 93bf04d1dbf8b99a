"""Batch handlers: one call for many messages, each message settled by its own outcome."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import uuid
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from tests.helpers import (
    WorkerProcess,
    dead_letters,
    eventually,
    make_settings,
    pending_count,
    running,
)
from worker import Message, Outcome, Reject, Retry, handler
from worker.publish import event_fields
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def publish(redis: Redis, stream: str, datas: Sequence[dict[str, object]]) -> list[str]:
    """Add the entries at once (MULTI): a blocked read returns them together."""
    pipe = redis.pipeline(transaction=True)
    for data in datas:  # a key of its own, unless the data names one
        key = str(data.get("key", uuid.uuid4().hex))
        pipe.xadd(stream, event_fields("order.paid", data, key=key))
    return [i.decode() for i in await pipe.execute()]


async def settled(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


class TestOutcomes:
    async def test_each_message_gets_its_own_outcome(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """In one batch: ok is acked, Retry waits its delay, Reject and spent failures are
        dead-lettered, and the neighbours of each are not affected."""
        stream, group = names["stream"], names["group"]
        calls: list[list[tuple[str, int]]] = []

        @handler(stream=stream, batch=True)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            calls.append([(m.data["do"], m.attempt) for m in msgs])
            outcomes: list[Outcome] = []
            for m in msgs:
                do = m.data["do"]
                if do == "retry" and m.attempt == 1:
                    outcomes.append(Retry("rate limited", delay=0.5))
                elif do == "reject":
                    outcomes.append(Reject("bad input"))
                elif do == "fail":
                    outcomes.append(ValueError("downstream said no"))
                else:
                    outcomes.append(None)
            return outcomes

        settings = make_settings(redis_server.url, group, max_attempts=2)
        async with running(settings, [sink]):
            # The first read takes one entry (to learn their size): warm up with it.
            await publish(redis, stream, [{"do": "ok"}])
            await eventually(lambda: settled(redis, stream, group) if calls else False)
            datas = [{"do": d} for d in ("ok", "retry", "reject", "fail")]
            ids = await publish(redis, stream, datas)
            await eventually(lambda: settled(redis, stream, group) if len(calls) > 2 else False)
        assert calls[1] == [("ok", 1), ("retry", 1), ("reject", 1), ("fail", 1)]
        later = sorted(item for call in calls[2:] for item in call)
        assert later == [("fail", 2), ("retry", 2)]
        letters = {letter["dlq_id"]: letter for letter in await dead_letters(redis, stream)}
        assert set(letters) == {ids[2], ids[3]}
        assert letters[ids[2]]["dlq_error_type"] == "Reject"
        assert letters[ids[3]]["dlq_error_type"] == "ValueError"
        assert letters[ids[3]]["dlq_attempts"] == "2"

    async def test_retry_delay_of_one_outcome_is_honoured(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A `Retry(delay=0.6)` outcome postpones that message's next attempt that long."""
        stream, group = names["stream"], names["group"]
        seen_at: list[float] = []
        loop = asyncio.get_running_loop()

        @handler(stream=stream, batch=True)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            seen_at.extend(loop.time() for _ in msgs)
            return [Retry("later", delay=0.6) if m.attempt == 1 else None for m in msgs]

        await publish(redis, stream, [{"n": 1}])
        async with running(make_settings(redis_server.url, group), [sink]):
            await eventually(lambda: settled(redis, stream, group) if len(seen_at) == 2 else False)
        assert seen_at[1] - seen_at[0] >= 0.6

    async def test_a_raising_batch_fails_every_message_and_a_raised_reject_dead_letters_all(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """An exception from the call retries every message; a raised Reject dead-letters them."""
        stream, group = names["stream"], names["group"]
        attempts: dict[str, list[int]] = {}

        @handler(stream=stream, batch=True)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            for m in msgs:
                attempts.setdefault(m.data["kind"], []).append(m.attempt)
            if msgs[0].data["kind"] == "poison":
                raise Reject("the whole batch is unusable")
            if msgs[0].attempt == 1:
                raise ConnectionError("database away")
            return [None] * len(msgs)

        ids = await publish(redis, stream, [{"kind": "flaky"}] * 3)
        async with running(make_settings(redis_server.url, group), [sink]):
            await eventually(lambda: settled(redis, stream, group) if attempts else False)
            assert sorted(attempts["flaky"]) == [1, 1, 1, 2, 2, 2]
            assert await dead_letters(redis, stream) == []
            rejected = await publish(redis, stream, [{"kind": "poison"}] * 2)
            await eventually(lambda: settled(redis, stream, group) if "poison" in attempts else 0)
        letters = await dead_letters(redis, stream)
        assert sorted(letter["dlq_id"] for letter in letters) == sorted(rejected)
        assert {letter["dlq_error_type"] for letter in letters} == {"Reject"}
        assert len(ids) == 3

    async def test_a_result_of_the_wrong_length_fails_the_whole_batch(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Fewer outcomes than messages is a bug: every message fails, with a clear error."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream, batch=True)
        async def short(msgs: list[Message]) -> list[Outcome]:
            return [None] * (len(msgs) - 1)

        ids = await publish(redis, stream, [{"n": n} for n in range(3)])
        settings = make_settings(redis_server.url, group, max_attempts=2)
        async with running(settings, [short]):
            await eventually(lambda: settled(redis, stream, group))
        letters = await dead_letters(redis, stream)
        assert sorted(letter["dlq_id"] for letter in letters) == sorted(ids)
        assert {letter["dlq_error_type"] for letter in letters} == {"BatchResultError"}
        assert re.search(r"returned \d+ outcomes for a batch of \d+$", letters[0]["dlq_error"])

    async def test_a_blocking_batch_function_runs_in_a_thread(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A plain (non-async) batch function gets the batch and its outcomes are settled."""
        stream, group = names["stream"], names["group"]
        seen: list[int] = []

        @handler(stream=stream, batch=True)
        def blocking(msgs: list[Message]) -> list[Outcome]:
            seen.extend(m.data["n"] for m in msgs)
            return [Reject("odd") if m.data["n"] % 2 else None for m in msgs]

        ids = await publish(redis, stream, [{"n": n} for n in range(4)])
        async with running(make_settings(redis_server.url, group), [blocking]):
            await eventually(lambda: settled(redis, stream, group) if len(seen) == 4 else False)
        assert sorted(seen) == [0, 1, 2, 3]
        letters = await dead_letters(redis, stream)
        assert sorted(letter["dlq_id"] for letter in letters) == [ids[1], ids[3]]


class TestTimeouts:
    async def test_a_batch_call_past_handler_timeout_fails_all_its_messages(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The whole call is cut off at handler_timeout; each message is retried."""
        stream, group = names["stream"], names["group"]
        attempts: list[int] = []

        @handler(stream=stream, batch=True)
        async def hangs_first(msgs: list[Message]) -> list[Outcome]:
            attempts.extend(m.attempt for m in msgs)
            if msgs[0].attempt == 1:
                await asyncio.Event().wait()
            return [None] * len(msgs)

        await publish(redis, stream, [{"n": n} for n in range(3)])
        settings = make_settings(redis_server.url, group, handler_timeout=0.3)
        async with running(settings, [hangs_first]):
            await eventually(lambda: settled(redis, stream, group) if len(attempts) == 6 else 0)
        assert sorted(attempts) == [1, 1, 1, 2, 2, 2]
        assert await dead_letters(redis, stream) == []


class TestBatchForming:
    async def test_batches_never_exceed_batch_max(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A backlog of 50 runs in calls of at most batch_max, and fills them."""
        stream, group = names["stream"], names["group"]
        sizes: list[int] = []

        @handler(stream=stream, batch=True, batch_max=7)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            sizes.append(len(msgs))
            return [None] * len(msgs)

        await publish(redis, stream, [{"n": n} for n in range(50)])
        settings = make_settings(redis_server.url, group, concurrency=2)
        async with running(settings, [sink]):
            await eventually(lambda: settled(redis, stream, group) if sum(sizes) == 50 else 0)
        assert max(sizes) == 7

    async def test_batch_wait_gathers_while_a_batch_runs_and_is_bounded(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """While a batch runs, the next waits for more: until batch_max arrived, or until
        batch_wait is up, even though the running batch has not ended."""
        stream, group = names["stream"], names["group"]
        calls: list[list[int]] = []
        release = asyncio.Event()

        @handler(stream=stream, batch=True, batch_max=4, batch_wait=2.0)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            calls.append([m.data["n"] for m in msgs])
            if msgs[0].data["n"] == 0:
                await release.wait()
            return [None] * len(msgs)

        settings = make_settings(redis_server.url, group, concurrency=3, block=0.05)
        async with running(settings, [sink]):
            await publish(redis, stream, [{"n": 0}])
            await eventually(lambda: calls == [[0]])  # nothing running: called at once
            for n in range(1, 5):  # one by one, while [0] runs: gathered up to batch_max
                await publish(redis, stream, [{"n": n}])
                await asyncio.sleep(0.01)
            await eventually(lambda: len(calls) == 2)
            assert sorted(calls[1]) == [1, 2, 3, 4], calls
            await publish(redis, stream, [{"n": 5}])  # alone: called once batch_wait is up
            await eventually(lambda: len(calls) == 3)
            assert calls[2] == [5]
            assert not release.is_set()
            release.set()
            await eventually(lambda: settled(redis, stream, group))

    async def test_batch_wait_does_not_delay_a_message_when_nothing_runs(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """With a huge batch_wait, a lone message is still handed over at once."""
        stream, group = names["stream"], names["group"]
        calls: list[int] = []

        @handler(stream=stream, batch=True, batch_wait=3600.0)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            calls.append(len(msgs))
            return [None] * len(msgs)

        async with running(make_settings(redis_server.url, group), [sink]):
            await publish(redis, stream, [{"n": 1}])
            await eventually(lambda: settled(redis, stream, group) if calls else False)
        assert calls == [1]

    async def test_per_key_order_holds_across_concurrent_batches(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Versions of each key are applied strictly in order, and no key is ever in two
        batches at once, though batches of the stream run concurrently."""
        stream, group = names["stream"], names["group"]
        applied: dict[str, list[int]] = {}
        in_flight: set[str] = set()
        overlaps: list[str] = []
        concurrent = 0
        most_concurrent = 0
        rng = random.Random(7)

        @handler(stream=stream, batch=True, batch_max=8)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            nonlocal concurrent, most_concurrent
            keys = [m.key or "" for m in msgs]
            overlaps.extend(k for k in keys if k in in_flight)
            assert len(set(keys)) == len(keys)
            in_flight.update(keys)
            concurrent += 1
            most_concurrent = max(most_concurrent, concurrent)
            await asyncio.sleep(rng.random() * 0.004)
            concurrent -= 1
            in_flight.difference_update(keys)
            for m in msgs:
                applied.setdefault(m.key or "", []).append(m.data["version"])
            return [None] * len(msgs)

        keys, versions = 12, 25
        datas = [{"key": f"k{k}", "version": v} for v in range(versions) for k in range(keys)]
        settings = make_settings(redis_server.url, group, concurrency=6, batch_size=40)
        async with running(settings, [sink]):
            for start in range(0, len(datas), 30):
                await publish(redis, stream, datas[start : start + 30])
                await asyncio.sleep(0.002)
            await eventually(lambda: sum(map(len, applied.values())) == keys * versions, timeout=30)
            await eventually(lambda: settled(redis, stream, group))
        assert overlaps == []
        assert most_concurrent > 1
        for key in range(keys):
            assert applied[f"k{key}"] == list(range(versions))


class TestConfiguration:
    async def test_a_batch_handler_must_be_alone_on_its_stream(
        self, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Start-up refuses a batch handler beside another handler on one stream."""
        from worker import ConfigError, Worker

        @handler(stream=names["stream"], batch=True)
        async def batch(msgs: list[Message]) -> list[Outcome]:
            return [None] * len(msgs)

        @handler(stream=names["stream"])
        async def single(msg: Message) -> None:
            pass

        with pytest.raises(ConfigError, match="batch handler and must be the only handler"):
            Worker(make_settings(redis_server.url, names["group"]), [batch, single])


class TestShutdown:
    async def test_an_unfinished_batch_is_released_not_failed(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A batch still running at the shutdown timeout is handed back: the next worker runs
        it without an attempt spent."""
        stream, group = names["stream"], names["group"]
        first_calls: list[int] = []

        @handler(stream=stream, batch=True)
        async def hangs(msgs: list[Message]) -> list[Outcome]:
            first_calls.append(len(msgs))
            await asyncio.Event().wait()
            return [None] * len(msgs)

        await publish(redis, stream, [{"n": n} for n in range(3)])
        settings = make_settings(redis_server.url, group, shutdown_timeout=0.2, consumer="a")
        async with running(settings, [hangs]):
            await eventually(lambda: sum(first_calls) == 3)
        attempts: list[int] = []

        @handler(stream=stream, batch=True)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            attempts.extend(m.attempt for m in msgs)
            return [None] * len(msgs)

        settings = make_settings(redis_server.url, group, claim_idle=0.5, consumer="b")
        async with running(settings, [sink]):
            await eventually(lambda: settled(redis, stream, group) if attempts else False)
        assert attempts == [1, 1, 1]
        assert await dead_letters(redis, stream) == []


class TestPoisonThatKillsTheProcess:
    async def test_a_batch_that_kills_its_worker_is_split_until_the_poison_is_alone(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A message that SIGKILLs every worker it runs in is dead-lettered alone; every
        other message of its batches is applied, and nothing stays pending."""
        stream, group = names["stream"], names["group"]
        datas: list[dict[str, object]] = [{"n": n} for n in range(40)]
        datas[13]["poison"] = True
        ids = await publish(redis, stream, datas)
        poison_id = ids[13]
        restarts = 0

        async def done() -> bool:
            handled = set(await redis.lrange(f"{stream}:processed", 0, -1))
            return len(handled) == 39 and await settled(redis, stream, group)

        while not await done():
            restarts += 1  # like a supervisor: a fresh process after each crash
            assert restarts <= 10, "the poison message was never isolated"
            worker = await WorkerProcess(
                redis_server.url,
                group,
                stream,
                f"w{restarts}-{uuid.uuid4().hex[:6]}",
                SYNCWORKER_ROUTES=(
                    f'[{{"stream": "{stream}", '
                    '"handler": "tests.integration.plugins:BatchRecorder"}]'
                ),
                SYNCWORKER_MAX_ATTEMPTS=3,
                SYNCWORKER_CLAIM_BATCH=8,  # suspects run in groups of 8, then alone
                SYNCWORKER_CLAIM_IDLE=0.5,
                SYNCWORKER_CLAIM_INTERVAL=0.05,
                SYNCWORKER_CONCURRENCY=4,
            ).start()
            exited = asyncio.create_task(worker.wait())
            while not exited.done() and not await done():
                await asyncio.wait({exited}, timeout=0.05)
            if exited.done():
                assert exited.result() == -signal.SIGKILL, worker.output()
            else:  # all done; this one may still be starting (before its signal handlers)
                worker.signal(signal.SIGTERM)
                assert await exited in (0, -signal.SIGTERM)
        letters = await dead_letters(redis, stream)
        assert [letter["dlq_id"] for letter in letters] == [poison_id]
        processed = {i.decode() for i in await redis.lrange(f"{stream}:processed", 0, -1)}
        assert processed == set(ids) - {poison_id}
        runs = [r.decode().split() for r in await redis.lrange(f"{stream}:attempts", 0, -1)]
        poison_runs = [(int(attempt), int(size)) for i, attempt, size in runs if i == poison_id]
        assert poison_runs[-1] == (3, 1), "the poison's last run was not alone"
        retried = [int(size) for _, attempt, size in runs if attempt == "2"]
        assert max(retried) > 1, "the neighbours were run one by one"
