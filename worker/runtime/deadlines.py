"""Handler timeouts without a timer per call.

`asyncio.timeout` arms an event-loop timer on entry and cancels it on exit: on uvloop that is
several microseconds per call, more than a whole no-op message costs the rest of the runtime.
With a timeout on by default (300 s), every message would pay it. Instead, each call records
when it started (a dict entry), and one watchdog looks over the calls in flight a few times per
timeout and cancels those past their deadline, as `asyncio.timeout` would: the handler sees a
`CancelledError`, which the dispatcher turns into a `TimeoutError` failure. A call is cut off
between `timeout` and `timeout + tick` seconds after it started.
"""

from __future__ import annotations

import asyncio
import time

from worker.message import Message

Work = Message | list[Message]
"""What a call runs on: one message, or a batch."""
MAX_TICK_S = 1.0
"""Longest pause of the watchdog: a call overruns its timeout by at most this much."""


class Deadlines:
    """The handler calls in flight, and the watchdog that cuts off those that overrun.

    Args:
        timeout: seconds a handler call may run.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(max(timeout / 10, 0.01), MAX_TICK_S)
        self._running: dict[asyncio.Task[object], tuple[Work, float]] = {}
        self._expired: dict[asyncio.Task[object], Work] = {}

    def started(self, task: asyncio.Task[object], msg: Work) -> None:
        """`task` starts a handler call on `msg` (a message or a batch) now."""
        self._running[task] = (msg, time.monotonic())

    def ended(self, task: asyncio.Task[object]) -> None:
        """The call of `task` ended, whichever way. A handler that swallowed the cut-off
        cancellation ended normally, as with `asyncio.timeout`: the cancellation is withdrawn."""
        del self._running[task]
        if self._expired and self._expired.pop(task, None) is not None:
            task.uncancel()

    def cut_off(self, task: asyncio.Task[object], msg: Work) -> bool:
        """Whether the `CancelledError` that ended `task`'s call on `msg` was the watchdog's.

        If so the cancellation is withdrawn (the lane goes on) and the caller reports the call
        as timed out; otherwise it was someone else's (shutdown), and stays.
        """
        if self._expired.get(task) is not msg:
            return False
        del self._expired[task]
        task.uncancel()
        return True

    def cut_stream(self, stream: str) -> int:
        """Cut off now every call running a message of `stream`, as if it had timed out (its
        partition's lease was lost: `worker.runtime.ordered`); return how many."""
        cut = 0
        for task, (msg, _) in list(self._running.items()):
            running = msg[0].stream if isinstance(msg, list) else msg.stream
            if running == stream and task not in self._expired:
                self._expired[task] = msg
                task.cancel()
                cut += 1
        return cut

    async def run(self) -> None:
        """Every `tick`, cancel the calls that have run longer than `timeout`."""
        while True:
            await asyncio.sleep(self.tick)
            self.expire(time.monotonic())

    def expire(self, now: float) -> None:
        limit = now - self.timeout
        for task, (msg, since) in list(self._running.items()):
            if since <= limit and task not in self._expired:
                self._expired[task] = msg
                task.cancel()
