"""Stopping the operations server is bounded, even when a cancellation is lost."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from tests.helpers import make_settings
from worker import Message, Worker, handler
from worker.ops.server import OpsServer


async def _loses_one_cancellation() -> None:
    """Like a redis-py call that a cancellation hit while in flight: it carries on once."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.sleep(30)


class TestOpsServerStop:
    async def test_stop_returns_although_the_refresher_ignores_its_cancellation(self) -> None:
        """stop() gives up on a refresher that does not end, says so, and returns."""

        @handler(stream="s")
        async def noop(msg: Message) -> None:
            pass

        settings = make_settings("redis://127.0.0.1:1/0", "g", metrics_host="127.0.0.1")
        ops = OpsServer(port=0)
        await ops.start(Worker(settings, [noop], services=[]))
        assert ops._refresher is not None
        ops._refresher.cancel()
        stubborn = ops._refresher = asyncio.create_task(_loses_one_cancellation())
        await asyncio.sleep(0)
        try:
            with capture_logs() as logs:
                await asyncio.wait_for(ops.stop(), 10)
            assert [e["tasks"] for e in logs if e["event"] == "shutdown.stuck"] == [
                ["ops refresher"]
            ]
        finally:
            stubborn.cancel()
            await asyncio.gather(stubborn, return_exceptions=True)
