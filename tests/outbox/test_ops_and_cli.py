"""The relay's /metrics and /healthz, and the `syncworker outbox` command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.ops_helpers import http_get
from tests.outbox.helpers import relaying
from worker.outbox.ops import STUCK_AFTER_S, RelayOpsServer
from worker.outbox.stats import OutboxStats

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


def syncworker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
    )


class TestOpsServer:
    @pytest.mark.redis
    async def test_metrics_of_a_running_relay(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """/metrics exports the outbox series with the table label; /healthz names the role."""
        pg.execute(f"INSERT INTO {table} (stream, type) VALUES (%s, 't')", (names["stream"],))
        async with relaying(redis, outbox_dsn, table) as relay:
            ops = RelayOpsServer(relay.stats, table, "127.0.0.1", 0)
            await ops.start()
            try:
                await eventually(
                    lambda: relay.stats.published == 1 and relay.stats.pending_rows == 0
                )
                status, body = await http_get(ops.port, "/metrics")
                assert status == 200
                text = body.decode()
                for line in (
                    f'syncworker_outbox_published_total{{table="{table}"}} 1.0',
                    f'syncworker_outbox_publish_errors_total{{table="{table}"}} 0.0',
                    f'syncworker_outbox_pending_rows{{table="{table}"}} 0.0',
                    f'syncworker_outbox_relay_lag_seconds{{table="{table}"}} 0.0',
                    f'syncworker_outbox_leader{{table="{table}"}} 1.0',
                ):
                    assert line in text
                status, body = await http_get(ops.port, "/healthz")
                assert (status, json.loads(body)["role"]) == (200, "leader")
            finally:
                await ops.stop()

    async def test_healthz_fails_when_the_loop_stops_turning(self) -> None:
        """A relay loop that has not turned for STUCK_AFTER_S is reported dead."""
        stats = OutboxStats(last_turn=time.monotonic() - STUCK_AFTER_S - 1)
        ops = RelayOpsServer(stats, "t", "127.0.0.1", 0)
        await ops.start()
        try:
            status, _ = await http_get(ops.port, "/healthz")
        finally:
            await ops.stop()
        assert status == 503


class TestCommandLine:
    def test_migrate_reads_the_dsn_variable(self, outbox_dsn: str, pg: Any) -> None:
        """`outbox migrate` takes SYNCWORKER_POSTGRES_DSN, and may run twice."""
        for _ in range(2):
            done = syncworker(
                "outbox", "migrate", "--table", "cli_outbox", SYNCWORKER_POSTGRES_DSN=outbox_dsn
            )
            assert done.returncode == 0, done.stderr
        assert pg.execute("SELECT count(*) FROM cli_outbox").fetchone() == (0,)

    def test_missing_dsn_is_a_usage_error(self) -> None:
        """Without --dsn or the variable, both actions exit 2 with one line saying so."""
        for action in ("migrate", "run"):
            done = syncworker("outbox", action)
            assert done.returncode == 2
            assert "SYNCWORKER_POSTGRES_DSN is not set" in done.stderr

    def test_unreachable_database_fails_migrate(self) -> None:
        """A database that does not answer fails the migration with exit 1, password masked."""
        done = syncworker(
            "outbox", "migrate", "--dsn", "postgresql://u:s3cretpw@127.0.0.1:1/db?connect_timeout=1"
        )
        assert done.returncode == 1
        assert "migration failed" in done.stderr and "s3cretpw" not in done.stderr
