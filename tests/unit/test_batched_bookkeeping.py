"""Per-batch bookkeeping on the hot path counts exactly what per-message bookkeeping did."""

from __future__ import annotations

import pytest

from worker.message import Message
from worker.runtime.ledger import Ledger
from worker.runtime.settle import entry_ages
from worker.runtime.stats import Histogram


def _msgs(stream: str, ids: range) -> list[Message]:
    return [Message(stream, f"{n}-0", {b"data": b"{}"}) for n in ids]


class TestHoldMany:
    def test_holds_a_batch_and_counts_each_entry_once(self) -> None:
        """A batch is held like one hold() per entry; an id held twice counts once."""
        ledger = Ledger(10)
        ledger.hold_many("s", _msgs("s", range(3)))
        ledger.hold_many("s", _msgs("s", range(2, 5)))
        assert len(ledger) == 5
        assert ledger.room() == 5
        assert ledger.is_held("s", "4-0")

    async def test_held_batch_blocks_wait_empty_until_dropped(self) -> None:
        """wait_empty() waits while a held batch is unsettled, and returns once it is dropped."""
        ledger = Ledger(10)
        batch = _msgs("s", range(3))
        ledger.hold_many("s", batch)
        assert ledger.held_count() == 3
        ledger.drop_many("s", batch)
        await ledger.wait_empty()
        assert len(ledger) == 0


class TestEndToEndAges:
    def test_runs_match_one_observe_per_entry(self) -> None:
        """Ages counted per run of equal milliseconds fill the buckets as one observe() each."""
        ids = ["1000-0", "1000-1", "999-0", "1000-2", "1003-0", "1003-1", "1003-2", "2000-0"]
        messages = [Message("s", i, {}) for i in ids]
        now_ms = 1003.5
        one, runs = Histogram(), Histogram()
        for i in ids:
            one.observe(max(now_ms - int(i.partition("-")[0]), 0.0) / 1000.0)
        runs.observe_runs(entry_ages(now_ms, messages))
        assert runs.counts == one.counts
        assert runs.sum == pytest.approx(one.sum)
        assert runs.count == len(ids)

    def test_runs_group_consecutive_entries_of_one_millisecond(self) -> None:
        """Each run is (age in seconds, entries in a row added in that millisecond)."""
        messages = [Message("s", i, {}) for i in ["5-0", "5-1", "5-2", "7-0", "5-3"]]
        assert entry_ages(10.0, messages) == [(0.005, 3), (0.003, 1), (0.005, 1)]
        assert entry_ages(10.0, []) == []
