"""The handlers the benchmarks run: a no-op, a no-op that decodes `data`, 1 ms of I/O, a
no-op batch handler, and a configurable sleep for the hand-over benchmark."""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from worker import BatchHandler, Handler, HandlerContext, Message, Outcome


class Noop(Handler):
    """Does nothing: measures the runtime's own cost per message."""

    name = "noop"

    async def handle(self, msg: Message) -> None:
        return None


class NoopData(Handler):
    """Decodes `data` and nothing else, as the raw loop does."""

    name = "noop_data"

    async def handle(self, msg: Message) -> None:
        msg.data  # noqa: B018  # the JSON decode is the work being measured


class Sleep1ms(Handler):
    """Awaits 1 ms of simulated I/O."""

    name = "sleep_1ms"

    async def handle(self, msg: Message) -> None:
        await asyncio.sleep(0.001)


class NoopBatch(BatchHandler):
    """A batch handler that does nothing: the runtime's own cost per message, in batches."""

    name = "noop_batch"

    async def handle_batch(self, msgs: list[Message]) -> list[Outcome]:
        return [None] * len(msgs)


HANDLERS: dict[str, type[Handler]] = {
    "noop": Noop,
    "noop_data": NoopData,
    "sleep_1ms": Sleep1ms,
    "noop_batch": NoopBatch,
}


class Sleep(Handler):
    """Awaits `BENCH_SLEEP_S` seconds of simulated I/O and counts runs by attempt.

    The counts (`<stream>:attempts`, a hash attempt -> runs) show what a hand-over cost.
    """

    name = "sleep"

    def __init__(self) -> None:
        self.seconds = float(os.environ.get("BENCH_SLEEP_S", "0.2"))
        self.redis: Redis | None = None

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.redis = ctx.redis

    async def handle(self, msg: Message) -> None:
        await asyncio.sleep(self.seconds)
        assert self.redis is not None
        await self.redis.hincrby(f"{msg.stream}:attempts", str(msg.attempt), 1)
