"""Fixtures the command-line tests share."""

from __future__ import annotations

import pytest

from worker.redis_server import RedisServer


@pytest.fixture
def env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the commands at the test server, with no handlers configured."""
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
    monkeypatch.delenv("SYNCWORKER_HANDLERS", raising=False)
    monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
