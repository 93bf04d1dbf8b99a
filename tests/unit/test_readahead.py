"""Read-ahead: the size of the next read, from the lanes and the recent handler time."""

from __future__ import annotations

import asyncio

import pytest

from worker.message import Message
from worker.runtime.ledger import Ledger
from worker.runtime.readahead import ReadAhead
from worker.runtime.stats import Stats

LANES = 4
HORIZON = 0.05


def readahead(held: int = 0, horizon: float = HORIZON) -> tuple[ReadAhead, Ledger, Stats]:
    ledger = Ledger(capacity=1000)
    stats = Stats()
    ledger.hold_many("s", [Message("s", f"{i}-0", {b"n": b"1"}) for i in range(held)])
    return ReadAhead(LANES, horizon, ledger, stats), ledger, stats


def ran(stats: Stats, seconds: float, times: int) -> None:
    for _ in range(times):
        stats.handler_seconds[("s", "h")].observe(seconds)


class TestCount:
    @pytest.mark.parametrize(
        ("handler_s", "held", "limit", "expected"),
        [
            (None, 0, 256, LANES),  # nothing finished yet: the free lanes only
            (None, 3, 256, 1),
            (None, LANES, 256, 0),  # every lane busy: wait for one
            (2.0, 0, 256, LANES),  # 4 lanes x 0.05 s / 2 s = 0.1 more: none
            (2.0, LANES, 256, 0),
            (0.01, 0, 256, LANES + 20),  # 4 x 0.05 / 0.01 = 20 more
            (0.01, LANES, 256, 20),
            (0.000_01, 0, 256, 256),  # fast handlers: the whole batch
            (0.000_01, 0, 100, 100),  # within the ledger's and byte budget's limit
            (2.0, 0, 1, 1),
        ],
    )
    def test_table(self, handler_s: float | None, held: int, limit: int, expected: int) -> None:
        """The free lanes plus what the busy ones finish within the horizon, within `limit`."""
        ahead, _, stats = readahead(held)
        if handler_s is not None:
            ran(stats, handler_s, 10)
        assert ahead.count(limit) == expected

    def test_horizon_zero_reads_up_to_the_limit(self) -> None:
        """read_horizon = 0 turns the bound off: every read asks for the limit."""
        ahead, _, stats = readahead(held=LANES, horizon=0)
        ran(stats, 2.0, 10)
        assert ahead.count(256) == 256

    def test_follows_a_change_of_handler_time(self) -> None:
        """Handlers that turn slow shrink the reads; once fast again, full batches return."""
        ahead, _, stats = readahead()
        ran(stats, 0.000_01, 1000)
        assert ahead.count(256) == 256
        slower = []
        for _ in range(10):
            ran(stats, 2.0, 10)
            slower.append(ahead.count(256))
        assert slower[-1] == LANES
        assert slower == sorted(slower, reverse=True)
        faster = []
        for _ in range(40):
            ran(stats, 0.000_01, 10)
            faster.append(ahead.count(256))
        assert faster == sorted(faster) and faster[-1] == 256


class TestWaitForRelease:
    async def test_returns_once_an_entry_is_released(self) -> None:
        """The wait ends when an entry is dropped, well before its timeout."""
        ahead, ledger, _ = readahead(held=LANES)
        msg = next(iter(ledger.held["s"].values()))
        waiter = asyncio.create_task(ahead.wait_for_release(timeout=30))
        await asyncio.sleep(0)
        assert not waiter.done()
        ledger.drop(msg)
        await asyncio.wait_for(waiter, 5)

    async def test_gives_up_after_its_timeout(self) -> None:
        """Nothing released: the wait returns after its timeout, raising nothing."""
        ahead, _, _ = readahead(held=LANES)
        await ahead.wait_for_release(timeout=0.01)
