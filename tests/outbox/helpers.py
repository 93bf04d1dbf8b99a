"""Helpers of the outbox tests: a relay in the test's event loop, the stream's entries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from worker.outbox import Relay, RelayOptions


def fast_options(dsn: str, table: str, **overrides: Any) -> RelayOptions:
    values: dict[str, Any] = {
        "dsn": dsn,
        "table": table,
        "poll_interval": 0.5,
        "lock_interval": 0.2,
        "stats_interval": 0.05,
        **overrides,
    }
    return RelayOptions(**values)


@contextlib.asynccontextmanager
async def relaying(redis: Redis, dsn: str, table: str, **overrides: Any) -> AsyncIterator[Relay]:
    """A relay running in a task for the duration of the block."""
    relay = Relay(fast_options(dsn, table, **overrides), redis)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 5)


async def entries(redis: Redis, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]
