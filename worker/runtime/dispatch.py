"""Dispatch: route a message to its handlers, run them, and hand the outcome to the settler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING

import structlog

from worker.envelopes import EnvelopeMessage, open_message
from worker.errors import MalformedMessage, Reject
from worker.handler import FunctionHandler, Handler
from worker.message import REPLAY_FOR_GROUP, Message
from worker.middleware import Middleware, batch_hooks, chain, skip_hooks
from worker.middleware.typed import validate
from worker.runtime.deadlines import Deadlines
from worker.runtime.stats import Histogram, Stats
from worker.runtime.supervise import told_to_stop
from worker.runtime.threads import HandlerThreads

if TYPE_CHECKING:
    from worker.runtime.settle import Settler

log = structlog.get_logger("worker.runtime.dispatch")

_REPLAY_FOR_GROUP = REPLAY_FOR_GROUP.encode()


class Route:
    """One handler on one stream, with its precomputed metric slots.

    Its middleware chain (worker-wide, typed validation for a `model`, the handler's own; see
    `worker.middleware`) is composed here, once; a route without any calls `handler.handle`
    as it is. A blocking handler's middleware run in the event loop around an awaitable of its
    thread call (`RouteTable.use_threads`).
    """

    __slots__ = ("blocking", "handle", "handler", "histogram", "middleware", "name", "threaded")

    def __init__(
        self,
        handler: Handler,
        histogram: Histogram,
        stats: Stats,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.handler = handler
        self.name = handler.name
        self.histogram = histogram
        self.blocking = handler.blocking if isinstance(handler, FunctionHandler) else None
        typed = (validate(handler.model, stats),) if handler.model is not None else ()
        self.middleware = (*middleware, *typed, *handler.middleware)
        self.handle: Callable[[Message], Awaitable[None]] = chain(handler.handle, self.middleware)
        self.threaded = False
        """True once `handle` runs the blocking handler in a worker thread (through its
        middleware, if any): the thread call bounds itself, the async watchdog stays out."""

    def use_threads(self, threads: HandlerThreads, timeout: float | None) -> None:
        """Run a blocking handler on `threads`, inside its middleware (if any)."""
        func = self.blocking
        if func is None:
            return

        async def in_thread(msg: Message) -> None:
            await threads.call(func, msg, timeout)

        self.handle = chain(in_thread, self.middleware)
        self.threaded = True


class RouteTable:
    """stream -> event type -> the handlers to run, in registration order."""

    def __init__(
        self, handlers: Iterable[Handler], stats: Stats, middleware: Sequence[Middleware] = ()
    ) -> None:
        self._untyped: dict[str, tuple[Route, ...]] = {}
        self._typed: dict[str, dict[bytes, tuple[Route, ...]]] = {}
        self.labels: dict[str, str] = {}
        self.envelopes: dict[str, str] = {}
        """stream -> its envelope, for streams not in the `syncworker` layout only."""
        self._stats = stats
        self.skipped = skip_hooks(middleware)
        """Hooks of worker-wide middleware for entries no handler wants (e.g. tracing)."""
        self.batch_hooks = batch_hooks(middleware)
        """Worker-wide middleware around batch handler calls (e.g. tracing); empty on most
        workers."""
        per_stream: dict[str, list[Route]] = {}
        for h in handlers:
            for stream in h.streams:
                per_stream.setdefault(stream, []).append(
                    Route(h, stats.handler_seconds[(stream, h.name)], stats, middleware)
                )
                if h.envelope != "syncworker":
                    self.envelopes[stream] = h.envelope
        for stream, routes in per_stream.items():
            self._untyped[stream] = tuple(r for r in routes if r.handler.types is None)
            types = {t for r in routes if r.handler.types is not None for t in r.handler.types}
            self._typed[stream] = {
                t.encode(): tuple(
                    r for r in routes if r.handler.types is None or t in r.handler.types
                )
                for t in types
            }
        self.streams: tuple[str, ...] = tuple(per_stream)
        self._routes = [r for routes in per_stream.values() for r in routes]

    def use_threads(self, threads: HandlerThreads, timeout: float | None) -> None:
        """Bind the blocking routes to the dispatcher's threads."""
        for route in self._routes:
            route.use_threads(threads, timeout)

    def lookup(self, stream: str, event_type: bytes | None) -> tuple[Route, ...]:
        if event_type is not None:
            typed = self._typed[stream].get(event_type)
            if typed is not None:
                return typed
        return self._untyped[stream]

    def open(self, msg: Message, event_type: bytes | None) -> tuple[Message, bytes | None]:
        """`msg` and its event type as its stream's envelope presents them.

        Raises:
            MalformedMessage: the envelope cannot read the entry (counted as undecodable).
        """
        envelope = self.envelopes.get(msg.stream)
        if envelope is None:
            return msg, event_type
        if isinstance(msg, EnvelopeMessage):  # opened before it was queued (`opened_first`)
            return msg, None if msg.type is None else msg.type.encode()
        try:
            opened = open_message(msg, envelope)
        except MalformedMessage:
            self._stats.undecodable[msg.stream] += 1
            raise
        return opened, None if opened.type is None else opened.type.encode()

    def handler_names(self, stream: str) -> list[str]:
        seen: dict[str, None] = {}
        for routes in (self._untyped[stream], *self._typed[stream].values()):
            for route in routes:
                seen[route.name] = None
        return list(seen)


def for_this_group(msg: Message) -> bool:
    """False for a dead letter replayed for another consumer group (`dlq replay --group`):
    the groups that had handled it must not run it again, so they ack it untouched."""
    target = msg.raw.get(_REPLAY_FOR_GROUP)
    return target is None or target == msg.group.encode()


def tell_skipped(hooks: Iterable[Callable[[Message], None]], msg: Message) -> None:
    """Call each middleware's `skipped` hook; one that fails is logged, never fatal."""
    for hook in hooks:
        try:
            hook(msg)
        except Exception:
            log.critical("middleware.hook_failed", hook=repr(hook), exc_info=True)


class Dispatcher:
    """Runs the handlers of each message and settles the outcome; never raises."""

    def __init__(
        self,
        routes: RouteTable,
        settler: Settler,
        handler_timeout: float,
        threads: HandlerThreads | None = None,
    ) -> None:
        self.routes = routes
        self.envelopes = routes.envelopes
        """stream -> envelope, for streams not in the syncworker layout; empty on most workers."""
        self.settler = settler
        self.handler_timeout = handler_timeout or None
        self.threads = threads or HandlerThreads(1, Stats())
        routes.use_threads(self.threads, self.handler_timeout)
        self.deadlines = Deadlines(handler_timeout) if handler_timeout else None
        """Cuts off async handler calls past `handler_timeout`; its watchdog runs beside the
        lanes (`Worker`). None without a timeout."""

    async def process(self, msg: Message) -> None:
        """Run the handlers of `msg` and settle the outcome.

        Whatever a handler raises is a failure of that handler, retried and dead-lettered like
        any other: `CancelledError` (unless this task itself is being cancelled, which is
        shutdown), and `SystemExit` or `KeyboardInterrupt` too, since signals reach the worker
        through its own handlers and never as an exception inside a handler call. Letting them
        escape would end the lane (or the event loop) with the entry held for ever.
        """
        event_type = msg.raw.get(b"type")
        if self.envelopes:  # empty unless a route reads another framework's envelope
            try:
                msg, event_type = self.routes.open(msg, event_type)
            except MalformedMessage as exc:
                envelope = self.envelopes[msg.stream]
                self.settler.dead_letter(msg, exc, f"envelope:{envelope}", reason="undecodable")
                return
            if isinstance(msg, EnvelopeMessage) and msg.opened.skip:  # a Debezium tombstone
                self.settler.ack(msg, "", skipped=True)
                return
        routes = self.routes.lookup(msg.stream, event_type)
        if not routes or not for_this_group(msg):
            if self.routes.skipped:  # empty unless a middleware wants to know
                tell_skipped(self.routes.skipped, msg)
            self.settler.ack(msg, "", skipped=True)
            return
        route = routes[0]
        deadlines = self.deadlines
        task = asyncio.current_task() if deadlines is not None else None
        try:
            for route in routes:
                msg._handler = route.name  # for msg.log
                started = perf_counter()
                # A blocking handler's thread call bounds itself: the watchdog stays out.
                if route.threaded or deadlines is None or task is None:
                    await route.handle(msg)
                else:
                    deadlines.started(task, msg)
                    try:
                        await route.handle(msg)
                    except asyncio.CancelledError:
                        if deadlines.cut_off(task, msg):
                            raise TimeoutError from None  # settled below: "handler timed out"
                        raise
                    finally:
                        deadlines.ended(task)
                route.histogram.observe(perf_counter() - started)
        except asyncio.CancelledError as exc:
            if told_to_stop():
                raise  # shutdown cancelled this lane: the message is released, not failed
            self.settler.failed(msg, exc, route.name)  # the handler's own: a failure
        except Reject as exc:
            self.settler.dead_letter(msg, exc, route.name)
        except BaseException as exc:  # SystemExit too: see `process`
            self.settler.failed(msg, exc, route.name)
        else:
            self.settler.ack(
                msg, route.name if len(routes) == 1 else "+".join(r.name for r in routes)
            )

    def lost(self, msg: Message, exc: BaseException) -> None:
        """The lane running `msg` died outside any handler: settle it as failed (retried)."""
        self.settler.failed(msg, exc, getattr(msg, "_handler", ""))
