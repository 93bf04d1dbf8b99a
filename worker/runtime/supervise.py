"""Supervision helpers: a task's own cancellation told from a CancelledError it merely saw,
and waits on a shutdown path that always end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable

import structlog

log = structlog.get_logger("worker.runtime.supervise")


def told_to_stop() -> bool:
    """Is the current task being cancelled (shutdown), rather than seeing a CancelledError
    that user code raised or let through? Only the former may end a long-lived loop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def wait_ended(tasks: Iterable[asyncio.Task[object]], timeout: float, what: str) -> bool:
    """Wait up to `timeout` seconds for `tasks` to end; log the ones that did not.

    Never `await task` after `task.cancel()` unbounded: redis-py's asyncio client can lose a
    cancellation that lands while a command is in flight, and user code can swallow one.

    Returns:
        True if every task ended in time.
    """
    pending = [task for task in tasks if not task.done()]
    if not pending:
        return True
    _, stuck = await asyncio.wait(pending, timeout=timeout)
    if stuck:
        log.warning(
            "shutdown.stuck",
            what=what,
            tasks=sorted(task.get_name() for task in stuck),
            timeout_s=timeout,
            note="going on without them",
        )
    return not stuck


async def bounded(step: Awaitable[object], timeout: float, what: str) -> None:
    """Run one shutdown step for at most `timeout` seconds; log and move on if it hangs.

    Raises:
        Exception: whatever the step raised, for the caller to log.
    """
    task = asyncio.ensure_future(step)
    task.set_name(what)
    if not await wait_ended([task], timeout, what):
        task.cancel()
        return
    task.result()
