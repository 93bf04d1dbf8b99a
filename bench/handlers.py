"""The handlers the benchmarks run: a no-op, a no-op that decodes `data`, and 1 ms of I/O."""

from __future__ import annotations

import asyncio

from worker import Handler, Message


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


HANDLERS: dict[str, type[Handler]] = {"noop": Noop, "noop_data": NoopData, "sleep_1ms": Sleep1ms}
