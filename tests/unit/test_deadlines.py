"""Handler timeouts: one watchdog cuts off overrunning calls, as asyncio.timeout would."""

from __future__ import annotations

import asyncio
import contextlib

from worker import Message, handler
from worker.runtime.deadlines import Deadlines
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.stats import Stats
from worker.testing import make_message


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    def ack(self, msg: Message, handler: str, *, skipped: bool = False) -> None:
        self.outcomes.append(("ok", handler))

    def failed(self, msg: Message, exc: BaseException, handler: str) -> None:
        self.outcomes.append(("failed", type(exc).__name__))

    def dead_letter(self, msg: Message, exc: BaseException, handler: str, **_: object) -> None:
        self.outcomes.append(("dead_letter", type(exc).__name__))


def dispatcher_for(func: object, timeout: float) -> tuple[Dispatcher, Recorder]:
    recorder = Recorder()
    routes = RouteTable([func], Stats())  # type: ignore[list-item]
    return Dispatcher(routes, recorder, timeout), recorder  # type: ignore[arg-type]


class TestDeadlines:
    async def test_an_overrunning_call_fails_with_a_timeout_and_the_lane_goes_on(self) -> None:
        """The watchdog cuts the call off; it settles as TimeoutError, and the task lives."""

        @handler(stream="s")
        async def hangs(msg: Message) -> None:
            await asyncio.Event().wait()

        dispatcher, recorder = dispatcher_for(hangs, 0.05)
        assert dispatcher.deadlines is not None
        watchdog = asyncio.create_task(dispatcher.deadlines.run())
        try:
            await asyncio.wait_for(dispatcher.process(make_message("s")), 2)
            assert recorder.outcomes == [("failed", "TimeoutError")]
            # The withdrawn cancellation leaves nothing behind for the lane's next await.
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            await asyncio.sleep(0.01)
        finally:
            watchdog.cancel()

    async def test_fast_calls_are_never_cut_off(self) -> None:
        """Calls that end in time succeed, whatever the watchdog does meanwhile."""

        @handler(stream="s")
        async def quick(msg: Message) -> None:
            await asyncio.sleep(0)

        dispatcher, recorder = dispatcher_for(quick, 0.05)
        assert dispatcher.deadlines is not None
        watchdog = asyncio.create_task(dispatcher.deadlines.run())
        try:
            for _ in range(50):
                await dispatcher.process(make_message("s"))
                await asyncio.sleep(0.002)
        finally:
            watchdog.cancel()
        assert [outcome for outcome, _ in recorder.outcomes] == ["ok"] * 50

    async def test_shutdown_cancellation_is_not_taken_for_a_timeout(self) -> None:
        """A cancellation the watchdog did not ask for propagates (it is shutdown's)."""

        @handler(stream="s")
        async def hangs(msg: Message) -> None:
            await asyncio.Event().wait()

        dispatcher, recorder = dispatcher_for(hangs, 60)
        task = asyncio.create_task(dispatcher.process(make_message("s")))
        await asyncio.sleep(0.01)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1)
        assert done and task.cancelled()
        assert recorder.outcomes == []

    def test_a_swallowed_cut_off_withdraws_the_cancellation(self) -> None:
        """A handler that swallows the CancelledError ends normally, with nothing pending."""

        async def scenario() -> int:
            deadlines = Deadlines(0.01)
            task = asyncio.current_task()
            assert task is not None
            msg = make_message("s")
            deadlines.started(task, msg)
            deadlines.expire(float("inf"))  # the watchdog finds it overdue and cancels it
            with contextlib.suppress(asyncio.CancelledError):  # as a careless handler might
                await asyncio.sleep(1)
            deadlines.ended(task)
            return task.cancelling()

        assert asyncio.run(scenario()) == 0
