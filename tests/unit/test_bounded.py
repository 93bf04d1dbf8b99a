"""A shutdown step never hangs the process, even when it ignores its cancellation."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from worker.runtime.supervise import bounded


class TestBounded:
    async def test_a_step_that_ignores_its_cancellation_is_given_up_on(self) -> None:
        """bounded() raises TimeoutError on time and names the step; it does not await it."""
        release = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await release.wait()  # as a client that lost the cancellation

        with capture_logs() as logs, pytest.raises(TimeoutError):
            await asyncio.wait_for(bounded(stubborn(), 0.05, "release"), 5)
        assert [e["what"] for e in logs if e["event"] == "shutdown.stuck"] == ["release"]
        release.set()
        await asyncio.sleep(0)

    async def test_a_step_that_ends_returns_its_result(self) -> None:
        """The result, or the exception, of a step that ends in time comes back to the caller."""

        async def answer() -> int:
            return 42

        async def fails() -> None:
            raise ConnectionError("down")

        assert await bounded(answer(), 1, "answer") == 42
        with pytest.raises(ConnectionError):
            await bounded(fails(), 1, "fails")
