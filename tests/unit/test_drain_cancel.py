"""The read loop ends on shutdown even when its cancellation is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.reader import Reader
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings


class SlowEmptyRedis:
    """Answers every XREADGROUP with nothing after a short block, like an idle stream."""

    def __init__(self) -> None:
        self.reads = 0

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.reads += 1
        await asyncio.sleep(0.02)
        return []


class TestStopFlag:
    async def test_stop_ends_the_loop_without_a_cancellation(self) -> None:
        """stop() alone ends run() at its next turn, so a lost cancel cannot keep it alive."""
        redis = SlowEmptyRedis()
        settings = WorkerSettings(metrics_port=0, block=0.02)
        reader = Reader(
            redis,  # type: ignore[arg-type]
            settings,
            ("s",),
            Ledger(1000),
            lambda msg: None,
            ReadGate(),
            Stats(),
        )
        task = asyncio.create_task(reader.run())
        await asyncio.sleep(0.1)
        assert redis.reads >= 2
        reader.stop()  # no task.cancel(): as if the cancellation had been swallowed
        await asyncio.wait_for(task, 1.0)
        reads = redis.reads
        await asyncio.sleep(0.1)
        assert redis.reads == reads
