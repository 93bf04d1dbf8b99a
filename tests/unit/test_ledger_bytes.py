"""The ledger counts the bytes of the entries it keeps, and the read room depends on them."""

from __future__ import annotations

import asyncio

from worker.message import Message
from worker.runtime.ledger import Ledger, Waiting, entry_size


def _msg(n: int, size: int) -> Message:
    return Message("s", f"{n}-0", {b"data": b"x" * (size - 4)})


class TestHeldBytes:
    def test_entry_size_is_field_names_and_values(self) -> None:
        """An entry's size is the sum of its field name and value lengths."""
        assert entry_size({b"type": b"a.b", b"data": b"{}"}) == 4 + 3 + 4 + 2

    def test_bytes_follow_hold_retry_resume_and_drop(self) -> None:
        """Held and waiting entries both count; acked, released and forgotten ones do not."""
        ledger = Ledger(10, bytes_max=1000)
        a, b, c = _msg(1, 100), _msg(2, 200), _msg(3, 300)
        assert ledger.hold_many("s", [a, b]) == 300
        ledger.hold(c)
        assert ledger.bytes == 600
        ledger.hold(c)  # held twice counts once
        assert ledger.bytes == 600
        ledger.wait_for_retry(b, 1.0)
        assert ledger.bytes == 600
        ledger.resume(Waiting(b, 0.0, 1.0))
        assert ledger.bytes == 600
        ledger.drop(a)
        ledger.drop_many("s", [b])
        assert ledger.bytes == 300
        ledger.wait_for_retry(c, 1.0)
        ledger.forget_waiting(ledger.waiting[("s", "3-0")])
        assert ledger.bytes == 0 and len(ledger) == 0

    def test_a_spent_budget_leaves_no_room_until_bytes_are_freed(self) -> None:
        """Reading may start while bytes are under the budget, whatever the entry count."""
        ledger = Ledger(10, bytes_max=1000)
        big = _msg(1, 1000)
        assert ledger.fits(1)
        ledger.hold(big)
        assert not ledger.fits(1) and ledger.bytes_room() == 0
        ledger.drop(big)
        assert ledger.fits(1) and ledger.bytes_room() == 1000

    def test_an_empty_ledger_always_has_room_for_one(self) -> None:
        """An entry larger than the budget can still be read when nothing is kept."""
        ledger = Ledger(10, bytes_max=10)
        assert ledger.fits(1)
        ledger.hold(_msg(1, 5000))
        assert not ledger.fits(1)

    def test_zero_means_no_byte_bound(self) -> None:
        """bytes_max=0 bounds by count only."""
        ledger = Ledger(10)
        ledger.hold(_msg(1, 10**8))
        assert ledger.fits(9)

    async def test_wait_for_room_wakes_when_bytes_are_freed(self) -> None:
        """A read waiting for the byte budget resumes once an entry is dropped."""
        ledger = Ledger(10, bytes_max=100)
        held = _msg(1, 100)
        ledger.hold(held)
        waiter = asyncio.create_task(ledger.wait_for_room(1))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        ledger.drop(held)
        await asyncio.wait_for(waiter, 1)
