"""Blocking (non-async) handlers run in threads that nothing can cancel: a timed-out thread
keeps its key and its entry until it ends, and shutdown abandons it rather than wait."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import WorkerProcess, eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestTimedOutThread:
    async def test_key_and_retry_wait_for_the_thread(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """After a sync handler times out, neither its retry nor the key's next message
        starts before its thread has ended."""
        stream, group = names["stream"], names["group"]
        runs: list[tuple[str, int, float, float]] = []
        lock = threading.Lock()

        @handler(stream=stream)
        def blocking(msg: Message) -> None:
            started = time.monotonic()
            if msg.data["n"] == 1 and msg.attempt == 1:
                time.sleep(3)
            with lock:
                runs.append((msg.id, msg.attempt, started, time.monotonic()))

        # Given two messages of one key, the first of which blocks for 3 s on its first run
        publisher = Publisher(redis)
        first = await publisher.publish(stream, "order.paid", {"n": 1}, key="order-1")
        second = await publisher.publish(stream, "order.paid", {"n": 2}, key="order-1")
        settings = make_settings(redis_server.url, group, handler_timeout=0.5, concurrency=4)
        # When the worker runs them with a 0.5 s handler timeout
        with capture_logs() as logs:
            async with running(settings, [blocking]):
                await eventually(lambda: len(runs) == 3, timeout=15)
                await eventually(lambda: _acked(redis, stream, group), timeout=5)
        # Then the retry and the second message start only after the first thread ended
        by_run = {(message_id, attempt): (s, e) for message_id, attempt, s, e in runs}
        first_end = by_run[(first, 1)][1]
        assert by_run[(first, 2)][0] >= first_end
        assert by_run[(second, 1)][0] >= first_end
        [retry] = [e for e in logs if e["event"] == "message.retry"]
        assert retry["error_type"] == "TimeoutError"
        assert any(e["event"] == "handler.thread_overran" for e in logs)


class TestShutdownAbandonsThreads:
    async def test_sigterm_exits_within_the_shutdown_timeout(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """SIGTERM with a sync handler stuck for 60 s exits after shutdown_timeout; the
        entry stays pending and another consumer finishes it later."""
        stream, group = names["stream"], names["group"]
        routes = [{"stream": stream, "handler": "tests.integration.plugins:sync_recorder"}]
        entry = await Publisher(redis).publish(stream, "order.paid", {"n": 1})
        # Given a worker process whose sync handler sleeps 60 s
        worker = await WorkerProcess(
            redis_server.url,
            group,
            stream,
            "blocked",
            TEST_SLEEP=60,
            SYNCWORKER_SHUTDOWN_TIMEOUT=2,
            SYNCWORKER_ROUTES=json.dumps(routes),
        ).start()

        async def begun() -> bool:
            return await redis.llen(f"{stream}:started") == 1

        await eventually(begun)
        # When it gets SIGTERM
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = await worker.wait(timeout=20)
        took = time.monotonic() - signalled
        # Then it exits promptly, saying it abandoned the thread, and the entry stays pending
        assert took < 2 + 3, f"exit took {took:.1f}s"
        assert code == 0, worker.output()
        assert '"event": "worker.threads_abandoned"' in worker.output()
        assert await pending_count(redis, stream, group) == 1
        # And another consumer takes it over and finishes it
        done: list[str] = []

        @handler(stream=stream)
        async def finish(msg: Message) -> None:
            done.append(msg.id)

        async with running(make_settings(redis_server.url, group, claim_idle=1.0), [finish]):
            await eventually(lambda: done == [entry], timeout=10)
            await eventually(lambda: _acked(redis, stream, group), timeout=5)


async def _acked(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0
