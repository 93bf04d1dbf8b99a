"""Lanes: bounded concurrency that keeps per-key order."""

from __future__ import annotations

import asyncio

from worker.message import Message
from worker.runtime.lanes import Lanes


def msg(n: int, key: str | None) -> Message:
    raw = {b"n": str(n).encode()}
    if key is not None:
        raw[b"key"] = key.encode()
    return Message("s", f"{n}-0", raw)


class TestLanes:
    async def test_concurrency_is_bounded_and_keys_stay_in_order(self) -> None:
        """At most `size` messages run at once; each key's messages run in submit order."""
        running = 0
        peak = 0
        order: dict[bytes, list[int]] = {}

        async def process(m: Message) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001 * (int(m.raw[b"n"]) % 3))
            order.setdefault(m.raw[b"key"], []).append(int(m.raw[b"n"]))
            running -= 1

        lanes = Lanes(4, process)
        lanes.start()
        for n in range(120):
            lanes.submit(msg(n, f"k{n % 40}"))
        await asyncio.sleep(0.5)
        lanes.close()
        await lanes.wait(5)
        assert peak == 4  # a free lane always takes the next key that is not running
        assert sum(len(v) for v in order.values()) == 120
        assert all(seq == sorted(seq) for seq in order.values())

    async def test_one_busy_key_never_holds_up_the_others(self) -> None:
        """A key with a backlog runs on one lane while the other keys use the rest."""
        started: list[int] = []
        release = asyncio.Event()

        async def process(m: Message) -> None:
            started.append(int(m.raw[b"n"]))
            if m.raw[b"key"] == b"slow":
                await release.wait()

        lanes = Lanes(2, process)
        lanes.start()
        for n in range(5):
            lanes.submit(msg(n, "slow"))
        for n in range(5, 10):
            lanes.submit(msg(n, f"k{n}"))
        await asyncio.sleep(0.05)
        # Given the first "slow" message blocks one lane, the other lane ran every other key.
        assert started == [0, 5, 6, 7, 8, 9]
        release.set()
        await asyncio.sleep(0.05)
        assert started[6:] == [1, 2, 3, 4]
        lanes.close()
        await lanes.wait(1)

    async def test_close_hands_back_what_never_started(self) -> None:
        """Messages still queued at close() are returned, in order, and never run."""
        ran: list[str] = []

        async def process(m: Message) -> None:
            ran.append(m.id)

        lanes = Lanes(2, process)
        lanes.start()
        for n in range(10):
            lanes.submit(msg(n, "same-key"))
        unstarted = lanes.close()  # the lane tasks have not had a turn yet
        assert [m.id for m in unstarted] == [f"{n}-0" for n in range(10)]
        assert await lanes.wait(1) == []
        assert ran == []

    async def test_what_is_submitted_after_close_never_runs_and_is_handed_back(self) -> None:
        """A read or claim in flight at close() may still deliver: neither a lane finishing
        its message nor an idle one runs what it delivers; `late()` returns it."""
        ran: list[str] = []
        finish = asyncio.Event()

        async def process(m: Message) -> None:
            ran.append(m.id)
            if m.id == "1-0":
                await finish.wait()

        lanes = Lanes(2, process)
        lanes.start()
        lanes.submit(msg(1, "busy"))
        await asyncio.sleep(0.01)
        assert lanes.close() == []
        lanes.submit(msg(2, None))
        lanes.submit(msg(3, "busy"))  # behind the running message of its key
        finish.set()
        assert await lanes.wait(1) == []
        assert ran == ["1-0"]
        assert [m.id for m in lanes.late()] == ["2-0", "3-0"]
        assert lanes.late() == []

    async def test_wait_cancels_what_outlives_the_timeout(self) -> None:
        """A handler still running at the deadline is cancelled and reported as interrupted."""

        async def forever(m: Message) -> None:
            await asyncio.sleep(60)

        lanes = Lanes(2, forever)
        lanes.start()
        lanes.submit(msg(1, None))
        await asyncio.sleep(0.01)
        lanes.close()
        interrupted = await lanes.wait(0.05)
        assert [m.id for m in interrupted] == ["1-0"]
