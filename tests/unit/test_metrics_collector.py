"""The collector turns Stats into the documented series, read back from its registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from tests.ops_helpers import samples, value
from worker.admin.groups import GroupState
from worker.ops.metrics import GroupGauges, WorkerCollector, build_registry
from worker.runtime.stats import Stats


def scrape(stats: Stats, gauges: GroupGauges | None = None, inflight: int = 0) -> dict:  # type: ignore[type-arg]
    registry = CollectorRegistry()
    registry.register(
        WorkerCollector(
            stats,
            "billing",
            {"orders": ["sync"]},
            lambda: {"orders": inflight},
            gauges or GroupGauges(),
        )
    )
    return samples(generate_latest(registry).decode())


class TestCollector:
    def test_zero_series_exist_before_the_first_message(self) -> None:
        """Every routed (stream, handler, outcome) is exported as 0 so rate() works at once."""
        found = scrape(Stats())
        for outcome in ("ok", "retry", "dead_letter"):
            labels = {"stream": "orders", "group": "billing", "handler": "sync", "outcome": outcome}
            assert value(found, "syncworker_messages_total", **labels) == 0
        assert value(found, "syncworker_inflight", stream="orders", group="billing") == 0
        assert value(found, "syncworker_reclaimed_total", stream="orders", group="billing") == 0

    def test_counts_histograms_and_gauges(self) -> None:
        """Counters, histogram buckets, inflight and group gauges carry the recorded values."""
        stats = Stats()
        stats.messages[("orders", "sync", "ok")] = 7
        stats.messages[("orders", "sync", "retry")] = 2
        stats.messages[("orders", "", "skipped")] = 3
        stats.handler_seconds[("orders", "sync")].observe(0.003)
        stats.handler_seconds[("orders", "sync")].observe(2.0)
        stats.end_to_end_seconds["orders"].observe(0.2)
        stats.reclaimed["orders"] = 4
        stats.redis_errors["read"] = 5
        gauges = GroupGauges(
            {"orders": GroupState("orders", "billing", "orders:dlq", True, 100, 12, 3,
                                  "1-0", 9.5, "5-0", 2)}
        )  # fmt: skip
        found = scrape(stats, gauges, inflight=6)
        labels = {"stream": "orders", "group": "billing"}
        assert (
            value(found, "syncworker_messages_total", **labels, handler="sync", outcome="ok") == 7
        )
        assert value(found, "syncworker_skipped_total", **labels) == 3
        h = {**labels, "handler": "sync"}
        assert value(found, "syncworker_handler_seconds_bucket", **h, le="0.005") == 1
        assert value(found, "syncworker_handler_seconds_bucket", **h, le="+Inf") == 2
        assert value(found, "syncworker_handler_seconds_sum", **h) == 2.003
        assert value(found, "syncworker_end_to_end_seconds_count", **labels) == 1
        assert value(found, "syncworker_reclaimed_total", **labels) == 4
        assert value(found, "syncworker_inflight", **labels) == 6
        assert value(found, "syncworker_group_lag", **labels) == 12
        assert value(found, "syncworker_group_pending", **labels) == 3
        assert value(found, "syncworker_group_oldest_pending_age_seconds", **labels) == 9.5
        assert value(found, "syncworker_dead_letter_length", **labels) == 2
        assert value(found, "syncworker_stream_length", **labels) == 100
        assert value(found, "syncworker_redis_errors_total", group="billing", operation="read") == 5

    def test_unknown_lag_is_left_out(self) -> None:
        """A lag Redis cannot compute is absent rather than a misleading 0."""
        state = GroupState("orders", "billing", "orders:dlq", True, lag=None)
        found = scrape(Stats(), GroupGauges({"orders": state}))
        assert (
            "syncworker_group_lag",
            frozenset({("stream", "orders"), ("group", "billing")}),
        ) not in found
        assert value(found, "syncworker_group_pending", stream="orders", group="billing") == 0

    def test_dropped_log_records_are_exported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Log records the process dropped (stderr closed or full) are a counter per group."""
        monkeypatch.setattr("worker.log_output._dropped", 0)  # process-wide: other tests count
        assert value(scrape(Stats()), "syncworker_log_records_dropped_total", group="billing") == 0
        monkeypatch.setattr("worker.log_output._dropped", 17)
        found = scrape(Stats())
        assert value(found, "syncworker_log_records_dropped_total", group="billing") == 17

    def test_build_registry_adds_process_metrics(self) -> None:
        """The default registry carries process series beside the worker's."""
        collector = WorkerCollector(Stats(), "g", {}, dict, GroupGauges())
        text = generate_latest(build_registry(collector)).decode()
        assert "syncworker_messages_total" in text and "python_info" in text


class TestMemoryAndThreadGauges:
    def test_held_bytes_and_overrunning_threads(self) -> None:
        """syncworker_held_bytes reads the ledger's bytes; overrunning threads come from Stats."""
        stats = Stats()
        stats.threads_overrunning = 2
        registry = CollectorRegistry()
        registry.register(
            WorkerCollector(stats, "billing", {}, dict, GroupGauges(), held_bytes=lambda: 4096)
        )
        found = samples(generate_latest(registry).decode())
        assert value(found, "syncworker_held_bytes", group="billing") == 4096
        assert value(found, "syncworker_handler_threads_overrunning", group="billing") == 2


class TestTakeoverDrainTimeouts:
    def test_exported_from_zero(self) -> None:
        """Bounded waits that gave up are a counter, 0 until the first."""
        assert (
            value(scrape(Stats()), "syncworker_takeover_drain_timeouts_total", group="billing") == 0
        )
        stats = Stats()
        stats.takeover_drain_timeouts = 2
        found = scrape(stats)
        assert value(found, "syncworker_takeover_drain_timeouts_total", group="billing") == 2


class TestPartitionGauges:
    def test_owned_partitions_and_lost_leases_per_logical_stream(self) -> None:
        """Ordered routes report the leases held now and the leases lost, per logical stream."""
        stats = Stats()
        stats.partitions_owned["orders"] = 3
        stats.leases_lost["orders"] += 2
        registry = CollectorRegistry()
        registry.register(
            WorkerCollector(stats, "billing", {}, dict, GroupGauges(), held_bytes=lambda: 0)
        )
        found = samples(generate_latest(registry).decode())
        assert value(found, "syncworker_partitions_owned", stream="orders", group="billing") == 3
        assert value(found, "syncworker_leases_lost_total", stream="orders", group="billing") == 2
