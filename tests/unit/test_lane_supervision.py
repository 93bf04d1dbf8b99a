"""Lanes are supervised: a lane that dies is logged, counted and replaced, and its key goes on."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from worker.message import Message
from worker.runtime.lanes import Lanes
from worker.runtime.stats import Stats


def msg(n: int, key: str) -> Message:
    return Message("s", f"{n}-0", {b"n": str(n).encode(), b"key": key.encode()})


class TestLaneDeath:
    async def test_a_dying_lane_settles_its_message_and_is_replaced(self) -> None:
        """The message it held is handed to `lost`, its key's followers run, and lanes go on."""
        done: list[int] = []
        lost: list[tuple[str, str]] = []

        async def process(m: Message) -> None:
            n = int(m.raw[b"n"])
            if n == 1:
                raise RuntimeError("a bug outside any handler")
            done.append(n)

        stats = Stats()
        lanes = Lanes(1, process, lost=lambda m, e: lost.append((m.id, repr(e))), stats=stats)
        lanes.start()
        with capture_logs() as logs:
            # Given: one lane, and a message that kills it followed by one of the same key
            for n, key in ((1, "k"), (2, "k"), (3, "other")):
                lanes.submit(msg(n, key))
            await asyncio.sleep(0.05)
            # When: more work arrives after the death
            lanes.submit(msg(4, "k"))
            await asyncio.sleep(0.05)
        lanes.close()
        assert await lanes.wait(1) == []
        # Then: the held message was settled as lost, and every other message ran
        assert lost == [("1-0", "RuntimeError('a bug outside any handler')")]
        assert sorted(done) == [2, 3, 4]
        assert stats.lane_restarts == 1
        [died] = [e for e in logs if e["event"] == "lane.died"]
        assert died["message_id"] == "1-0" and died["exc_info"]

    async def test_shutdown_still_cancels_a_lane(self) -> None:
        """Cancelling the lanes (after the shutdown timeout) ends them rather than restarting."""
        started = asyncio.Event()

        async def process(m: Message) -> None:
            started.set()
            await asyncio.Event().wait()

        stats = Stats()
        lanes = Lanes(1, process, lost=lambda m, e: None, stats=stats)
        lanes.start()
        lanes.submit(msg(1, "k"))
        await started.wait()
        lanes.close()
        interrupted = await lanes.wait(0.05)
        assert [m.id for m in interrupted] == ["1-0"]
        assert stats.lane_restarts == 0
