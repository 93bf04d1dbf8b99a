"""SIGKILL a worker subprocess at random points, restart it, and find every effect once.

Each test publishes a few thousand events (reordered versions and duplicates included), runs
`syncworker run` on them, kills it with SIGKILL three times as it makes progress, restarts it
each time under the same consumer name (so it recovers its own pending entries at once), and
then checks the exact final state and how many times each effect was applied.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.handlers.events import (
    PROJECTION_EVENTS,
    disorder,
    expected_hashes,
    hashes,
    history,
    latest,
    publish,
)
from tests.helpers import pending_count
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
KILLS = 3

Progress = Callable[[], Awaitable[int]]


def toml_routes(routes: list[dict[str, Any]]) -> str:
    """[[routes]] tables as TOML (JSON values are valid TOML inline values for these)."""
    out = []
    for route in routes:
        out.append("[[routes]]")
        out.append(f"stream = {json.dumps(route['stream'])}")
        out.append(f"handler = {json.dumps(route['handler'])}")
        options = ", ".join(f"{k} = {_inline(v)}" for k, v in route.get("options", {}).items())
        out.append(f"options = {{ {options} }}")
    return "\n".join(out) + "\n"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


class CrashingWorker:
    """Starts `syncworker run` as a subprocess, kills it, and restarts it."""

    def __init__(self, tmp_path: Path, url: str, group: str, routes: list[dict[str, Any]]):
        self.config = tmp_path / "worker.toml"
        self.config.write_text(toml_routes(routes))
        self.env = {
            **os.environ,
            "SYNCWORKER_REDIS_URL": url,
            "SYNCWORKER_GROUP": group,
            "SYNCWORKER_CONSUMER": "crash-test",
            "SYNCWORKER_MAX_ATTEMPTS": "1000",
            "SYNCWORKER_CLAIM_IDLE": "2",
            "SYNCWORKER_CLAIM_INTERVAL": "0.05",
            "SYNCWORKER_RETRY_BASE": "0.05",
            "SYNCWORKER_RETRY_MAX": "0.2",
            "SYNCWORKER_BLOCK": "0.1",
            "SYNCWORKER_METRICS_PORT": "0",
            "SYNCWORKER_LOG_LEVEL": "WARNING",
            "SYNCWORKER_LOG_FORMAT": "json",
        }
        self.log = tmp_path / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", "--config", str(self.config)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def run_with_kills(
        self, total: int, progress: Progress, done: Callable[[], Awaitable[bool]]
    ) -> list[int]:
        """Kill at random amounts of progress, then let a last run finish; returns the kill
        points (the progress seen just before each SIGKILL)."""
        rng = random.Random()
        thresholds = sorted(rng.randint(total // 10, total * 9 // 10) for _ in range(KILLS))
        killed_at = []
        try:
            for threshold in thresholds:
                self.start()
                await self._until(lambda t=threshold: _at_least(progress, t), 30)
                killed_at.append(await progress())
                self.kill()
            self.start()
            await self._until(done, 60)
            self.kill(signal.SIGTERM)
            assert self.process is not None and self.process.returncode == 0, self.log.read_text()
        finally:
            if self.alive():
                self.kill()
        return killed_at

    async def _until(self, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            if not self.alive():
                raise AssertionError("worker exited:\n" + self.log.read_text()[-3000:])
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("no progress in time:\n" + self.log.read_text()[-3000:])
            await asyncio.sleep(0.005)


async def _at_least(progress: Progress, threshold: int) -> bool:
    return await progress() >= threshold


async def int_hash(redis: Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}


@pytest.fixture
def events() -> list[Any]:
    rng = random.Random()
    return disorder(rng, history(rng, entities=900))


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


class TestKilledWorkers:
    async def test_projection_applies_each_event_once(
        self,
        redis: Redis,
        redis_server: RedisServer,
        tmp_path: Path,
        events: list[Any],
        run_id: str,
    ) -> None:
        """After three SIGKILLs the read model is exact and each entry ran its script once."""
        stream, group = f"{run_id}:orders", f"g-{run_id}"
        prefix, state = f"{run_id}:item:", f"{run_id}:state"
        await publish(redis, stream, events)
        worker = CrashingWorker(
            tmp_path,
            redis_server.url,
            group,
            [
                {
                    "stream": stream,
                    "handler": "projection",
                    "options": {
                        "prefix": prefix,
                        "events": PROJECTION_EVENTS,
                        "state_prefix": state,
                    },
                }
            ],
        )

        async def progress() -> int:
            return sum((await int_hash(redis, state + ":counts")).values())

        async def done() -> bool:
            return await progress() >= len(events) and not await pending_count(redis, stream, group)

        kills = await worker.run_with_kills(len(events), progress, done)
        assert all(0 < k < len(events) for k in kills), kills
        assert await hashes(redis, prefix) == expected_hashes(events)
        versions = await int_hash(redis, state + ":versions")
        assert versions == {k: e.version for k, e in latest(events).items()}
        counts = await int_hash(redis, state + ":counts")
        assert counts["applied"] + counts["stale"] == len(events) == sum(counts.values())

    async def test_relay_writes_one_downstream_entry_per_source_entry(
        self,
        redis: Redis,
        redis_server: RedisServer,
        tmp_path: Path,
        events: list[Any],
        run_id: str,
    ) -> None:
        """After three SIGKILLs the downstream stream holds each source entry exactly once."""
        stream, group, out = f"{run_id}:orders", f"g-{run_id}", f"{run_id}:out"
        ids = await publish(redis, stream, events)
        worker = CrashingWorker(
            tmp_path,
            redis_server.url,
            group,
            [
                {
                    "stream": stream,
                    "handler": "relay",
                    "options": {"to": out, "rename": {"item.set": "thing.set"}},
                }
            ],
        )

        async def progress() -> int:
            return int(await redis.xlen(out))

        async def done() -> bool:
            return await progress() >= len(events) and not await pending_count(redis, stream, group)

        await worker.run_with_kills(len(events), progress, done)
        downstream = await redis.xrange(out)
        assert sorted(f[b"source_id"].decode() for _, f in downstream) == sorted(ids)
        assert len(downstream) == len(ids)
        counts = await int_hash(redis, f"syncworker:relay:counts:{stream}")
        assert counts == {"forwarded": len(ids)}

    async def test_idempotent_helper_counts_each_message_once(
        self,
        redis: Redis,
        redis_server: RedisServer,
        tmp_path: Path,
        events: list[Any],
        run_id: str,
    ) -> None:
        """After three SIGKILLs a counter incremented in the atomic step equals the entry count."""
        stream, group, prefix = f"{run_id}:orders", f"g-{run_id}", f"{run_id}:tally:"
        await publish(redis, stream, events)
        worker = CrashingWorker(
            tmp_path,
            redis_server.url,
            group,
            [
                {
                    "stream": stream,
                    "handler": "tests.handlers.plugins:Tally",
                    "options": {"prefix": prefix},
                }
            ],
        )

        async def progress() -> int:
            return int(await redis.get(prefix + "total") or 0)

        async def done() -> bool:
            return await progress() >= len(events) and not await pending_count(redis, stream, group)

        await worker.run_with_kills(len(events), progress, done)
        assert await progress() == len(events)
        per_key: dict[str, int] = {}
        for e in events:
            per_key[e.key] = per_key.get(e.key, 0) + 1
        assert await int_hash(redis, prefix + "by-key") == per_key

    @pytest.mark.postgres
    async def test_sql_sink_lands_each_event_once(
        self,
        redis: Redis,
        redis_server: RedisServer,
        tmp_path: Path,
        pg_dsn: str,
        run_id: str,
    ) -> None:
        """After three SIGKILLs the table holds the newest versions and one inbox row per entry
        (the inbox primary key makes a second row impossible, so the count proves each ran)."""
        import psycopg

        rng = random.Random()
        events = disorder(rng, history(rng, entities=600, deletes=False))
        stream, group, table = f"{run_id}:orders", f"g-{run_id}", f"crash_{run_id}"
        await publish(redis, stream, events)
        worker = CrashingWorker(
            tmp_path,
            redis_server.url,
            group,
            [
                {
                    "stream": stream,
                    "handler": "sql",
                    "options": {
                        "table": table,
                        "columns": ["x", "y"],
                        "schema": f"CREATE TABLE IF NOT EXISTS {table} "
                        "(id text PRIMARY KEY, x integer, y text, version bigint)",
                    },
                }
            ],
        )
        worker.env["SYNCWORKER_POSTGRES_DSN"] = pg_dsn
        conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        try:

            async def progress() -> int:
                cur = await conn.execute(
                    "SELECT count(*) FROM syncworker_inbox WHERE stream = %s", [stream]
                )
                row = await cur.fetchone()
                return int(row[0]) if row else 0

            async def done() -> bool:
                return await progress() >= len(events) and not await pending_count(
                    redis, stream, group
                )

            await conn.execute(
                "CREATE TABLE IF NOT EXISTS syncworker_inbox (consumer_group text NOT NULL,"
                " stream text NOT NULL, message_id text NOT NULL, sink text NOT NULL,"
                " handled_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (consumer_group, stream, message_id, sink))"
            )
            await worker.run_with_kills(len(events), progress, done)
            cur = await conn.execute(f"SELECT id, x, y, version FROM {table}")
            found = {r[0]: r[1:] for r in await cur.fetchall()}
            inbox_rows = await progress()
        finally:
            await conn.close()
        assert found == {
            k: (e.data["x"], e.data["y"], e.version) for k, e in latest(events).items()
        }
        assert inbox_rows == len(events)


class TestKilledMidBatch:
    @pytest.mark.postgres
    async def test_sql_batch_killed_inside_its_transaction_lands_once(
        self,
        redis: Redis,
        redis_server: RedisServer,
        tmp_path: Path,
        pg_dsn: str,
        run_id: str,
    ) -> None:
        """A worker killed while a batch transaction waits on a row lock (part of its writes
        done, none committed) leaves, after a restart, every event applied once: the newest
        versions in the table and one inbox row per entry."""
        import psycopg

        rng = random.Random()
        events = disorder(rng, history(rng, entities=300, deletes=False))
        stream, group, table = f"{run_id}:orders", f"g-{run_id}", f"mid_{run_id}"
        await publish(redis, stream, events)
        worker = CrashingWorker(
            tmp_path,
            redis_server.url,
            group,
            [
                {
                    "stream": stream,
                    "handler": "sql",
                    "options": {"table": table, "columns": ["x", "y"]},
                }
            ],
        )
        worker.env["SYNCWORKER_POSTGRES_DSN"] = pg_dsn
        conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        locker = await psycopg.AsyncConnection.connect(pg_dsn)
        try:
            await conn.execute(
                f"CREATE TABLE {table} (id text PRIMARY KEY, x integer, y text, version bigint)"
            )
            # Given: a row every batch of the first delivery must update, locked elsewhere
            first_key = events[0].key
            await conn.execute(f"INSERT INTO {table} (id, version) VALUES (%s, 0)", [first_key])
            await locker.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [first_key])

            async def waiting_on_lock() -> bool:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                row = await cur.fetchone()
                return bool(row and row[0])

            async def inbox_rows() -> int:
                cur = await conn.execute(
                    "SELECT count(*) FROM syncworker_inbox WHERE stream = %s", [stream]
                )
                row = await cur.fetchone()
                return int(row[0]) if row else 0

            async def done() -> bool:
                return await inbox_rows() >= len(events) and not await pending_count(
                    redis, stream, group
                )

            # When: the worker is killed while its first batch waits on that lock
            worker.start()
            try:
                await worker._until(waiting_on_lock, 30)
                worker.kill()
                await locker.rollback()
                # Then: a restarted worker finishes, and each event landed once
                worker.start()
                await worker._until(done, 60)
                worker.kill(signal.SIGTERM)
            finally:
                if worker.alive():
                    worker.kill()
            cur = await conn.execute(f"SELECT id, x, y, version FROM {table}")
            found = {r[0]: r[1:] for r in await cur.fetchall()}
            inbox_total = await inbox_rows()
        finally:
            await locker.close()
            await conn.close()
        assert found == {
            k: (e.data["x"], e.data["y"], e.version) for k, e in latest(events).items()
        }
        assert inbox_total == len(events)
