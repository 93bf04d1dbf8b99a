"""The image's entry point works: a fresh venv built as the Dockerfile builds it runs syncworker.

No container engine runs here, so this reproduces the build stage instead: copy the same
sources, `pip install ".[EXTRAS]"` (not editable) into a new virtual environment, and run the
ENTRYPOINT + CMD from there, outside the repository so nothing resolves to the source tree.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.deploy.support import DOCKERFILE, ROOT
from worker.redis_server import RedisServer, free_port

PLUGIN = '''
from worker import Message, handler


@handler(stream="deploy-check")
async def noop(msg: Message) -> None:
    """A team's plugin, importable as plugin:noop."""
'''


def build_stage() -> dockerfile.Stage:
    stage = dockerfile.parse(DOCKERFILE)[1][0]
    assert stage.name == "build"
    return stage


def extras() -> str:
    (arg,) = [a for a in build_stage().all("ARG") if a.arguments.startswith("EXTRAS=")]
    return arg.arguments.partition("=")[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with the project installed from a copy of the build stage's COPY sources."""
    work = tmp_path_factory.mktemp("image")
    src = work / "src"
    src.mkdir()
    for copy in build_stage().all("COPY"):
        *sources, dest = copy.words()
        for source in sources:
            into_dir = dest.endswith("/")
            target = src / dest / Path(source).name if into_dir else src / dest
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    pip = subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--quiet", f".[{extras()}]"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    (work / "plugins").mkdir()
    (work / "plugins" / "plugin.py").write_text(PLUGIN)
    yield env_dir


def image_env(venv: Path, **settings: str) -> dict[str, str]:
    """The container's environment: the venv first on PATH, no repository on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCWORKER_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(venv.parent / "plugins")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """stderr lines of `process` up to the one containing `marker` (or EOF, or timeout)."""
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            break
    return lines


def run(venv: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "syncworker"), *args],
        cwd=venv.parent,
        env=image_env(venv, **settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestEntrypoint:
    def test_installed_from_the_copy_not_the_source_tree(self, venv: Path) -> None:
        """The venv's worker package is an installed copy, as in the image."""
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import worker; print(worker.__file__)"],
            cwd=venv.parent,
            env=image_env(venv),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert str(venv) in result.stdout and str(ROOT) not in result.stdout

    def test_help(self, venv: Path) -> None:
        """`syncworker --help` lists the run and check commands."""
        result = run(venv, "--help")
        assert result.returncode == 0, result.stderr
        assert "run" in result.stdout and "check" in result.stdout

    def test_check_reaches_redis_with_a_team_plugin(
        self, venv: Path, redis_server: RedisServer
    ) -> None:
        """`syncworker check` loads a plugin from PYTHONPATH and pings Redis: exit 0."""
        result = run(
            venv,
            "check",
            SYNCWORKER_REDIS_URL=redis_server.url,
            SYNCWORKER_HANDLERS="plugin:noop",
        )
        assert result.returncode == 0, result.stderr
        assert "deploy-check" in result.stdout

    def test_check_fails_when_redis_is_unreachable(self, venv: Path) -> None:
        """`syncworker check` against a closed port exits non-zero with a one-line reason."""
        server = RedisServer()
        url = server.url  # never started: nothing listens there
        server.cleanup()
        result = run(
            venv,
            "check",
            SYNCWORKER_REDIS_URL=url,
            SYNCWORKER_HANDLERS="plugin:noop",
            SYNCWORKER_REDIS_TIMEOUT="1",
        )
        assert result.returncode != 0
        assert "cannot reach Redis" in result.stderr

    def test_run_serves_health_and_drains_on_sigterm(
        self, venv: Path, redis_server: RedisServer
    ) -> None:
        """`syncworker run` (ENTRYPOINT + CMD) passes the HEALTHCHECK, exports the Redis safety
        flags, then drains and exits 0 on SIGTERM (what docker stop sends)."""
        port = free_port()
        settings = {
            "SYNCWORKER_REDIS_URL": redis_server.url,
            "SYNCWORKER_HANDLERS": "plugin:noop",
            "SYNCWORKER_GROUP": f"deploy-check-{os.getpid()}",
            "SYNCWORKER_METRICS_HOST": "127.0.0.1",
            "SYNCWORKER_METRICS_PORT": str(port),
            "SYNCWORKER_LOG_FORMAT": "json",
            "SYNCWORKER_BLOCK": "0.1",
        }
        process = subprocess.Popen(
            [str(venv / "bin" / "syncworker"), "run"],
            cwd=venv.parent,
            env=image_env(venv, **settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = _read_until(process, '"worker.started"', timeout=30)
            assert any('"worker.started"' in line for line in lines), "".join(lines)
            # Given a started worker, when Docker runs the HEALTHCHECK command, then it passes.
            health = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "worker.ops.healthcheck"],
                cwd=venv.parent,
                env=image_env(venv, **settings),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert health.returncode == 0, health.stdout + health.stderr
            # The test server runs without persistence and with noeviction.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                metrics = page.read().decode()
            assert re.search(
                r'syncworker_redis_unsafe\{[^}]*reason="no_persistence"[^}]*\} 1', metrics
            )
            assert re.search(r'syncworker_redis_unsafe\{[^}]*reason="eviction"[^}]*\} 0', metrics)
            process.send_signal(signal.SIGTERM)
            _, rest = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, rest
        assert '"worker.drained"' in rest and '"worker.stopped"' in rest

    def test_healthcheck_module_is_installed(self, venv: Path) -> None:
        """The HEALTHCHECK command exists in the venv (metrics off: nothing to ask, exit 0)."""
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "worker.ops.healthcheck"],
            cwd=venv.parent,
            env=image_env(venv, SYNCWORKER_METRICS_PORT="0"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
