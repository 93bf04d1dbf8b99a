"""Per-batch bookkeeping on the hot path counts exactly what per-message bookkeeping did."""

from __future__ import annotations

from worker.ledger import Ledger
from worker.message import Message
from worker.stats import Histogram


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


class TestObserveMany:
    def test_matches_one_observe_per_value(self) -> None:
        """observe_many() leaves the same buckets and sum as observe() per value."""
        values = [0.0001, 0.0007, 0.003, 0.2, 99.0, 0.0]
        one, many = Histogram(), Histogram()
        for value in values:
            one.observe(value)
        many.observe_many(values)
        assert many.counts == one.counts
        assert many.sum == one.sum
