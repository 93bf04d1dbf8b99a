"""Prometheus series of a worker, built at scrape time from `Stats` and the group gauges.

The hot path only bumps plain counters in `worker.runtime.stats.Stats`; this collector turns
them into series when Prometheus asks. Scrapes run on the worker's event loop (see
`worker.ops.server`), so the dictionaries are never read while the loop changes them. Every
series carries `stream` and `group` labels (plus `handler` where one applies), except the Redis
error counter, which is per operation, and the process-wide ones (dropped log records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from worker.admin.groups import GroupState
from worker.log_output import dropped_records
from worker.runtime.stats import TASKS, Histogram, Stats

OUTCOMES = ("ok", "retry", "dead_letter")
"""Values of the `outcome` label of syncworker_messages_total."""


@dataclass
class GroupGauges:
    """The latest group states read from Redis, by stream; refreshed by `worker.ops.server`."""

    states: dict[str, GroupState] = field(default_factory=dict)


class WorkerCollector(Collector):
    """Exposes a worker's counters, histograms and gauges as Prometheus series.

    Args:
        stats: the worker's counters.
        group: the consumer group, for the `group` label.
        routes: stream -> names of the handlers routed to it (pre-creates zero series, so
            that `rate()` and alerts see a series before the first message).
        inflight: returns stream -> entries held by this process right now.
        gauges: the group states refreshed from Redis.
        held_bytes: returns the bytes of the entries this process keeps (held and waiting).
    """

    def __init__(
        self,
        stats: Stats,
        group: str,
        routes: Mapping[str, Sequence[str]],
        inflight: Callable[[], Mapping[str, int]],
        gauges: GroupGauges,
        held_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.stats = stats
        self.group = group
        self.routes = routes
        self.inflight = inflight
        self.gauges = gauges
        self.held_bytes = held_bytes

    def collect(self) -> Iterator[Metric]:
        yield self._messages()
        yield self._skipped()
        yield from self._histograms()
        yield from self._per_stream_counters()
        yield self._inflight()
        yield from self._memory_and_threads()
        yield from self._group_gauges()
        yield self._redis_errors()
        yield self._redis_unsafe()
        yield self._log_dropped()
        yield self._takeover_drain_timeouts()
        yield self._lane_restarts()
        yield self._task_restarts()
        yield from self._partitions()

    def _messages(self) -> Metric:
        family = CounterMetricFamily(
            "syncworker_messages_total",
            "Messages settled, by outcome: ok (acked), retry (failed, left pending for another "
            "attempt), dead_letter (moved to the dead-letter stream).",
            labels=["stream", "group", "handler", "outcome"],
        )
        counts: dict[tuple[str, str, str], int] = {
            (stream, handler, outcome): 0
            for stream, handlers in self.routes.items()
            for handler in handlers
            for outcome in OUTCOMES
        }
        for (stream, handler, outcome), n in list(self.stats.messages.items()):
            if outcome in OUTCOMES:
                counts[(stream, handler, outcome)] = n
        for (stream, handler, outcome), n in sorted(counts.items()):
            family.add_metric([stream, self.group, handler, outcome], n)
        return family

    def _skipped(self) -> Metric:
        family = CounterMetricFamily(
            "syncworker_skipped_total",
            "Entries acked untouched because no handler wants their type.",
            labels=["stream", "group"],
        )
        counts = dict.fromkeys(self.routes, 0)
        for (stream, _, outcome), n in list(self.stats.messages.items()):
            if outcome == "skipped":
                counts[stream] = counts.get(stream, 0) + n
        for stream, n in sorted(counts.items()):
            family.add_metric([stream, self.group], n)
        return family

    def _histograms(self) -> Iterator[Metric]:
        handler_family = HistogramMetricFamily(
            "syncworker_handler_seconds",
            "Run time of successful handler calls, seconds.",
            labels=["stream", "group", "handler"],
        )
        for (stream, handler), hist in sorted(self.stats.handler_seconds.items()):
            _add_histogram(handler_family, [stream, self.group, handler], hist)
        yield handler_family
        e2e_family = HistogramMetricFamily(
            "syncworker_end_to_end_seconds",
            "Seconds from the entry's id timestamp (when Redis added it) to its ack.",
            labels=["stream", "group"],
        )
        hists = dict(self.stats.end_to_end_seconds)
        for stream in self.routes:
            hists.setdefault(stream, Histogram())
        for stream, hist in sorted(hists.items()):
            _add_histogram(e2e_family, [stream, self.group], hist)
        yield e2e_family

    def _per_stream_counters(self) -> Iterator[Metric]:
        specs: Iterable[tuple[str, str, Mapping[str, int]]] = (
            (
                "syncworker_reclaimed_total",
                "Entries taken over from consumers that stopped (or from this consumer's "
                "earlier process).",
                self.stats.reclaimed,
            ),
            (
                "syncworker_deleted_pending_total",
                "Pending entries found deleted or trimmed from the stream, and cleared.",
                self.stats.deleted_pending,
            ),
            (
                "syncworker_dead_letter_not_owned_total",
                "Dead letters not written because the entry was no longer pending on this "
                "consumer (acked already, or taken over by another).",
                self.stats.dead_letter_not_owned,
            ),
            (
                "syncworker_undecodable_total",
                "Entries the route's envelope (cloudevents, faststream, dapr) could not read; "
                "dead-lettered.",
                self.stats.undecodable,
            ),
            (
                "syncworker_invalid_events_total",
                "Payloads that did not validate against their handler's model; dead-lettered.",
                self.stats.invalid_events,
            ),
            (
                "syncworker_group_recreated_total",
                "Times the consumer group was found missing (NOGROUP) and created again.",
                self.stats.group_recreated,
            ),
        )
        for name, documentation, values in specs:
            family = CounterMetricFamily(name, documentation, labels=["stream", "group"])
            counts = dict.fromkeys(self.routes, 0)
            counts.update(values)
            for stream, n in sorted(counts.items()):
                family.add_metric([stream, self.group], n)
            yield family

    def _inflight(self) -> Metric:
        family = GaugeMetricFamily(
            "syncworker_inflight",
            "Entries this process holds right now: read or claimed, not yet acked.",
            labels=["stream", "group"],
        )
        counts = dict.fromkeys(self.routes, 0)
        counts.update(self.inflight())
        for stream, n in sorted(counts.items()):
            family.add_metric([stream, self.group], n)
        return family

    def _memory_and_threads(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "syncworker_held_bytes",
            "Bytes of entry fields (names and values) this process keeps: read or claimed and "
            "not yet acked, including entries waiting for a retry; reading pauses above "
            "SYNCWORKER_HELD_BYTES_MAX.",
            labels=["group"],
        )
        held.add_metric([self.group], self.held_bytes())
        yield held
        overrunning = GaugeMetricFamily(
            "syncworker_handler_threads_overrunning",
            "Plain-function handler calls still running past SYNCWORKER_HANDLER_TIMEOUT; a "
            "thread cannot be stopped, so each keeps its key and entry until it ends.",
            labels=["group"],
        )
        overrunning.add_metric([self.group], self.stats.threads_overrunning)
        yield overrunning

    def _partitions(self) -> Iterator[Metric]:
        """Ordered routes (`worker.runtime.ordered`): leases held and lost, per logical stream."""
        if not self.stats.partitions_owned and not self.stats.leases_lost:
            return
        owned = GaugeMetricFamily(
            "syncworker_partitions_owned",
            "Partitions of an ordered route this worker leases (and alone reads) now.",
            labels=["stream", "group"],
        )
        for stream, n in sorted(self.stats.partitions_owned.items()):
            owned.add_metric([stream, self.group], n)
        yield owned
        lost = CounterMetricFamily(
            "syncworker_leases_lost_total",
            "Partition leases this worker lost: not renewed within three quarters of "
            "SYNCWORKER_LEASE_TTL (Redis unreachable), or found taken.",
            labels=["stream", "group"],
        )
        for stream in sorted(set(self.stats.partitions_owned) | set(self.stats.leases_lost)):
            lost.add_metric([stream, self.group], self.stats.leases_lost.get(stream, 0))
        yield lost

    def _group_gauges(self) -> Iterator[Metric]:
        labels = ["stream", "group"]
        lag = GaugeMetricFamily(
            "syncworker_group_lag",
            "Entries not yet delivered to the group (XINFO GROUPS lag, or counted when Redis "
            "reports none: see syncworker_group_lag_estimated).",
            labels=labels,
        )
        estimated = GaugeMetricFamily(
            "syncworker_group_lag_estimated",
            "1 when syncworker_group_lag was counted because Redis reports no lag (after a "
            "restart from AOF, or an XDEL in the undelivered range), 0 when Redis reported it.",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "syncworker_group_pending",
            "Entries delivered to the group and not yet acked (XPENDING).",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "syncworker_group_oldest_pending_age_seconds",
            "Age of the oldest pending entry, from its id timestamp; 0 when none is pending.",
            labels=labels,
        )
        length = GaugeMetricFamily(
            "syncworker_stream_length", "Entries in the stream (XLEN).", labels=labels
        )
        dead = GaugeMetricFamily(
            "syncworker_dead_letter_length",
            "Entries in the stream's dead-letter stream (XLEN).",
            labels=labels,
        )
        for stream, state in sorted(self.gauges.states.items()):
            values = [stream, self.group]
            if state.lag is not None:
                lag.add_metric(values, state.lag)
                estimated.add_metric(values, int(state.lag_estimated))
            pending.add_metric(values, state.pending)
            oldest.add_metric(values, state.oldest_pending_age_s or 0.0)
            length.add_metric(values, state.length)
            dead.add_metric(values, state.dead_letter_length)
        yield from (lag, estimated, pending, oldest, length, dead)

    def _redis_errors(self) -> Metric:
        family = CounterMetricFamily(
            "syncworker_redis_errors_total",
            "Failed Redis calls, by operation (read, ack, claim, heartbeat, stats, ...).",
            labels=["group", "operation"],
        )
        for operation, n in sorted(self.stats.redis_errors.items()):
            family.add_metric([self.group, operation], n)
        return family

    def _redis_unsafe(self) -> Metric:
        family = GaugeMetricFamily(
            "syncworker_redis_unsafe",
            "1 when the Redis server can lose streams for this reason (eviction: "
            "maxmemory-policy is not noeviction; no_persistence: neither AOF nor RDB), 0 when "
            "checked at start-up and fine; absent when the server refused the check.",
            labels=["group", "reason"],
        )
        for reason, flag in sorted(self.stats.redis_unsafe.items()):
            family.add_metric([self.group, reason], flag)
        return family

    def _log_dropped(self) -> Metric:
        # Read from worker.log_output, not Stats: logging is configured (and can fail) before
        # any Worker exists, and the process has one stderr whatever the number of workers.
        family = CounterMetricFamily(
            "syncworker_log_records_dropped_total",
            "Log records this process dropped instead of writing: stderr was closed, its "
            "reader gone, or the pipe full with nobody reading.",
            labels=["group"],
        )
        family.add_metric([self.group], dropped_records())
        return family

    def _takeover_drain_timeouts(self) -> Metric:
        family = CounterMetricFamily(
            "syncworker_takeover_drain_timeouts_total",
            "Times takeover gave up waiting for handlers in flight (a call that never returns) "
            "before running suspected poison messages, and resumed reading.",
            labels=["group"],
        )
        family.add_metric([self.group], self.stats.takeover_drain_timeouts)
        return family

    def _lane_restarts(self) -> Metric:
        family = CounterMetricFamily(
            "syncworker_lane_restarts_total",
            "Lanes that died outside any handler (a bug in the runtime) and were replaced; "
            "the message each one held was settled as failed.",
            labels=["group"],
        )
        family.add_metric([self.group], self.stats.lane_restarts)
        return family

    def _task_restarts(self) -> Metric:
        family = CounterMetricFamily(
            "syncworker_task_restarts_total",
            "Background loops (reader, settler, retries, takeover, heartbeat) that died of a "
            "surprise and were restarted after a back-off.",
            labels=["group", "task"],
        )
        counts = dict.fromkeys(TASKS, 0)
        counts.update(self.stats.task_restarts)
        for task, n in sorted(counts.items()):
            family.add_metric([self.group, task], n)
        return family


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    buckets = [(_le(bound), float(n)) for bound, n in hist.cumulative()]
    family.add_metric(labels, buckets, hist.sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def build_registry(collector: WorkerCollector, *, process: bool = True) -> CollectorRegistry:
    """A fresh registry holding `collector` (and the process/platform/GC collectors).

    A registry per worker, rather than prometheus-client's global one, lets several workers
    (in tests, or embedded) live in one process without duplicate-series errors.
    """
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry
