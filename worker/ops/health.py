"""Liveness and readiness: when an orchestrator should restart a worker, and when to count it.

Liveness asks "is the read loop making progress?", which a restart can fix when the answer is
no. It stays 200 while Redis is down (the loop keeps turning through its reconnect backoff; a
restart would not bring Redis back), while starting, while draining, and while the reclaimer
has paused reading to run suspected poison messages one at a time.

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


def liveness(
    *,
    now: float,
    started: bool,
    stopping: bool,
    reader_alive: bool,
    gate_open: bool,
    last_read_loop: float,
    deadline: float,
) -> Verdict:
    """Judge the read loop from the worker's state (times are `time.monotonic()`)."""
    if stopping:
        return Verdict(True, "stopping")
    if not started or not last_read_loop:  # no turn yet: the task was only just created
        return Verdict(True, "starting")
    if not reader_alive:
        return Verdict(False, "dead", "the read loop has ended")
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
