"""Supervision: long-lived loops restarted when they die, a task's own cancellation told from
a CancelledError it merely saw, and waits on a shutdown path that always end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import structlog

from worker.errors import ConfigError, StartupError
from worker.runtime.stats import Stats

log = structlog.get_logger("worker.runtime.supervise")

T = TypeVar("T")


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


async def bounded(step: Awaitable[T], timeout: float, what: str) -> T:
    """Run one shutdown step for at most `timeout` seconds; log and give up if it hangs.

    Unlike `asyncio.wait_for`, which awaits the step after cancelling it, this never waits
    past `timeout`: the step is cancelled and left behind.

    Raises:
        TimeoutError: the step did not end in time (already logged as `shutdown.stuck`).
        Exception: whatever the step raised.
    """
    task = asyncio.ensure_future(step)
    task.set_name(what)
    if not await wait_ended([task], timeout, what):
        task.cancel()
        raise TimeoutError(f"{what} did not end within {timeout}s")
    return task.result()


FATAL: tuple[type[BaseException], ...] = (ConfigError, StartupError)
"""Errors that mean the configuration cannot work: restarting would only repeat them."""

RESET_AFTER_S = 60.0
"""A loop that ran this long before dying starts its back-off over."""


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    stats: Stats,
    stopping: Callable[[], bool],
    *,
    first: float = 0.1,
    cap: float = 5.0,
) -> None:
    """Run one of the worker's long-lived loops; restart it whenever it dies.

    A loop dies when it raises (a bug, or a CancelledError it did not ask for) or returns
    while the worker is not stopping. Each death is logged as `task.died` with its
    traceback, counted in `stats.task_restarts[name]`, and followed by a restart after a
    capped, doubling pause. Only the task's own cancellation, a normal end once `stopping()`,
    the `FATAL` errors and `KeyboardInterrupt`/`SystemExit` end it.

    Args:
        name: the loop's label in logs and in `syncworker_task_restarts_total`.
        run: starts one run of the loop.
        stats: where restarts are counted.
        stopping: true once the worker is shutting down.
        first: seconds before the first restart; doubled per death up to `cap`.
    """
    delay = first
    while True:
        started = time.monotonic()
        try:
            await run()
            if stopping():
                return
            death: BaseException = RuntimeError(f"the {name} loop ended on its own")
        except asyncio.CancelledError as exc:
            if told_to_stop():
                raise
            death = exc
        except FATAL:
            raise
        except Exception as exc:
            death = exc
        if time.monotonic() - started > RESET_AFTER_S:
            delay = first
        stats.task_restarts[name] += 1
        log.error("task.died", task=name, restart_in_s=delay, exc_info=death)
        await asyncio.sleep(delay)
        delay = min(delay * 2, cap)
