"""Handlers that worker subprocesses load by `module:attr`, configured by environment.

Every handled message is recorded in Redis (`<stream>:processed`, a list of ids), so a test
can count deliveries across processes that were killed. Each run also leaves
`<stream>:attempts` ("id attempt" when it starts) and `<stream>:spans` ("id start end" in
wall-clock seconds when it ends), so a test can see overlapping runs of one entry.

TEST_SLEEP: seconds each message takes (default 0).
A message whose data has `"poison": true` kills the process with SIGKILL, every time.
A message whose data has `"raise": NAME` raises that exception (`SystemExit`,
`KeyboardInterrupt` or `CancelledError`) from the handler on its first attempt.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from redis.asyncio import Redis

from worker import BatchHandler, Handler, HandlerContext, Message, Outcome, handler

RAISED: dict[str, BaseException] = {
    "SystemExit": SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt(),
    "CancelledError": asyncio.CancelledError(),
}


class Recorder(Handler):
    """Records each message id after an optional delay."""

    name = "recorder"

    def __init__(self) -> None:
        self.redis: Redis | None = None
        self.streams = (os.environ["TEST_STREAM"],)
        self.sleep = float(os.environ.get("TEST_SLEEP", "0"))

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.redis = ctx.redis

    async def handle(self, msg: Message) -> None:
        assert self.redis is not None
        began = time.time()
        await self.redis.rpush(f"{msg.stream}:started", msg.id)
        await self.redis.rpush(f"{msg.stream}:attempts", f"{msg.id} {msg.attempt}")
        data = msg.data
        if isinstance(data, dict) and data.get("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        if isinstance(data, dict) and data.get("raise") and msg.attempt == 1:
            raise RAISED[data["raise"]]
        if self.sleep:
            await asyncio.sleep(self.sleep)
        await self.redis.rpush(f"{msg.stream}:spans", f"{msg.id} {began} {time.time()}")
        await self.redis.rpush(f"{msg.stream}:processed", msg.id)


def recorder() -> Recorder:
    return Recorder()


recorder_handler = Recorder


@handler(stream="plugins:noop")
async def noop(msg: Message) -> None:
    """Does nothing: for commands that only need a valid handler reference."""


def sync_recorder() -> Handler:
    """A blocking (non-async) handler: records each id, sleeping TEST_SLEEP seconds between.

    It runs in a worker thread, which no timeout or cancellation can stop.
    """
    import time

    import redis

    client = redis.Redis.from_url(os.environ["SYNCWORKER_REDIS_URL"])
    sleep = float(os.environ.get("TEST_SLEEP", "0"))

    def record(msg: Message) -> None:
        client.rpush(f"{msg.stream}:started", msg.id)
        time.sleep(sleep)
        client.rpush(f"{msg.stream}:processed", msg.id)

    return handler(stream=os.environ["TEST_STREAM"], name="sync-recorder")(record)


class BatchRecorder(BatchHandler):
    """A batch handler: records each batch's ids (`<stream>:processed`) and size
    (`<stream>:batch_sizes`); a batch holding a message with `"poison": true` kills the
    process with SIGKILL, every time."""

    name = "batch-recorder"
    batch_max = 16

    def __init__(self) -> None:
        self.redis: Redis | None = None
        self.streams = (os.environ["TEST_STREAM"],)

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.redis = ctx.redis

    async def handle_batch(self, msgs: list[Message]) -> list[Outcome]:
        assert self.redis is not None
        await self.redis.rpush(
            f"{msgs[0].stream}:attempts", *(f"{m.id} {m.attempt} {len(msgs)}" for m in msgs)
        )
        if any(isinstance(m.data, dict) and m.data.get("poison") for m in msgs):
            os.kill(os.getpid(), signal.SIGKILL)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(f"{msgs[0].stream}:processed", *(m.id for m in msgs))
        pipe.rpush(f"{msgs[0].stream}:batch_sizes", len(msgs))
        await pipe.execute()
        return [None] * len(msgs)
