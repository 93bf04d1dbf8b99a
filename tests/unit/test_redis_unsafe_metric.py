"""The Redis safety flags recorded at start-up are exported as syncworker_redis_unsafe."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from tests.ops_helpers import samples, value
from worker.ops.metrics import GroupGauges, WorkerCollector
from worker.ops.redis_safety import EVICTION, NO_PERSISTENCE
from worker.runtime.stats import Stats


def scrape(stats: Stats) -> str:
    registry = CollectorRegistry()
    registry.register(
        WorkerCollector(stats, "billing", {"orders": ["sync"]}, lambda: {}, GroupGauges())
    )
    return generate_latest(registry).decode()


class TestRedisUnsafeGauge:
    def test_flags_become_one_gauge_per_reason(self) -> None:
        """An unsafe reason exports 1 and a checked, safe one exports 0."""
        stats = Stats()
        stats.redis_unsafe.update({EVICTION: 1, NO_PERSISTENCE: 0})
        found = samples(scrape(stats))
        assert value(found, "syncworker_redis_unsafe", group="billing", reason=EVICTION) == 1
        assert value(found, "syncworker_redis_unsafe", group="billing", reason=NO_PERSISTENCE) == 0

    def test_unchecked_server_exports_no_series(self) -> None:
        """Before the check (or when CONFIG was refused) there is no series to alert on."""
        assert "syncworker_redis_unsafe{" not in scrape(Stats())
