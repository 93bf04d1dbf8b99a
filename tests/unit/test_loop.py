"""The event loop `syncworker run` picks: uvloop when installed, switchable by a setting."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest
import uvloop

from worker.errors import ConfigError
from worker.loop import loop_factory, run_in_loop


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def _hide_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


class TestEventLoop:
    def test_auto_uses_uvloop_when_installed(self) -> None:
        """With uvloop importable, `auto` runs the coroutine on a uvloop loop."""
        assert run_in_loop(_loop_type(), "auto") is uvloop.Loop

    def test_asyncio_forces_the_standard_loop(self) -> None:
        """`asyncio` runs on asyncio's own loop even though uvloop is installed."""
        assert not issubclass(run_in_loop(_loop_type(), "asyncio"), uvloop.Loop)

    def test_auto_falls_back_without_uvloop(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without uvloop, `auto` quietly uses asyncio's loop."""
        _hide_uvloop(monkeypatch)
        assert loop_factory("auto") is None

    def test_uvloop_without_uvloop_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Forcing uvloop when it is missing fails with the setting's name and the fix."""
        _hide_uvloop(monkeypatch)
        with pytest.raises(ConfigError, match=r"SYNCWORKER_EVENT_LOOP.*pip install uvloop"):
            run_in_loop(_loop_type(), "uvloop")
