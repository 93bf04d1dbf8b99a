"""Replaced lanes (and restarted background tasks) are exported as Prometheus counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from tests.ops_helpers import samples, value
from worker.ops.metrics import GroupGauges, WorkerCollector
from worker.runtime.stats import Stats


def scrape(stats: Stats) -> dict:  # type: ignore[type-arg]
    registry = CollectorRegistry()
    registry.register(
        WorkerCollector(stats, "billing", {"orders": ["sync"]}, lambda: {}, GroupGauges())
    )
    return samples(generate_latest(registry).decode())


class TestRestartCounters:
    def test_lane_restarts_are_exported(self) -> None:
        """syncworker_lane_restarts_total starts at 0 and carries Stats.lane_restarts."""
        stats = Stats()
        assert value(scrape(stats), "syncworker_lane_restarts_total", group="billing") == 0
        stats.lane_restarts = 3
        assert value(scrape(stats), "syncworker_lane_restarts_total", group="billing") == 3

    def test_task_restarts_are_exported_per_task(self) -> None:
        """syncworker_task_restarts_total has a zero series per loop, then the counts."""
        name = "syncworker_task_restarts_total"
        stats = Stats()
        assert value(scrape(stats), name, group="billing", task="reader") == 0
        stats.task_restarts["heartbeat"] = 2
        assert value(scrape(stats), name, group="billing", task="heartbeat") == 2
