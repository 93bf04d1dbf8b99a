"""In-process counters and histograms that the hot path updates in nanoseconds.

prometheus-client's own metrics take a lock and walk label dictionaries on every update,
which at a hundred thousand messages a second costs more than the handlers. The runtime
records plain numbers here; `worker.ops.metrics` turns them into Prometheus series at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) shared by the handler and end-to-end histograms."""

TASKS = ("reader", "settler", "retries", "takeover", "heartbeat", "deadlines")
"""The worker's supervised background loops, as labelled in logs and metrics."""

OUTCOMES = ("ok", "retry", "dead_letter", "skipped")
"""ok: handled and acked; retry: failed, left pending; dead_letter: moved to the DLQ and acked;
skipped: no handler wants the entry's type, acked untouched."""


class Histogram:
    """Cumulative-on-export histogram with fixed bucket bounds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the largest bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_runs(self, runs: list[tuple[float, int]]) -> None:
        """Observe each value as often as its run says: one call per flush, one bisect per run."""
        counts = self.counts
        bounds = self.bounds
        total = 0.0
        for value, times in runs:
            counts[bisect_left(bounds, value)] += times
            total += value * times
        self.sum += total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with +Inf."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile `q`: coarse, for summaries."""
        target = q * self.count
        for bound, cumulative in self.cumulative():
            if cumulative >= target and cumulative:
                return bound
        return 0.0


@dataclass
class Stats:
    """Everything the worker counts, keyed by stream (and handler where it applies)."""

    messages: defaultdict[tuple[str, str, str], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    """(stream, handler, outcome) -> messages."""
    handler_seconds: defaultdict[tuple[str, str], Histogram] = field(
        default_factory=lambda: defaultdict(Histogram)
    )
    end_to_end_seconds: defaultdict[str, Histogram] = field(
        default_factory=lambda: defaultdict(Histogram)
    )
    reclaimed: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """stream -> entries taken over from other (or earlier) consumers."""
    deleted_pending: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """stream -> pending entries found deleted or trimmed and cleared."""
    dead_letter_not_owned: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """stream -> dead letters not written because the entry was no longer pending on this
    consumer (acked already, or taken over by a peer)."""
    undecodable: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """stream -> entries the route's envelope (cloudevents, faststream, dapr) could not read,
    dead-lettered."""
    invalid_events: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """stream -> payloads that did not validate against their handler's model, dead-lettered."""
    redis_errors: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """operation -> failed Redis calls."""
    group_recreated: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """stream -> NOGROUP recoveries."""
    redis_unsafe: dict[str, int] = field(default_factory=dict)
    """reason -> 1 when the Redis server risks losing streams that way (see
    `worker.ops.redis_safety`), 0 when checked and fine; absent when it could not be checked."""
    threads_overrunning: int = 0
    """Blocking handler calls still running past `handler_timeout` (a thread cannot be
    stopped; see `worker.runtime.threads`)."""
    takeover_drain_timeouts: int = 0
    """Times takeover stopped waiting for work in flight (a handler call that never returns)
    before running suspects, and reopened the read gate."""
    calls_ended: int = 0
    """Messages whose handler calls ended, whatever the outcome; liveness watches it move."""
    task_restarts: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """background loop (reader, settler, ...) -> times it died and was restarted."""
    lane_restarts: int = 0
    """Lanes that died outside any handler (a bug) and were replaced."""
    partitions_owned: dict[str, int] = field(default_factory=dict)
    """logical stream of an ordered route -> partitions this worker leases now."""
    leases_lost: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """logical stream -> leases this worker lost (not renewed in time, or taken)."""
    last_read_loop: float = 0.0
    """time.monotonic() of the read loop's last turn; health checks compare it with now."""
