"""Reads the run logs of a chaos run: overlapping runs of one entry, and hand-over times.

A run is one handler call on one entry in one process: from its `S` line to its `E` line. A
run without an `E` line was cut short by the death of its process, so it ends when the process
was seen dead. Two runs of one entry overlap when one starts before the other ended: the
runtime let two handlers work on the same entry at once (in two processes, or twice in one).
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.chaos.fleet import Life

NEVER = 2**63
"""The end of a run whose process was never seen to exit: it may still be running."""


@dataclass(frozen=True, slots=True)
class Run:
    entry: str
    consumer: str
    pid: int
    start_ns: int
    end_ns: int
    outcome: str
    """The projection's outcome (applied, stale), `error`, or `killed` (no end line)."""


def read_runs(run_dir: Path, lives: list[Life]) -> dict[str, list[Run]]:
    """Every run of every entry, sorted by start, from the files the handler wrote."""
    death = {life.pid: life.ended_ns for life in lives}
    runs: dict[str, list[Run]] = defaultdict(list)
    for path in run_dir.glob("*.runs"):
        consumer, pid_text, _ = path.name.rsplit(".", 2)
        pid = int(pid_text)
        open_runs: dict[str, list[int]] = defaultdict(list)
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts[0] == "S":
                open_runs[parts[1]].append(int(parts[2]))
            elif open_runs[parts[1]]:
                start = open_runs[parts[1]].pop(0)
                runs[parts[1]].append(Run(parts[1], consumer, pid, start, int(parts[2]), parts[3]))
        for entry, starts in open_runs.items():
            for start in starts:
                end = death.get(pid) or NEVER
                runs[entry].append(Run(entry, consumer, pid, start, end, "killed"))
    for entry_runs in runs.values():
        entry_runs.sort(key=lambda run: run.start_ns)
    return runs


def overlapping(runs: dict[str, list[Run]]) -> dict[str, list[Run]]:
    """The entries some of whose runs overlap in time, with all their runs."""
    found: dict[str, list[Run]] = {}
    for entry, entry_runs in runs.items():
        ended = 0
        for run in entry_runs:
            if run.start_ns < ended:
                found[entry] = entry_runs
                break
            ended = max(ended, run.end_ns)
    return found


def hand_over(runs: dict[str, list[Run]], life: Life) -> tuple[int, float | None]:
    """(entries re-run, seconds) from a stopped process's exit until the last entry it had
    pending when it was signalled ran again; an entry it finished itself before exiting
    never runs again and does not count. None when none ran again."""
    if life.ended_ns is None:
        return 0, None
    firsts = []
    for entry in life.pending_at_signal:
        later = [r.start_ns for r in runs.get(entry, []) if r.start_ns >= life.ended_ns]
        if later:
            firsts.append(min(later))
    if not firsts:
        return 0, None
    return len(firsts), (max(firsts) - life.ended_ns) / 1e9


def hand_overs(runs: dict[str, list[Run]], lives: list[Life], end: str) -> list[float]:
    """The hand-over seconds of every process that ended by `end` (sigkill, sigterm)."""
    times = [hand_over(runs, life)[1] for life in lives if life.end == end]
    return [t for t in times if t is not None]


def reclaims(log_dir: Path) -> dict[tuple[str, str], float]:
    """(from consumer, entry id) -> wall time of its first `message.reclaimed` log line."""
    found: dict[tuple[str, str], float] = {}
    for path in log_dir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"message.reclaimed"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                event = json.loads(line)
                key = (event["from_consumer"], event["message_id"])
                at = datetime.fromisoformat(event["timestamp"]).timestamp()
                found[key] = min(at, found.get(key, at))
    return found


def claimed(claims: dict[tuple[str, str], float], life: Life) -> tuple[int, float | None]:
    """(entries, seconds): how many of a stopped process's pending entries other processes
    claimed from its consumer name after it exited, and when the last claim came."""
    times = [
        claims[(life.consumer, entry)]
        for entry in life.pending_at_signal
        if claims.get((life.consumer, entry), 0.0) >= life.ended_wall
    ]
    if not times:
        return 0, None
    return len(times), max(times) - life.ended_wall


def describe_overlap(entry: str, entry_runs: list[Run], origin_ns: int) -> str:
    """One line per run of an overlapping entry, times in seconds since the run began."""
    lines = [f"  entry {entry}:"]
    for run in entry_runs:
        start = (run.start_ns - origin_ns) / 1e9
        end = (run.end_ns - origin_ns) / 1e9
        lines.append(
            f"    {run.consumer} pid {run.pid}: {start:.3f}s .. {end:.3f}s ({run.outcome})"
        )
    return "\n".join(lines)
