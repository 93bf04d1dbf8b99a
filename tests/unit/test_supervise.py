"""Background loops are supervised: a surprise is logged, counted and restarted, not fatal."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from worker.errors import ConfigError
from worker.runtime.stats import Stats
from worker.runtime.supervise import supervise


class TestSupervise:
    async def test_a_loop_that_dies_is_logged_counted_and_restarted(self) -> None:
        """Exceptions (and a CancelledError it did not ask for) restart the loop after a pause."""
        runs: list[int] = []
        running = asyncio.Event()

        async def loop() -> None:
            runs.append(len(runs))
            if len(runs) == 1:
                raise RuntimeError("surprise")
            if len(runs) == 2:
                raise asyncio.CancelledError()  # from user code or a library, not a shutdown
            running.set()
            await asyncio.Event().wait()

        stats = Stats()
        with capture_logs() as logs:
            task = asyncio.create_task(supervise("reader", loop, stats, lambda: False, first=0.01))
            await asyncio.wait_for(running.wait(), 5)
        # Then: two deaths, each logged with its traceback and counted; the third run lives
        assert stats.task_restarts["reader"] == 2
        died = [e for e in logs if e["event"] == "task.died"]
        assert [e["task"] for e in died] == ["reader", "reader"]
        assert all(e["exc_info"] for e in died)
        # And: its own cancellation (shutdown) still ends it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    async def test_a_loop_that_returns_while_the_worker_runs_is_restarted(self) -> None:
        """Ending without being asked is a death too; ending once stopping is the normal end."""
        stopping = False
        runs = 0

        async def loop() -> None:
            nonlocal runs, stopping
            runs += 1
            if runs == 2:
                stopping = True

        stats = Stats()
        await asyncio.wait_for(supervise("settler", loop, stats, lambda: stopping, first=0.01), 5)
        assert runs == 2 and stats.task_restarts["settler"] == 1

    async def test_a_configuration_error_is_fatal(self) -> None:
        """An error that means the configuration cannot work ends the worker."""

        async def loop() -> None:
            raise ConfigError("SYNCWORKER_GROUP", "cannot work")

        stats = Stats()
        with pytest.raises(ConfigError):
            await asyncio.wait_for(supervise("reader", loop, stats, lambda: False), 5)
        assert stats.task_restarts["reader"] == 0
