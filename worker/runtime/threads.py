"""Handler threads: where blocking (non-async) handlers run, and why a timeout cannot stop them.

A thread cannot be cancelled. When a blocking handler outlives `handler_timeout`, its message
counts as failed, but only once its thread has ended: until then the lane, the message's key
and its entry stay taken, so neither the key's next message nor the entry's retry can run
beside the call that is still going.

The threads are the worker's own, not the event loop's default executor: asyncio joins that
one when the loop closes, which held a stopping worker for as long as the slowest call ran.
They are daemon threads, so a call still running when the shutdown timeout is up is abandoned
and never holds the process open; `syncworker run` then ends the process with `os._exit` so
that interpreter finalisation never runs beside user code (`worker.commands.run`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import copy_context
from functools import partial
from typing import Any

import structlog

from worker.message import Message
from worker.runtime.stats import Stats

log = structlog.get_logger("worker.runtime.threads")

Blocking = Callable[[Message], Any]
"""A plain function handler, run in a thread."""

_Work = tuple["Future[Any]", Callable[[], Any]]


class DaemonPool:
    """At most `size` daemon threads, started as work arrives, that run submitted calls.

    `concurrent.futures.ThreadPoolExecutor` cannot serve: since Python 3.9 it joins its
    threads at interpreter exit even after `shutdown(wait=False)`.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        """Run `call` in a pool thread; its future holds the outcome.

        Raises:
            RuntimeError: the pool was shut down.
        """
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler thread pool is shut down")
            self._work.put((future, call))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, call = work
            del work
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # the caller decides what an error means
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, call
            self._idle.release()

    def shutdown(self) -> None:
        """Cancel queued calls and let idle threads end; never waits for a running call."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
            for _ in self._threads:
                self._work.put(None)


class HandlerThreads:
    """Runs blocking handlers on a pool of `size` threads, one per lane at most.

    Args:
        size: threads at most; the worker passes `concurrency`, since a lane waits for its
            thread, so no call ever queues for a thread.
        stats: where the number of calls running past their timeout is kept.
    """

    def __init__(self, size: int, stats: Stats) -> None:
        self._pool = DaemonPool(size, "syncworker-handler")
        self._stats = stats
        self._running: dict[asyncio.Future[Any], Message | list[Message]] = {}
        self.abandoned: list[Message] = []

    async def call(
        self, func: Callable[[Any], Any], msg: Message | list[Message], timeout: float | None
    ) -> Any:
        """Run `func(msg)` in a thread and return its result once the thread ended; `msg` is
        a message, or a batch for a batch function.

        Raises:
            TimeoutError: it ran longer than `timeout` (raised only once it has ended).
            Exception: what `func` raised.
        """
        started = time.monotonic()
        call = partial(copy_context().run, func, msg)  # the caller's context: its log bindings
        future = asyncio.wrap_future(self._pool.submit(call))
        self._running[future] = msg
        future.add_done_callback(self._ended)
        # asyncio.wait, not await: cancelling the lane (at shutdown) must leave the future
        # alone, so that it still tells which threads are running.
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if not done:
            await self._overrun(future, msg, started)
            raise TimeoutError(
                f"handler timed out after {timeout}s; its thread ended after "
                f"{time.monotonic() - started:.1f}s"
            )
        return future.result()

    async def _overrun(
        self, future: asyncio.Future[Any], work: Message | list[Message], started: float
    ) -> None:
        msg = work[0] if isinstance(work, list) else work
        log.warning(
            "handler.thread_overran",
            stream=msg.stream,
            message_id=msg.id,
            handler=getattr(msg, "_handler", ""),
            after_s=round(time.monotonic() - started, 3),
            note="a thread cannot be stopped: the message counts as failed once it ends; "
            "until then its key and entry stay taken",
        )
        self._stats.threads_overrunning += 1
        try:
            await asyncio.wait((future,))
        finally:
            self._stats.threads_overrunning -= 1

    def _ended(self, future: asyncio.Future[Any]) -> None:
        self._running.pop(future, None)

    def running(self) -> list[Message]:
        """Messages whose handler thread is still running."""
        running: list[Message] = []
        for work in self._running.values():
            running.extend(work if isinstance(work, list) else (work,))
        return running

    def close(self) -> list[Message]:
        """Abandon the threads still running (after the shutdown timeout); return their
        messages, which stay pending for another consumer to take over once idle."""
        self.abandoned = self.running()
        for future in list(self._running):
            future.cancel()  # so a thread ending after the loop closed does not call into it
        self._running.clear()
        self._pool.shutdown()
        if self.abandoned:
            log.warning(
                "worker.threads_abandoned",
                count=len(self.abandoned),
                message_ids=[m.id for m in self.abandoned][:20],
                note="blocking handlers still running after shutdown_timeout; their entries "
                "stay pending and are taken over after claim_idle",
            )
        return self.abandoned
