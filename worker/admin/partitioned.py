"""Totals per logical stream, over the partitions of partitioned streams (`worker.partitions`).

`syncworker status` shows each partition's row and, below, one row per logical stream: the
sums of length, lag, pending and dead letters, and the oldest pending age of any partition.
An autoscaler or an operator wants the logical stream's backlog, not N numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.admin.groups import GroupState
from worker.partitions import logical_of


@dataclass(slots=True)
class LogicalTotals:
    """One logical stream's partitions, summed, for one group."""

    stream: str
    group: str
    partitions: int = 0
    length: int = 0
    lag: int | None = 0
    pending: int = 0
    oldest_pending_age_s: float | None = None
    dead_letter_length: int = 0
    missing_groups: int = 0

    def add(self, state: GroupState) -> None:
        self.partitions += 1
        self.length += state.length
        self.dead_letter_length += state.dead_letter_length
        if not state.exists:
            self.missing_groups += 1
            return
        self.pending += state.pending
        self.lag = None if self.lag is None or state.lag is None else self.lag + state.lag
        age = state.oldest_pending_age_s
        if age is not None:
            self.oldest_pending_age_s = max(self.oldest_pending_age_s or 0.0, age)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def totals(states: list[GroupState]) -> list[LogicalTotals]:
    """A row per (logical stream, group) that has partitions among `states`."""
    found: dict[tuple[str, str], LogicalTotals] = {}
    for state in states:
        logical, index = logical_of(state.stream)
        if index is None:
            continue
        row = found.get((logical, state.group))
        if row is None:
            row = found[(logical, state.group)] = LogicalTotals(logical, state.group)
        row.add(state)
    return list(found.values())
