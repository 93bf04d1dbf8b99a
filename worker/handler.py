"""The handler plugin API: what a plugin is, what it gets at start-up, and `@handler`."""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

from worker.message import Message
from worker.partitions import check_partitioned_name, partition_names

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.batch import BatchFunctionHandler
    from worker.settings import WorkerSettings

EnvelopeName = Literal["syncworker", "cloudevents", "faststream", "dapr", "debezium"]
"""How a stream's entries are laid out; `worker.envelopes` reads all but `syncworker`."""

ENVELOPES: tuple[str, ...] = get_args(EnvelopeName)

OrderedMode = Literal[False, True, "strict"]
"""Fleet-wide order of a partitioned route: False (per-process key order only), True (each
partition run by one worker at a time, under a lease), or "strict" (that, and a message
waiting for its retry holds back the later messages of its key)."""


def expand_partitions(streams: Iterable[str], partitions: int) -> tuple[str, ...]:
    """The Redis streams behind logical `streams`: their partitions when `partitions` > 0."""
    if not partitions:
        return tuple(streams)
    expanded: list[str] = []
    for stream in streams:
        check_partitioned_name(stream, partitions)
        expanded.extend(partition_names(stream, partitions))
    return tuple(expanded)


HandlerFunc = Callable[[Message], Awaitable[None]]
"""An async function that processes one message; returning means success."""

MiddlewareFunc = Callable[[HandlerFunc], HandlerFunc]
"""A middleware (see `worker.middleware`): takes the next handler function, returns another."""


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
        middleware: this handler's own middleware, first listed outermost, run inside the
            worker-wide ones and typed validation (see `worker.middleware`); a route in the
            config file may add more.
        partitions: 0 for a plain stream; N to read the logical stream's N partitions
            (`worker.partitions`): `streams` then names the partitions, `logical_streams`
            the logical streams.
        ordered: see `OrderedMode`; only for partitioned routes (`worker.runtime.ordered`).
    """

    name: str = ""
    streams: tuple[str, ...] = ()
    types: frozenset[str] | None = None
    envelope: str = "syncworker"
    model: Any = None
    acks_atomically: bool = False
    middleware: Sequence[MiddlewareFunc] = ()
    partitions: int = 0
    ordered: OrderedMode = False
    logical_streams: tuple[str, ...] = ()

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
        *,
        partitions: int | None = None,
        ordered: OrderedMode | None = None,
    ) -> Handler:
        """Return a copy of this handler routed to `streams` (and `types`, `envelope`,
        `partitions` and `ordered`, if given); `streams` are logical streams."""
        bound = copy.copy(self)
        if partitions is not None:
            bound.partitions = partitions
        if ordered is not None:
            bound.ordered = ordered
        bound.logical_streams = tuple(streams)
        bound.streams = expand_partitions(streams, bound.partitions)
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
        middleware: Sequence[MiddlewareFunc] = (),
        partitions: int = 0,
        ordered: OrderedMode = False,
    ) -> None:
        self.func = func
        self.name = name
        self.partitions = partitions
        self.ordered = ordered
        self.logical_streams = streams
        self.streams = expand_partitions(streams, partitions)
        self.types = types
        self.envelope = envelope
        self.model = model
        self.middleware = tuple(middleware)
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


@overload
def handler(
    stream: str | None = None,
    *,
    streams: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    name: str | None = None,
    envelope: EnvelopeName = "syncworker",
    model: Any = None,
    middleware: Sequence[MiddlewareFunc] = (),
    partitions: int = 0,
    ordered: OrderedMode = False,
    batch: Literal[False] = False,
) -> Callable[[Callable[[Message], Any]], FunctionHandler]: ...


@overload
def handler(
    stream: str | None = None,
    *,
    streams: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    name: str | None = None,
    envelope: EnvelopeName = "syncworker",
    model: Any = None,
    partitions: int = 0,
    ordered: OrderedMode = False,
    batch: Literal[True],
    batch_max: int = 100,
    batch_wait: float = 0.002,
) -> Callable[[Callable[[list[Message]], Any]], BatchFunctionHandler]: ...


def handler(
    stream: str | None = None,
    *,
    streams: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    name: str | None = None,
    envelope: EnvelopeName = "syncworker",
    model: Any = None,
    middleware: Sequence[MiddlewareFunc] = (),
    partitions: int = 0,
    ordered: OrderedMode = False,
    batch: bool = False,
    batch_max: int = 100,
    batch_wait: float = 0.002,
) -> Callable[[Callable[..., Any]], Handler]:
    """Turn a function into a handler plugin routed to `stream` (or several `streams`).

    Example:
        ```python
        @handler(stream="orders", types=["order.completed"])
        async def sync_payment(msg: Message) -> None:
            ...

        @handler(stream="orders", batch=True, batch_max=200)
        async def sync_payments(msgs: list[Message]) -> list[Outcome]:
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
        middleware: wrapped around this handler's calls, first listed outermost (see
            `worker.middleware`); for a plain function they run in the event loop, around
            the call in the worker's thread. Not with `batch`: middleware wrap one message.
        partitions: read the stream's N partitions `{stream:0}`... (`worker.partitions`).
        ordered: True to run each partition on one worker of the fleet at a time (per-key
            order across the fleet), "strict" to also hold a key back behind its retry.
        batch: the function takes a list of messages and returns one outcome per message
            (`worker.batch`).
        batch_max: with `batch`: most messages per call.
        batch_wait: with `batch`: seconds to wait for more messages after the first.

    Raises:
        TypeError: no stream was given, or both `stream` and `streams`; `middleware` with
            `batch`.
        ValueError: an unknown envelope; batch bounds out of range; `ordered` without
            partitions; a bad partition count.
    """
    if (stream is None) == (streams is None):
        raise TypeError("@handler needs exactly one of stream= or streams=")
    if batch and middleware:
        raise TypeError("middleware wrap calls of one message; a batch handler takes none")
    routed = (stream,) if stream is not None else tuple(streams or ())
    wanted = frozenset(types) if types is not None else None
    if envelope not in ENVELOPES:
        raise ValueError(f"unknown envelope {envelope!r} (one of {', '.join(ENVELOPES)})")
    if ordered not in (False, True, "strict"):
        raise ValueError(f"ordered must be False, True or 'strict', not {ordered!r}")
    if ordered and not partitions:
        raise ValueError("ordered routes need partitions= (order is kept per partition)")
    expand_partitions(routed, partitions)  # refuse a bad name or count now

    def decorate(func: Callable[..., Any]) -> Handler:
        if batch:
            from worker.batch import BatchFunctionHandler  # batch imports this module

            return BatchFunctionHandler(
                func,
                name=name or func.__qualname__,
                streams=routed,
                types=wanted,
                envelope=envelope,
                model=model,
                batch_max=batch_max,
                batch_wait=batch_wait,
            ).bind(routed, partitions=partitions, ordered=ordered)
        return FunctionHandler(
            func,
            name=name or func.__qualname__,
            streams=routed,
            types=wanted,
            envelope=envelope,
            model=model,
            middleware=middleware,
            partitions=partitions,
            ordered=ordered,
        )

    return decorate
