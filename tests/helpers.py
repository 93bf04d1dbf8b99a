"""Helpers for runtime tests: settings, a worker running in the background, polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from worker import Handler, Worker, WorkerSettings

FAST = {
    "retry_base": 0.05,
    "retry_max": 0.2,
    "claim_interval": 0.05,
    "claim_idle": 2.0,
    "block": 0.1,
    "shutdown_timeout": 5.0,
    "metrics_port": 0,
}
"""Timings that make retries and reclaims happen within a test's patience."""


def make_settings(url: str, group: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {**FAST, "redis_url": url, "group": group}
    values.update(overrides)
    return WorkerSettings(**values)


@contextlib.asynccontextmanager
async def running(
    settings: WorkerSettings, handlers: Sequence[Handler], **worker_options: Any
) -> AsyncIterator[Worker]:
    """Run a worker in a task for the duration of the block, then stop it and wait."""
    worker = Worker(settings, handlers, **worker_options)
    task = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=10, return_when="FIRST_COMPLETED")
    if task in done:
        task.result()
    assert started in done, "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `check` until it is true; fail with a timeout otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def pending_count(redis: Redis, stream: str, group: str) -> int:
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


async def dead_letters(redis: Redis, stream: str) -> list[dict[str, str]]:
    entries = await redis.xrange(stream + ":dlq")
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
        for _, fields in entries
    ]
