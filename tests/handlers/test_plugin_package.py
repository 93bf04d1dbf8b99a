"""A third-party plugin package, pip-installed, is found and run by its entry-point name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, pending_count
from worker import event_fields
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "plugin-package"


@pytest.fixture(scope="module")
def installed() -> None:
    """Install the example package into this venv unless `make install` already did."""
    if any(ep.name == "revenue" for ep in entry_points(group="syncworker.handlers")):
        return
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


class TestPluginPackage:
    async def test_worker_loads_the_installed_plugin_by_name(
        self, installed: None, redis: Redis, redis_server: RedisServer, tmp_path: Path
    ) -> None:
        """`handler = "revenue"` resolves to the installed package, which counts each order once."""
        run = uuid.uuid4().hex[:8]
        stream, group, prefix = f"{run}:orders", f"g-{run}", f"{run}:revenue:"
        config = tmp_path / "worker.toml"
        config.write_text(
            f'[[routes]]\nstream = "{stream}"\nhandler = "revenue"\n'
            f'options = {{ prefix = "{prefix}" }}\n'
        )
        for n, (currency, cents) in enumerate([("EUR", 1000), ("EUR", 250), ("USD", 700)]):
            data = {"amount_cents": cents, "currency": currency}
            await redis.xadd(stream, event_fields("order.completed", data, key=f"o{n}"))  # type: ignore[arg-type]
            await redis.xadd(stream, event_fields("order.created", data, key=f"o{n}"))  # type: ignore[arg-type]
        env = {
            **os.environ,
            "SYNCWORKER_REDIS_URL": redis_server.url,
            "SYNCWORKER_GROUP": group,
            "SYNCWORKER_METRICS_PORT": "0",
            "SYNCWORKER_LOG_FORMAT": "json",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            cwd=tmp_path,  # the plugin must come from site-packages, not from the source tree
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:

            async def drained() -> bool:
                return (
                    await redis.exists(stream) == 1
                    and bool(await redis.xinfo_groups(stream))
                    and await pending_count(redis, stream, group) == 0
                    and await redis.scard(prefix + "orders") == 3
                )

            await eventually(drained, timeout=20)
        finally:
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output.decode()
        assert await redis.hgetall(prefix + "totals") == {b"EUR": b"1250", b"USD": b"700"}
        started = [
            json.loads(line)
            for line in output.decode().splitlines()
            if line.startswith("{") and '"worker.starting"' in line
        ]
        assert started and started[0]["handlers"] == ["revenue"]
