"""Supervision helpers: tell a task's own cancellation from a CancelledError it merely saw."""

from __future__ import annotations

import asyncio


def told_to_stop() -> bool:
    """Is the current task being cancelled (shutdown), rather than seeing a CancelledError
    that user code raised or let through? Only the former may end a long-lived loop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
