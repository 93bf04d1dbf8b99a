"""Liveness verdicts from the worker's state, and readiness during start-up and shutdown."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from worker.ops.health import liveness, stuck_after
from worker.ops.server import OpsServer
from worker.settings import WorkerSettings

DEADLINE = 60.0


def judge(**overrides: Any) -> tuple[bool, str]:
    state: dict[str, Any] = {
        "now": 1000.0,
        "started": True,
        "stopping": False,
        "reader_alive": True,
        "gate_open": True,
        "last_read_loop": 999.0,
        "deadline": DEADLINE,
    }
    state.update(overrides)
    verdict = liveness(**state)
    return verdict.ok, verdict.status


class TestLiveness:
    @pytest.mark.parametrize(
        ("overrides", "expected"),
        [
            ({}, (True, "ok")),
            ({"started": False, "reader_alive": False}, (True, "starting")),
            ({"last_read_loop": 0.0}, (True, "starting")),
            ({"stopping": True, "reader_alive": False}, (True, "stopping")),
            ({"reader_alive": False}, (False, "dead")),
            ({"last_read_loop": 1000.0 - DEADLINE - 1}, (False, "stuck")),
            ({"last_read_loop": 1000.0 - DEADLINE + 1}, (True, "ok")),
            ({"gate_open": False, "last_read_loop": 1.0}, (True, "paused")),
        ],
    )
    def test_verdicts(self, overrides: dict[str, Any], expected: tuple[bool, str]) -> None:
        """Each state maps to its verdict; only a dead or stale read loop fails."""
        assert judge(**overrides) == expected

    def test_stuck_after_allows_for_slow_reads(self) -> None:
        """The deadline covers several blocking reads with timeouts, and is at least a minute."""
        assert stuck_after(WorkerSettings()) == 60.0
        slow = WorkerSettings(redis_timeout=30.0, block=5.0)
        assert stuck_after(slow) > 4 * (30.0 + 5.0)


class TestReadiness:
    @pytest.mark.parametrize(
        ("started", "stopping", "status"),
        [(False, False, "starting"), (True, True, "stopping"), (False, True, "stopping")],
    )
    async def test_not_ready_while_starting_or_stopping(
        self, started: bool, stopping: bool, status: str
    ) -> None:
        """Readiness is 503 before the worker reads and from the moment it stops, without Redis."""
        event = asyncio.Event()
        if started:
            event.set()
        ops = OpsServer()
        ops._worker = SimpleNamespace(started=event, stopping=stopping)  # type: ignore[assignment]
        response = await ops._readyz()
        assert response.status == 503
        assert json.loads(response.body)["status"] == status
