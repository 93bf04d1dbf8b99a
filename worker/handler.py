"""The handler plugin API: what a plugin is, what it gets at start-up, and `@handler`."""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from worker.message import Message

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.settings import WorkerSettings

EnvelopeName = Literal["syncworker", "cloudevents", "faststream", "dapr", "debezium"]
"""How a stream's entries are laid out; `worker.envelopes` reads all but `syncworker`."""

ENVELOPES: tuple[str, ...] = get_args(EnvelopeName)

HandlerFunc = Callable[[Message], Awaitable[None]]
"""An async function that processes one message; returning means success."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler receives in `on_startup`: shared resources of the running worker.

    Attributes:
        redis: the worker's Redis client (responses are bytes). Handlers that write to Redis
            use it rather than opening connections of their own.
        group: the consumer group this worker reads through.
        consumer: this process's consumer name.
        settings: the worker's effective settings.
    """

    redis: Redis
    group: str
    consumer: str
    settings: WorkerSettings


class Handler:
    """Base class of handler plugins.

    Subclass it and implement `handle`. A plugin that needs options takes them in `__init__`,
    so that one class can serve several routes, each with its own options. The runtime binds
    each instance to its streams and types from the route (or from the `@handler` decorator).

    Return from `handle` to have the message acknowledged; raise to have it retried after a
    backoff; raise `Reject` to dead-letter it at once. Handlers never acknowledge messages
    themselves, except those that set `acks_atomically` (see below).

    Attributes:
        name: the name used in logs, metrics and errors.
        streams: the streams this handler is routed to.
        types: the event types it wants; None means every entry of the stream.
        envelope: how the stream's entries are laid out: `syncworker` (this runtime's own
            fields), `cloudevents`, `faststream`, `dapr` or `debezium` (see
            `worker.envelopes`). Every handler on one stream reads the same envelope.
        model: a type (usually a pydantic model) that `data` must validate against; the
            parsed value reaches `handle` as `msg.event`. An entry that does not validate is
            dead-lettered with the validation errors. None: no validation, no `msg.event`.
        acks_atomically: True for handlers whose `handle` acknowledges the message in the same
            atomic step as its effect (a Lua script or MULTI/EXEC that includes XACK). Such a
            handler must be the only one on its stream, or a message could be acknowledged
            before another handler ran; the runtime refuses that configuration at start-up.
    """

    name: str = ""
    streams: tuple[str, ...] = ()
    types: frozenset[str] | None = None
    envelope: str = "syncworker"
    model: Any = None
    acks_atomically: bool = False

    async def handle(self, msg: Message) -> None:
        """Apply one message's effect."""
        raise NotImplementedError

    async def on_startup(self, ctx: HandlerContext) -> None:
        """Called once before the first message, with the worker's shared resources."""

    async def on_shutdown(self) -> None:
        """Called once after the last message, to release what `on_startup` acquired."""

    def bind(
        self,
        streams: Iterable[str],
        types: Iterable[str] | None = None,
        envelope: str | None = None,
    ) -> Handler:
        """Return a copy of this handler routed to `streams` (and `types` and `envelope`, if
        given)."""
        bound = copy.copy(self)
        bound.streams = tuple(streams)
        if types is not None:
            bound.types = frozenset(types)
        if envelope is not None:
            bound.envelope = envelope
        return bound

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} streams={list(self.streams)}>"


class FunctionHandler(Handler):
    """A handler made from a plain function by `@handler`."""

    def __init__(
        self,
        func: Callable[[Message], Any],
        *,
        name: str,
        streams: tuple[str, ...],
        types: frozenset[str] | None,
        envelope: str = "syncworker",
        model: Any = None,
    ) -> None:
        self.func = func
        self.name = name
        self.streams = streams
        self.types = types
        self.envelope = envelope
        self.model = model
        self._is_async = inspect.iscoroutinefunction(func)
        self.blocking: Callable[[Message], Any] | None = None if self._is_async else func
        """The plain function, which the worker runs in a thread of its own rather than call
        `handle` (see `worker.runtime.threads`); None for an async function."""

    async def handle(self, msg: Message) -> None:
        if self._is_async:
            await self.func(msg)
        else:
            # A blocking function must not stall every other message of the process. The
            # worker itself does not come here: it runs `blocking` in its own threads.
            await asyncio.to_thread(self.func, msg)

    def __call__(self, msg: Message) -> Any:
        """Call the wrapped function directly, so decorated handlers stay unit-testable."""
        return self.func(msg)


def handler(
    stream: str | None = None,
    *,
    streams: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    name: str | None = None,
    envelope: EnvelopeName = "syncworker",
    model: Any = None,
) -> Callable[[Callable[[Message], Any]], FunctionHandler]:
    """Turn a function into a handler plugin routed to `stream` (or several `streams`).

    Example:
        ```python
        @handler(stream="orders", types=["order.completed"])
        async def sync_payment(msg: Message) -> None:
            ...
        ```

    Args:
        stream: the stream to read.
        streams: several streams, instead of `stream`.
        types: event types to receive; omit to receive every entry.
        name: name in logs and metrics; defaults to the function's qualified name.
        envelope: the layout of the stream's entries: `syncworker` (default), `cloudevents`,
            `faststream`, `dapr` or `debezium` (see `worker.envelopes`).
        model: a type (usually a pydantic model) to validate `data` against; the function
            reads the parsed value as `msg.event`.

    Raises:
        TypeError: no stream was given, or both `stream` and `streams`.
        ValueError: an unknown envelope.
    """
    if (stream is None) == (streams is None):
        raise TypeError("@handler needs exactly one of stream= or streams=")
    routed = (stream,) if stream is not None else tuple(streams or ())
    wanted = frozenset(types) if types is not None else None
    if envelope not in ENVELOPES:
        raise ValueError(f"unknown envelope {envelope!r} (one of {', '.join(ENVELOPES)})")

    def decorate(func: Callable[[Message], Any]) -> FunctionHandler:
        return FunctionHandler(
            func,
            name=name or func.__qualname__,
            streams=routed,
            types=wanted,
            envelope=envelope,
            model=model,
        )

    return decorate
