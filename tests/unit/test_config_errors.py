"""Configuration errors say where the bad value was written, and typos do not pass silently."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from worker import settings as settings_module
from worker.cli import main
from worker.commands import run as run_command
from worker.errors import ConfigError
from worker.redis_server import free_port
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


class TestTomlErrors:
    def test_typo_names_the_file_and_the_key_as_written(self, tmp_path: Path) -> None:
        """`concurency = 4` in worker.toml is reported as that key of that file, with a hint."""
        config = tmp_path / "worker.toml"
        config.write_text('group = "g"\nconcurency = 4\n')
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert caught.value.setting == f"{config}: concurency"
        assert "did you mean concurrency?" in caught.value.message

    def test_bad_value_names_the_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A value from the file is blamed on the file, not on an environment variable."""
        monkeypatch.delenv("SYNCWORKER_CONCURRENCY", raising=False)
        config = tmp_path / "worker.toml"
        config.write_text("concurrency = 0\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert caught.value.setting == f"{config}: concurrency"

    def test_environment_value_still_names_the_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the variable overrides the file, the variable is blamed."""
        monkeypatch.setenv("SYNCWORKER_CONCURRENCY", "0")
        config = tmp_path / "worker.toml"
        config.write_text("concurrency = 4\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert caught.value.setting == "SYNCWORKER_CONCURRENCY"

    def test_nested_route_key(self, tmp_path: Path) -> None:
        """A typo inside [[routes]] names its place in the file."""
        config = tmp_path / "worker.toml"
        config.write_text('[[routes]]\nstream = "s"\nhandler = "h"\nopts = {}\n')
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert caught.value.setting == f"{config}: routes[0].opts"


class TestUnknownVariables:
    def test_typo_gets_a_suggestion(self) -> None:
        """A misspelt variable is named with the closest real one."""
        warnings = settings_module.unknown_variables({"SYNCWORKER_CONCURENCY": "4"})
        assert warnings == [
            "SYNCWORKER_CONCURENCY is not a setting; did you mean SYNCWORKER_CONCURRENCY?"
        ]

    def test_variables_read_elsewhere_are_allowed(self) -> None:
        """Variables that other parts read (config file, SQL DSN, tests, benchmarks) pass."""
        environ = {
            "SYNCWORKER_CONFIG": "w.toml",
            "SYNCWORKER_POSTGRES_DSN": "host=db",
            "SYNCWORKER_TEST_POSTGRES_DSN": "host=db",
            "SYNCWORKER_BENCH_RATE": "1",
            "SYNCWORKER_GROUP": "g",
            "OTHER": "x",
        }
        assert settings_module.unknown_variables(environ) == []

    def test_no_close_match(self) -> None:
        """Without a close match, the warning just says so."""
        assert settings_module.unknown_variables({"SYNCWORKER_XYZZY": "1"}) == [
            "SYNCWORKER_XYZZY is not a setting"
        ]

    def test_command_prints_the_warning(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every command warns about the typo on stderr before it runs."""
        monkeypatch.setenv("SYNCWORKER_CONCURENCY", "4")
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", "redis://host:99999/0")
        _, _, err = run_main(["status", "--stream", "s"])
        assert (
            "syncworker: warning: SYNCWORKER_CONCURENCY is not a setting; "
            "did you mean SYNCWORKER_CONCURRENCY?"
        ) in err


class TestCommandLine:
    def test_version(self) -> None:
        """`syncworker --version` prints the installed version."""
        code, out, _ = run_main(["--version"])
        assert code == 0 and out.startswith("syncworker ")

    def test_check_exits_2_for_an_unreachable_redis(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`check` uses the same code as the other commands for an unreachable Redis."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")
        code, _, err = run_main(["check"])
        assert code == 2 and len(err.splitlines()) == 1, err

    def test_metrics_port_taken_says_what_to_do(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A second worker on one machine is told to pick another port or 0."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            monkeypatch.setenv("SYNCWORKER_METRICS_HOST", "127.0.0.1")
            monkeypatch.setenv("SYNCWORKER_METRICS_PORT", str(taken.getsockname()[1]))
            monkeypatch.setenv("SYNCWORKER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
            monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")
            monkeypatch.setenv("SYNCWORKER_EVENT_LOOP", "asyncio")
            monkeypatch.setenv("SYNCWORKER_GC_THRESHOLD", "0")
            # Logging left as the tests have it: configuring it would cache loggers for good.
            monkeypatch.setattr(run_command, "configure_logging", lambda *a, **k: None)
            code, _, err = run_main(["run"])
        assert code == 2
        assert "SYNCWORKER_METRICS_PORT=0" in err and "another port" in err

    def test_handlers_are_found_in_the_current_directory(self, tmp_path: Path) -> None:
        """The console script finds `myapp.handlers` in the working directory, like python -m."""
        (tmp_path / "myapp").mkdir()
        (tmp_path / "myapp" / "__init__.py").write_text("")
        (tmp_path / "myapp" / "handlers.py").write_text(
            "from worker import handler\n\n"
            "@handler(stream='orders')\n"
            "async def sync_payment(msg):\n    pass\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SYNCWORKER_HANDLERS": "myapp.handlers:sync_payment",
            "SYNCWORKER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
        # -P: no script directory on sys.path, as when the `syncworker` console script runs.
        script = "import sys; from worker.cli import main; sys.exit(main(['check']))"
        done = subprocess.run(
            [sys.executable, "-P", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "No module named" not in done.stderr, done.stderr
        assert "cannot reach Redis" in done.stderr
