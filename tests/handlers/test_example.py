"""The order & payment example: its config, `syncworker demo`, and a compose-like fleet."""

from __future__ import annotations

import io
import os
import re
import shutil
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
from worker.redis_server import RedisServer, free_port
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


QUICK_S = 1.0
"""Publishing time of the demo in tests: shorter than the command's, long enough to signal."""


def section(report: str, title: str) -> list[str]:
    """The lines of the report section that starts with `title`, up to the blank line."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return lines[start + 1 : end]


def count(report: str, label: str) -> int:
    """The number at the end of the report line that starts with `label`."""
    line = next(x for x in report.splitlines() if x.strip().startswith(label))
    return int(line.split()[-1])


def printed_keys(report: str) -> list[str]:
    """The key names (or patterns) the report lists under "Keys of this run"."""
    return [line.split()[0] for line in section(report, "Keys of this run")]


def titles(report: str) -> list[str]:
    """The report's unindented lines, with run ids and numbers blanked out."""
    lines = [x for x in report.splitlines() if x.strip() and not x.startswith(" ")]
    return [
        re.sub(r"\d+", "#", re.sub(r"(?<![0-9a-f])[0-9a-f]{8}(?![0-9a-f])", "RUN", x))
        for x in lines
    ]


def readme_sample() -> str:
    """The demo output the README shows (its first ```text block after the demo section)."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index("### The order & payment example") :]
    start = after.index("```text\n") + len("```text\n")
    return after[start : after.index("```", start)]


class TestDemo:
    @pytest.mark.postgres
    async def test_kill_and_terminate_hand_over_and_every_event_is_accounted_for(
        self,
        redis: Redis,
        redis_server: RedisServer,
        pg_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A SIGKILLed and a SIGTERMed worker hand over their entries; none lost or twice."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
        monkeypatch.setenv("SYNCWORKER_POSTGRES_DSN", ADMIN_DSN)
        out = io.StringIO()
        assert await demo.run(150, 7, True, out, seconds=QUICK_S) == 0, out.getvalue()
        report = out.getvalue()
        assert "running without the SQL sink" not in report  # pg_dsn: the server answers
        # Then: both signals were sent to live workers holding entries, and the entries
        # they left were finished by the others, with the time it took.
        hand_over = "\n".join(section(report, "Hand-over"))
        killed = re.search(
            r"(worker-\d)  SIGKILL, exit code -9: (\d+) entr(?:y|ies) left", hand_over
        )
        assert killed and int(killed.group(2)) > 0, report
        stopped = re.search(r"(worker-\d)  SIGTERM, exit code 0: drained in", hand_over)
        assert stopped and stopped.group(1) != killed.group(1), report
        # Every entry the SIGTERMed worker released counts as handed back, even one a
        # survivor claimed before it had exited.
        back = re.search(
            r"(\d+) entr(?:y|ies) handed back \((\d+) released unstarted, "
            r"(\d+) interrupted",
            hand_over,
        )
        assert back and int(back.group(1)) >= int(back.group(2)) + int(back.group(3)), report
        assert re.search(r"all finished \d+\.\d\d s after the SIGKILL", hand_over), report
        assert "started worker-4 (pid " in report and f"in place of {stopped.group(1)}" in report
        taken = re.findall(r"taken over by: (.*)", hand_over)
        assert len(taken) == 2 and "none" not in taken[0], report
        assert killed.group(1) not in taken[0] and stopped.group(1) not in taken[1], report
        # And: every published entry is applied or dead-lettered, none twice (SQL inbox).
        assert count(report, "published") == len(history(150, 7).published)
        assert (
            count(report, "applied (acknowledged and in the SQL inbox)")
            == count(report, "published") - 1
        )
        assert count(report, "dead-lettered") == 1
        assert count(report, "lost") == 0 and count(report, "applied twice") == 0
        assert report.count("matches the newest version of every order: yes") == 2
        assert "Dead-lettered (1)" in report and "MalformedMessage" in report
        assert "exactly one each" in report
        # And: the order service's events, written through the outbox, all reached payments,
        # those a relay was killed holding (committed, unpublished) included.
        assert count(report, "orders committed") == 15  # max(10, 150 // 10)
        assert count(report, "committed, unpublished when relay-1 was SIGKILLed") > 0
        committed = count(report, "events committed")
        assert count(report, "events published by the relays (distinct)") == committed
        assert count(report, "orders in payments at their last committed version") == 15
        assert re.search(r"relay-2 took over \d+\.\d\d s later", report), report
        assert report.rstrip().endswith(
            "nothing lost, nothing applied twice, every copy matches the truth."
        )
        # And: the README shows the same report, section for section.
        assert titles(report) == titles(readme_sample())
        # And: without --keep nothing of the run is left behind.
        assert [k async for k in redis.scan_iter(match="demo:*")] == []

    async def test_without_postgres_it_says_so(
        self, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --no-postgres the report says the SQL sink was left out, and still matches."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
        out = io.StringIO()
        assert await demo.run(50, 3, False, out, seconds=QUICK_S) == 0, out.getvalue()
        assert "running without the SQL sink" in out.getvalue()
        assert "PostgreSQL table" not in out.getvalue()
        assert count(out.getvalue(), "applied (acknowledged)") == len(history(50, 3).published) - 1

    async def test_keep_leaves_the_printed_keys_in_redis(
        self, redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--keep leaves the keys, each named as it really is, and prints working commands."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
        out = io.StringIO()
        assert await demo.run(50, 3, False, out, keep=True, seconds=QUICK_S) == 0, out.getvalue()
        report = out.getvalue()
        listed = printed_keys(report)
        run = listed[0].removesuffix("orders")
        try:
            assert listed[0] == f"{run}orders" and run.startswith("demo:")
            for key in listed:
                if key.endswith("*"):
                    assert [k async for k in redis.scan_iter(match=key)], key
                else:
                    assert await redis.exists(key), key
            groups = await redis.xinfo_groups(f"{run}orders")
            assert [g["name"] for g in groups] == [b"payments"]
            cli = f"redis-cli -p {redis_server.port}"
            assert f"{cli} XINFO GROUPS {run}orders" in report
            assert f"{cli} --scan --pattern '{run}*' | xargs {cli} DEL" in report
            directory = re.search(r"ls (\S+)", report)
            assert directory and (Path(directory.group(1)) / "worker.toml").is_file()
            assert (Path(directory.group(1)) / "worker-1.log").is_file()
        finally:
            keys = [k async for k in redis.scan_iter(match=f"{run}*")]
            if keys:
                await redis.delete(*keys)
            if directory:
                shutil.rmtree(directory.group(1), ignore_errors=True)

    async def test_keep_with_a_throwaway_redis_leaves_it_running(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Started on a throwaway redis-server, --keep leaves it running and says how to stop it."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        out = io.StringIO()
        code = await demo.run(50, 3, False, out, keep=True, seconds=QUICK_S)
        server = demo.KEPT_SERVERS.pop()
        try:
            assert code == 0, out.getvalue()
            report = out.getvalue()
            assert server.process is not None and server.process.poll() is None
            assert f"kill {server.process.pid}   # the throwaway redis-server" in report
            assert f"pid {server.process.pid}, left running (--keep)" in report
            assert f"redis-cli -p {server.port} XINFO GROUPS demo:" in report
            redis = Redis.from_url(server.url)
            try:
                for key in printed_keys(report):
                    if not key.endswith("*"):
                        assert await redis.exists(key), key
            finally:
                await redis.aclose()
        finally:
            server.cleanup()  # the test's own: the demo started it for this test
            directory = re.search(r"rm -r (/\S*syncworker-demo-\S+)", out.getvalue())
            if directory:
                shutil.rmtree(directory.group(1), ignore_errors=True)


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
