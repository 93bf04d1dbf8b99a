"""Helpers for runtime tests: settings, a worker running in the background, polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar

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


class WorkerProcess:
    """`syncworker run` in a subprocess, for tests that kill or signal it."""

    started: ClassVar[list[WorkerProcess]] = []
    """Every process a test started; the `reap_workers` fixture kills the survivors."""

    def __init__(self, url: str, group: str, stream: str, consumer: str, **env: Any) -> None:
        import os
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        self.env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "SYNCWORKER_REDIS_URL": url,
            "SYNCWORKER_GROUP": group,
            "SYNCWORKER_CONSUMER": consumer,
            "SYNCWORKER_ROUTES": (
                f'[{{"stream": "{stream}", "handler": "tests.integration.plugins:Recorder"}}]'
            ),
            "SYNCWORKER_METRICS_PORT": "0",
            "SYNCWORKER_LOG_FORMAT": "json",
            "TEST_STREAM": stream,
        }
        for key, value in FAST.items():
            self.env[f"SYNCWORKER_{key.upper()}"] = str(value)
        for key, value in env.items():
            self.env[key] = str(value)
        self.args = [sys.executable, "-m", "worker", "run"]
        self.process: asyncio.subprocess.Process | None = None
        # Unique per process: consumer names ("w1", "victim") repeat across tests, and a
        # suite run beside this one (another checkout, or a pytest-xdist worker) must not
        # write into, or truncate, the log this test reads.
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"syncworker-{consumer}-{uuid.uuid4().hex[:12]}.log"
        )

    async def start(self, *, output: int | None = None) -> WorkerProcess:
        """Start the process; its stdout and stderr go to the log file, or to fd `output`
        (say, a pipe the test reads, fills or closes) when one is given."""
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        target = self.log.fileno() if output is None else output
        self.process = await asyncio.create_subprocess_exec(
            *self.args, env=self.env, stdout=target, stderr=target
        )
        WorkerProcess.started.append(self)
        return self

    async def wait_started(self, timeout: float = 30.0) -> None:
        """Until the process has logged `worker.started` (its SIGTERM handler is installed by
        then) or has exited: a test that gives it some seconds to act should count them from
        here, not from a start-up a loaded machine can stretch."""
        assert self.process is not None
        process = self.process

        def up_or_gone() -> bool:
            return process.returncode is not None or '"worker.started"' in self.output()

        await eventually(up_or_gone, timeout=timeout)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            self.log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if not self.log.closed:
            self.log.close()
