"""Batch dispatch: run a batch handler on a batch, and settle each message by its own outcome.

Every message is settled on its own, as the per-message dispatcher settles it: a success is
acked, a `Retry` or any other exception is retried with backoff (its attempt counted, from
the delivery count), a `Reject` is dead-lettered at once. A call that raises, runs past
`handler_timeout` or returns a result of the wrong length gives that failure to every
message of the batch; the next deliveries of those messages then run in smaller batches
(`worker.runtime.batching`), so one bad message is soon alone.

Before the call each message goes through the per-message steps that need no handler: its
envelope is opened, a type no route wants is acked untouched, a dead letter replayed for
another group is skipped, and `data` is validated against the handler's `model`; a message
that fails one of those is settled at once and left out of the call.

Worker-wide middleware with a `batch` method (tracing) wraps each call, composed once per
route on its first batch (`worker.middleware.BatchCall`); without any, the call is made as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any

from worker.batch import BatchHandler, Outcome
from worker.envelopes import EnvelopeMessage
from worker.errors import MalformedMessage, Reject, SyncWorkerError
from worker.message import Message
from worker.middleware import BatchCall
from worker.runtime.dispatch import Route, for_this_group, tell_skipped
from worker.runtime.stats import Stats
from worker.runtime.supervise import told_to_stop
from worker.typed import parse
from worker.versions import as_versions

if TYPE_CHECKING:
    from worker.runtime.dispatch import Dispatcher


class BatchResultError(SyncWorkerError):
    """A batch handler returned something other than one outcome per message (a bug in the
    handler): every message of the batch fails with this error and is retried."""


class BatchDispatcher:
    """Runs batch handlers and settles each message of a batch; never raises.

    Args:
        dispatcher: the per-message dispatcher, whose routes, settler, threads and deadlines
            batches share.
        stats: where invalid events are counted.
    """

    def __init__(self, dispatcher: Dispatcher, stats: Stats) -> None:
        self.dispatcher = dispatcher
        self.settler = dispatcher.settler
        self.stats = stats
        self._hooks = dispatcher.routes.batch_hooks
        self._calls: dict[Route, BatchCall] = {}
        """Each route's call wrapped in the batch hooks, composed on its first batch."""

    async def process_batch(self, msgs: list[Message]) -> None:
        """Run the batch handler of `msgs` (all of one stream) and settle each message."""
        ready, route = self._prepare(msgs)
        if not ready or route is None:
            return
        for msg in ready:
            msg._handler = route.name  # for msg.log
        try:
            if self._hooks:  # empty unless a middleware wraps batch calls (tracing)
                call = self._calls.get(route)
                if call is None:
                    call = self._calls[route] = self._wrapped(route)
                outcomes = await call(ready)
            else:
                outcomes = await self._run(route, ready)
        except asyncio.CancelledError as exc:
            if told_to_stop():
                raise  # shutdown cancelled this lane: the batch is released, not failed
            self._all(ready, exc, route.name)
        except BaseException as exc:  # SystemExit too: see `Dispatcher.process`
            self._all(ready, exc, route.name)
        else:
            self._settle(ready, outcomes, route.name)

    def _prepare(self, msgs: list[Message]) -> tuple[list[Message], Route | None]:
        """The messages the handler is to see, and its route; settles the others."""
        d = self.dispatcher
        settler = self.settler
        ready: list[Message] = []
        route: Route | None = None
        for msg in msgs:
            event_type = msg.raw.get(b"type")
            if d.envelopes:
                try:
                    msg, event_type = d.routes.open(msg, event_type)
                except MalformedMessage as exc:
                    envelope = d.envelopes[msg.stream]
                    settler.dead_letter(msg, exc, f"envelope:{envelope}", reason="undecodable")
                    continue
                if isinstance(msg, EnvelopeMessage) and msg.opened.skip:  # a Debezium tombstone
                    settler.ack(msg, "", skipped=True)
                    continue
            routes = d.routes.lookup(msg.stream, event_type)
            if not routes or not for_this_group(msg):
                if d.routes.skipped:  # empty unless a middleware wants to know
                    tell_skipped(d.routes.skipped, msg)
                settler.ack(msg, "", skipped=True)
                continue
            route = routes[0]
            model = route.handler.model
            if model is not None:
                try:
                    msg._event = parse(as_versions(model) or model, msg, self.stats)
                except Reject as exc:
                    settler.dead_letter(msg, exc, route.name)
                    continue
            ready.append(msg)
        return ready, route

    def _wrapped(self, route: Route) -> BatchCall:
        """The route's batch call inside the worker-wide batch hooks, the first outermost."""
        call: BatchCall = partial(self._run, route)
        for wrap in reversed(self._hooks):
            call = wrap(call)
        return call

    async def _run(self, route: Route, ready: list[Message]) -> list[Outcome]:
        """Call the route's handler on `ready`; its outcomes checked, one per message.

        Raises:
            BatchResultError: the result is not a sequence of `len(ready)` outcomes.
            BaseException: what the call raised.
        """
        handler = route.handler
        assert isinstance(handler, BatchHandler)
        return _checked(await self._call(route, handler, ready), len(ready), route.name)

    async def _call(self, route: Route, handler: BatchHandler, ready: list[Message]) -> Any:
        d = self.dispatcher
        started = perf_counter()
        blocking = getattr(handler, "blocking", None)
        deadlines = d.deadlines
        task = asyncio.current_task() if deadlines is not None else None
        if blocking is not None:
            outcomes = await d.threads.call(blocking, ready, d.handler_timeout)
        elif deadlines is None or task is None:
            outcomes = await handler.handle_batch(ready)
        else:
            deadlines.started(task, ready)
            try:
                outcomes = await handler.handle_batch(ready)
            except asyncio.CancelledError:
                if deadlines.cut_off(task, ready):
                    raise TimeoutError(
                        f"batch handler timed out after {d.handler_timeout}s"
                    ) from None
                raise
            finally:
                deadlines.ended(task)
        route.histogram.observe(perf_counter() - started)
        return outcomes

    def _settle(self, ready: list[Message], outcomes: list[Outcome], name: str) -> None:
        settler = self.settler
        for msg, outcome in zip(ready, outcomes, strict=True):
            if outcome is None:
                settler.ack(msg, name)
            elif isinstance(outcome, Reject):
                settler.dead_letter(msg, outcome, name)
            else:
                settler.failed(msg, outcome, name)

    def _all(self, ready: list[Message], exc: BaseException, name: str) -> None:
        """The call failed as a whole: every message of the batch gets `exc`."""
        if isinstance(exc, Reject):
            for msg in ready:
                self.settler.dead_letter(msg, exc, name)
            return
        for msg in ready:
            self.settler.failed(msg, exc, name)


def _checked(outcomes: Any, count: int, name: str) -> list[Outcome]:
    """`outcomes` as a list of `count` outcomes, each None or an exception instance (any
    other value becomes a `BatchResultError` of its message).

    Raises:
        BatchResultError: `outcomes` is not a sequence, or not of `count` outcomes.
    """
    if not isinstance(outcomes, Sequence) or isinstance(outcomes, str | bytes):
        raise BatchResultError(f"{name} returned a {type(outcomes).__name__}, not a list")
    if len(outcomes) != count:
        raise BatchResultError(f"{name} returned {len(outcomes)} outcomes for a batch of {count}")
    checked: list[Outcome] = []
    for outcome in outcomes:
        if outcome is not None and not isinstance(outcome, BaseException):
            kind = type(outcome).__name__
            outcome = BatchResultError(f"{name} returned a {kind} outcome: None or an exception")
        checked.append(outcome)
    return checked
