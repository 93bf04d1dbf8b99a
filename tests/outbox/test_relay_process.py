"""`syncworker outbox run` as real processes: SIGKILL mid-batch, and a standby taking over."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import WorkerProcess, eventually
from tests.outbox.helpers import entries
from worker.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def relay_process(
    redis_server: RedisServer, dsn: str, table: str, name: str, *extra: str
) -> WorkerProcess:
    """A relay subprocess; WorkerProcess brings the log file and the reaping of survivors."""
    process = WorkerProcess(
        redis_server.url, "unused", "unused", f"outbox-{name}-{uuid.uuid4().hex[:6]}"
    )
    process.args = [
        sys.executable, "-m", "worker", "outbox", "run",
        "--dsn", dsn, "--table", table, "--poll-interval", "0.5", *extra,
    ]  # fmt: skip
    return process


def insert(pg: Any, table: str, stream: str, n: int, start: int = 0) -> None:
    with pg.transaction():
        for i in range(start, start + n):
            pg.execute(
                f"INSERT INTO {table} (stream, type, key, data) VALUES (%s, 't', %s, %s::json)",
                (stream, f"k{i % 7}", str(i)),
            )


def committed_ids(pg: Any, table: str) -> list[str]:
    return [r[0] for r in pg.execute(f"SELECT event_id FROM {table} ORDER BY id").fetchall()]


class TestCrash:
    async def test_sigkill_between_xadd_and_delete_loses_nothing(
        self, redis: Redis, redis_server: RedisServer, outbox_dsn: str, pg: Any, table: str,
        names: dict[str, str],
    ) -> None:  # fmt: skip
        """A relay killed after its XADDs and before its DELETE loses no row: the next relay
        publishes the batch again, each duplicate with the same event_id and fields."""
        import psycopg

        stream = names["stream"]
        for start in range(0, 200, 10):  # transactions of 10: a batch of 50 takes 5 whole
            insert(pg, table, stream, 10, start)
        expected = committed_ids(pg, table)
        # Given a relay whose DELETE waits on row locks the test holds
        with psycopg.connect(outbox_dsn) as blocker:
            blocker.execute(f"SELECT id FROM {table} FOR UPDATE").fetchall()
            first = await relay_process(
                redis_server, outbox_dsn, table, "a", "--batch-size", "50"
            ).start()
            await eventually(lambda: _xlen_is(redis, stream, 50), timeout=10)
            await eventually(lambda: _deleting(pg, table), timeout=5)
            # When it is killed with its first batch published but not deleted
            first.process.kill()  # type: ignore[union-attr]
            await first.wait()
            # (its orphaned session sees the client gone, client_connection_check_interval,
            # and gives up the DELETE instead of finishing it once the locks are released)
            await eventually(lambda: not _deleting(pg, table), timeout=5)
            blocker.rollback()
        second = await relay_process(
            redis_server, outbox_dsn, table, "b", "--batch-size", "50"
        ).start()

        # Then every committed row is published at least once
        async def all_out() -> bool:
            got = {e["event_id"] for e in await entries(redis, stream)}
            return got >= set(expected) and _count(pg, table) == 0

        await eventually(all_out, timeout=10)
        second.signal(signal.SIGTERM)
        assert await second.wait(10) == 0
        by_id: dict[str, list[dict[str, str]]] = defaultdict(list)
        for e in await entries(redis, stream):
            by_id[e["event_id"]].append(e)
        assert set(by_id) == set(expected)
        duplicated = [copies for copies in by_id.values() if len(copies) > 1]
        assert len(duplicated) == 50  # the batch that was in flight, and only that
        assert all(copies[0] == copy for copies in duplicated for copy in copies)


class TestTakeover:
    async def test_standby_takes_over_after_sigkill(
        self, redis: Redis, redis_server: RedisServer, outbox_dsn: str, pg: Any, table: str,
        names: dict[str, str],
    ) -> None:  # fmt: skip
        """A standby relay leads within seconds of the leader's SIGKILL; the time is printed."""
        stream = names["stream"]
        leader = await relay_process(redis_server, outbox_dsn, table, "leader").start()
        insert(pg, table, stream, 5)
        await eventually(lambda: _xlen_is(redis, stream, 5), timeout=10)
        standby = await relay_process(redis_server, outbox_dsn, table, "standby").start()
        await eventually(lambda: "outbox.standby" in standby.output(), timeout=10)

        leader.process.kill()  # type: ignore[union-attr]
        killed = time.monotonic()
        await leader.wait()
        insert(pg, table, stream, 5, start=5)
        await eventually(lambda: _xlen_is(redis, stream, 10), timeout=10, interval=0.01)
        took = time.monotonic() - killed
        print(f"\noutbox takeover after SIGKILL: {took:.2f}s (lock interval 1.0s)")
        assert "outbox.leading" in standby.output()
        assert [int(e["data"]) for e in await entries(redis, stream)] == list(range(10))
        standby.signal(signal.SIGTERM)
        assert await standby.wait(10) == 0


async def _xlen_is(redis: Redis, stream: str, n: int) -> bool:
    return bool(await redis.xlen(stream) >= n)


def _deleting(pg: Any, table: str) -> bool:
    query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active'"
    return bool(pg.execute(query, (f"DELETE FROM {table}%",)).fetchone()[0])


def _count(pg: Any, table: str) -> int:
    return int(pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
