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

from worker.connection import refused_for_now
from worker.errors import Reject
from worker.handler import HandlerFunc
from worker.message import REPLAY_OF_ID, Message
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
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
        if isinstance(exc, Reject):
            self._dead_letter(span, exc, "rejected")
        elif refused_for_now(exc):  # an outage: the same attempt runs again
            span.set_attribute("syncworker.outcome", "retry")
            span.add_event("retry", {"syncworker.retry.reason": "redis refused"})
        elif self.policy.spent(msg.attempt):
            self._dead_letter(span, exc, "attempts exhausted")
        else:
            delay = self.policy.delay(msg.attempt, msg.id, exc)
            span.set_attribute("syncworker.outcome", "retry")
            span.add_event(
                "retry",
                {
                    "syncworker.retry.delay_s": delay,
                    "syncworker.retry.next_attempt": msg.attempt + 1,
                },
            )

    @staticmethod
    def _dead_letter(span: Span, exc: BaseException, reason: str) -> None:
        span.set_attribute("syncworker.outcome", "dead_letter")
        span.add_event(
            "dead_letter",
            {"syncworker.dead_letter.reason": reason, "exception.type": type(exc).__name__},
        )
