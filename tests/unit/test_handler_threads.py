"""Blocking handlers run on the worker's own daemon threads, which a timeout cannot stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from worker.message import Message
from worker.runtime.stats import Stats
from worker.runtime.threads import DaemonPool, HandlerThreads


class TestDaemonPool:
    def test_threads_are_daemons_and_never_more_than_the_size(self) -> None:
        """Calls beyond the size queue for a thread; every thread is a daemon."""
        pool = DaemonPool(2, "test")
        release = threading.Event()
        names: list[str] = []
        futures = [pool.submit(lambda: names.append(threading.current_thread().name)
                               or release.wait(5)) for _ in range(4)]  # fmt: skip
        release.set()
        for future in futures:
            assert future.result(5)
        threads = [t for t in threading.enumerate() if t.name.startswith("test-")]
        assert len(set(names)) <= 2 and all(t.daemon for t in threads)
        pool.shutdown()

    def test_shutdown_does_not_wait_for_a_running_call(self) -> None:
        """shutdown() returns at once beside a call still running, and refuses new ones."""
        pool = DaemonPool(1, "test-stuck")
        release = threading.Event()
        running = pool.submit(lambda: release.wait(5))
        started = time.monotonic()
        pool.shutdown()
        assert time.monotonic() - started < 0.5
        with pytest.raises(RuntimeError):
            pool.submit(lambda: None)
        release.set()
        assert running.result(5)


class TestHandlerThreads:
    async def test_a_timed_out_call_returns_only_once_its_thread_ended(self) -> None:
        """Past its timeout the call counts as failed, but not before the thread is done."""
        stats = Stats()
        threads = HandlerThreads(1, stats)
        msg = Message("s", "1-0", {})
        ended: list[float] = []

        def slow(_: Message) -> None:
            time.sleep(0.3)
            ended.append(time.monotonic())

        call = asyncio.create_task(threads.call(slow, msg, 0.05))
        await asyncio.sleep(0.15)
        assert not call.done() and stats.threads_overrunning == 1
        with pytest.raises(TimeoutError, match=r"timed out after 0\.05s"):
            await call
        assert ended  # the thread had finished when the call returned
        assert stats.threads_overrunning == 0 and threads.running() == []
        threads.close()

    async def test_close_abandons_running_threads(self) -> None:
        """close() names the messages whose threads still run, without waiting for them."""
        threads = HandlerThreads(2, Stats())
        release = threading.Event()
        msg = Message("s", "1-0", {})
        call = asyncio.create_task(threads.call(lambda _: release.wait(5), msg, None))
        await asyncio.sleep(0.05)
        call.cancel()  # as the drain cancels the lane after shutdown_timeout
        assert threads.close() == [msg]
        assert threads.abandoned == [msg]
        release.set()
