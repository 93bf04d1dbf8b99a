"""`syncworker demo`: the order & payment scenario end to end, on whatever this machine has.

Redis: `SYNCWORKER_REDIS_URL` (default redis://localhost:6379/0) if it answers, else a
throwaway `redis-server` on a free port. PostgreSQL: `SYNCWORKER_POSTGRES_DSN` (default
postgresql://postgres@127.0.0.1:5432/postgres) if it answers, in a database created for the
run and dropped after it; otherwise the demo runs without the SQL sink and says why.

Everything the run writes to Redis lives under `demo:<run id>:` and is deleted at the end,
so a second run prints the same report (the timings go to stderr with the progress bar).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.connection import mask_url
from worker.examples import report
from worker.examples.order_payment import History, Names, history, routes
from worker.logs import configure_logging
from worker.redis_server import INSTALL_HINT, RedisServer
from worker.registry import handlers_from_settings
from worker.runtime.stats import Stats
from worker.runtime.worker import Worker
from worker.settings import WorkerSettings

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMEOUT_S = 180.0


async def publish(redis: Redis, stream: str, events: list[dict[str, str]]) -> None:
    """XADD the events in order, a pipeline of 500 at a time."""
    for start in range(0, len(events), 500):
        pipe = redis.pipeline(transaction=False)
        for fields in events[start : start + 500]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def find_redis(stack: AsyncExitStack) -> tuple[str, str]:
    """(url, how it was found): the configured Redis if it answers, else a throwaway one."""
    url = os.environ.get("SYNCWORKER_REDIS_URL", DEFAULT_REDIS_URL)
    client = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        await client.ping()
        return url, f"{mask_url(url)} (answered)"
    except (RedisError, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        raise SystemExit(
            f"syncworker demo: nothing answers at {mask_url(url)}, and {exc}"
        ) from None
    stack.callback(server.cleanup)
    return server.url, f"a throwaway redis-server ({mask_url(url)}: {reason})"


async def find_postgres(stack: AsyncExitStack, run: str) -> tuple[str | None, str]:
    """(DSN of a database made for this run, or None; what to tell the user)."""
    without = "running without the SQL sink"
    try:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        return None, f"psycopg is not installed (pip install 'syncworker[postgres]'): {without}"
    admin_dsn = os.environ.get("SYNCWORKER_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    params = conninfo_to_dict(admin_dsn)
    shown = make_conninfo("", **{k: v for k, v in params.items() if k != "password"})
    try:
        admin = await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"not reachable at {shown} ({reason}): {without}"
    database = f"syncworker_demo_{run}"
    try:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        await admin.close()
        return None, f"cannot create a database at {shown} ({exc}): {without}"

    async def drop() -> None:
        try:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        finally:
            await admin.close()

    stack.push_async_callback(drop)
    params["dbname"] = database
    return make_conninfo("", **params), f"{shown} (answered; a database made for this run)"


async def delete_run_keys(redis: Redis, run: str) -> None:
    """Delete everything this run created in Redis (all of it lives under demo:<run>:)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"demo:{run}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await redis.delete(*batch)
            batch = []
    if batch:
        await redis.delete(*batch)


def processed(stats: Stats, stream: str) -> int:
    """Entries of `stream` settled for good: acknowledged or dead-lettered."""
    return sum(
        n
        for (s, _, outcome), n in stats.messages.items()
        if s == stream and outcome in ("ok", "dead_letter", "skipped")
    )


class ProgressBar:
    """A one-line bar on stderr, redrawn in place on a terminal, every quarter otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._quarter = 0  # non-terminals get a line per quarter done, from 25%

    def update(self, done: int, retries: int) -> None:
        fraction = min(done / self.total, 1.0)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        filled = int(fraction * 30)
        line = (
            f"  syncing [{'#' * filled}{'.' * (30 - filled)}] {done:>6}/{self.total} "
            f"{fraction:4.0%}  {done / elapsed:7.0f} msg/s"
        )
        if retries:
            line += f"  {retries} retries"
        if self.tty:
            self.stream.write("\r" + line)
        elif int(fraction * 4) > self._quarter:
            self._quarter = int(fraction * 4)
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
        elapsed = time.monotonic() - self.started
        self.stream.write(f"  done in {elapsed:.1f} s\n")
        self.stream.flush()


async def run_worker(
    worker: Worker, until: Callable[[], Awaitable[bool]], bar: ProgressBar, stream: str
) -> None:
    """Run `worker` in this process until `until()` holds, drawing progress; then stop it."""
    task = asyncio.create_task(worker.run())
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not await until():
            if task.done():
                task.result()
                raise SystemExit("syncworker demo: the worker stopped early")
            if time.monotonic() > deadline:
                raise SystemExit(f"syncworker demo: not done after {TIMEOUT_S:.0f} s")
            retries = sum(n for (s, _, o), n in worker.stats.messages.items() if o == "retry")
            bar.update(processed(worker.stats, stream), retries)
            await asyncio.sleep(0.1)
        bar.update(processed(worker.stats, stream), 0)
        bar.finish()
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def run(orders: int, seed: int, postgres: bool, out: TextIO, err: TextIO) -> int:
    """The whole demo; returns the exit code (0 when every copy matches the truth)."""
    run_id = uuid.uuid4().hex[:8]
    names = Names.isolated(run_id)
    scenario: History = history(orders, seed)
    async with AsyncExitStack() as stack:
        url, redis_note = await find_redis(stack)
        if postgres:
            dsn, pg_note = await find_postgres(stack, run_id)
        else:
            dsn, pg_note = None, "skipped (--no-postgres): running without the SQL sink"
        report.header(out, redis_note, pg_note)
        redis = Redis.from_url(url)
        stack.push_async_callback(redis.aclose)
        stack.push_async_callback(delete_run_keys, redis, run_id)
        await publish(redis, names.orders, scenario.published)
        report.published(out, scenario, orders)
        values: dict[str, Any] = {
            "redis_url": url,
            "group": "demo",
            "consumer": f"demo-{run_id}",
            "routes": routes(names, sql=dsn is not None, dsn=dsn),
            "metrics_port": 0,
            "block": 0.1,
            "claim_interval": 0.2,
            "retry_base": 0.1,
            "retry_max": 1.0,
            "shutdown_timeout": 5.0,
        }
        settings = WorkerSettings(**values)
        handlers = handlers_from_settings(settings)
        worker = Worker(settings, handlers, stats=Stats())
        total = len(scenario.published)

        async def finished() -> bool:
            if processed(worker.stats, names.orders) < total:
                return False
            summary: Any = await redis.xpending(names.orders, "demo")
            return int(summary["pending"]) == 0

        await run_worker(worker, finished, ProgressBar(total, err), names.orders)
        return await report.results(out, redis, names, scenario, worker, dsn)
    return 1  # unreachable; keeps mypy aware of the exit stack's exception handling


def main(orders: int, seed: int, postgres: bool) -> int:
    """Entry point of `syncworker demo`."""
    configure_logging("ERROR", "console")  # the report says what matters; warnings would
    # only interleave with the progress bar (the dead letter is shown at the end)
    try:
        return asyncio.run(run(orders, seed, postgres, sys.stdout, sys.stderr))
    except RuntimeError as exc:
        if "redis-server" in str(exc):
            print(INSTALL_HINT, file=sys.stderr)
            return 1
        raise
