"""Batch handlers: one call for many messages, and one outcome per message.

A sink that writes each message in its own round trip (one SQL transaction, one Redis
script) spends most of its time on the round trip; given a list, it can write them all in
one. `BatchHandler.handle_batch` receives up to `batch_max` messages of one stream and
returns one `Outcome` per message, in the same order, as Dapr's bulk subscribe returns a
status per entry: one bad message never fails its neighbours.

How the runtime forms batches (per-key order, `batch_wait`, smaller batches for retried
entries) is described in `worker.runtime.batching`; how outcomes are settled, in
`worker.runtime.batch_dispatch`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from worker.errors import Reject, Retry
from worker.handler import Handler
from worker.message import Message

Outcome: TypeAlias = Retry | Reject | BaseException | None
"""What became of one message of a batch.

- `None`: success; the message is acknowledged (a handler that `acks_atomically` has
  acknowledged it already in its own atomic step).
- a `Retry` instance: run it again after `Retry.delay` (or the backoff); the attempt counts.
- a `Reject` instance (`InvalidEvent`, `MalformedMessage` too): dead-letter it at once.
- any other exception instance: a failure, retried with backoff and dead-lettered once its
  attempts are spent.
"""

BatchFunc = Callable[[list[Message]], Any]
"""A function taking a batch and returning its outcomes (awaitable, or not for a blocking
function, which runs on the worker's handler threads)."""


class BatchHandler(Handler):
    """Base class of handlers that process messages in batches.

    Subclass it and implement `handle_batch`. A batch handler must be the only handler of
    its streams (the runtime refuses anything else at start-up): the batch is the unit of
    work, and a second handler would need the same messages one at a time.

    Attributes:
        batch_max: most messages per call.
        batch_wait: seconds a batch may wait for more messages after the first, before the
            call. The runtime waits only while another batch of the same stream is running
            (so that arrivals would otherwise trickle in as many small calls); at low rates a
            message is handed over at once, and a batch of one costs what a message costs.
    """

    batch_max: int = 100
    batch_wait: float = 0.002

    async def handle_batch(self, msgs: list[Message]) -> Sequence[Outcome]:
        """Apply the messages' effects; return one outcome per message, in order.

        Messages of one key arrive in stream order and never in two calls at once. Raising
        gives every message of the batch that failure (a raised `Reject` dead-letters them
        all), and so does returning a result of the wrong length.
        """
        raise NotImplementedError

    async def handle(self, msg: Message) -> None:
        """One message as a batch of one; raises its outcome, if it is not a success."""
        (outcome,) = await self.handle_batch([msg])
        if outcome is not None:
            raise outcome


class BatchFunctionHandler(BatchHandler):
    """A batch handler made from a plain function by `@handler(batch=True)`."""

    def __init__(
        self,
        func: BatchFunc,
        *,
        name: str,
        streams: tuple[str, ...],
        types: frozenset[str] | None,
        envelope: str = "syncworker",
        model: Any = None,
        batch_max: int = 100,
        batch_wait: float = 0.002,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if batch_wait < 0:
            raise ValueError("batch_wait must be >= 0 seconds")
        self.func = func
        self.name = name
        self.streams = streams
        self.types = types
        self.envelope = envelope
        self.model = model
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self._is_async = inspect.iscoroutinefunction(func)
        self.blocking: BatchFunc | None = None if self._is_async else func
        """The plain function, which the worker runs in a thread of its own rather than call
        `handle_batch`; None for an async function."""

    async def handle_batch(self, msgs: list[Message]) -> Sequence[Outcome]:
        if self._is_async:
            result: Sequence[Outcome] = await self.func(msgs)
            return result
        outcomes: Sequence[Outcome] = await asyncio.to_thread(self.func, msgs)
        return outcomes

    def __call__(self, msgs: list[Message]) -> Any:
        """Call the wrapped function directly, so decorated handlers stay unit-testable."""
        return self.func(msgs)
