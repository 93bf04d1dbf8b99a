"""The README documents every setting the worker reads."""

from __future__ import annotations

from pathlib import Path

from worker.settings import ENV_PREFIX, WorkerSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    """Each WorkerSettings field appears as its SYNCWORKER_* variable in the README."""
    text = README.read_text()
    missing = [
        ENV_PREFIX + name.upper()
        for name in WorkerSettings.model_fields
        if f"`{ENV_PREFIX}{name.upper()}`" not in text
    ]
    assert missing == []
