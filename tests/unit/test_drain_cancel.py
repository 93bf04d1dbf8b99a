"""The drain ends the read loop even when one cancellation of it is lost."""

from __future__ import annotations

import asyncio

from worker.worker import _cancel_until_done


class TestCancelUntilDone:
    async def test_a_task_that_swallows_one_cancellation_still_ends(self) -> None:
        """A loop that mistakes the first cancel for a timeout is cancelled again and ends."""
        swallowed = 0

        async def read_loop() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed += 1  # what a cancel turned into a TimeoutError looks like

        task = asyncio.create_task(read_loop())
        await asyncio.sleep(0)
        await _cancel_until_done(task, 2.0)
        assert task.cancelled() and swallowed == 1
