"""The chaos suite's seed: random per session, printed, printed again on failure, replayable.

`SYNCWORKER_CHAOS_SEED=<n>` replays one run: the same entries, the same bad entries, the same
faults at the same times (what the processes and the scheduler then do can still vary).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

SEED = int(os.environ.get("SYNCWORKER_CHAOS_SEED") or random.SystemRandom().randrange(2**32))


def replay_hint() -> str:
    return f"chaos seed {SEED} (replay: SYNCWORKER_CHAOS_SEED={SEED})"


@pytest.fixture
def chaos_seed() -> int:
    return SEED


@pytest.fixture
def chaos_dir(request: pytest.FixtureRequest, chaos_seed: int) -> Iterator[Path]:
    """A directory for the run and worker logs, kept when the test fails (pytest's own
    temporary directories are rotated away by the next sessions), removed when it passes."""
    path = Path(tempfile.mkdtemp(prefix=f"syncworker-chaos-{chaos_seed}-"))
    yield path
    report = getattr(request.node, "chaos_call_report", None)
    if report is not None and report.passed:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print to the terminal even while pytest captures output (and to the captured output,
    so that a failure report shows it as well)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        print(text)
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(text)

    return write


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, None]:
    """Name the seed again under every failed chaos test."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.chaos_call_report = report  # type: ignore[attr-defined]
    if report.failed and item.get_closest_marker("chaos") is not None:
        report.sections.append(("chaos seed", replay_hint()))
