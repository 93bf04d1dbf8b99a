"""docs/tutorial.md: every command runs, in order, and prints what the tutorial shows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.tutorial import Step, files, missing, parse, read
from worker.redis_server import free_port

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
PACKAGE = ROOT / "examples" / "plugin-package"
POLL_S = 20.0


class Session:
    """The reader's shell: one directory, the tutorial's ports swapped for free ones."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {"6379": str(free_port()), "9100": str(free_port())}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")},
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            # This checkout's `worker`, whatever the environment has installed.
            "PYTHONPATH": str(ROOT),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        self.background: subprocess.Popen[bytes] | None = None
        self.transcript: list[str] = []

    def text(self, body: str) -> str:
        for port, mine in self.ports.items():
            body = body.replace(port, mine)
        return body

    def run(self, step: Step) -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.text(step.body)],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=100,
        )
        output = done.stdout + done.stderr
        self.transcript.append(f"$ {step.body}{output}")
        assert done.returncode == 0, f"line {step.line}: exit {done.returncode}\n{output}"
        return output

    def start(self, step: Step) -> None:
        self.stop()
        log = (self.workdir / f"background-{step.line}.log").open("wb")
        self.background = subprocess.Popen(
            ["bash", "-c", "exec " + self.text(step.body).strip()],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.ports['9100']}/readyz"
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            assert self.background is not None and self.background.poll() is None, "worker exited"
            done = subprocess.run(["curl", "-sf", url], capture_output=True, timeout=10)
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the worker did not become ready")

    def stop(self) -> None:
        """Ctrl-C: SIGINT, then wait for the drain (killed by pid only if it hangs)."""
        process, self.background = self.background, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError("the worker did not stop on Ctrl-C") from None
        assert code == 0, f"the worker exited {code} on Ctrl-C"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            pidfile = self.workdir / "redis.pid"
            if pidfile.exists():  # the tutorial's redis-server, if its last step did not run
                pid = int(pidfile.read_text().strip() or 0)
                if pid and _alive(pid):
                    os.kill(pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    for tool in ("redis-server", "redis-cli", "curl"):
        assert shutil.which(tool), f"{tool} is needed (apt-get install redis-server curl)"
    workdir = tmp_path / "payments-plugin"
    shutil.copytree(
        PACKAGE, workdir, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    for path in files(read(TUTORIAL)):  # the reader writes these: start without them
        (workdir / path).unlink(missing_ok=True)
    session = Session(workdir)
    try:
        yield session
    finally:
        session.close()


def _check(session: Session, step: Step) -> None:
    if step.expected is None:
        session.run(step)
        return
    deadline = time.monotonic() + (POLL_S if step.kind == "run-until" else 0)
    while True:
        output = session.run(step)
        absent = missing(session.text(step.expected), output)
        if absent is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"line {step.line}: output lacks {absent!r}:\n{output}")
        time.sleep(0.2)


class TestTutorial:
    # Some twenty commands, each a fresh Python process, and two pytest runs: on a loaded
    # machine this takes longer than the suite's usual limit per test.
    @pytest.mark.timeout(300)
    def test_every_command_runs_and_prints_what_the_tutorial_shows(self, session: Session) -> None:
        """From a fresh Redis to a replayed dead letter, as a reader goes through it."""
        for step in read(TUTORIAL):
            print(f"{time.strftime('%H:%M:%S')} line {step.line}: {step.kind}", flush=True)
            if step.kind in ("run", "run-until"):
                _check(session, step)
            elif step.kind == "background":
                session.start(step)
            elif step.kind == "stop":
                session.stop()
            elif step.kind == "file":
                path = session.workdir / step.arg
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(session.text(step.body))
            else:
                assert step.kind == "skip" and step.arg, f"line {step.line}: {step.kind}"
        # redis-server removes its pid file as it shuts down: the last step stopped it.
        assert not (session.workdir / "redis.pid").exists()

    def test_the_package_in_the_repository_is_what_the_tutorial_builds(self) -> None:
        """The last version of each file the tutorial writes is the example's file."""
        for path, body in files(read(TUTORIAL)).items():
            if path == "worker.toml":
                continue  # the reader's own settings, not part of the package
            assert (PACKAGE / path).read_text() == body, path


class TestTutorialParser:
    def test_a_shell_block_without_a_marker_is_refused(self) -> None:
        """Every command is run or says why not."""
        with pytest.raises(ValueError, match="without a tutorial marker"):
            parse("text\n```sh\nrm -rf /\n```\n")

    def test_output_lines_match_in_order_with_placeholders(self) -> None:
        """`<...>` stands for anything, spaces for any whitespace, lines in order."""
        assert missing("a  <x>  c\nd", "zz\na 1 c\nd\n") is None
        assert missing("d\na <x> c", "a 1 c\nd\n") == "a <x> c"
