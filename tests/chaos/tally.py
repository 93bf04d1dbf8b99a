"""The accounting of a chaos run: what was published, applied, dead-lettered and left, by
distinct entry, from the server's own records and the handler's run logs."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from tests.chaos.events import Planned
from tests.chaos.fleet import Life
from tests.chaos.plugin import ChaosProjection
from tests.chaos.publisher import Publisher
from tests.chaos.runs import (
    Run,
    claimed,
    describe_overlap,
    hand_over,
    hand_overs,
    overlapping,
    read_runs,
    reclaims,
)


@dataclass
class Tally:
    """The counts of one run; `must_be_zero` lists the rows the suite asserts."""

    published: int = 0
    good: int = 0
    bad: int = 0
    applied: int = 0
    dead_lettered: int = 0
    lost: int = 0
    missing_from_stream: int = 0
    pending: int = 0
    applied_twice: int = 0
    dead_lettered_twice: int = 0
    good_dead_lettered: int = 0
    bad_not_dead_lettered: int = 0
    applied_and_dead_lettered: int = 0
    overlaps: dict[str, list[Run]] = field(default_factory=dict)
    runs: int = 0
    stale_runs: int = 0
    peak_rss_kb: int = 0
    hand_over_kill: list[float] = field(default_factory=list)
    hand_over_term: list[float] = field(default_factory=list)
    did_not_exit: int = 0
    overlaps_same_name: int = 0
    """Overlapping entries one of whose runs was in a process restarted under an old name."""
    pending_by_consumer: dict[str, int] = field(default_factory=dict)
    stops: list[str] = field(default_factory=list)
    """One line per worker stopped by a fault: pending entries, how many ran again, when."""
    lives: list[Life] = field(default_factory=list)
    scenario: str = ""
    seed: int = 0
    server: str = ""
    wall_s: float = 0.0
    drained: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    same_name_restarts: int = 0
    logs: Path | None = None

    def must_be_zero(self) -> dict[str, int]:
        return {
            "lost (published - applied - dead-lettered)": self.lost,
            "missing from the stream": self.missing_from_stream,
            "left pending": self.pending,
            "effects applied twice by the projection": self.applied_twice,
            "dead letters written twice": self.dead_lettered_twice,
            "good events dead-lettered": self.good_dead_lettered,
            "bad entries not dead-lettered": self.bad_not_dead_lettered,
            "entries both applied and dead-lettered": self.applied_and_dead_lettered,
            "entries with overlapping runs": len(self.overlaps),
        }

    def table(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        drained = f"{self.drained:.1f} s" if self.drained >= 0 else "NOT drained (bound hit)"
        published = f"{self.published} ({self.good} good, {self.bad} bad)"
        rows = [
            ("published (distinct entries)", published),
            ("applied (distinct entries)", str(self.applied)),
            ("dead-lettered (distinct entries)", str(self.dead_lettered)),
            *((label, f"{value}   must be 0") for label, value in self.must_be_zero().items()),
            ("  of which involve a same-name restart", str(self.overlaps_same_name)),
            ("handler runs (total / stale re-runs)", f"{self.runs} / {self.stale_runs}"),
            ("faults", f"{faults} (same-name restarts {self.same_name_restarts})"),
            ("workers not exiting on SIGTERM", str(self.did_not_exit)),
            ("peak RSS of a worker (VmHWM)", f"{self.peak_rss_kb / 1024:.1f} MiB"),
            ("hand-over after SIGKILL", _spread(self.hand_over_kill)),
            ("hand-over after SIGTERM", _spread(self.hand_over_term)),
            ("drain after the last fault", drained),
        ]
        head = (
            f"chaos scenario={self.scenario} server={self.server} seed={self.seed} "
            f"wall={self.wall_s:.1f}s (replay: SYNCWORKER_CHAOS_SEED={self.seed})"
        )
        width = max(len(label) for label, _ in rows)
        lines = [head, *(f"  {label:<{width}}  {value}" for label, value in rows)]
        if self.pending_by_consumer:
            lines.append(f"    left pending by consumer: {self.pending_by_consumer}")
        lines += self.stops
        origin = min((life.started_ns for life in self.lives), default=0)
        for entry, entry_runs in list(self.overlaps.items())[:5]:
            lines.append(describe_overlap(entry, entry_runs, origin))
        lines.append(f"  logs: {self.logs}")
        return "\n".join(lines)


def same_name_restarts(lives: list[Life]) -> set[int]:
    """The pids of processes started under a consumer name an earlier process had."""
    seen: set[str] = set()
    reborn: set[int] = set()
    for life in sorted(lives, key=lambda life: life.started_ns):
        if life.consumer in seen:
            reborn.add(life.pid)
        seen.add(life.consumer)
    return reborn


def _stop_line(
    runs: dict[str, list[Run]], claims: dict[tuple[str, str], float], life: Life, origin: int
) -> str:
    rerun, seconds = hand_over(runs, life)
    taken, claim_s = claimed(claims, life)
    at = ((life.ended_ns or origin) - origin) / 1e9
    return (
        f"    {life.end} {life.consumer} pid {life.pid} at {at:.1f}s: "
        f"{len(life.pending_at_signal)} pending; {rerun} ran again, the last after "
        f"{_seconds(seconds)}; {taken} claimed by others, the last after {_seconds(claim_s)}"
    )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _spread(seconds: list[float]) -> str:
    if not seconds:
        return "n/a"
    return f"median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s (n={len(seconds)})"


async def count(
    redis: Redis,
    stream: str,
    group: str,
    entries: list[Planned],
    publisher: Publisher,
    lives: list[Life],
    run_dir: Path,
) -> Tally:
    """Count a finished run from the server's state and the run logs."""
    sink = ChaosProjection()
    ids = publisher.ids
    good = {ids[e.seq] for e in entries if e.good}
    bad = {ids[e.seq] for e in entries if not e.good}
    by_key = {f"e{e.seq}": ids[e.seq] for e in entries if e.good}
    stored = {entry_id.decode() for entry_id, _ in await redis.xrange(stream)}
    applied = {by_key[key.decode()] for key in await redis.hkeys(sink.versions_key)}
    applied_total = int(await redis.hget(sink.counts_key, "applied") or 0)
    letters = Counter(
        fields[b"dlq_id"].decode() for _, fields in await redis.xrange(stream + ":dlq")
    )
    dead = set(letters)
    summary = await redis.xpending(stream, group)
    runs = read_runs(run_dir, lives)
    origin = min((life.started_ns for life in lives), default=0)
    overlaps = overlapping(runs)
    reborn = same_name_restarts(lives)
    claims = reclaims(run_dir.parent / "logs")
    all_runs = [run for entry_runs in runs.values() for run in entry_runs]
    published = good | bad
    return Tally(
        published=len(published),
        good=len(good),
        bad=len(bad),
        applied=len(applied),
        dead_lettered=len(dead),
        lost=len(published - applied - dead),
        missing_from_stream=len(published - stored),
        pending=int(summary["pending"]),
        pending_by_consumer={c["name"].decode(): int(c["pending"]) for c in summary["consumers"]},
        applied_twice=applied_total - len(applied),
        dead_lettered_twice=sum(letters.values()) - len(dead),
        good_dead_lettered=len(good & dead),
        bad_not_dead_lettered=len(bad - dead),
        applied_and_dead_lettered=len(applied & dead),
        overlaps=overlaps,
        overlaps_same_name=sum(
            any(run.pid in reborn for run in entry_runs) for entry_runs in overlaps.values()
        ),
        runs=len(all_runs),
        stale_runs=sum(run.outcome == "stale" for run in all_runs),
        peak_rss_kb=max((life.hwm_kb for life in lives), default=0),
        hand_over_kill=hand_overs(runs, lives, "sigkill"),
        hand_over_term=hand_overs(runs, lives, "sigterm"),
        did_not_exit=sum("did not exit" in life.end for life in lives),
        stops=[
            _stop_line(runs, claims, life, origin) for life in lives if life.end.startswith("sig")
        ],
        lives=lives,
    )
