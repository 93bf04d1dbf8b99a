"""Outcomes waiting for the settler's next flush, kept together so one flush takes them all.

A flush swaps the whole set out at once; if it fails, the set goes back in front of what was
queued meanwhile, so outcomes reach Redis in the order they were decided.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from worker.message import Message
from worker.runtime.dead_letter import DeadLetter


@dataclass(slots=True)
class Outcomes:
    """What the next flush sends, by kind."""

    acks: defaultdict[str, list[Message]] = field(default_factory=lambda: defaultdict(list))
    """stream -> entries whose handlers succeeded (XACK)."""
    ok: defaultdict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    """(stream, handler, outcome) -> count, recorded once their acks landed."""
    touches: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """stream -> failed entries whose backoff clock restarts now (idle time reset)."""
    rewinds: defaultdict[str, list[str | int]] = field(default_factory=lambda: defaultdict(list))
    """stream -> (id, delivery count) pairs to set back: Redis refused the handler for now."""
    dead: list[DeadLetter] = field(default_factory=list)
    """Entries to move to their dead-letter streams."""

    def __bool__(self) -> bool:
        return bool(self.acks or self.dead or self.touches or self.rewinds)

    def put_back(self, later: Outcomes) -> None:
        """Queue these (a failed flush) in front of `later` (queued since), in place."""
        for stream, messages in self.acks.items():
            later.acks[stream][:0] = messages
        for key, n in self.ok.items():
            later.ok[key] += n
        for stream, ids in self.touches.items():
            later.touches[stream][:0] = ids
        for stream, pairs in self.rewinds.items():
            later.rewinds[stream][:0] = pairs
        later.dead[:0] = self.dead
