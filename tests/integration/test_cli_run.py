"""`syncworker run` from the command line: configuration errors and a TOML-routed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from worker.publish import Publisher
from worker.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


class TestBadConfiguration:
    @pytest.mark.parametrize(
        ("env", "names_setting"),
        [
            ({"SYNCWORKER_HANDLERS": "no.such.module:handler"}, "SYNCWORKER_HANDLERS"),
            ({"SYNCWORKER_HANDLERS": "not-installed"}, "SYNCWORKER_HANDLERS"),
            ({}, "SYNCWORKER_HANDLERS"),
            (
                {"SYNCWORKER_REDIS_URL": "http://example", "SYNCWORKER_HANDLERS": "a:b"},
                "SYNCWORKER_REDIS_URL",
            ),
            ({"SYNCWORKER_CONCURRENCY": "many"}, "SYNCWORKER_CONCURRENCY"),
            ({"SYNCWORKER_RETRY_BASE": "10", "SYNCWORKER_RETRY_MAX": "1"}, "retry_base"),
            ({"SYNCWORKER_CLAIM_IDLE": "-1"}, "SYNCWORKER_CLAIM_IDLE"),
        ],
    )
    def test_bad_setting_fails_with_one_line_naming_it(
        self, env: dict[str, str], names_setting: str
    ) -> None:
        """Start-up refuses bad settings with exit code 2 and one line that names the setting."""
        result = run_cli("run", **env)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("syncworker: error: ")
        assert names_setting in lines[0]
        assert "Traceback" not in result.stderr

    def test_missing_config_file_is_a_usage_error(self) -> None:
        """--config pointing nowhere exits 2 and says which file."""
        result = run_cli("run", "--config", "/nonexistent/worker.toml")
        assert result.returncode == 2
        assert "/nonexistent/worker.toml" in result.stderr


@pytest.mark.redis
class TestTomlRoutes:
    async def test_toml_routes_a_stream_to_a_factory_with_options(
        self, tmp_path: Path, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A [[routes]] entry builds the handler from its factory and runs it; SIGTERM exits 0."""
        stream, group = names["stream"], names["group"]
        config = tmp_path / "worker.toml"
        config.write_text(
            f'redis_url = "{redis_server.url}"\n'
            f'group = "{group}"\n'
            "metrics_port = 0\n"
            "block = 0.1\n"
            "[[routes]]\n"
            f'stream = "{stream}"\n'
            'handler = "tests.integration.plugins:Recorder"\n'
            'types = ["order.paid"]\n'
        )
        await Publisher(redis).publish(stream, "order.paid", {"n": 1})
        await Publisher(redis).publish(stream, "order.ignored", {"n": 2})
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            env={**clean, "PYTHONPATH": str(ROOT), "TEST_STREAM": stream},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            async def handled() -> bool:
                return await redis.llen(f"{stream}:processed") == 1 and (
                    (await redis.xpending(stream, group))["pending"] == 0
                )

            await eventually(handled)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        [processed] = await redis.lrange(f"{stream}:processed", 0, -1)
        first_id = (await redis.xrange(stream))[0][0]
        assert processed == first_id  # only the routed type ran; the other was acked untouched


@pytest.mark.redis
class TestCheck:
    def test_check_passes_and_warns_about_a_server_without_persistence(
        self, redis_server: RedisServer
    ) -> None:
        """`check` exits 0 for a valid setup and warns that this test server keeps no data."""
        result = run_cli(
            "check",
            SYNCWORKER_REDIS_URL=redis_server.url,
            SYNCWORKER_HANDLERS="tests.integration.plugins:noop",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok: 1 handler(s) on plugins:noop")
        assert "persistence is off" in result.stderr
        assert "evict" not in result.stderr  # the default policy is noeviction

    def test_check_refuses_a_middleware_that_does_not_import(
        self, redis_server: RedisServer
    ) -> None:
        """A misspelt `SYNCWORKER_MIDDLEWARE` fails `check` with one line and exit 2."""
        result = run_cli(
            "check",
            SYNCWORKER_REDIS_URL=redis_server.url,
            SYNCWORKER_HANDLERS="tests.integration.plugins:noop",
            SYNCWORKER_MIDDLEWARE="tests.integration.plugins:no_such_middleware",
        )
        assert result.returncode == 2, result.stderr
        assert "SYNCWORKER_MIDDLEWARE" in result.stderr
        assert "no_such_middleware" in result.stderr

    def test_check_is_quiet_about_a_durable_server(self) -> None:
        """Against an AOF server with noeviction, `check` prints no warning."""
        with RedisServer(appendonly=True) as server:
            result = run_cli(
                "check",
                SYNCWORKER_REDIS_URL=server.url,
                SYNCWORKER_HANDLERS="tests.integration.plugins:noop",
            )
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr
