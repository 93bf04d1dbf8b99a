"""The demo's timeline: publish while workers run, SIGKILL one, SIGTERM another, time the hand-over.

Hand-over is measured from outside, in Redis, as an operator would see it:
- after a SIGKILL, the entries pending on the killed consumer's name are its orphans; the
  hand-over is over when none of them is pending any more (a survivor claimed, ran and
  acknowledged each, or dead-lettered it);
- after a SIGTERM, the worker finishes what runs and exits; what is still pending on its
  name then was handed back, and the hand-over is over when survivors have finished those.
Each time runs from the signal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from redis.asyncio import Redis

from worker.examples.fleet import Fleet, WorkerProcess

POLL_S = 0.02
"""How often the watchers look at the pending list."""

BURST_S = 0.25
"""The order service publishes in bursts this far apart, as services under load do; each
burst gives every worker a batch to chew on, so a signal finds them holding entries."""

HOLDING = 20
"""Entries a worker should hold when it is signalled (waited for, up to PICK_S)."""

PICK_S = 0.2
"""Longest the demo waits after a burst for a worker to hold HOLDING entries."""

START_S = 20.0
"""Longest a worker may take to join the group."""

TIMEOUT_S = 60.0
"""Longest any phase of the demo may take before it gives up (and fails)."""


@dataclass
class HandOver:
    """What one signalled worker left behind and how long the others took to finish it."""

    worker: str
    pid: int
    signal: str
    at: float
    """Seconds since publishing began."""
    sent: float
    """time.monotonic() of the signal."""
    left: list[str] = field(default_factory=list)
    """Entry ids pending on its name once it was gone."""
    finished_after: float | None = None
    """Seconds from the signal until none of `left` was pending; None if never."""
    finish_times: list[float] = field(default_factory=list)
    """Seconds from the signal until each of `left` was no longer pending, in order."""
    exit_code: int | None = None
    taken_by: dict[str, int] = field(default_factory=dict)
    """Survivor -> entries it took over from this worker (from their logs)."""
    drain: dict[str, Any] = field(default_factory=dict)
    """The terminated worker's own `worker.drained` log line."""


class Clock:
    """Seconds since the demo began publishing, and timeline lines on stdout."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()

    def since(self, at: float | None = None) -> float:
        return (time.monotonic() if at is None else at) - self.start

    def say(self, text: str) -> None:
        self.out.write(f"  {self.since():6.2f} s  {text}\n")
        self.out.flush()


async def pending_ids(
    redis: Redis, stream: str, group: str, consumer: str | None = None
) -> set[str]:
    """Ids pending in `group` (on `consumer` if given)."""
    rows: list[Any] = await redis.xpending_range(
        stream, group, min="-", max="+", count=1_000_000, consumername=consumer
    )
    return {_text(r["message_id"]) for r in rows}


async def busiest(redis: Redis, stream: str, group: str, names: list[str]) -> tuple[str, int]:
    """The one of `names` holding the most pending entries, and how many.

    Called right after a burst: waits up to PICK_S for one to hold HOLDING entries, so that
    the signal catches a worker in the middle of its work rather than idle between bursts.
    """
    deadline = time.monotonic() + PICK_S
    while True:
        consumers: list[Any] = await redis.xinfo_consumers(stream, group)
        held = {_text(c["name"]): int(c["pending"]) for c in consumers}
        name = max(names, key=lambda n: held.get(n, 0))
        if held.get(name, 0) >= HOLDING or time.monotonic() > deadline:
            return name, held.get(name, 0)
        await asyncio.sleep(0.002)


LOG_WAIT_S = 5.0
"""How long the demo waits for survivors' log lines about entries a stopped worker handed back."""


async def wait_started(workers: list[WorkerProcess]) -> None:
    """Wait until every worker has logged `worker.started` (it reads from then on)."""
    deadline = time.monotonic() + START_S
    while True:
        missing = [w for w in workers if not w.events("worker.started")]
        if not missing:
            return
        dead = next((w for w in missing if not w.alive), None)
        if dead is not None or time.monotonic() > deadline:
            w = dead or missing[0]
            tail = "\n".join(w.log_path.read_text(errors="replace").splitlines()[-5:])
            raise SystemExit(f"syncworker demo: {w.name} did not start; its log ends:\n{tail}")
        await asyncio.sleep(0.05)


async def watch(
    redis: Redis,
    stream: str,
    group: str,
    fleet: Fleet,
    child: WorkerProcess,
    report: HandOver,
    clock: Clock,
) -> HandOver:
    """Wait for `child` to exit, note what it left, and time until that is finished.

    What it left: the entries still pending on its name once it is gone, and those a
    survivor already took over from it (a SIGTERMed worker releases entries before it has
    exited, and a survivor may claim them in the meantime).
    """
    signalled = report.sent
    report.exit_code = await asyncio.wait_for(child.process.wait(), TIMEOUT_S)
    left = await pending_ids(redis, stream, group, child.name) | reclaimed_from(fleet, child.name)
    if child.signalled == "SIGTERM":
        report.drain = next(iter(child.events("worker.drained")), {})
        # A survivor may have claimed what it handed back before we looked, and its log line
        # saying so may still be on its way to the file: wait (bounded) for as many as it
        # says it released or interrupted.
        said = int(report.drain.get("released", 0)) + int(report.drain.get("interrupted", 0))
        until = time.monotonic() + LOG_WAIT_S
        while len(left) < said and time.monotonic() < until:
            await asyncio.sleep(POLL_S)
            left |= reclaimed_from(fleet, child.name)
    report.left = sorted(left)
    if child.signalled == "SIGTERM":
        clock.say(
            f"{child.name} exited with code {report.exit_code}; {entries(len(left))} handed back"
        )
    deadline = signalled + TIMEOUT_S
    while left and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        still = left & await pending_ids(redis, stream, group)
        report.finish_times += [time.monotonic() - signalled] * len(left - still)
        left = still
    if not left:
        report.finished_after = time.monotonic() - signalled
        clock.say(
            f"{child.name}: all {entries(len(report.left))} it left are finished "
            f"({report.finished_after:.2f} s after the {child.signalled})"
        )
    return report


class Signaller:
    """Sends the demo's signals, each to the busiest worker that has had none, and starts a
    watcher for each hand-over."""

    def __init__(self, redis: Redis, stream: str, group: str, fleet: Fleet, clock: Clock) -> None:
        self.redis, self.stream, self.group = redis, stream, group
        self.fleet = fleet
        self.clock = clock
        self.candidates = list(fleet.workers)
        self.watchers: list[asyncio.Task[HandOver]] = []

    async def send(self, sig: str) -> WorkerProcess:
        names = [w.name for w in self.candidates if not w.signalled]
        name, held = await busiest(self.redis, self.stream, self.group, names)
        child = next(w for w in self.candidates if w.name == name)
        (self.fleet.kill if sig == "SIGKILL" else self.fleet.terminate)(child)
        report = HandOver(name, child.pid, sig, self.clock.since(), sent=time.monotonic())
        self.clock.say(f"{sig} {name} (pid {child.pid}), the busiest: it holds {entries(held)}")
        self.watchers.append(
            asyncio.create_task(
                watch(self.redis, self.stream, self.group, self.fleet, child, report, self.clock)
            )
        )
        return child

    async def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node would."""
        await self.send("SIGKILL")

    async def terminate(self) -> None:
        """SIGTERM and a replacement, as a rolling update would."""
        victim = await self.send("SIGTERM")
        spare = await self.fleet.start(f"worker-{len(self.fleet.workers) + 1}")
        self.clock.say(f"started {spare.name} (pid {spare.pid}) in place of {victim.name}")

    async def hand_overs(self) -> list[HandOver]:
        """Every watcher's report, once each hand-over finished (or timed out)."""
        return list(await asyncio.gather(*self.watchers))


def reclaimed_from(fleet: Fleet, name: str) -> set[str]:
    """Ids the other workers logged as taken over from consumer `name` (so far)."""
    return {
        str(e.get("message_id"))
        for other in fleet.workers
        for e in other.events("message.reclaimed")
        if e.get("from_consumer") == name
    }


def taken_over(fleet: Fleet, report: HandOver) -> None:
    """Fill `report.taken_by` from the survivors' `message.reclaimed` log lines."""
    left = set(report.left)
    for other in fleet.workers:
        n = sum(
            1
            for e in other.events("message.reclaimed")
            if e.get("from_consumer") == report.worker and e.get("message_id") in left
        )
        if n:
            report.taken_by[other.name] = n


async def publish_paced(
    redis: Redis,
    stream: str,
    events: list[dict[str, str]],
    seconds: float,
    ids: list[str],
    milestones: list[tuple[float, Callable[[], Any]]],
) -> None:
    """XADD `events` in bursts every BURST_S over about `seconds`, appending their ids to
    `ids`; run each milestone coroutine function right after the burst that takes the
    events out past its fraction, while the workers are busy with that burst."""
    ticks = max(int(seconds / BURST_S), 1)
    per_tick = max(-(-len(events) // ticks), 1)
    pending = sorted(milestones, key=lambda m: m[0])
    started = time.monotonic()
    for n, start in enumerate(range(0, len(events), per_tick)):
        pipe = redis.pipeline(transaction=False)
        for fields in events[start : start + per_tick]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids.extend(_text(i) for i in await pipe.execute())
        while pending and len(ids) >= pending[0][0] * len(events):
            await asyncio.wait_for(pending.pop(0)[1](), TIMEOUT_S)
        delay = started + (n + 1) * seconds / ticks - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def until_settled(redis: Redis, stream: str, group: str, last_id: str) -> None:
    """Wait until the group has read up to `last_id` and nothing is pending."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        groups: list[Any] = await redis.xinfo_groups(stream)
        info = next((g for g in groups if _text(g["name"]) == group), None)
        read = info is not None and _id(_text(info["last-delivered-id"])) >= _id(last_id)
        if read and info is not None and int(info["pending"]) == 0:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"syncworker demo: entries still unsettled after {TIMEOUT_S:.0f} s")


def entries(n: int) -> str:
    """'1 entry', '2 entries'."""
    return "1 entry" if n == 1 else f"{n} entries"


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
