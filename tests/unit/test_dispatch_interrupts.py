"""The dispatcher settles every exception a handler raises; only its own cancellation escapes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker import Message, handler
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.stats import Stats


class _Settler:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    def ack(self, msg: Message, handler: str, *, skipped: bool = False) -> None:
        self.outcomes.append(("ack", msg.id))

    def failed(self, msg: Message, exc: BaseException, handler: str) -> None:
        self.outcomes.append(("failed", type(exc).__name__))

    def dead_letter(self, msg: Message, exc: BaseException, handler: str, **_: Any) -> None:
        self.outcomes.append(("dead_letter", type(exc).__name__))


def _dispatcher(raised: BaseException) -> tuple[Dispatcher, _Settler]:
    @handler(stream="s")
    async def raises(msg: Message) -> None:
        raise raised

    settler = _Settler()
    return Dispatcher(RouteTable([raises], Stats()), settler, 0), settler  # type: ignore[arg-type]


class TestHandlerBaseExceptions:
    @pytest.mark.parametrize(
        "raised", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(3), GeneratorExit()]
    )
    async def test_a_base_exception_raised_by_a_handler_is_a_failure(
        self, raised: BaseException
    ) -> None:
        """The process was not told to exit: the handler failed, and the message says so."""
        dispatcher, settler = _dispatcher(raised)
        try:
            await dispatcher.process(Message("s", "1-0", {}))
        except BaseException as exc:  # the defect: it escapes to the lane
            pytest.fail(f"process raised {exc!r}")
        assert settler.outcomes == [("failed", type(raised).__name__)]

    async def test_the_lanes_own_cancellation_still_propagates(self) -> None:
        """Cancelling the task that runs the handler (shutdown) is not turned into a failure."""
        started = asyncio.Event()

        @handler(stream="s")
        async def waits(msg: Message) -> None:
            started.set()
            await asyncio.Event().wait()

        settler = _Settler()
        dispatcher = Dispatcher(RouteTable([waits], Stats()), settler, 0)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.process(Message("s", "1-0", {})))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert settler.outcomes == []

    async def test_the_test_kit_reports_a_cancelled_error_as_a_retry(self) -> None:
        """worker.testing.deliver follows the same rule as the runtime."""
        from worker.testing import deliver

        @handler(stream="s")
        async def cancels(msg: Message) -> None:
            raise asyncio.CancelledError()

        delivery = await deliver(cancels)
        assert delivery.outcome == "retry"
        assert isinstance(delivery.error, asyncio.CancelledError)
