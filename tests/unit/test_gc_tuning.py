"""`syncworker run` freezes the start-up heap and raises the collector's young threshold."""

from __future__ import annotations

import gc
import os
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from worker import cli
from worker.commands import run as run_command
from worker.gc_tuning import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Undo whatever a test did to this process's collector."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
class TestTuneGc:
    def test_freezes_and_raises_the_young_threshold(self) -> None:
        """The young generation waits for 10,000 allocations; the older ones keep theirs."""
        before = gc.get_threshold()
        tune_gc(10_000)
        assert gc.get_threshold() == (10_000, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # the modules, classes and functions loaded so far

    def test_zero_leaves_the_collector_alone(self) -> None:
        """A threshold of 0 changes nothing and freezes nothing."""
        before = gc.get_threshold()
        tune_gc(0)
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restore_gc")
class TestRunCommand:
    @pytest.mark.parametrize(("setting", "expected"), [(None, 10_000), ("2500", 2500), ("0", 700)])
    def test_run_tunes_the_collector_before_the_loop_starts(
        self, monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: int
    ) -> None:
        """The worker process starts its loop with SYNCWORKER_GC_THRESHOLD (default 10,000)."""
        for name in [n for n in os.environ if n.startswith("SYNCWORKER_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")
        if setting is not None:
            monkeypatch.setenv("SYNCWORKER_GC_THRESHOLD", setting)
        gc.set_threshold(700, *gc.get_threshold()[1:])
        seen: dict[str, int] = {}

        def fake_run_in_loop(main: Coroutine[Any, Any, int], choice: str) -> int:
            main.close()
            seen["threshold"] = gc.get_threshold()[0]
            seen["frozen"] = gc.get_freeze_count()
            return 0

        monkeypatch.setattr(run_command, "run_in_loop", fake_run_in_loop)
        monkeypatch.setattr(run_command, "configure_logging", lambda *args, **kwargs: None)
        assert cli.main(["run"]) == 0
        assert seen["threshold"] == expected
        assert (seen["frozen"] > 0) == (expected != 700)
