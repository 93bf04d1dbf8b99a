"""The order & payment example: its config, `syncworker demo`, and a compose-like fleet."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.handlers.conftest import ADMIN_DSN
from tests.handlers.events import hashes
from tests.helpers import eventually, pending_count
from worker.examples import demo
from worker.examples.order_payment import Names, expected_read_model, expected_rows, history, routes
from worker.redis_server import RedisServer
from worker.registry import handlers_from_settings
from worker.settings import load_settings

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "order_payment" / "worker.toml"


class TestConfig:
    def test_worker_toml_matches_the_scenario_routes(self) -> None:
        """examples/order_payment/worker.toml says what the demo runs, route for route."""
        with CONFIG.open("rb") as f:
            assert tomllib.load(f)["routes"] == routes(Names())

    def test_worker_toml_builds_three_handlers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Loaded like `syncworker run --config`, it yields projection, sql and relay."""
        monkeypatch.setenv("SYNCWORKER_POSTGRES_DSN", "postgresql://postgres@127.0.0.1/x")
        built = handlers_from_settings(load_settings(CONFIG))
        assert [h.name for h in built] == ["projection", "sql", "relay"]
        assert not any(h.acks_atomically for h in built)


class TestDemo:
    @pytest.mark.postgres
    async def test_two_runs_print_the_same_matching_report(
        self,
        redis: Redis,
        redis_server: RedisServer,
        pg_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The demo syncs every copy, cleans up after itself, and prints the same twice."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
        monkeypatch.setenv("SYNCWORKER_POSTGRES_DSN", ADMIN_DSN)
        reports = []
        for _ in range(2):
            out, err = io.StringIO(), io.StringIO()
            assert await demo.run(150, 7, True, out, err) == 0, out.getvalue()
            reports.append(out.getvalue())
            assert [k async for k in redis.scan_iter(match="demo:*")] == []
        assert reports[0] == reports[1]
        report = reports[0]
        assert "running without the SQL sink" not in report  # pg_dsn: the server answers
        assert report.count("matches the newest version of every order: yes") == 2
        assert "Dead-lettered (1)" in report and "MalformedMessage" in report
        assert "exactly one each" in report

    async def test_without_postgres_it_says_so(
        self, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --no-postgres the report says the SQL sink was left out, and still matches."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
        out, err = io.StringIO(), io.StringIO()
        assert await demo.run(50, 3, False, out, err) == 0
        assert "running without the SQL sink" in out.getvalue()
        assert "PostgreSQL table" not in out.getvalue()
        assert "100%" in err.getvalue()


@pytest.mark.postgres
class TestFleet:
    async def test_publisher_and_two_replicas_on_worker_toml(
        self, tmp_path: Path, pg_dsn: str
    ) -> None:
        """`demo publish` plus two `syncworker run --config worker.toml` replicas sync it all."""
        with RedisServer() as server:  # the example's fixed names need a Redis of their own
            env = {
                **os.environ,
                "SYNCWORKER_REDIS_URL": server.url,
                "SYNCWORKER_POSTGRES_DSN": pg_dsn,
                "SYNCWORKER_METRICS_PORT": "0",
                "SYNCWORKER_LOG_FORMAT": "json",
                "SYNCWORKER_LOG_LEVEL": "WARNING",
            }
            command = [sys.executable, "-m", "worker"]
            replicas = []
            for n in (1, 2):
                with (tmp_path / f"replica-{n}.log").open("wb") as log:
                    replicas.append(
                        subprocess.Popen(
                            [*command, "run", "--config", str(CONFIG)],
                            env={**env, "SYNCWORKER_CONSUMER": f"replica-{n}"},
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            try:
                published = subprocess.run(
                    [*command, "demo", "publish", "--orders", "300"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert published.returncode == 0, published.stderr
                assert "published 883 events for 300 orders to 'orders'" in published.stdout
                redis = Redis.from_url(server.url)
                try:
                    await self._until_synced(redis, 883)
                    read_model = await hashes(redis, "payment:")
                    requests = await redis.xlen("payment-requests")
                finally:
                    await redis.aclose()
            finally:
                for replica in replicas:
                    replica.send_signal(signal.SIGTERM)
                for replica in replicas:
                    assert replica.wait(timeout=30) == 0
        truth = history(300, 7).truth
        assert read_model == expected_read_model(truth)
        assert requests == sum(1 for e in truth.values() if e.type == "order.completed")
        assert _payments(pg_dsn) == {
            k: (*row[:4], row[4] and datetime.fromisoformat(row[4]), row[5])
            for k, row in expected_rows(truth).items()
        }

    async def _until_synced(self, redis: Redis, total: int) -> None:
        async def synced() -> bool:
            if not await redis.exists("orders") or not await redis.xinfo_groups("orders"):
                return False
            groups: Any = await redis.xinfo_groups("orders")
            read = int(groups[0].get("entries-read") or 0)
            dead = await redis.xlen("orders:dlq")
            return (
                read >= total
                and dead == 1
                and await pending_count(redis, "orders", "payments") == 0
            )

        await eventually(synced, timeout=60, interval=0.1)


def _payments(dsn: str) -> dict[str, tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT order_id, customer, amount_cents, currency, status, paid_at, version "
            "FROM payments"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}
