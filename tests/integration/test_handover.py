"""Live work never runs twice, and work handed back runs again at once, at full concurrency.

Worker subprocesses record each run of an entry in Redis (`tests/integration/plugins.py`):
its attempt when it starts, its wall-clock span when it ends. Two spans of one entry that
overlap mean two live consumers ran it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from typing import Any

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
from tests.integration.test_crash_recovery import processed, publish_many, started
from worker import Message, Retry, Worker, handler
from worker.redis_server import RedisServer
from worker.runtime.claims import Claims, Guard, handover_key
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.policy import RetryPolicy
from worker.runtime.retries import RetryScan
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats

pytestmark = pytest.mark.redis

Span = tuple[str, float, float]


async def spans(redis: Redis, stream: str) -> list[Span]:
    found = []
    for raw in await redis.lrange(f"{stream}:spans", 0, -1):
        entry_id, start, end = raw.decode().split()
        found.append((entry_id, float(start), float(end)))
    return found


async def attempts(redis: Redis, stream: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for raw in await redis.lrange(f"{stream}:attempts", 0, -1):
        entry_id, attempt = raw.decode().split()
        found.setdefault(entry_id, []).append(int(attempt))
    return found


def overlapping(runs: list[Span]) -> list[str]:
    """Entries with two runs at once."""
    by_id: dict[str, list[tuple[float, float]]] = {}
    for entry_id, start, end in runs:
        by_id.setdefault(entry_id, []).append((start, end))
    twice = []
    for entry_id, times in by_id.items():
        times.sort()
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(times)):
            twice.append(entry_id)
    return twice


def most_at_once(runs: list[Span]) -> int:
    """The most runs in progress at one moment."""
    edges = sorted([(start, 1) for _, start, _ in runs] + [(end, -1) for _, _, end in runs])
    running_now = peak = 0
    for _, step in edges:
        running_now += step
        peak = max(peak, running_now)
    return peak


FAST_CLAIMS = {"SYNCWORKER_CLAIM_IDLE": 1.0, "SYNCWORKER_CLAIM_INTERVAL": 0.05}


class TestRestartUnderTheSameName:
    async def test_a_recovered_leftover_is_heartbeated_while_it_runs(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A leftover the restarted consumer recovers runs once, though it outlasts claim_idle."""
        stream, group = names["stream"], names["group"]
        # Given an entry the earlier process of "pod-a" read before it died
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        [entry_id] = await publish_many(redis, stream, 1)
        await redis.xreadgroup(group, "pod-a", {stream: ">"}, count=1)
        # When "pod-a" restarts and runs it for 3 s, and a live peer scans meanwhile
        pod = await WorkerProcess(
            redis_server.url, group, stream, "pod-a", TEST_SLEEP=3.0, **FAST_CLAIMS
        ).start()

        async def begun() -> bool:
            return len(await started(redis, stream)) == 1

        await eventually(begun)
        peer = await WorkerProcess(redis_server.url, group, stream, "peer", **FAST_CLAIMS).start()
        # Scanning while the leftover still runs (and safe to SIGTERM: its handler is up)
        await peer.wait_started()
        try:

            async def finished() -> bool:
                return len(await processed(redis, stream)) >= 1

            await eventually(finished, timeout=10)
            await asyncio.sleep(1.0)  # a stolen copy would finish by now
        finally:
            for proc in (pod, peer):
                proc.signal(signal.SIGTERM)
            assert await pod.wait() == 0 and await peer.wait() == 0
        # Then it ran exactly once
        assert await started(redis, stream) == [entry_id]
        assert await pending_count(redis, stream, group) == 0

    async def test_stop_during_recovery_is_bounded_by_the_shutdown_timeout(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """stop() while a recovered leftover runs drains within shutdown_timeout."""
        stream, group = names["stream"], names["group"]
        entered = asyncio.Event()

        @handler(stream=stream)
        async def slow(msg: Message) -> None:
            entered.set()
            await asyncio.sleep(30)

        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        entry_id = (await redis.xadd(stream, {"n": "1"})).decode()
        await redis.xreadgroup(group, "pod-b", {stream: ">"}, count=1)
        settings = make_settings(redis_server.url, group, consumer="pod-b", shutdown_timeout=0.3)
        worker = Worker(settings, [slow])
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(entered.wait(), 5)
            worker.stop()
            await asyncio.wait_for(asyncio.shield(task), 8)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 30)
        assert await pending_count(redis, stream, group) == 1  # handed back, not lost
        assert await redis.hget(handover_key(stream), entry_id) is not None


class TestClaimGuards:
    async def test_the_retry_scan_leaves_an_entry_a_peer_took_over(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Due retries are claimed only if still pending on this consumer, each on its own."""
        stream, group = names["stream"], names["group"]
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        first = (await redis.xadd(stream, {"n": "1"})).decode()
        second = (await redis.xadd(stream, {"n": "2"})).decode()
        await redis.xreadgroup(group, "me", {stream: ">"}, count=2)
        # Given: we reset `first` 10 s ago, and a peer has taken it over 6 s ago (it runs it
        # now); we reset `second` 5 s ago.
        await redis.xclaim(stream, group, "peer", 0, [first], idle=6000, justid=True)
        await redis.xclaim(stream, group, "me", 0, [second], idle=5000, justid=True)
        settings = make_settings(redis_server.url, group, consumer="me")
        ledger, stats = Ledger(100), Stats()
        policy = RetryPolicy.from_settings(settings)
        now = time.monotonic()
        for entry_id, touched in ((first, now - 10), (second, now - 5)):
            ledger.hold(Message(stream, entry_id, {}, 1, group))
            ledger.wait_for_retry(Message(stream, entry_id, {}, 1, group), -1.0)
            ledger.touched(stream, [entry_id], touched)
        submitted: list[Message] = []
        scan = RetryScan(
            redis,
            settings,
            policy,
            ledger,
            Settler(redis, settings, policy, ledger, stats),
            submitted.append,
            ReadGate(),
            stats,
        )
        # When the retry scan claims its due retries
        await scan.retry_due()
        # Then only `second` is ours again, with its delivery count bumped
        assert [(m.id, m.attempt) for m in submitted] == [(second, 2)]
        rows = await redis.xpending_range(stream, group, min="-", max="+", count=10)
        owners = {r["message_id"].decode(): r["consumer"].decode() for r in rows}
        assert owners == {first: "peer", second: "me"}

    async def test_a_takeover_claim_leaves_an_entry_that_moved_since_the_scan(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A claim made on a scan's view takes only entries still as the scan saw them."""
        stream, group = names["stream"], names["group"]
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        ids = [(await redis.xadd(stream, {"n": str(n)})).decode() for n in range(3)]
        await redis.xreadgroup(group, "dead", {stream: ">"}, count=3)
        for entry_id in ids:
            await redis.xclaim(stream, group, "dead", 0, [entry_id], idle=5000, justid=True)
        # Given a scan saw all three on "dead", idle 5 s; since then a peer took the first
        # over, and the second was refreshed (its idle time reset)
        await redis.xclaim(stream, group, "peer", 0, [ids[0]], idle=9000, justid=True)
        await redis.xclaim(stream, group, "dead", 0, [ids[1]], idle=100, justid=True)
        claims = Claims(redis, group, "me", Stats())
        got = await claims.claim(stream, [Guard(i, "dead", 5000) for i in ids])
        # Then only the third is claimed, with one more delivery
        assert [(c.id, c.deliveries) for c in got] == [(ids[2], 2)]
        rows = await redis.xpending_range(stream, group, min="-", max="+", count=10)
        owners = {r["message_id"].decode(): r["consumer"].decode() for r in rows}
        assert owners == {ids[0]: "peer", ids[1]: "dead", ids[2]: "me"}


class TestRequestedDelay:
    async def test_a_peer_honours_a_retry_delay_longer_than_claim_idle(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Retry(delay=3) with claim_idle=1: no consumer of the fleet runs it again sooner."""
        stream, group = names["stream"], names["group"]
        runs: list[tuple[int, float]] = []

        @handler(stream=stream)
        async def later(msg: Message) -> None:
            runs.append((msg.attempt, time.monotonic()))
            if msg.attempt == 1:
                raise Retry("not yet", delay=3.0)

        common = {"claim_idle": 1.0, "claim_interval": 0.05}
        one = make_settings(redis_server.url, group, consumer="one", **common)
        two = make_settings(redis_server.url, group, consumer="two", **common)
        async with running(one, [later]), running(two, [later]):
            await redis.xadd(stream, {"n": "1"})
            await eventually(lambda: len(runs) >= 2, timeout=10)
            await asyncio.sleep(0.5)
        assert [attempt for attempt, _ in runs] == [1, 2]
        assert runs[1][1] - runs[0][1] >= 2.9

    async def test_a_waiting_retry_handed_back_keeps_its_delay_and_attempt(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A graceful stop hands a waiting retry over: the next worker runs it as attempt 2,
        not before the requested delay."""
        stream, group = names["stream"], names["group"]
        runs: list[tuple[str, int, float]] = []

        def recording(name: str) -> Any:
            @handler(stream=stream, name=name)
            async def later(msg: Message) -> None:
                runs.append((name, msg.attempt, time.monotonic()))
                if msg.attempt == 1:
                    raise Retry("not yet", delay=3.0)

            return later

        common = {"claim_idle": 1.0, "claim_interval": 0.05}
        one = make_settings(redis_server.url, group, consumer="one", **common)
        two = make_settings(redis_server.url, group, consumer="two", **common)
        async with running(one, [recording("one")]):
            await redis.xadd(stream, {"n": "1"})
            await eventually(lambda: len(runs) >= 1, timeout=10)
        # "one" has stopped gracefully, with the entry waiting for its retry
        async with running(two, [recording("two")]):
            await eventually(lambda: len(runs) >= 2, timeout=10)
            await asyncio.sleep(0.5)
        assert [(name, attempt) for name, attempt, _ in runs] == [("one", 1), ("two", 2)]
        assert runs[1][2] - runs[0][2] >= 2.9


class TestReadGateBounded:
    async def test_a_handler_that_never_returns_does_not_stop_reading_for_ever(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A suspect waits a bounded time for a hung handler; then it runs and reading resumes."""
        stream, group = names["stream"], names["group"]
        hung, release = asyncio.Event(), asyncio.Event()
        handled: set[str] = set()

        @handler(stream=stream)
        async def stuck(msg: Message) -> None:
            if msg.raw.get(b"hang"):
                hung.set()
                while not release.is_set():  # ignores its timeout's cancellation
                    with contextlib.suppress(asyncio.CancelledError):
                        await release.wait()
                return
            handled.add(msg.id)

        # Given a dead consumer's entry, which the worker must run as a suspect, and an entry
        # whose handler hangs
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        ghost = (await redis.xadd(stream, {"n": "ghost"})).decode()
        await redis.xreadgroup(group, "ghost", {stream: ">"}, count=1)
        await redis.xadd(stream, {"hang": "1"})
        settings = make_settings(
            redis_server.url, group, handler_timeout=0.3, claim_idle=1.0, shutdown_timeout=1.0
        )
        stats = Stats()
        async with running(settings, [stuck], stats=stats):
            try:
                await asyncio.wait_for(hung.wait(), 5)
                await eventually(lambda: ghost in handled, timeout=10)
                # Then new entries are read again
                fresh = (await redis.xadd(stream, {"n": "fresh"})).decode()
                await eventually(lambda: fresh in handled, timeout=10)
            finally:
                release.set()
        assert stats.takeover_drain_timeouts >= 1


class TestGracefulHandOver:
    @pytest.mark.parametrize("successor", ["second", "first"])
    async def test_handed_back_entries_cost_no_attempt_and_run_at_full_concurrency(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str], successor: str
    ) -> None:
        """SIGTERM hands back unstarted entries; the next worker (another name, or the same
        name restarted) runs them together, as first attempts."""
        stream, group = names["stream"], names["group"]
        ids = await publish_many(redis, stream, 40)
        first = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "first",
            TEST_SLEEP=0.5,
            SYNCWORKER_CONCURRENCY=2,
            SYNCWORKER_BATCH_SIZE=40,
        ).start()

        async def two_running() -> bool:
            return len(await started(redis, stream)) >= 2

        await eventually(two_running)
        first.signal(signal.SIGTERM)
        assert await first.wait(timeout=10) == 0
        handed_back = set(ids) - set(await processed(redis, stream))
        assert len(handed_back) >= 30
        next_worker = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            successor,
            TEST_SLEEP=0.5,
            SYNCWORKER_CONCURRENCY=16,
        ).start()
        try:

            async def all_done() -> bool:
                return sorted(await processed(redis, stream)) == sorted(ids) and (
                    await pending_count(redis, stream, group) == 0
                )

            await eventually(all_done, timeout=20)
        finally:
            next_worker.signal(signal.SIGTERM)
            assert await next_worker.wait() == 0
        assert all(runs == [1] for runs in (await attempts(redis, stream)).values())
        later_runs = [s for s in await spans(redis, stream) if s[0] in handed_back]
        assert most_at_once(later_runs) >= 8
        assert overlapping(await spans(redis, stream)) == []


class TestCrashWave:
    async def test_a_killed_workers_entries_run_in_groups_not_one_by_one(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A SIGKILLed worker's entries are suspects, yet a survivor runs many of them at once."""
        stream, group = names["stream"], names["group"]
        ids = await publish_many(redis, stream, 60)
        victim = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "victim",
            TEST_SLEEP=0.3,
            SYNCWORKER_CONCURRENCY=4,
            SYNCWORKER_BATCH_SIZE=60,
        ).start()

        async def four_running() -> bool:
            return len(await started(redis, stream)) >= 4

        await eventually(four_running)
        await victim.kill()
        abandoned = set(ids) - set(await processed(redis, stream))
        survivor = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "survivor",
            TEST_SLEEP=0.3,
            SYNCWORKER_CONCURRENCY=16,
            **FAST_CLAIMS,
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
        later_runs = [s for s in await spans(redis, stream) if s[0] in abandoned]
        assert most_at_once(later_runs) >= 8

    async def test_poison_in_a_group_is_cornered_and_dead_lettered_alone(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Suspect groups halve with each crash; only the message that kills every worker
        reaches the dead-letter stream, after max_attempts."""
        stream, group = names["stream"], names["group"]
        ids = await publish_many(redis, stream, 40, poison=13)
        restarts = 0

        async def done() -> bool:
            handled = set(await processed(redis, stream))
            return len(handled) == 39 and await pending_count(redis, stream, group) == 0

        while not await done():
            restarts += 1
            assert restarts <= 8, "the poison message was never dead-lettered"
            worker = await WorkerProcess(
                redis_server.url,
                group,
                stream,
                f"w{restarts}-{names['suffix']}",
                SYNCWORKER_MAX_ATTEMPTS=4,
                SYNCWORKER_CLAIM_BATCH=8,
                SYNCWORKER_CLAIM_IDLE=0.5,
                SYNCWORKER_CONCURRENCY=8,
            ).start()
            await worker.wait_started()  # the 4 s below are for handling, not start-up
            try:
                assert await asyncio.wait_for(worker.wait(), timeout=4) == -signal.SIGKILL
            except TimeoutError:
                worker.signal(signal.SIGTERM)
                assert await worker.wait() == 0
        letters = await dead_letters(redis, stream)
        assert [letter["dlq_id"] for letter in letters] == [ids[13]]
        assert set(await processed(redis, stream)) == set(ids) - {ids[13]}
        # The poison ran once per attempt: with 8, then 4 suspects, then alone.
        assert (await attempts(redis, stream))[ids[13]] == [1, 2, 3, 4]


class TestReadAsTheWorkerStops:
    @pytest.mark.parametrize("lane", ["idle", "busy"])
    async def test_an_entry_read_as_the_worker_stops_is_handed_back_not_run(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str], lane: str
    ) -> None:
        """An XREADGROUP reply that comes in after the stop began (redis-py can lose the
        cancellation of a read in flight) is handed back with the unstarted entries: not
        run by the stopping worker (busy lane), nor left pending on its name (idle lane)."""
        stream, group = names["stream"], names["group"]
        handled: list[str] = []
        finish = asyncio.Event()

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.append(msg.id)
            if msg.fields.get("hold") == "1":
                await finish.wait()

        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        settings = make_settings(redis_server.url, group, consumer="stopping", concurrency=2)
        worker = Worker(settings, [record])
        task = asyncio.create_task(worker.run())
        entered, delivered = asyncio.Event(), asyncio.Event()
        try:
            await asyncio.wait_for(worker.started.wait(), 10)
            held = None
            if lane == "busy":  # a lane runs an entry until the test lets it finish
                held = (await redis.xadd(stream, {"hold": "1"})).decode()
                await eventually(lambda: held in handled)
            assert worker.reader is not None
            read = worker.reader.redis.xreadgroup

            async def read_losing_its_cancellation(*args: Any, **kwargs: Any) -> Any:
                entered.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(30)  # cut short by the stop's cancellation...
                reply = await read(*args, **kwargs)  # ...which is lost: the reply comes in
                delivered.set()
                return reply

            worker.reader.redis.xreadgroup = read_losing_its_cancellation  # type: ignore[method-assign]
            await asyncio.wait_for(entered.wait(), 10)
            late = (await redis.xadd(stream, {"n": "late"})).decode()
            worker.stop()
            await asyncio.wait_for(delivered.wait(), 10)
            finish.set()  # a busy lane finishes its entry after the late one was read
            await asyncio.wait_for(asyncio.shield(task), 15)
        finally:
            finish.set()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 10)
        # Then the stopping worker did not run it, and handed it back for the next consumer
        assert late not in handled
        assert await redis.hget(handover_key(stream), late) is not None
        rows = await redis.xpending_range(stream, group, min=late, max=late, count=1)
        assert [int(r["times_delivered"]) for r in rows] == [1]
        assert await pending_count(redis, stream, group) == 1  # the held one was acknowledged


class TestOrderedReadAsTheWorkerStops:
    async def test_an_entry_an_ordered_read_delivers_during_the_drain_is_handed_back(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The read loop of an ordered route may still be reading when the drain begins; an
        entry its reply brings must be handed back with the unstarted ones, not delivered to
        the stopping consumer and left pending on its name until claim_idle."""
        stream, group = names["stream"], names["group"]
        partition = "{" + stream + ":0}"
        handled: list[str] = []

        @handler(stream=stream, partitions=1, ordered=True)
        async def record(msg: Message) -> None:
            handled.append(msg.id)

        settings = make_settings(redis_server.url, group, consumer="stopping")
        worker = Worker(settings, [record])
        task = asyncio.create_task(worker.run())
        entered, replied, stop_called = asyncio.Event(), asyncio.Event(), asyncio.Event()
        try:
            await asyncio.wait_for(worker.started.wait(), 10)
            ordered = worker.ordered
            assert ordered is not None
            await eventually(lambda: bool(ordered.readable()))
            read = ordered.read_redis.xreadgroup

            async def read_as_the_drain_goes_on(*args: Any, **kwargs: Any) -> Any:
                entered.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await stop_called.wait()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(1.0)  # the drain goes on meanwhile
                reply = await read(*args, **kwargs)
                replied.set()
                return reply

            ordered.read_redis.xreadgroup = read_as_the_drain_goes_on  # type: ignore[method-assign]
            await asyncio.wait_for(entered.wait(), 10)
            late = (await redis.xadd(partition, {"n": "late"})).decode()
            worker.stop()
            stop_called.set()
            await asyncio.wait_for(asyncio.shield(task), 15)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 10)
        # Then the stopping worker did not run the entry its read brought, and handed it back
        assert late not in handled
        rows = await redis.xpending_range(partition, group, min=late, max=late, count=1)
        assert replied.is_set() and len(rows) == 1
        assert await redis.hget(handover_key(partition), late) is not None
