"""Tracing middleware: one OpenTelemetry CONSUMER span per handler call of each delivery.

The span continues the trace its producer wrote into the entry (`traceparent`, see
`worker.tracing`): its parent is the producer's span. A replayed dead letter
(`syncworker dlq replay`) carries its original `traceparent` too, but is processed long
after, by an operator's decision: its span starts a new trace, with a link to the original.

Attributes follow the OpenTelemetry messaging conventions: `messaging.system` (`redis`),
`messaging.destination.name` (the stream), `messaging.consumer.group.name`,
`messaging.message.id`, `messaging.operation.type` (`process`); and this runtime's own:
`syncworker.attempt` (the delivery count), `syncworker.handler`, `syncworker.event_type`
and `syncworker.outcome`: `ok`, `retry`, `dead_letter`, `skipped` (no handler wanted the
entry: the span of its delivery ends at once) or `released` (shutdown interrupted the call;
the entry runs again, on the same attempt). A failed call records its exception, sets the
span's status to error and adds an event `retry` (with the delay before the next attempt) or
`dead_letter` (with the reason), deciding as the settler does, through the retry policy.

A batch handler's call (`batch`, the worker-wide batch hook) is one CONSUMER span `process
<stream>` for the whole batch, as the messaging conventions define batch processing: a root
span (the messages come from many traces) with `messaging.batch.message_count` and one link
per message to its producer's context, carrying `messaging.message.id` and
`syncworker.attempt`; a batch of one is also its message's child, so quiet streams keep their
traces whole. Each message that does not succeed adds a `retry` or `dead_letter` event with its
id; `syncworker.batch.ok`, `.retry` and `.dead_letter` count the outcomes; a call that raised
records its exception and sets the status to error.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager

from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
    use_span,
)
from opentelemetry.util.types import AttributeValue

from worker.batch import Outcome
from worker.connection import refused_for_now
from worker.errors import Reject
from worker.handler import HandlerFunc
from worker.message import REPLAY_OF_ID, Message
from worker.middleware import BatchCall
from worker.runtime.policy import RetryPolicy
from worker.runtime.supervise import told_to_stop
from worker.tracing import SYSTEM, extract, span_context_of, tracer

_REPLAY_OF_ID = REPLAY_OF_ID.encode()


class Tracing:
    """The tracing middleware (worker-wide, outermost); `SYNCWORKER_TRACING=true` adds it.

    Args:
        policy: the worker's retry policy, to tell a retry from a last attempt.
        tracer_provider: where spans go; None for the global provider.
    """

    def __init__(self, policy: RetryPolicy, *, tracer_provider: TracerProvider | None = None):
        self.policy = policy
        self.tracer = tracer(tracer_provider)

    def __call__(self, next: HandlerFunc) -> HandlerFunc:
        async def call(msg: Message) -> None:
            with self._span(msg) as span:
                try:
                    await next(msg)
                except BaseException as exc:
                    self._failed(span, msg, exc)
                    raise
                span.set_attribute("syncworker.outcome", "ok")

        return call

    def skipped(self, msg: Message) -> None:
        """An entry no handler wants: a span of its delivery, outcome `skipped`."""
        with self._span(msg, handler="") as span:
            span.set_attribute("syncworker.outcome", "skipped")

    def _span(self, msg: Message, handler: str | None = None) -> AbstractContextManager[Span]:
        parent = extract(msg)
        links: list[Link] = []
        if _REPLAY_OF_ID in msg.raw:  # a replay: its own trace, linked to the original
            origin = span_context_of(parent)
            if origin.is_valid:
                links.append(Link(origin, {"syncworker.link": "replay_of"}))
            parent = Context()  # empty: a root span, not a child of the current context
        attributes: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": msg.stream,
            "messaging.consumer.group.name": msg.group,
            "messaging.message.id": msg.id,
            "syncworker.attempt": msg.attempt,
            "syncworker.handler": getattr(msg, "_handler", "") if handler is None else handler,
        }
        if msg.type is not None:
            attributes["syncworker.event_type"] = msg.type
        span = self.tracer.start_span(
            f"process {msg.stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        return use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        )

    def _failed(self, span: Span, msg: Message, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError) and told_to_stop():
            span.set_attribute("syncworker.outcome", "released")
            return
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, _status(exc)))
        outcome, event = self._next(msg, exc)
        span.set_attribute("syncworker.outcome", outcome)
        span.add_event(outcome, event)

    def _next(self, msg: Message, exc: BaseException) -> tuple[str, dict[str, AttributeValue]]:
        """What the settler does with `msg` after `exc`: `retry` or `dead_letter`, and the
        attributes of its event."""
        if isinstance(exc, Reject):
            return _dead_letter(exc, "rejected")
        if refused_for_now(exc):  # an outage: the same attempt runs again
            return "retry", {"syncworker.retry.reason": "redis refused"}
        if self.policy.spent(msg.attempt):
            return _dead_letter(exc, "attempts exhausted")
        return "retry", {
            "syncworker.retry.delay_s": self.policy.delay(msg.attempt, msg.id, exc),
            "syncworker.retry.next_attempt": msg.attempt + 1,
        }

    def batch(self, next: BatchCall) -> BatchCall:
        """Trace each batch handler call (see `worker.middleware.BatchCall`): one span."""

        async def call(msgs: list[Message]) -> list[Outcome]:
            with self._batch_span(msgs) as span:
                try:
                    outcomes = await next(msgs)
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError) and told_to_stop():
                        span.set_attribute("syncworker.outcome", "released")
                        raise
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, _status(exc)))
                    self._batch_outcomes(span, msgs, [exc] * len(msgs))
                    raise
                self._batch_outcomes(span, msgs, outcomes)
                return outcomes

        return call

    def _batch_span(self, msgs: list[Message]) -> AbstractContextManager[Span]:
        first = msgs[0]
        links: list[Link] = []
        parent = Context()  # a root span: the messages' contexts are links
        for msg in msgs:
            origin = extract(msg)
            ctx = span_context_of(origin)
            if not ctx.is_valid:
                continue
            attributes: dict[str, AttributeValue] = {
                "messaging.message.id": msg.id,
                "syncworker.attempt": msg.attempt,
            }
            if _REPLAY_OF_ID in msg.raw:
                attributes["syncworker.link"] = "replay_of"
            elif len(msgs) == 1:
                parent = origin  # a batch of one continues its message's trace
            links.append(Link(ctx, attributes))
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": first.stream,
            "messaging.consumer.group.name": first.group,
            "messaging.batch.message_count": len(msgs),
            "syncworker.handler": getattr(first, "_handler", ""),
        }
        if len(msgs) == 1:
            attributes["messaging.message.id"] = first.id
            attributes["syncworker.attempt"] = first.attempt
        span = self.tracer.start_span(
            f"process {first.stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        return use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        )

    def _batch_outcomes(self, span: Span, msgs: list[Message], outcomes: list[Outcome]) -> None:
        """Count the outcomes on the span, with an event per message that does not succeed."""
        counts = {"ok": 0, "retry": 0, "dead_letter": 0}
        for msg, exc in zip(msgs, outcomes, strict=True):
            if exc is None:
                counts["ok"] += 1
                continue
            outcome, event = self._next(msg, exc)
            counts[outcome] += 1
            event["messaging.message.id"] = msg.id
            event["syncworker.attempt"] = msg.attempt
            event["exception.type"] = type(exc).__name__
            event["exception.message"] = str(exc)[:500]
            span.add_event(outcome, event)
        for outcome, count in counts.items():
            span.set_attribute(f"syncworker.batch.{outcome}", count)


def _dead_letter(exc: BaseException, reason: str) -> tuple[str, dict[str, AttributeValue]]:
    return "dead_letter", {
        "syncworker.dead_letter.reason": reason,
        "exception.type": type(exc).__name__,
    }


def _status(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
