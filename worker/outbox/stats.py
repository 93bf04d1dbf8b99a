"""The relay's counters and gauges, and the Prometheus collector that exports them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class OutboxStats:
    """Plain numbers the relay updates; `OutboxCollector` reads them at scrape time."""

    published: int = 0
    """Rows appended to their stream (and then deleted from the outbox)."""
    publish_errors: int = 0
    """Batches that Redis failed or refused, in whole or in part; they are tried again."""
    database_errors: int = 0
    """Failed PostgreSQL sessions or statements (the relay reconnects)."""
    pending_rows: int | None = None
    """Committed rows not yet relayed, at the last refresh; None before the first one."""
    lag_seconds: float | None = None
    """Age of the oldest committed row not yet relayed (0 when there is none)."""
    leader: bool = False
    """Whether this process holds the leadership lock and relays."""
    last_turn: float = field(default_factory=time.monotonic)
    """monotonic() of the relay loop's last turn, for the liveness probe."""


class OutboxCollector(Collector):
    """Exports `OutboxStats` as `syncworker_outbox_*` series."""

    def __init__(self, stats: OutboxStats, table: str) -> None:
        self.stats = stats
        self.table = table

    def collect(self) -> Iterator[Metric]:
        s, labels = self.stats, ["table"]
        yield _counter(
            "syncworker_outbox_published_total",
            "Outbox rows appended to their stream and deleted from the table.",
            labels,
            [self.table],
            s.published,
        )
        yield _counter(
            "syncworker_outbox_publish_errors_total",
            "Relay batches that Redis failed or refused; their rows stay and are tried again.",
            labels,
            [self.table],
            s.publish_errors,
        )
        yield _counter(
            "syncworker_outbox_database_errors_total",
            "PostgreSQL sessions or statements of the relay that failed.",
            labels,
            [self.table],
            s.database_errors,
        )
        leader = GaugeMetricFamily(
            "syncworker_outbox_leader",
            "1 if this relay holds the leadership lock and publishes, 0 on a standby.",
            labels=labels,
        )
        leader.add_metric([self.table], 1.0 if s.leader else 0.0)
        yield leader
        if s.pending_rows is not None:
            yield _gauge(
                "syncworker_outbox_pending_rows",
                "Committed outbox rows not yet relayed.",
                labels,
                [self.table],
                s.pending_rows,
            )
        if s.lag_seconds is not None:
            yield _gauge(
                "syncworker_outbox_relay_lag_seconds",
                "Age of the oldest committed outbox row not yet relayed (0 when none).",
                labels,
                [self.table],
                s.lag_seconds,
            )


def _counter(name: str, doc: str, labels: list[str], values: list[str], n: float) -> Metric:
    family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
    family.add_metric(values, n)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: list[str], n: float) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    family.add_metric(values, n)
    return family
