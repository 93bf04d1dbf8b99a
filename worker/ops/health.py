"""Liveness and readiness: when an orchestrator should restart a worker, and when to count it.

Liveness asks "is the process making progress?", which a restart can fix when the answer is
no: the read loop must keep turning, and while handler calls are running, one of them must
end now and then (`progress_deadline`). It stays 200 while Redis is down (the loop keeps
turning through its reconnect backoff, handlers that need Redis fail and end, and a restart
would not bring Redis back), while starting, while draining, and while the reclaimer has
paused reading to run suspected poison messages one at a time.

Readiness asks "can this worker consume right now?": Redis answers and the group exists on
every routed stream. It is 503 while Redis is unreachable, until a flushed group is recreated,
and from the moment shutdown begins.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from worker.connection import text
from worker.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one probe: `ok` maps to HTTP 200, otherwise 503."""

    ok: bool
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        body = {"status": self.status}
        if self.detail:
            body["detail"] = self.detail
        return body


def stuck_after(settings: WorkerSettings) -> float:
    """Seconds without a turn of the read loop after which it counts as stuck.

    One turn can legitimately take a blocking read (`block`) plus a command timeout
    (`redis_timeout`), repeated by the client's own retries, or a 5 s reconnect backoff; four
    turns' worth with a one-minute floor leaves no room for a false alarm.
    """
    return max(60.0, 4 * (settings.redis_timeout + settings.block) + 5.0)


def progress_deadline(settings: WorkerSettings) -> float | None:
    """Seconds handler calls may run with none of them ending before the process counts as
    wedged; None when calls may legitimately run for ever (no `handler_timeout`).

    With a handler timeout every call ends within it, as a success or a failure; the read
    loop's margin (`stuck_after`) covers the settling and scheduling around it.
    `progress_timeout` overrides the derived value.
    """
    if settings.progress_timeout:
        return settings.progress_timeout
    if not settings.handler_timeout:
        return None
    return settings.handler_timeout + stuck_after(settings)


class ProgressWatch:
    """Notices handler calls that stop ending, from the count of ended calls at each probe.

    Sampling at probe time keeps the hot path to one counter increment; the price is that a
    stall is timed from the first probe that saw it, up to one probe period late.
    """

    def __init__(self) -> None:
        self._count = -1
        self._since = 0.0

    def stalled_for(self, now: float, ended: int, busy: bool) -> float:
        """Seconds calls have been running with none ending (0 when idle or moving)."""
        if not busy or ended != self._count:
            self._count, self._since = ended, now
            return 0.0
        return now - self._since


def liveness(
    *,
    now: float,
    started: bool,
    stopping: bool,
    reader_alive: bool,
    gate_open: bool,
    last_read_loop: float,
    deadline: float,
    stalled_s: float = 0.0,
    progress_deadline: float | None = None,
) -> Verdict:
    """Judge the read loop and the handler calls from the worker's state (times are
    `time.monotonic()`; `stalled_s` comes from a `ProgressWatch`)."""
    if stopping:
        return Verdict(True, "stopping")
    if not started or not last_read_loop:  # no turn yet: the task was only just created
        return Verdict(True, "starting")
    if not reader_alive:
        return Verdict(False, "dead", "the read loop has ended")
    if progress_deadline is not None and stalled_s > progress_deadline:
        return Verdict(
            False,
            "wedged",
            f"messages in flight and no handler call has ended for {stalled_s:.0f}s",
        )
    if not gate_open:
        return Verdict(True, "paused", "the reclaimer runs suspected poison messages alone")
    age = now - last_read_loop
    if age > deadline:
        return Verdict(False, "stuck", f"no turn of the read loop for {age:.0f}s")
    return Verdict(True, "ok")


async def readiness(redis: Redis, streams: tuple[str, ...], group: str) -> Verdict:
    """Ask Redis whether the group exists on every stream (which also proves it answers).

    Raises:
        redis.exceptions.ConnectionError, TimeoutError, OSError: Redis is unreachable; the
            caller turns these into a 503.
    """
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    results = await pipe.execute(raise_on_error=False)
    missing: list[str] = []
    for stream, result in zip(streams, results, strict=True):
        if isinstance(result, Exception):
            if "no such key" not in str(result).lower():
                raise result
            missing.append(stream)
            continue
        names = {text(info["name"]) for info in result}
        if group not in names:
            missing.append(stream)
    if missing:
        return Verdict(False, "no group", f"group {group!r} missing on {', '.join(missing)}")
    return Verdict(True, "ready")
